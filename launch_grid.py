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

from common import config as cfglib
from common.errors import exit_on_user_error, if_interrupted, leave


def build_parser() -> argparse.ArgumentParser:
    from grid.config import GridConfig

    p = argparse.ArgumentParser(
        prog="python launch_grid.py",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n")[1],
        epilog="grid keys (YAML, or key=value here):\n" + "\n".join(cfglib.describe(GridConfig)),
    )
    p.add_argument("grid", help="grid YAML, e.g. config/grids/demo.yaml")
    p.add_argument("overrides", nargs="*", help="dotted grid keys, e.g. executor.kind=debug")
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="every point's full output on the terminal too (always in <run>/logs/)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print the plan (points, their state, overrides); run nothing"
    )
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a recipe override for every point, after the grid's own (e.g. --set train.max_steps=20)")
    return p


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    from grid import executors
    from grid.launcher import run_grid
    from grid.plan import (check_finetune, check_other_runs, check_scored_results, check_started_points, check_tasks,
                           check_trained_inputs, expand, load_grid)

    args = build_parser().parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    cfg = load_grid(args.grid, args.overrides)
    for s in args.sets:
        cfglib.parse_override(s)  # a malformed --set fails here, before anything runs
    points = expand(cfg, args.grid, args.sets)
    from grid.report import print_plan

    print_plan(points, cfg)
    if args.dry_run:
        return 0
    if cfg.executor.kind == "slurm":
        executors.check_slurm()
    tuning = check_finetune(cfg)  # the evaluation data, read before anything trains (a plan needs none)
    tasks = check_tasks(cfg)
    check_other_runs(cfg, points, args.grid)
    check_started_points(points, args.grid)
    check_trained_inputs(points, args.grid)
    check_scored_results(cfg, points, tasks, tuning, args.grid)
    if cfg.results_dir:  # a folder of the user's: a table or plot there that the collection would replace
        from results.written import check_free

        check_free(cfg.results_path, cfg.name)
    from common.locks import FolderLock, holding

    # one launcher per grid: a second one would train every point twice
    with holding(FolderLock(cfg.root / "_grid"), cfg.root, "launcher is running this grid",
                 "wait for it to end, or stop it, then run the same command again"):
        with if_interrupted(cfg.root, INTERRUPTED_GRID[cfg.executor.kind]):
            return run_grid(cfg, points, args.verbose)


INTERRUPTED_GRID = {  # what a launcher stopped by Ctrl-C leaves, by executor
    "slurm": "its submitted jobs go on (squeue lists them); the same command waits for them again and starts what is "
             "left",
    "local": "the point that was training stopped, and resumes from its newest checkpoint; the same command "
             "continues the grid (finished points are skipped)",
}
INTERRUPTED_GRID["debug"] = INTERRUPTED_GRID["local"]


if __name__ == "__main__":
    leave(main())
