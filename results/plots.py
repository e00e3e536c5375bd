"""PNG plots of a collection: per-task accuracy bars, dev and training CE curves, each run's loss terms, a heatmap for
two-axis grids, learning curves, and WML's peer weights."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from common.paths import read_jsonl, save_figure, write_atomic  # noqa: E402
from common.metrics import METRICS  # noqa: E402
from results.collect import metric_of, task_columns  # noqa: E402


def _label(row) -> str:
    return f"{row['recipe']} {row['model']}" if row["method"].startswith("wml") else str(row["recipe"])


def task_bars(df, out: Path) -> Path | None:
    """One panel per metric (common.metrics): accuracies (0..1, chance line), F1 (0..1), Spearman's rho, ΔR² ×100;
    each bar one model."""
    tasks = task_columns(df)
    if not tasks or df.empty:
        return None
    panels = [(m, [t for t in tasks if metric_of(df, t) == m]) for m in METRICS]
    panels = [(m, ts) for m, ts in panels if ts]
    widths = [max(3.0, 1.2 * len(df) * len(ts) / 2 + 1) for _, ts in panels]
    fig, axes = plt.subplots(1, len(panels), figsize=(sum(widths) + 1, 4), width_ratios=widths, squeeze=False)
    width = 0.8 / len(df)
    for ax, (metric, group) in zip(axes[0], panels):
        for i, (_, row) in enumerate(df.iterrows()):
            xs = [t + i * width for t in range(len(group))]
            errors = [row[f"{t}_stderr"] if metric == "accuracy" else 0 for t in group]
            ax.bar(xs, [row[t] for t in group], width, yerr=errors, label=_label(row), capsize=2)
        ax.set_xticks([t + 0.4 - width / 2 for t in range(len(group))], group)
        ax.set_ylabel(METRICS[metric].label)
        if METRICS[metric].right_or_wrong:
            ax.set_ylim(0, 1)
        if metric == "accuracy":
            ax.axhline(0.5, color="grey", lw=0.5, ls="--")
        else:
            ax.axhline(0, color="grey", lw=0.5)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, out)


def _x(row: dict):
    return row.get("words_seen", row.get("step"))


def _ce_term(row: dict, method: str):
    """The cross-entropy part of a training row: the loss of a run trained alone, `loss/ce` of a distilled one; a
    WML row has none (each peer's part mixes CE and KL)."""
    value = row.get("loss") if method == "train" else row.get("loss/ce") if method.startswith("kd") else None
    return value if isinstance(value, (int, float)) else None


def training_curves(df, out: Path) -> Path | None:
    """One figure, one shared x axis (words seen): every run's dev cross-entropy (WML: the ω-weighted ensemble's), and
    below it the cross-entropy term of its training loss. Never the training loss itself, which sums different terms
    in different methods."""
    fig, (dev, train) = plt.subplots(2, 1, figsize=(7.5, 6.5), sharex=True)
    drawn = 0
    methods = dict(zip(df["run"], df["method"]))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (run, method) in enumerate(methods.items()):
        colour = colours[i % len(colours)]  # one colour per run in both panels
        rows = read_jsonl(Path(run) / "metrics.jsonl")
        points = [
            (_x(r), r["eval_loss"]) for r in rows if isinstance(r.get("eval_loss"), (int, float)) and not r.get("final")
        ]
        ce = [(_x(r), _ce_term(r, method)) for r in rows if _ce_term(r, method) is not None]
        label = Path(run).name + (" (ensemble)" if method.startswith("wml") else "")
        if points:
            dev.plot(*zip(*points), marker=".", label=label, color=colour)
            drawn += 1
        if ce:
            train.plot(*zip(*ce), label=Path(run).name, lw=1, color=colour)
            drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    dev.set_ylabel("dev cross-entropy")
    dev.legend(fontsize=7)
    train.set_ylabel("training CE term")
    train.set_xlabel("words seen")
    train.set_title("cross-entropy term of the training loss (KD terms left out; WML has none)", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out)


def term_curves(run: Path, out: Path) -> Path | None:
    """One run's training loss and each of its terms (`loss/<term>`: distillation terms, WML peers) against words seen;
    None for a run whose loss has no terms."""
    rows = [r for r in read_jsonl(run / "metrics.jsonl") if isinstance(r.get("loss"), (int, float))]
    keys = sorted({k for r in rows for k in r if k.startswith("loss/")})
    if not keys:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in ["loss", *keys]:
        points = [(_x(r), r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        ax.plot(*zip(*points), label="loss (weighted sum)" if key == "loss" else key[5:], lw=2 if key == "loss" else 1)
    ax.set_xlabel("words seen")
    ax.set_ylabel("training loss and its terms (unweighted)")
    ax.set_title(run.name)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, out)


def omega_curves(run: Path, out: Path) -> Path | None:
    """A WML run's peer weights ω against words seen (metrics.jsonl `omega/<i>`); None for other runs and for one peer
    (a solo twin, whose ω stays 1)."""
    rows = [r for r in read_jsonl(run / "metrics.jsonl") if "omega/0" in r and "loss" in r]
    if not rows or "omega/1" not in rows[0]:
        return None
    k = len([key for key in rows[0] if key.startswith("omega/")])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for i in range(k):
        ax.plot([_x(r) for r in rows], [r[f"omega/{i}"] for r in rows], label=f"peer {i}")
    ax.set_xlabel("words seen")
    ax.set_ylabel("ω (peer weight)")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title(f"{run.name}: peer weights")
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


def learning_curves(df, out_prefix: Path) -> list[Path]:
    """One PNG per task that some run has a learning curve for (eval/curve.json, from `python -m eval curve` or a
    grid's tasks_per_milestone): score against words seen, one line per run (and WML peer), each ending at the
    final model's own score on that task (its words seen, when later than its last milestone)."""
    import json

    from common.curves import curve_lines, plot_curve
    from common.errors import summary

    curves = {}
    for run in dict.fromkeys(df["run"]):
        file = Path(run) / "eval" / "curve.json"
        if not file.is_file():
            continue
        try:  # the run's own results stand; a damaged curve is left out of the plots, and said
            per_task = json.loads(file.read_text(encoding="utf-8"))["tasks"]
            for task in per_task:
                curve_lines({"": per_task}, task)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            print(f"warning: {file}: unreadable ({summary(exc)}); its learning curve is left out of the plots")
            continue
        curves[Path(run).name] = per_task
    tasks = sorted({task for per_task in curves.values() for task in per_task})
    made = []
    for task in tasks:
        lines, metric = curve_lines(curves, task)
        png = out_prefix.with_name(f"{out_prefix.name}-curve-{task}.png")
        made.append(plot_curve(task, with_final_scores(lines, df, task), metric, png))
    return made


def with_final_scores(lines: dict[str, list], df, task: str) -> dict[str, list]:
    """`lines` (label -> [(words seen, score)] of the milestones; a WML peer is `run/peer-i`) with each model's final
    score on `task` appended, at its run's words seen, when that is later than its last milestone."""
    out = {label: list(points) for label, points in lines.items()}
    for row in df.to_dict("records"):
        run = Path(row["run"])
        label = run.name if row["eval_dir"] == str(run / "eval") else f"{run.name}/{Path(row['eval_dir']).name}"
        score, words = row.get(task), row.get("words_seen")
        if out.get(label) and _finite(score) and _finite(words) and words > max(w for w, _ in out[label]):
            out[label].append((int(words), score))
    return out


def _finite(value) -> bool:
    import math

    return isinstance(value, (int, float)) and math.isfinite(value)


def write_collection(roots: list[Path], out: Path, name: str, metric: str, users_folder: bool = False) -> None:
    """`python -m results collect`: the table (CSV, markdown) and every plot of the runs under `roots`, into `out`.
    One collection of a name writes into a folder at a time (`.<name>.collect.lock`); in a folder of the user's
    (`users_folder`), no file it did not write is replaced (results.written.check_free, again under the lock)."""
    from common.errors import UserError
    from common.locks import FolderLock, holding
    from results.collect import collect
    from results.written import begin, check_free

    df, incomplete = collect(roots)
    for item in incomplete:
        print(f"incomplete: {item.run}: {item.reason}")
    if df.empty:
        raise UserError(
            f"{', '.join(map(str, roots))}: no finished run (DONE) to collect"
            + (f"; {len(incomplete)} incomplete" if incomplete else "")
        )
    scores = ["dev_ce", *task_columns(df)]
    if metric not in scores:
        from common.config import suggest

        raise UserError(f"--metric: {metric!r} is not a score of these runs{suggest(metric, scores)}; give dev_ce or "
                        f"a task they were evaluated on: {', '.join(scores[1:]) or 'none'}")
    out.mkdir(parents=True, exist_ok=True)
    with holding(FolderLock(out, f".{name}.collect.lock"), out, f"results collect is writing the collection {name!r} "
                 "there", "let it end, then run the same command again"):
        if users_folder:
            check_free(out, name)
        begin(out, name)
        write_files(df, incomplete, out, name, metric)


def write_files(df, incomplete: list, out: Path, name: str, metric: str) -> None:
    """The collection's files: its table, plots, baselines and seeds tables, and its manifest; what it says."""
    from results.collect import markdown

    write_atomic(out / f"{name}.csv", df.to_csv(index=False))
    table = markdown(df)
    write_atomic(out / f"{name}.md", table)
    made = [p for p in (task_bars(df, out / f"{name}-tasks.png"), training_curves(df, out / f"{name}-curves.png"),
                        grid_heatmap(df, metric, out / f"{name}-heatmap.png")) if p is not None]
    made += learning_curves(df, out / name)
    for run in dict.fromkeys(df["run"]):  # per run: its loss terms, and a WML run's peer weights
        made += [p for p in (term_curves(Path(run), out / f"{name}-terms" / f"{Path(run).name}.png"),
                             omega_curves(Path(run), out / f"{name}-omega" / f"{Path(run).name}.png")) if p is not None]
    print(table)
    from results.baselines import comparisons, differing_text

    for line in differing_text(df):
        print(line)
    from results.baselines import markdown as baseline_markdown

    tests = comparisons(df)
    if tests:
        write_atomic(out / f"{name}-baselines.md", baseline_markdown(tests))
        made.insert(0, out / f"{name}-baselines.md")
        print("each method against its baseline (same architecture, text, seed and words seen, trained alone):\n"
              + baseline_markdown(tests))
    from results.seeds import seeds_markdown

    over_seeds = seeds_markdown(df, tests)
    if over_seeds is not None:
        write_atomic(out / f"{name}-seeds.md", over_seeds)
        made.insert(0, out / f"{name}-seeds.md")
        print(over_seeds)
    from results.written import replace_collection

    written = [out / f"{name}.csv", out / f"{name}.md", *made]
    removed = replace_collection(out, name, written)
    if removed:
        print(f"removed {len(removed)} file(s) of the previous collection {name!r} that this one does not write: "
              + ", ".join(str(p) for p in removed))
    print(f"{len(df)} row(s) from {df['run'].nunique()} run(s), {len(incomplete)} incomplete -> "
          + ", ".join(str(p) for p in written))
