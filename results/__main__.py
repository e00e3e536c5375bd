"""python -m results collect RUNS... [--out DIR] [--name NAME] [--metric dev_ce]: tables and plots.
python -m results compare RUN_A RUN_B --task TASK: a paired significance test on the same pairs.

collect reads only run directories and writes, atomically, beside them (<out> defaults to
runs/<experiment>/_results/, never this package's folder) <out>/<name>.csv, <out>/<name>.md
(`0.694 ± 0.0016`), and PNGs: <name>-tasks.png, <name>-curves.png, for a two-axis grid
<name>-heatmap.png, and <name>-curve-<task>.png per task of the runs' learning curves (eval/curve.json). Runs without DONE or with unreadable files are listed as incomplete.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common.errors import UserError, exit_on_user_error


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
    m.add_argument("--samples", type=int, default=10000, help="bootstrap resamples (at least 1)")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--out", help="also write the comparison as JSON to this file")
    return p


def check_out_file(out: str | None) -> None:
    if out and (Path(out).is_dir() or (Path(out).parent.exists() and not Path(out).parent.is_dir())):
        raise UserError(f"--out {out}: is a folder (or under a file); give a file path for the JSON")


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
        from common.paths import write_atomic
        from results.compare import compare

        for r in (args.run_a, args.run_b):
            if not Path(r).is_dir():
                raise UserError(f"{r}: run directory not found")
        if not 1 <= args.samples <= 10_000_000:
            raise UserError(f"--samples {args.samples}: give 1 to 10,000,000 bootstrap resamples (10,000 is usual)")
        check_out_file(args.out)
        out = compare(Path(args.run_a), Path(args.run_b), args.task, args.samples, args.seed)
        print(json.dumps(out, indent=2))
        if args.out:
            write_atomic(Path(args.out), json.dumps(out, indent=2) + "\n")
        print(f"{args.task}: A {out['accuracy_a']:.4f} vs B {out['accuracy_b']:.4f} on {out['pairs']} pairs; "
              f"McNemar p = {out['mcnemar_p']:.3g} ({out['only_a_right']} right only in A, {out['only_b_right']} only in B); "
              f"difference {out['difference']:+.4f}, 95% bootstrap [{out['bootstrap_95'][0]:+.4f}, {out['bootstrap_95'][1]:+.4f}]")
        return 0

    from common.paths import write_atomic
    from results import plots
    from results.collect import collect, markdown

    roots = [Path(r) for r in args.runs]
    for r in roots:
        if not r.is_dir():
            raise UserError(f"{r}: folder not found; give run directories or runs/<experiment>")
    df, incomplete = collect(roots)
    for item in incomplete:
        print(f"incomplete: {item.run}: {item.reason}")
    if df.empty:
        raise UserError(f"{', '.join(map(str, roots))}: no finished run (DONE) to collect" + (f"; {len(incomplete)} incomplete" if incomplete else ""))
    name = args.name or roots[0].resolve().name
    out = Path(args.out) if args.out else default_out(roots)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file; give a folder for the tables and plots")
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / f"{name}.csv", df.to_csv(index=False))
    table = markdown(df)
    write_atomic(out / f"{name}.md", table)
    made = [p for p in (plots.task_bars(df, out / f"{name}-tasks.png"), plots.training_curves(df, out / f"{name}-curves.png"),
                        plots.grid_heatmap(df, args.metric, out / f"{name}-heatmap.png")) if p is not None]
    made += plots.learning_curves(df, out / name)
    for run in dict.fromkeys(df["run"]):  # per run: its loss terms, and a WML run's peer weights
        made += [p for p in (plots.term_curves(Path(run), out / f"{name}-terms" / f"{Path(run).name}.png"),
                             plots.omega_curves(Path(run), out / f"{name}-omega" / f"{Path(run).name}.png")) if p is not None]
    print(table)
    print(f"{len(df)} row(s) from {df['run'].nunique()} run(s), {len(incomplete)} incomplete -> "
          + ", ".join(str(p) for p in [out / f"{name}.csv", out / f"{name}.md", *made]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
