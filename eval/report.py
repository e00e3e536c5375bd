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
from pathlib import Path

import numpy as np

from common.errors import UserError
from common.paths import write_atomic
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


def summarise(task: Task, right: np.ndarray, tied: np.ndarray, bad: np.ndarray) -> dict:
    subtasks = {}
    names = np.array([it.subtask for it in task.items])
    for name in task.subtasks:
        sel = names == name
        acc, se = mean_stderr(right[sel])
        subtasks[name] = {"n": int(sel.sum()), "accuracy": acc, "stderr": se, "ties": int(tied[sel].sum()),
                          "non_finite": int(bad[sel].sum())}
    accs = [s["accuracy"] for s in subtasks.values()]
    ses = [s["stderr"] for s in subtasks.values()]
    family_se = math.sqrt(sum(se * se for se in ses)) / len(ses) if all(math.isfinite(s) for s in ses) else float("nan")
    return {"accuracy": float(np.mean(accs)), "stderr": family_se, "n_items": len(task.items),
            "n_subtasks": len(subtasks), "ties": int(tied.sum()), "non_finite": int(bad.sum()), "subtasks": subtasks}


def finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def json_safe(obj):
    """`obj` with every non-finite float as None: result files are valid JSON (which has no NaN)."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return finite_or_none(obj) if isinstance(obj, float) else obj


def write_results(out_dir: Path, task: Task, scores: np.ndarray, summary: dict, meta: dict) -> dict[str, Path]:
    """eval/<task>.json, eval/pairs/<task>.jsonl and this task's part of eval/predictions.json (each written atomically)."""
    pairs_dir = out_dir / "pairs"
    pairs_dir.mkdir(parents=True, exist_ok=True)
    pred, right, tied, bad = decide(scores, np.array([it.correct for it in task.items]))
    result_file = out_dir / f"{task.name}.json"
    write_atomic(result_file, json.dumps(json_safe({"task": task.name, "description": task.spec.description, **meta,
                                                    "data": task.origin, **summary}), indent=2, allow_nan=False) + "\n")
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
    predictions_file = out_dir / "predictions.json"
    try:
        merged = json.loads(predictions_file.read_text(encoding="utf-8")) if predictions_file.is_file() else {}
    except json.JSONDecodeError:
        raise UserError(f"{predictions_file}: not valid JSON, so this task's predictions cannot be added; move it away and re-run") from None
    per_sub: dict[str, list] = {}
    for it, p in zip(task.items, pred):
        if p < 0:
            chosen = None  # a non-finite score chooses nothing
        else:
            chosen = " " + it.choices[p] if task.spec.share_text else task.spec.choices[p]
        per_sub.setdefault(it.subtask, []).append({"id": f"{it.subtask}_{it.index}", "pred": chosen})
    merged[task.name] = {name: {"predictions": rows} for name, rows in per_sub.items()}
    write_atomic(predictions_file, json.dumps(merged) + "\n")
    return {"result": result_file, "pairs": pairs_file, "predictions": predictions_file}


def table(rows: list[tuple[str, dict]]) -> str:
    """The one-screen summary: one line per family, accuracy ± stderr, items, ties."""
    head = f"{'task':<20} {'accuracy':>17} {'items':>7} {'subtasks':>8} {'ties':>6} {'non-finite':>10}"
    out = [head, "-" * len(head)]
    for name, s in rows:
        out.append(f"{name:<20} {s['accuracy']:>8.4f} ± {s['stderr']:<6.4f} {s['n_items']:>7} {s['n_subtasks']:>8} {s['ties']:>6} "
                   f"{s.get('non_finite', 0):>10}")
    return "\n".join(out)
