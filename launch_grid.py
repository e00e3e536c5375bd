"""python launch_grid.py GRID.yaml [key=value ...] [--dry-run] [--set recipe.key=value ...]

Runs a grid (config/grids/*.yaml): stage after stage, each point a run directory under
<output_dir>/<name>/ that trains, is evaluated on the grid's tasks and gets DONE; then the
best points of `select.stage` by `select.metric` are retrained as finalists; then the results
table and plots (python -m results collect). Running the same command again skips finished
points, resumes partial ones from their newest checkpoint and starts only the rest.
"""
from __future__ import annotations

import argparse
import sys
import time

from common import config as cfglib
from common.errors import UserError, exit_on_user_error


def build_parser() -> argparse.ArgumentParser:
    from grid.config import GridConfig

    p = argparse.ArgumentParser(prog="python launch_grid.py", formatter_class=argparse.RawDescriptionHelpFormatter,
                                description=__doc__.split("\n\n")[1],
                                epilog="grid keys (YAML, or key=value here):\n" + "\n".join(cfglib.describe(GridConfig)))
    p.add_argument("grid", help="grid YAML, e.g. config/grids/demo.yaml")
    p.add_argument("overrides", nargs="*", help="dotted grid keys, e.g. executor.kind=debug")
    p.add_argument("-v", "--verbose", action="store_true", help="every point's full output on the terminal too (always in <run>/logs/)")
    p.add_argument("--dry-run", action="store_true", help="print the plan (points, their state, overrides); run nothing")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a recipe override for every point, after the grid's own (e.g. --set train.max_steps=20)")
    return p


def print_plan(points, cfg) -> None:
    import pandas as pd

    rows = [{"stage": p.stage, "point": p.name, "kind": p.kind, "recipe": p.recipe, "state": p.state(),
             **{k: v for k, v in p.axes.items()}} for p in points]
    print(pd.DataFrame(rows).to_string(index=False))
    sel = cfg.select
    print(f"{len(points)} point(s) on executor '{cfg.executor.kind}'; tasks: {', '.join(cfg.tasks) or 'none'}"
          + (f"; fine-tuning: {', '.join(cfg.finetune)}" if cfg.finetune else "")
          + (f"; then the best {sel.finalists} of stage '{sel.stage}' by {sel.metric}, retrained with {sel.overrides}" if sel.stage else ""))


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    from grid import executors
    from grid.plan import check_finetune, expand, load_grid

    args = build_parser().parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    cfg = load_grid(args.grid, args.overrides)
    for s in args.sets:
        cfglib.parse_override(s)  # a malformed --set fails here, before anything runs
    points = expand(cfg, args.grid, args.sets)
    check_finetune(cfg)
    print_plan(points, cfg)
    if args.dry_run:
        return 0
    if cfg.executor.kind == "slurm":
        executors.check_slurm()
    from common.paths import FolderLock, Locked

    try:
        with FolderLock(cfg.root / "_grid"):  # one launcher per grid: a second one would train every point twice
            return launch(cfg, points, args.verbose)
    except Locked as exc:
        raise UserError(f"{cfg.root}: another launcher is running this grid ({exc.holder}); wait for it to end, "
                        f"or stop it, then run the same command again") from None


def launch(cfg, points, verbose: bool = False) -> int:
    from grid import executors
    from grid.plan import finalists

    root = cfg.root
    failed = []
    for stage in cfg.stages:
        stage_points = [p for p in points if p.stage == stage.name]
        start = time.perf_counter()
        stage_failed = executors.run_stage(stage.name, stage_points, root, cfg.executor, verbose)
        print(f"stage {stage.name}: {len(stage_points)} point(s), {len(stage_failed)} incomplete, {time.perf_counter() - start:.1f} s", flush=True)
        failed += stage_failed
        if stage_failed and stage is not cfg.stages[-1]:
            executors.report(failed)
            raise UserError(f"stage '{stage.name}': {len(stage_failed)} point(s) did not finish, so the later stages were not "
                            f"started; fix them and run the same command again (finished points are skipped)")
    if cfg.select.stage:
        unfinished = [p for p, _ in failed if p.stage == cfg.select.stage]
        if unfinished and not cfg.select.allow_incomplete:
            executors.report(failed)
            raise UserError(f"select.stage '{cfg.select.stage}': {len(unfinished)} of its points did not finish "
                            f"({', '.join(p.name for p in unfinished[:5])}{', ...' if len(unfinished) > 5 else ''}), so no "
                            f"finalists were chosen; fix them and run the same command again, or set "
                            f"select.allow_incomplete=true to choose among the finished points")
        if unfinished:
            print(f"WARNING: finalists chosen among the finished points of stage '{cfg.select.stage}' only: "
                  f"{len(unfinished)} did not finish (select.allow_incomplete=true)", file=sys.stderr, flush=True)
        chosen = finalists(cfg, points)
        print("finalists: " + ", ".join(p.name for p in chosen))
        start = time.perf_counter()
        failed += executors.run_stage("finalists", chosen, root, cfg.executor, verbose)
        print(f"stage finalists: {len(chosen)} point(s), {time.perf_counter() - start:.1f} s", flush=True)
    executors.report(failed)
    from results.__main__ import main as results_main

    rc = results_main(["collect", str(root), "--out", str(cfg.results_path), "--name", cfg.name, "--metric", cfg.select.metric])
    if failed:
        print(f"{len(failed)} point(s) incomplete; run the same command again to finish them", file=sys.stderr)
        return 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
