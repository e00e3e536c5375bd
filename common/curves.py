"""Learning curves: a task's score against words seen, one line per model (eval curve, results collect)."""
from __future__ import annotations

from pathlib import Path

from common.metrics import metric_label
from common.paths import save_figure


def plot_curve(task: str, lines: dict[str, list[tuple[int, float | None]]], metric: str, png: Path) -> Path:
    """`lines`: label -> [(words seen, score)]; a missing score leaves a gap. Words on a log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = 0
    for label, points in sorted(lines.items()):
        points = sorted((w, s) for w, s in points if s is not None)
        if points:
            ax.plot([w for w, _ in points], [s for _, s in points], marker="o", label=label)
            drawn += 1
    if not drawn:  # every score null (a rho that is undefined at every milestone): say so instead of an empty legend
        ax.text(0.5, 0.5, "no finite score", ha="center", va="center", transform=ax.transAxes)
    ax.set_xscale("log")
    ax.set_xlabel("words seen")
    ax.set_ylabel(metric_label(metric))
    ax.set_title(task)
    ax.grid(True, which="both", alpha=0.3)
    if drawn:
        ax.legend(fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, png)


def curve_lines(curves: dict[str, dict[str, list[dict]]], task: str) -> tuple[dict[str, list], str]:
    """From {run name: eval/curve.json's "tasks"}: the lines of one task (a WML peer is `run/peer-i`) and its metric."""
    lines: dict[str, list] = {}
    metric = "accuracy"
    for name, per_task in curves.items():
        for row in per_task.get(task, []):
            label = f"{name}/{row['peer']}" if row.get("peer") else name
            lines.setdefault(label, []).append((row["words_seen"], row["score"]))
            metric = row.get("metric", metric)
    return lines, metric
