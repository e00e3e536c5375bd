"""python -m eval collate MODEL_OR_RUN --backend causal: the one JSON the BabyLM 2025 challenge collects.

It gathers the 2025 pipeline's predictions.json of every task (written by `python -m eval`
under the 2025 convention into eval/babylm2025/<task>/, fine-tuning into
eval/finetune/<task>/) into {"blimp", "blimp_supplement", "ewok", "entity_tracking",
"wug_adj", "wug_past", "comps", "reading", "aoa", "glue"} as the pipeline's
`collate_preds.py` does ("aoa": `python -m eval aoa`'s surprisals at every checkpoint), and
adds "fast_eval_results" when fast results of two or more milestone checkpoints exist
(<run>/milestones/chck_*/eval/fast/). Every task must be there, evaluated with the
given backend, with the item count of the size table for each subtask (full, and fast at
each checkpoint), and the checkpoints must be exactly one of the table's lists; else one
error line names the task, the subtask or checkpoint and both counts, and nothing is
written. Without AoA surprisals the file is written without "aoa", with a warning.
"""
from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import yaml

from common.errors import UserError, reading
from common.paths import check_replaceable, read_json, write_atomic
from eval.model import BACKENDS
from eval.one_model import check_same_model
from eval.release import SIZES
from eval.report import OFFICIAL_DIR

ZERO_SHOT = {"blimp": "blimp_filtered", "blimp_supplement": "blimp_supplement", "ewok": "ewok_filtered",
             "entity_tracking": "entity_tracking", "wug_adj": "wug_adj", "wug_past": "wug_past", "comps": "comps",
             "reading": "reading"}  # submission key -> our task name
FAST = ("blimp_filtered", "blimp_supplement", "ewok_filtered", "entity_tracking", "wug_adj", "wug_past", "reading")
GLUE = ("boolq", "mnli", "mrpc", "multirc", "qqp", "rte", "wsc")


def eval_dir_of(path: Path) -> Path:
    """<run>/eval for a run directory or its model/, else <model>/eval."""
    if (path / "run.json").is_file():
        return path / "eval"
    if path.name == "model" and (path.parent / "run.json").is_file():
        return path.parent / "eval"
    return path / "eval"


def model_folder(path: Path) -> Path:
    """The model a run directory or a model folder names: <run>/model, else the folder itself."""
    return path / "model" if (path / "run.json").is_file() else path


def _load(file: Path, task: str, how: str) -> dict:
    if not file.is_file():
        raise UserError(f"collate: task {task} is missing ({file} does not exist); {how}")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{file}: not valid JSON ({exc}); evaluate task {task} again") from None
    if not isinstance(data, dict) or not all(
        isinstance(v, dict) and isinstance(v.get("predictions"), list) for v in data.values()
    ):
        raise UserError(f"{file}: not the 2025 layout {{UID: {{\"predictions\": [...]}}}}; evaluate task {task} again")
    return data


def _check_backend(eval_dir: Path, task: str, backend: str) -> None:
    result = eval_dir / f"{task}.json"
    if result.is_file():
        got = read_json(result, f"the result of {task}", f"move it away and evaluate task {task} again",
                        {"backend": str})["backend"]
        if got != backend:
            raise UserError(f"collate: task {task} was evaluated with --backend {got} ({result}), not {backend}; "
                            f"collate with --backend {got} or evaluate again")


def _table(sizes: dict, section: str, task: str) -> dict:
    """The size table's counts for `task` in `section` (full, fast); a table without them is refused in one line."""
    counts = (sizes.get(section) or {}).get(task)
    if not isinstance(counts, dict):
        raise UserError(f"collate: the size table has no {section} counts for task {task}; give them in --sizes")
    return counts


def _check_sizes(data: dict, task: str, expected: dict, file: Path) -> None:
    if "*" not in expected:
        missing = sorted(set(expected) - {k.lower() for k in data})
        if missing:
            raise UserError(
                f"collate: task {task} has no predictions for subtask {missing[0]} ({file}); evaluate it on the "
                f"full data"
            )
    for key, value in data.items():
        want = expected.get("*", expected.get(key.lower()))
        got = len(value["predictions"])
        if want is None:
            raise UserError(f"collate: task {task} has a subtask {key} that the size table does not know ({file})")
        if got != want:
            raise UserError(
                f"collate: task {task}, subtask {key} has {got} predictions, the submission needs {want} ({file}); "
                f"evaluate it on the official data"
            )


def _check_checkpoints(what: str, names: list[str], lists: dict | None, where: Path, how: str) -> None:
    """`names` (checkpoints, repeats allowed) are exactly one of the size table's checkpoint lists (the one they
    share most with is named when they are not)."""
    if not isinstance(lists, dict) or not lists or not all(
        isinstance(v, list) and v and all(isinstance(c, str) for c in v) for v in lists.values()
    ):
        raise UserError(f"collate: the size table has no checkpoints section (track: [chck_1M, ...]) to check {what} "
                        f"({where}) against")
    found = set(names)
    track = max(lists, key=lambda name: (len(set(lists[name]) & found), -len(lists[name])))
    expected = lists[track]
    missing = [c for c in expected if c not in found]
    extra = [c for c in dict.fromkeys(names) if c not in expected]
    if missing or extra:
        have = f"nothing for checkpoint {missing[0]}" if missing else f"a checkpoint {extra[0]} it does not take"
        raise UserError(f"collate: {what} has {have} ({where}); the {track} submission needs {len(expected)} "
                        f"checkpoints, {expected[0]} .. {expected[-1]}: export every milestone "
                        f"(train.word_checkpoints) and {how}")


def _aoa(eval_dir: Path, backend: str, sizes: dict, how: str) -> dict | None:
    """The AoA surprisals (`python -m eval aoa`), checked against the size table's checkpoints and entries; None,
    with a warning, when there are none (the pipeline's collate_preds.py requires them)."""
    from eval.aoa import SURPRISALS, TASK

    file = eval_dir / OFFICIAL_DIR / TASK / SURPRISALS
    if not file.is_file():
        print(f"warning: collate: no AoA surprisals ({file}), so the file has no aoa entry, which the pipeline's "
              f"collate_preds.py requires; {how}")
        return None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{file}: not valid JSON ({exc}); {how}") from None
    rows = data.get("results") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "step" in r for r in rows):
        raise UserError(f"{file}: not the pipeline's {{\"metadata\", \"results\": [{{\"step\", ...}}]}}; {how}")
    got = (data.get("metadata") or {}).get("backend", backend)
    if got != backend:
        raise UserError(f"collate: task aoa was made with --backend {got} ({file}), not {backend}; collate with "
                        f"--backend {got} or {how}")
    want = (sizes.get("aoa") or {}).get("entries") if isinstance(sizes.get("aoa"), dict) else None
    if not isinstance(want, int):
        raise UserError(f"collate: the size table has no aoa section (entries: N) to check {file} against")
    steps = [str(r["step"]) for r in rows]
    _check_checkpoints("task aoa", steps, sizes.get("checkpoints"), file, how)
    counts = collections.Counter(steps)
    wrong = next((c for c in counts if counts[c] != want), None)
    if wrong:
        raise UserError(f"collate: task aoa, checkpoint {wrong} has {counts[wrong]} entries, the submission "
                        f"needs {want} ({file}); {how} with the official cdi_childes.json")
    return data


def _check_fast(milestone: Path, backend: str, sizes: dict, how: str) -> None:
    """A milestone's fast predictions are all there, of `backend`, with the table's fast counts (as collate_preds
    checks each revision's)."""
    fast_dir = milestone / "eval" / "fast"
    for task in FAST:
        file = fast_dir / OFFICIAL_DIR / task / "predictions.json"
        data = _load(file, f"{task} (fast, {milestone.name})", how)
        _check_backend(fast_dir, task, backend)
        _check_sizes(data, f"{task} (fast, {milestone.name})", _table(sizes, "fast", task), file)


def _fast_metrics(eval_dir: Path) -> dict:
    """One checkpoint's fast scores, as collate_preds.get_revision_fast_eval_metrics reports them (fractions)."""
    out = {}
    for task in FAST:
        result = eval_dir / f"{task}.json"
        if not result.is_file():
            raise UserError(
                f"collate: fast task {task} is missing at {result}; run python -m eval "
                f"{eval_dir.parent.parent / 'model'} "
                f"--suite babylm2025-fast"
            )
        key = next(k for k, v in ZERO_SHOT.items() if v == task)
        with reading(result, f"the fast result of {task}", "move it away and evaluate that checkpoint's fast suite "
                                                          "again"):
            r = json.loads(result.read_text(encoding="utf-8"))
            if task == "reading":
                out[key] = {"spr": _frac(r.get("self_paced_reading")), "rt": _frac(r.get("eye_tracking"))}
            elif r.get("metric") == "spearman":
                out[key] = {"wug": r.get("score")}
            else:
                out[key] = {name: s["accuracy"] for name, s in r["subtasks"].items()}
    return out


def _frac(x):
    return None if x is None else x / 100


def fast_eval_results(milestones: list[Path]) -> dict:
    """The fast scores of each milestone model folder (in the order given), as collate_preds reports them."""
    fast: dict = {key: [] for key in ZERO_SHOT if ZERO_SHOT[key] in FAST}
    for m in milestones:
        for key, value in _fast_metrics(m / "eval" / "fast").items():
            fast[key].append(value)
    return fast


def collate(path: Path, backend: str, sizes_file: Path, results: Path | None = None) -> dict:
    """The submission of the model or run at `path` from its results folder (`results`, where `python -m eval --out`
    wrote them, else its eval/)."""
    eval_dir = results or eval_dir_of(path)
    to_results = f" --out {results}" if results else ""
    try:
        sizes = yaml.safe_load(sizes_file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"--sizes {sizes_file}: not readable YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(sizes, dict):
        raise UserError(f"--sizes {sizes_file}: holds no table (full:, fast:, checkpoints:, aoa:)")
    out: dict = {}
    for key, task in ZERO_SHOT.items():
        file = eval_dir / OFFICIAL_DIR / task / "predictions.json"
        data = _load(file, task, f"run python -m eval {path} --suite babylm2025{to_results} (or --tasks {task})")
        _check_backend(eval_dir, task, backend)
        _check_sizes(data, task, _table(sizes, "full", task), file)
        out[key] = data
    run = eval_dir_of(path).parent
    aoa = _aoa(eval_dir, backend, sizes, f"run python -m eval aoa {run} --words cdi_childes.json{to_results}")
    if aoa is not None:
        out["aoa"] = aoa
    out["glue"] = {}
    for task in GLUE:
        file = eval_dir / "finetune" / task / "predictions.json"
        data = _load(file, task, f"run python -m eval finetune {path} --tasks {task}{to_results}")
        _check_sizes(data, task, _table(sizes, "full", task), file)
        out["glue"].update(data)
    check_same_model([eval_dir / f"{task}.json" for task in (*ZERO_SHOT.values(), *GLUE)], model_folder(path))
    from eval.curve import milestones as milestone_list

    evaluated = [m for _, m in milestone_list(run, required=False) if (m / "eval" / "fast").is_dir()]
    if len(evaluated) >= 2:
        how = f"run python -m eval curve {run} --suite babylm2025-fast"
        _check_checkpoints("fast_eval_results", [m.name for m in evaluated], sizes.get("checkpoints"),
                           run / "milestones", how)
        for milestone in evaluated:
            _check_fast(milestone, backend, sizes, how)
        out["fast_eval_results"] = fast_eval_results(evaluated)
    return out


def submission_file(path: Path, backend: str, results: Path | None) -> Path:
    """Where the submission of the model or run at `path` goes by default: its results folder."""
    return (results or eval_dir_of(path)) / f"all_full_preds_and_fast_scores_{backend}.json"


def is_submission(data) -> bool:
    """Whether `data` (a JSON value) is what `collate` writes."""
    return isinstance(data, dict) and set(ZERO_SHOT) | {"glue"} <= set(data)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m eval collate", description=__doc__.split("\n\n")[1])
    p.add_argument(
        "model", help="a run directory, its model/ folder, or a model folder evaluated with --suite babylm2025"
    )
    p.add_argument("--backend", choices=BACKENDS, required=True, help="the backend the tasks were evaluated with")
    p.add_argument("--sizes", default=str(SIZES), help="the item-count table (default: the official 2025 counts)")
    p.add_argument("--results", help="the folder `python -m eval ... --out DIR` wrote the results to (default: the "
                                      "run's or model's eval/)")
    p.add_argument("--out", help="the submission file (default: all_full_preds_and_fast_scores_<backend>.json in the "
                                 "results folder)")
    args = p.parse_args(argv)
    path = Path(args.model)
    if not path.is_dir():
        raise UserError(f"collate: {path} is not a folder; give a run directory or an evaluated model folder")
    sizes = Path(args.sizes)
    if not sizes.is_file():
        raise UserError(f"--sizes {sizes}: no such file")
    results = Path(args.results) if args.results else None
    if results is not None and not results.is_dir():
        raise UserError(f"--results {results}: no such folder; give the folder `python -m eval ... --out` wrote")
    target = Path(args.out) if args.out else submission_file(path, args.backend, results)
    check_replaceable(target, is_submission, "--out" if args.out else "collate",
                      "a submission file written by python -m eval collate")
    data = collate(path, args.backend, sizes, results)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, json.dumps(data) + "\n")
    print(f"{target}: {', '.join(data)}")
    return 0
