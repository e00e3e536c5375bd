"""PNG plots of a collection: per-task accuracy bars, training curves, and a heatmap for two-axis grids."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from common.paths import read_jsonl, save_figure  # noqa: E402
from results.collect import task_columns  # noqa: E402


def _label(row) -> str:
    return f"{row['recipe']} {row['model']}" if row["method"].startswith("wml") else str(row["recipe"])


def task_bars(df, out: Path) -> Path | None:
    tasks = task_columns(df)
    if not tasks or df.empty:
        return None
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(df) * len(tasks) / 2 + 2), 4))
    width = 0.8 / len(df)
    for i, (_, row) in enumerate(df.iterrows()):
        xs = [t + i * width for t in range(len(tasks))]
        ax.bar(xs, [row[t] for t in tasks], width, yerr=[row[f"{t}_stderr"] for t in tasks], label=_label(row), capsize=2)
    ax.set_xticks([t + 0.4 - width / 2 for t in range(len(tasks))], tasks)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.axhline(0.5, color="grey", lw=0.5, ls="--")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, out)


def training_curves(df, out: Path) -> Path | None:
    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = 0
    for run in dict.fromkeys(df["run"]):
        rows = [r for r in read_jsonl(Path(run) / "metrics.jsonl") if isinstance(r.get("loss"), (int, float))]
        if rows:
            ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label=Path(run).name)
            drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, out)


def grid_heatmap(df, metric: str, out: Path) -> Path | None:
    """Two grid axes -> a heatmap of `metric` (dev_ce or a task's accuracy); None for other grids."""
    axes = [c for c in df.columns if c.startswith("axis:") and df[c].notna().any()]
    if len(axes) != 2 or metric not in df.columns:
        return None
    table = df.pivot_table(index=axes[0], columns=axes[1], values=metric, aggfunc="mean")
    fig, ax = plt.subplots(figsize=(1.2 * table.shape[1] + 2, 1.0 * table.shape[0] + 1.5))
    image = ax.imshow(table.values, cmap="viridis_r" if metric == "dev_ce" else "viridis")
    ax.set_xticks(range(table.shape[1]), [str(c) for c in table.columns])
    ax.set_yticks(range(table.shape[0]), [str(i) for i in table.index])
    ax.set_xlabel(axes[1][5:])
    ax.set_ylabel(axes[0][5:])
    for (i, j), v in __import__("numpy").ndenumerate(table.values):
        ax.text(j, i, f"{v:.3f}", ha="center", va="center", color="white", fontsize=8)
    fig.colorbar(image, ax=ax, label=metric)
    fig.tight_layout()
    return save_figure(fig, out)
