"""Run directories -> one pandas DataFrame: a row per exported model (a WML run gives one per peer).

Only the run directories are read (DESIGN.md, "The run directory is the interface"):
config.yaml, run.json, DONE, metrics.jsonl, model/ (parameter counts from the safetensors
headers) and eval/<task>.json. `grid.json`, when a grid launcher wrote one, gives the grid
name and the point's axes. A folder that has a config.yaml but no DONE, or whose files cannot
be read, is listed as incomplete with the reason; it never stops the collection.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from common.errors import summary
from common.metrics import METRICS, header
from common.paths import parse_jsonl
from results.baselines import architecture, data_key, setting_key, trained_on
from results.markdown import finite, number, table

FAMILY_ORDER = ["blimp_filtered", "blimp_supplement", "blimp", "ewok_filtered", "demo_pairs"]


@dataclass
class Incomplete:
    run: str
    reason: str


def find_runs(roots: list[Path]) -> list[Path]:
    """Every folder under the roots that holds a run's config.yaml (checkpoints and models are not searched)."""
    out = []
    for root in roots:
        for config in sorted(root.rglob("config.yaml")):
            if not any(part in ("checkpoints", "model", "eval") for part in config.parent.relative_to(root).parts):
                out.append(config.parent)
    return out


def count_params(model_dir: Path) -> int:
    """Parameters of a saved model, read from its safetensors headers (no tensor is loaded)."""
    from safetensors import safe_open

    total = 0
    for file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                n = 1
                for d in handle.get_slice(name).get_shape():
                    n *= d
                total += n
    return total


def _method(config: dict) -> str:
    if "wml" in config:
        if config["wml"].get("solo_peer", -1) >= 0:
            return "solo-twin"  # one peer of the search trained alone: the baseline of its WML peer
        return f"wml-{config['wml'].get('distillation_method', 'mutual')}"
    if "distill" in config:
        terms = [k for k, v in (config["distill"].get("losses") or {}).items() if (v or {}).get("weight", 0) > 0]
        return "kd:" + "+".join(terms)
    return "train"


class Unusable(ValueError):
    """A run that cannot be collected: `file` (relative to the run) and why."""

    def __init__(self, file: str, reason: str):
        super().__init__(f"{file}: {reason}")


def _read(run: Path, name: str, parse, kind: type, optional: bool = False):
    """A file of the run parsed, and of the expected type (dict, list); anything else is `Unusable`."""
    path = run / name
    if optional and not path.is_file():
        return kind()
    try:
        value = parse(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise Unusable(name, f"unreadable ({summary(exc)})") from None
    if not isinstance(value, kind):
        raise Unusable(name, f"holds a {type(value).__name__}, not a {kind.__name__}")
    return value


def _number(value, file: str, key: str):
    """A metric that must be a number (or absent)."""
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return value
    raise Unusable(file, f"{key} is {value!r}, not a number")


def _eval_columns(run: Path, eval_dir: Path) -> dict:
    row = {}
    for file in sorted(eval_dir.glob("*.json")):
        name = str(file.relative_to(run))
        summary = _read(run, name, json.loads, dict)
        if "task" in summary and ("score" in summary or "accuracy" in summary):
            task, metric = summary["task"], summary.get("metric", "accuracy")
            if metric not in METRICS:
                raise Unusable(name, f"metric is {metric!r}, not one of {', '.join(METRICS)}")
            row[task] = _number(summary.get("score", summary.get("accuracy")), name, "score")
            row[f"{task}_stderr"] = _number(summary.get("stderr"), name, "stderr")
            row[f"{task}_metric"] = metric
            if isinstance(summary.get("partial_release"), str):  # scored on part of the release's items
                row[f"{task}_partial"] = summary["partial_release"]
            if metric == "delta_r2":  # the reading task's two scores, each a column
                for part in ("eye_tracking", "self_paced_reading"):
                    row[f"{task}:{part}"] = _number(summary.get(part), name, part)
    return row


def _params(run: Path, model_dir: Path) -> int:
    try:
        return count_params(model_dir)
    except Exception as exc:  # noqa: BLE001 - a damaged weights file makes this run unusable, not the collection
        raise Unusable(str(model_dir.relative_to(run)), f"weights unreadable ({summary(exc)})") from None


def _architecture(run: Path, model_dir: Path) -> str:
    try:
        return architecture(model_dir)
    except (OSError, ValueError) as exc:
        raise Unusable(str(model_dir.relative_to(run) / "config.json"), f"unreadable ({summary(exc)})") from None


def read_run(run: Path) -> list[dict]:
    """The rows of one finished run; raises ValueError (`Unusable`: file and reason) when it is not usable."""
    if not (run / "DONE").is_file():
        raise Unusable("DONE", "missing: the run has not finished")
    config = _read(run, "config.yaml", yaml.safe_load, dict)
    info = _read(run, "run.json", json.loads, dict)
    metrics = _read(run, "metrics.jsonl", parse_jsonl, list)  # a line torn by a kill is left out, not the run
    grid = _read(run, "grid.json", json.loads, dict, optional=True)
    attempts = [a for a in info.get("attempts", []) if isinstance(a, dict)]
    tokens = max((r["tokens_seen"] for r in metrics if isinstance(r.get("tokens_seen"), (int, float))), default=None)
    words = max((r["words_seen"] for r in metrics if isinstance(r.get("words_seen"), (int, float))), default=None)
    if any("train_seconds" in a for a in attempts):  # every attempt's training time, killed ones included
        seconds = sum(float(_number(a.get("train_seconds"), "run.json", "train_seconds") or 0) for a in attempts)
    else:  # runs from before run.json recorded it: the Trainer's own summaries
        seconds = sum(
            float(_number(r["train_runtime"], "metrics.jsonl", "train_runtime"))
            for r in metrics
            if "train_runtime" in r
        )
    gpus = max((a.get("gpus_per_node", 0) for a in attempts), default=0)
    world = max((a.get("world_size", 1) for a in attempts), default=1)
    output = config.get("output", {})
    base = {
        "run": str(run),
        "experiment": output.get("experiment"),
        "recipe": output.get("name"),
        "method": _method(config),
        "grid": grid.get("grid"),
        **{f"axis:{k}": v for k, v in (grid.get("axes") or {}).items()},
        "words_seen": words,
        "tokens_seen": tokens,
        "train_hours": round(seconds / 3600, 4),
        "gpu_hours": round(seconds * world / 3600, 4) if gpus else 0.0,
        "seed": (config.get("train") or {}).get("seed"),
        "data_key": data_key(config),
        "setting": setting_key(config),
        **trained_on(info.get("inputs")),
    }
    if "wml" in config:
        champion = _read(run, "model/champion.json", json.loads, dict)
        rows = []
        for i, name in enumerate(champion["peers"]):
            rows.append({**base, "model": f"{config['model']['arch']} {name}",
                         "champion": i == champion["champion"] if len(champion["peers"]) > 1 else None,  # one: no race
                         "params": _params(run, run / "model" / name), "eval_dir": str(run / "eval" / name),
                         "architecture": _architecture(run, run / "model" / name),
                         "dev_ce": _number(champion["dev_ce"][i], "model/champion.json", "dev_ce"),
                         **_eval_columns(run, run / "eval" / name)})
        return rows
    model = (config.get("student") or config.get("model") or {}).get("arch")
    return [{**base, "model": model, "champion": None, "params": _params(run, run / "model"),
             "eval_dir": str(run / "eval"), "architecture": _architecture(run, run / "model"),
             "dev_ce": _number(info.get("dev_loss"), "run.json", "dev_loss"), **_eval_columns(run, run / "eval")}]


def collect(roots: list[Path]):
    """(DataFrame of finished runs, incomplete runs with reasons)."""
    import pandas as pd

    rows, incomplete = [], []
    for run in find_runs(roots):
        try:
            rows.extend(read_run(run))
        except ValueError as exc:
            incomplete.append(Incomplete(str(run), str(exc)))
        except (
            KeyError,
            TypeError,
            IndexError,
            AttributeError,
        ) as exc:  # a file of the right type with the wrong fields
            incomplete.append(Incomplete(str(run), f"a file lacks what it should hold ({summary(exc)})"))
    df = pd.DataFrame(rows)
    for task in task_columns(df):  # a null score is NaN: a column of nulls alone would hold None, which plots refuse
        for column in (task, f"{task}_stderr", f"{task}:eye_tracking", f"{task}:self_paced_reading"):
            if column in df.columns:
                df[column] = df[column].astype(float)
    return df, incomplete


def metric_of(df, task: str) -> str:
    column = df.get(f"{task}_metric")
    values = [] if column is None else [v for v in column if isinstance(v, str)]
    return values[0] if values else "accuracy"


def task_columns(df) -> list[str]:
    tasks = [c for c in df.columns if f"{c}_stderr" in df.columns]
    return sorted(tasks, key=lambda t: (FAMILY_ORDER.index(t) if t in FAMILY_ORDER else len(FAMILY_ORDER), t))


def _axis(value) -> str:
    """An axis value in the table: blank where the run's stage did not vary it, 1 rather than 1.0 (pandas stores a
    column with blanks as floats)."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def markdown(df) -> str:
    """The reference format: one row per model, `0.694 ± 0.0016` per task."""
    tasks = task_columns(df)
    axes = [c for c in df.columns if c.startswith("axis:")]
    head = ["recipe", "method", "model", "params", *[a[5:] for a in axes], "dev CE",
            *[t + header(metric_of(df, t)) for t in tasks]]
    rows = []
    for _, r in df.iterrows():
        cells = [
            str(r["recipe"]),
            str(r["method"]),
            f"{r['model']}" + (" (champion)" if r.get("champion") is True else ""),
            f"{int(r['params']):,}",
            *[_axis(r[a]) for a in axes],
            number(r["dev_ce"], "{:.4f}"),
        ]
        for t in tasks:
            acc, se = r.get(t), r.get(f"{t}_stderr")
            cells.append(number(acc, "{:.3f}") + (f" ± {se:.4f}" if finite(acc) and finite(se) else "")
                         + (" †" if isinstance(r.get(f"{t}_partial"), str) else ""))
        rows.append(cells)
    part = any(isinstance(v, str) for t in tasks if f"{t}_partial" in df.columns for v in df[f"{t}_partial"])
    return table(head, rows) + ("\n† scored on part of the release's items (the task's `partial_release`, in the "
                                "csv as `<task>_partial`): not the release's score\n" if part else "")
