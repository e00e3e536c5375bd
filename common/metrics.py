"""The scores a task's result can have: the name `<task>.json` records as its `metric`, and how tables, plots and
terminal lines name it. Every reader of results takes its metrics from here, so a metric added to an evaluation is
known to all of them at once."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    label: str  # how tables, plots and terminal lines name it
    right_or_wrong: bool  # made of items that are each right or wrong: a 0..1 scale, and paired tests compare them


METRICS = {
    "accuracy": Metric("accuracy", True),
    "f1": Metric("F1", True),  # MRPC and QQP fine-tuned: class 1's F1
    "spearman": Metric("Spearman's rho", False),  # WUG: against human preferences
    "delta_r2": Metric("ΔR² ×100", False),  # reading: surprisal's gain in explained reading times
}


def metric_label(metric: str) -> str:
    """How a person reads `metric`; a name this version does not know (a result from a later one) as it is."""
    return METRICS[metric].label if metric in METRICS else metric


def header(metric: str) -> str:
    """What follows a task's name in a table's header: nothing for an accuracy, else the metric in parentheses."""
    return "" if metric == "accuracy" else f" ({metric_label(metric)})"
