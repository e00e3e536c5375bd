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
        return f"wml-{config['wml'].get('distillation_method', 'mutual')}"
    if "distill" in config:
        terms = [k for k, v in (config["distill"].get("losses") or {}).items() if (v or {}).get("weight", 0) > 0]
        return "kd:" + "+".join(terms)
    return "train"


def _eval_columns(eval_dir: Path) -> dict:
    row = {}
    for file in sorted(eval_dir.glob("*.json")):
        summary = json.loads(file.read_text())
        if "accuracy" in summary and "task" in summary:
            row[f"{summary['task']}"] = summary["accuracy"]
            row[f"{summary['task']}_stderr"] = summary.get("stderr")
    return row


def read_run(run: Path) -> list[dict]:
    """The rows of one finished run; raises ValueError with the reason when it is not usable."""
    if not (run / "DONE").is_file():
        raise ValueError("not finished (no DONE)")
    try:
        config = yaml.safe_load((run / "config.yaml").read_text())
        info = json.loads((run / "run.json").read_text())
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        grid = json.loads((run / "grid.json").read_text()) if (run / "grid.json").is_file() else {}
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ValueError(f"unreadable: {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}") from None
    tokens = max((r["tokens_seen"] for r in metrics if "tokens_seen" in r), default=None)
    seconds = sum(r["train_runtime"] for r in metrics if "train_runtime" in r)
    gpus = max((a.get("gpus_per_node", 0) for a in info.get("attempts", [])), default=0)
    world = max((a.get("world_size", 1) for a in info.get("attempts", [])), default=1)
    output = config.get("output", {})
    base = {"run": str(run), "experiment": output.get("experiment"), "recipe": output.get("name"), "method": _method(config),
            "grid": grid.get("grid"), **{f"axis:{k}": v for k, v in (grid.get("axes") or {}).items()},
            "tokens_seen": tokens, "train_hours": round(seconds / 3600, 4), "gpu_hours": round(seconds * world / 3600, 4) if gpus else 0.0}
    if "wml" in config:
        champion = json.loads((run / "model" / "champion.json").read_text())
        rows = []
        for i, name in enumerate(champion["peers"]):
            rows.append({**base, "model": f"{config['model']['arch']} {name}", "champion": i == champion["champion"],
                         "params": count_params(run / "model" / name), "dev_ce": champion["dev_ce"][i],
                         **_eval_columns(run / "eval" / name)})
        return rows
    model = (config.get("student") or config.get("model") or {}).get("arch")
    return [{**base, "model": model, "champion": None, "params": count_params(run / "model"), "dev_ce": info.get("dev_loss"),
             **_eval_columns(run / "eval")}]


def collect(roots: list[Path]):
    """(DataFrame of finished runs, incomplete runs with reasons)."""
    import pandas as pd

    rows, incomplete = [], []
    for run in find_runs(roots):
        try:
            rows.extend(read_run(run))
        except ValueError as exc:
            incomplete.append(Incomplete(str(run), str(exc)))
        except (KeyError, TypeError) as exc:
            incomplete.append(Incomplete(str(run), f"unreadable: missing {exc}"))
    return pd.DataFrame(rows), incomplete


def task_columns(df) -> list[str]:
    tasks = [c for c in df.columns if f"{c}_stderr" in df.columns]
    return sorted(tasks, key=lambda t: (FAMILY_ORDER.index(t) if t in FAMILY_ORDER else len(FAMILY_ORDER), t))


def markdown(df) -> str:
    """The reference format: one row per model, `0.694 ± 0.0016` per task."""
    tasks = task_columns(df)
    axes = [c for c in df.columns if c.startswith("axis:")]
    head = ["recipe", "method", "model", "params", *[a[5:] for a in axes], "dev CE", *tasks]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    for _, r in df.iterrows():
        cells = [str(r["recipe"]), str(r["method"]), f"{r['model']}" + (" (champion)" if r.get("champion") is True else ""),
                 f"{int(r['params']):,}", *[str(r[a]) for a in axes],
                 f"{r['dev_ce']:.4f}" if r["dev_ce"] == r["dev_ce"] and r["dev_ce"] is not None else "–"]
        for t in tasks:
            acc, se = r.get(t), r.get(f"{t}_stderr")
            cells.append(f"{acc:.3f} ± {se:.4f}" if acc == acc and acc is not None else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
