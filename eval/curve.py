"""python -m eval curve RUN [RUN ...] --suite babylm2025-fast --data-dir DIR: learning curves over words seen.

Every milestone a run exported (`milestones/chck_*/`, from train.word_checkpoints) is evaluated
on the tasks, skipping those it already has results for; then each run gets `eval/curve.json`
(per task: the score at each milestone's exact words seen) and, for the fast suite, the 2025
submission's `fast_eval_results` (`eval/fast_eval_results.json`, what `eval collate` adds);
and one PNG per task plots score against words seen (log scale), one line per model.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from common.errors import UserError, if_interrupted
from common.paths import is_our_figure, read_json, write_atomic


def milestones(run: Path, required: bool = True) -> list[tuple[int, Path]]:
    """(words seen, folder) of every whole milestone of `run`, in order of words; none is an error if `required`."""
    found = []
    for folder in sorted((run / "milestones").glob("chck_*")):
        record = folder / "words_seen.json"
        if record.is_file():
            fix = "move the milestone folder away (resuming the run from a checkpoint before it exports it again)"
            record = read_json(record, "the milestone's words-seen record", fix, {"words_seen": int})
            found.append((record["words_seen"], folder))
    if not found and required:
        raise UserError(f"{run}: no milestones (milestones/chck_*/ with words_seen.json); train it with "
                        f"train.word_checkpoints=babylm (or a list such as 1M,2M,5M)")
    return sorted(found)


def models_in(milestone: Path) -> list[tuple[str, Path]]:
    """The model folders of a milestone: itself, or each WML peer's (peer-0, peer-1, ...)."""
    if (milestone / "config.json").is_file():
        return [("", milestone)]
    peers = sorted(p for p in milestone.glob("peer-*") if (p / "config.json").is_file())
    if not peers:
        raise UserError(
            f"{milestone}: holds no model (config.json) and no peer-*/; export it again by resuming the run"
        )
    return [(p.name, p) for p in peers]


def parse(argv: list[str]) -> argparse.Namespace:
    from common.arguments import number
    from eval.model import BACKENDS, device_name
    from eval.tasks import SUITES, available

    p = argparse.ArgumentParser(prog="python -m eval curve", description=__doc__.split("\n\n")[1])
    p.add_argument("runs", nargs="+", help="run directories with milestones (runs/<experiment>/<name>)")
    p.add_argument("--suite", choices=sorted(SUITES), help="the 2025 pipeline's zero-shot tasks, or their fast variant")
    p.add_argument("--tasks", help=f"comma-separated task families instead ({', '.join(available())})")
    p.add_argument("--data-dir", help="BabyLM's evaluation_data folder (demo_pairs: cache/demo)")
    p.add_argument("--backend", choices=BACKENDS, default="causal", help="causal, mlm or mntp")
    p.add_argument("--convention", choices=["babylm2024", "babylm2025"],
                   help="as python -m eval --convention (default: the task's own, else babylm2024; --suite: 2025)")
    p.add_argument("--ewok-password", default=os.environ.get("EWOK_PASSWORD"),
                   help="EWoK's zip password (default $EWOK_PASSWORD)")
    p.add_argument("--batch-size", type=number("--batch-size", auto=True, ge=1), default="64",
                   help="sequences per forward pass, or 'auto'")
    p.add_argument("--device", type=device_name, default="auto", help="auto, cpu, cuda, ...")
    p.add_argument("--out", help="where the PNGs go (default: <run>/eval/curves for one run, "
                                 "<their parent>/_results/curves for several)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    from eval.evaluate import Options
    from eval.tasks import SUITES, task_names

    args = parse(argv)
    if bool(args.suite) == bool(args.tasks):
        raise UserError("eval curve: give --suite or --tasks (one of them)")
    if args.suite and args.convention == "babylm2024":
        raise UserError(f"--suite {args.suite} is the 2025 pipeline's; drop --convention babylm2024")
    tasks = SUITES[args.suite] if args.suite else task_names(args.tasks)
    runs = [Path(r) for r in args.runs]
    for run in runs:
        if not (run / "run.json").is_file():
            raise UserError(f"{run}: not a run directory (no run.json); give runs/<experiment>/<name>")
        milestones(run)  # every run checked before anything is evaluated
    opts = Options(
        backend=args.backend,
        convention="babylm2025" if args.suite else args.convention,
        batch_size=args.batch_size,
        device=args.device,
        data_dir=args.data_dir,
        ewok_password=args.ewok_password,
        progress=not args.no_progress,
        fast=args.suite == "babylm2025-fast",
    )
    out = (
        Path(args.out)
        if args.out
        else (runs[0] / "eval" / "curves" if len(runs) == 1 else common_parent(runs) / "_results" / "curves")
    )
    pngs = [out / f"{task}.png" for task in tasks] if args.out else []  # the default folders are ours
    theirs = next((png for png in pngs if png.exists() and not is_our_figure(png)), None)
    if theirs is not None:  # before anything is evaluated
        raise UserError(f"{theirs}: exists and is not a plot of ours, and the curve of {theirs.stem} would replace it; "
                        "pass another --out, or move that file away")
    with if_interrupted(", ".join(map(str, runs)), "the milestones' results written are kept; run the same command "
                                                   "again: it scores only those missing"):
        curves = {run: evaluate_milestones(run, tasks, opts) for run in runs}
    for png in plot_curves(curves, out):
        print(png)
    return 0


def evaluate_milestones(run: Path, tasks: list[str], opts) -> dict[str, list[dict]]:
    """Every milestone model of `run` (each WML peer) on `tasks`, skipping results it has; writes eval/curve.json
    (and the fast suite's eval/fast_eval_results.json). Returns, per task, one row per milestone and model."""
    from eval.evaluate import evaluate, load_tasks, output_dir, scored_otherwise

    points = milestones(run)
    flags = {"data": "--data-dir", "convention": "--convention", "backend": "--backend"}
    read = dict(zip(tasks, load_tasks(tasks, opts)))  # once, for the check and every milestone
    for _, milestone in points:  # a result that is kept must have been scored as asked, checked before any scoring
        for _, model in models_in(milestone):
            results = output_dir(model, None) / ("fast" if opts.fast else "")
            for name, task in read.items():
                found = scored_otherwise(results / f"{name}.json", task, opts)
                if found:
                    key, old, new = found
                    raise UserError(
                        f"{results / f'{name}.json'}: holds {name} scored with {key} {old}, and this curve "
                        f"asks {new}: a milestone's result is not scored again, so the curve would mix the two; give "
                        f"the same {flags[key]}, or move {results} aside to score it again"
                    )
    per_task: dict[str, list] = {}
    for words, milestone in points:
        for peer, model in models_in(milestone):
            results = output_dir(model, None) / ("fast" if opts.fast else "")
            todo = [t for t in tasks if not (results / f"{t}.json").is_file()]
            if todo:
                print(f"{model}: {len(todo)} task(s) at {words:,} words seen", flush=True)
                evaluate(str(model), todo, opts, loaded=read)
            for task in tasks:
                summary = read_json(results / f"{task}.json", f"the result of {task}",
                                    "move it away and run the same command again to evaluate that milestone again",
                                    {"score": (int, float, type(None))})
                row = {"milestone": milestone.name, "words_seen": words, "score": summary.get("score"),
                       "metric": summary.get("metric", "accuracy")}
                per_task.setdefault(task, []).append({**row, "peer": peer} if peer else row)
    (run / "eval").mkdir(exist_ok=True)
    write_atomic(run / "eval" / "curve.json", json.dumps({"tasks": per_task}, indent=2) + "\n")
    if opts.fast:
        write_fast_results(run, points)
    return per_task


def plot_curves(curves: dict[Path, dict[str, list[dict]]], out: Path) -> list[Path]:
    """One PNG per task: every run's (and peer's) score against words seen."""
    from common.curves import curve_lines, plot_curve

    by_name = {run.name: per_task for run, per_task in curves.items()}
    tasks = sorted({task for per_task in curves.values() for task in per_task})
    return [plot_curve(task, *curve_lines(by_name, task), out / f"{task}.png") for task in tasks]


def write_fast_results(run: Path, points: list[tuple[int, Path]]) -> None:
    """The 2025 submission's fast_eval_results for this run's milestones (one list entry per milestone)."""
    from eval.collate import fast_eval_results

    folders = [m for _, m in points if (m / "config.json").is_file()]
    if folders:
        write_atomic(run / "eval" / "fast_eval_results.json", json.dumps(fast_eval_results(folders), indent=2) + "\n")


def common_parent(runs: list[Path]) -> Path:
    parents = {r.resolve().parent for r in runs}
    return parents.pop() if len(parents) == 1 else Path.cwd()
