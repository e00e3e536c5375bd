"""From per-choice scores to decisions, accuracies with standard errors, and the result files.

A choice wins when it has the highest score; ties go to the first choice, as
lm-evaluation-harness's `np.argmax` does, and are counted (an untrained model ties often).
An item with a non-finite score (NaN or infinite: a broken model) is wrong whatever its
other scores, has no prediction (-1), is counted apart (`non_finite`), and its scores are
written as null (JSON has no NaN). The harness's argmax would pick the first choice of an
all-NaN item and count a broken model as perfect.
A subtask's accuracy is the mean over its items with the harness's standard error
(sample standard deviation / sqrt(n)); a family's accuracy is the unweighted mean of its
subtasks, and its standard error that of a mean of independent estimates,
sqrt(sum se_i^2) / K.
"""
from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path

import numpy as np

from common.errors import UserError
from common.metrics import metric_label
from common.locks import file_lock
from common.paths import read_json, write_atomic
from eval.tasks import Task


def decide(scores: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scores [items, choices] -> (predicted index, right?, tied?, non-finite?) per item.

    An item with any non-finite score is never right and has no prediction (-1)."""
    bad = ~np.isfinite(scores).all(axis=1)
    safe = np.where(bad[:, None], 0.0, scores)
    pred = np.where(bad, -1, safe.argmax(axis=1))  # first maximum on ties
    tied = ~bad & ((safe == safe.max(axis=1, keepdims=True)).sum(axis=1) > 1)
    return pred, ~bad & (pred == correct), tied, bad


def mean_stderr(right: np.ndarray) -> tuple[float, float]:
    n = len(right)
    acc = float(right.mean()) if n else float("nan")
    se = float(np.std(right.astype(np.float64), ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return acc, se


def _accuracies(task: Task, right: np.ndarray, tied: np.ndarray, bad: np.ndarray) -> dict:
    subtasks = {}
    names = np.array([it.subtask for it in task.items])
    for name in task.subtasks:
        sel = names == name
        acc, se = mean_stderr(right[sel])
        subtasks[name] = {"n": int(sel.sum()), "accuracy": acc, "stderr": se, "ties": int(tied[sel].sum()),
                          "non_finite": int(bad[sel].sum())}
    if task.spec.average == "files":  # entity tracking: each file's UIDs averaged, then the files (run.py)
        files = sorted({it.file for it in task.items})
        of_file = {it.subtask: it.file for it in task.items}
        groups = [[n for n in subtasks if of_file[n] == f] for f in files]
    else:
        groups = [[n] for n in subtasks]
    accs = [np.mean([subtasks[n]["accuracy"] for n in g]) for g in groups]
    ses = [math.sqrt(sum(subtasks[n]["stderr"] ** 2 for n in g)) / len(g) for g in groups]
    family_se = math.sqrt(sum(se * se for se in ses)) / len(ses) if all(math.isfinite(s) for s in ses) else float("nan")
    score = float(np.mean(accs))
    return {"metric": "accuracy", "score": score, "accuracy": score, "stderr": family_se, "subtasks": subtasks}


def p_first(scores: np.ndarray) -> np.ndarray:
    """softmax over an item's choice scores, the first choice's probability (WUG: the model's ratio)."""
    shifted = scores - scores.max(axis=1, keepdims=True)
    return np.exp(shifted[:, 0]) / np.exp(shifted).sum(axis=1)


def _spearman(task: Task, scores: np.ndarray, bad: np.ndarray) -> dict:
    """Spearman's rho of P(first choice) against the human values; null when any item is non-finite (no partial rho)."""
    from scipy.stats import ConstantInputWarning, spearmanr

    if bad.any():
        return {"metric": "spearman", "score": float("nan"), "stderr": float("nan"), "subtasks": {}}
    with warnings.catch_warnings():  # a constant input is reported below, in one line of ours
        warnings.simplefilter("ignore", ConstantInputWarning)
        rho = float(spearmanr(p_first(scores), [it.target for it in task.items])[0])
    out = {"metric": "spearman", "score": rho, "stderr": float("nan"), "subtasks": {}}
    if not math.isfinite(rho):  # the loader refuses constant targets, so the model's P(first) is constant
        out["undefined"] = "the model gives every item the same P(first), so Spearman's rho is undefined"
    return out


def summarise(task: Task, scores: np.ndarray, right: np.ndarray, tied: np.ndarray, bad: np.ndarray) -> dict:
    """The task's score (its metric), per-subtask accuracies, counts of items, ties and non-finite items."""
    body = _spearman(task, scores, bad) if task.spec.metric == "spearman" else _accuracies(task, right, tied, bad)
    return {**body, "n_items": len(task.items), "n_subtasks": len(task.subtasks), "ties": int(tied.sum()),
            "non_finite": int(bad.sum())}


def finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def json_safe(obj):
    """`obj` with every non-finite float as None: result files are valid JSON (which has no NaN)."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return finite_or_none(obj) if isinstance(obj, float) else obj


PREDICTIONS_LOCK = ".predictions.json.lock"  # held while a task's predictions are added to eval/predictions.json


def read_predictions(out_dir: Path) -> dict:
    """eval/predictions.json (every task's predictions, to which a task's are added), {} when there is none; one that
    cannot be read is one error line (checked before scoring, and again as a task's are added)."""
    file = out_dir / "predictions.json"
    if not file.is_file():
        return {}
    fix = "move it away (or pass --out DIR) and run the same command again"
    data = read_json(file, "the predictions of the tasks evaluated there", fix)
    other = next((key for key, value in data.items() if not isinstance(value, dict)), None)
    if other is not None:  # {task: {subtask: {"predictions": [...]}}}: a file of the user's, or one damaged
        raise UserError(f"{file}: is not the predictions of the tasks evaluated there ({other!r} holds a "
                        f"{type(data[other]).__name__}), and adding a task's would change it; {fix}")
    return data


def write_results(out_dir: Path, task: Task, scores: np.ndarray, summary: dict, meta: dict,
                  official: bool = False) -> dict[str, Path]:
    """eval/pairs/<task>.jsonl, this task's part of eval/predictions.json, with `official` the 2025 pipeline's
    predictions (`write_official`), then eval/<task>.json (`write_result`), each written atomically."""
    pairs_dir = out_dir / "pairs"
    pairs_dir.mkdir(parents=True, exist_ok=True)
    pred, right, tied, bad = decide(scores, np.array([it.correct for it in task.items]))
    lines = []
    for it, sc, p, r, t, b in zip(task.items, scores, pred, right, tied, bad):
        row = {"id": f"{it.subtask}_{it.index}", "subtask": it.subtask, "index": it.index,
               "scores": [finite_or_none(x) for x in sc], "pred": int(p), "correct": bool(r), "tie": bool(t)}
        if b:
            row["non_finite"] = True
        if task.spec.share_text:
            row["choices"] = it.choices
            if it.context:
                row["context"] = it.context
        lines.append(json.dumps(row, allow_nan=False))
    pairs_file = pairs_dir / f"{task.name}.jsonl"
    write_atomic(pairs_file, "\n".join(lines) + "\n")
    # BabyLM-style predictions: {task: {subtask: {"predictions": [{"id", "pred"}]}}}, pred = the chosen continuation
    # text as the harness logs it; for data that may not be shared in plain text (EWoK) the chosen field's name instead.
    per_sub: dict[str, list] = {}
    for it, p in zip(task.items, pred):
        if p < 0:
            chosen = None  # a non-finite score chooses nothing
        else:
            chosen = " " + it.choices[p] if task.spec.share_text else task.spec.choices[p]
        per_sub.setdefault(it.subtask, []).append({"id": f"{it.subtask}_{it.index}", "pred": chosen})
    predictions_file = out_dir / "predictions.json"
    # The file holds every task's: two evaluations of other tasks into one folder (two GPUs, two jobs) take turns to
    # read, add and write it, or the second would write the file it read before the first added its task.
    with file_lock(out_dir / PREDICTIONS_LOCK):
        merged = read_predictions(out_dir)
        merged[task.name] = {name: {"predictions": rows} for name, rows in per_sub.items()}
        write_atomic(predictions_file, json.dumps(merged) + "\n")
    files = {"pairs": pairs_file, "predictions": predictions_file}
    if official:
        files["official"] = write_official(out_dir, task, scores)
    files["result"] = write_result(out_dir, task, {**meta, "data": task.origin, **summary})
    return files


def write_result(out_dir: Path, task: Task, record: dict) -> Path:
    """eval/<task>.json, written after every other file of the task: a result file says its task's per-item and
    prediction files are whole, for --keep-scored, a learning curve, a grid and `results collect`, which take a task
    with one for scored (it used to be written first, and a command stopped right after it left a task without them
    that was taken for scored)."""
    result_file = out_dir / f"{task.name}.json"
    write_atomic(result_file, json.dumps(json_safe({"task": task.name, "description": task.spec.description, **record}),
                                         indent=2, allow_nan=False) + "\n")
    return result_file


OFFICIAL_DIR = (
    "babylm2025"  # eval/babylm2025/<task>/predictions.json: the 2025 pipeline's layout, read by `eval collate`
)


def write_official(out_dir: Path, task: Task, scores: np.ndarray) -> Path:
    """The 2025 pipeline's predictions.json for one task: {UID: {"predictions": [{"id": "<UID>_<n>", "pred": the chosen
    completion's text}]}} in file order, WUG with "prob" (P(first sentence)). A non-finite item's pred is null.
    EWoK's text is written here, as the pipeline writes it, because the submission needs it: keep this folder
    private."""
    pred, _, _, bad = decide(scores, np.array([it.correct for it in task.items]))
    probs = p_first(np.where(bad[:, None], 0.0, scores)) if task.spec.metric == "spearman" else None
    per_uid: dict[str, list] = {}
    for k, (it, choice) in enumerate(zip(task.items, pred)):
        row = {"id": f"{it.subtask}_{it.index}", "pred": None if choice < 0 else it.completions[choice]}
        if probs is not None:
            row["prob"] = None if bad[k] else float(probs[k])
        per_uid.setdefault(it.subtask, []).append(row)
    file = out_dir / OFFICIAL_DIR / task.name / "predictions.json"
    file.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(file, json.dumps({uid: {"predictions": rows} for uid, rows in per_uid.items()}) + "\n")
    return file


def timing(started: float, n_items: int) -> dict:
    """The task's scoring time since `started` (time.perf_counter()) and its items per second, for its result."""
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 3), "items_per_second": round(n_items / max(seconds, 1e-9), 1)}


def table(rows: list[tuple[str, dict]]) -> str:
    """The one-screen summary: one line per family, its metric's value (± stderr for accuracies), items, ties."""
    head = f"{'task':<20} {'metric':<14} {'score':>17} {'items':>7} {'subtasks':>8} {'ties':>6} {'non-finite':>10}"
    out = [head, "-" * len(head)]
    for name, s in rows:
        score, se = s.get("score", s.get("accuracy")), s.get("stderr")
        value = "null" if score is None or not math.isfinite(score) else f"{score:.4f}"
        err = f"± {se:<6.4f}" if se is not None and math.isfinite(se) else " " * 8
        items = f"{s['n_items']}{' †' if s.get('partial_release') else ''}"
        out.append(
            f"{name:<20} {metric_label(s.get('metric', 'accuracy')):<14} {value:>8} {err} {items:>7} "
            f"{s['n_subtasks']:>8} {s['ties']:>6} {s.get('non_finite', 0):>10}"
        )
    part = [name for name, s in rows if s.get("partial_release")]
    if part:
        out.append(f"† part of the release's items, not its score: {', '.join(part)} (partial_release in the result)")
    return "\n".join(out)
