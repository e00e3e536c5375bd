"""python -m results collect RUNS... [--out DIR] [--name NAME] [--metric dev_ce]: tables and plots.
python -m results compare RUN_A RUN_B --task TASK: a paired significance test on the same pairs.

collect reads only run directories and writes, atomically, beside them (<out> defaults to
runs/<experiment>/_results/, never this package's folder) <out>/<name>.csv, <out>/<name>.md
(`0.694 ± 0.0016`), and PNGs: <name>-tasks.png, <name>-curves.png, for a two-axis grid
<name>-heatmap.png, and <name>-curve-<task>.png per task of the runs' learning curves (eval/curve.json). Each method
against its baseline goes to <name>-baselines.md; settings run from two seeds or more to <name>-seeds.md (their mean
and spread over seeds, and each method's difference from its baseline at every seed). Runs without DONE or with
unreadable files are listed as incomplete.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.arguments import number, seed
from common.errors import UserError, exit_on_user_error, leave


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m results", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect", help="run directories -> CSV, markdown and PNG plots")
    c.add_argument("runs", nargs="+", help="run directories or folders above them (runs/<experiment>)")
    c.add_argument("--out", help="output folder (default: _results/ in the experiment folder, e.g. runs/demo/_results)")
    c.add_argument("--name", help="file name stem (default: the first folder's name)")
    c.add_argument("--metric", default="dev_ce", help="heatmap metric: dev_ce or a task name (default dev_ce)")
    m = sub.add_parser("compare", help="paired test (McNemar and bootstrap) of two runs on the same pairs")
    m.add_argument("run_a")
    m.add_argument("run_b")
    m.add_argument("--task", required=True, help="an evaluated task, e.g. blimp_filtered")
    m.add_argument("--samples", type=number("--samples", ge=1, le=10_000_000), default=10000,
                   help="bootstrap resamples (1 to 10,000,000; 10,000 is usual)")
    m.add_argument("--seed", type=seed(), default=0, help="the bootstrap's seed")
    m.add_argument("--out", help="also write the comparison as JSON to this file")
    return p


def default_out(roots: list[Path]) -> Path:
    """`<experiment>/_results`: beside the runs. A run directory counts as its experiment folder (its parent);
    several roots share their deepest common folder."""
    import os

    folders = [r.parent if (r / "config.yaml").is_file() else r for r in roots]
    return Path(os.path.commonpath([str(f.resolve()) for f in folders])) / "_results"


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "compare":
        from results.compare import run_compare

        return run_compare(args)
    from results.plots import write_collection

    roots = [Path(r) for r in args.runs]
    for r in roots:
        if not r.is_dir():
            raise UserError(f"{r}: folder not found; give run directories or runs/<experiment>")
    out = Path(args.out) if args.out else default_out(roots)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file; give a folder for the tables and plots")
    name = args.name or roots[0].resolve().name
    from common.paths import name_problem

    problem = name_problem(name) if args.name else None  # the stem of every file written: <name>.csv, <name>-*.png
    if problem:
        raise UserError(f"--name {problem}; give one file name stem such as 'study'")
    if args.out:  # a folder of the user's (the default, <experiment>/_results, is ours)
        from results.written import check_free

        check_free(out, name)
    write_collection(roots, out, name, args.metric, users_folder=bool(args.out))
    return 0


if __name__ == "__main__":
    leave(main())
