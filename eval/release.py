"""The BabyLM release's item counts and how a task read from a folder differs from them.

`babylm2025_sizes.yaml` holds what the 2025 submission must hold: items per task and subtask (UID), for the full
evaluation and for each checkpoint's fast one. `python -m eval collate` refuses a submission that differs. A plain
`python -m eval` scores whatever the folder holds (a subset for a quick look is fine), but a folder that lacks some of
the release's files or lines (a download cut short, a few files copied) would otherwise give a number that reads as
the release's score: `gap` says how it differs, and the evaluation prints it and records it in `<task>.json`.
"""
from __future__ import annotations

import functools
from collections import Counter

import yaml

from common.paths import REPO

SIZES = REPO / "eval" / "babylm2025_sizes.yaml"


@functools.cache
def _table() -> dict:
    return yaml.safe_load(SIZES.read_text(encoding="utf-8"))


def expected(task: str, fast: bool) -> dict[str, int] | None:
    """The release's items per subtask (lower-cased UID, as the 2025 pipeline compares them) of `task`'s full or fast
    evaluation, or None for a task the table does not hold (the demo's, the unfiltered BLiMP). A fast count given for
    every subtask ("*") applies to each subtask of the full evaluation."""
    table = _table()
    counts = (table.get("fast" if fast else "full") or {}).get(task)
    if not isinstance(counts, dict):
        return None
    if "*" in counts:
        return {uid.lower(): counts["*"] for uid in (table.get("full") or {}).get(task) or {}}
    return {uid.lower(): n for uid, n in counts.items()}


def gap(task) -> str | None:
    """How the items of `task` (an `eval.tasks.Task`) differ from the release's, in words, or None where they are the
    release's (or the table does not hold the task). The reading task's items are its CSV's rows, one subtask."""
    if task.spec.kind == "reading":
        return gap_in(task.name, task.fast, Counter({task.name: len(task.table)}))
    return gap_in(task.name, task.fast, Counter(item.subtask.lower() for item in task.items))


def gap_in(task: str, fast: bool, got: Counter) -> str | None:
    """How `got`, items per subtask (lower-cased UID) of `task`, differs from the release's, or None (the same, or a
    task the table does not hold). A fine-tuning task is one subtask of its own name: its validation items."""
    want = expected(task, fast)
    if want is None:
        return None
    missing = sorted(uid for uid in want if uid not in got)
    unknown = sorted(uid for uid in got if uid not in want)
    wrong = [(uid, got[uid], want[uid]) for uid in want if uid in got and got[uid] != want[uid]]
    if not (missing or unknown or wrong):
        return None
    if len(want) == 1 and not (missing or unknown):  # one subtask (WUG, reading, a fine-tuning task's)
        return f"{sum(got.values()):,} of the release's {sum(want.values()):,} items"

    def first(names: list) -> str:
        return f"{names[0]}" + (f" and {len(names) - 1} more" if len(names) > 1 else "")

    parts = [f"{len(want) - len(missing)} of the release's {len(want)} subtasks ({sum(got.values()):,} of its "
             f"{sum(want.values()):,} items)"]
    if missing:
        parts.append(f"missing {first(missing)}")
    if wrong:
        uid, n, m = wrong[0]
        parts.append(f"{uid} has {n:,} item{'s' if n != 1 else ''} where the release has {m:,}"
                     + (f" ({len(wrong) - 1} more such)" if len(wrong) > 1 else ""))
    if unknown:
        parts.append(f"{first(unknown)} not among the release's subtasks")
    return "; ".join(parts)


def note(task: str, origin: str, how: str) -> str:
    """The line an evaluation prints for a task whose items (from `origin`) differ from the release's as `how` says."""
    return (f"note: {task}: {origin} holds {how}: scored as it is, which is not the release's {task} score (recorded "
            "as partial_release in its result)")
