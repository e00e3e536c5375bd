"""A grid's run, start to end: its stages in order (a stage that leaves points unfinished stops the later ones),
the finalists (refused while a point of the selection stage is unfinished, unless select.allow_incomplete), then
`python -m results collect` on the grid's runs."""
from __future__ import annotations

import sys
import time

from common.errors import UserError


def run_grid(cfg, points, verbose: bool = False) -> int:
    from grid import executors
    from grid.plan import finalists

    root = cfg.root
    failed = []
    for stage in cfg.stages:
        stage_points = [p for p in points if p.stage == stage.name]
        start = time.perf_counter()
        stage_failed = executors.run_stage(stage.name, stage_points, root, cfg.executor, verbose)
        print(
            f"stage {stage.name}: {len(stage_points)} point(s), {len(stage_failed)} incomplete, "
            f"{time.perf_counter() - start:.1f} s",
            flush=True,
        )
        failed += stage_failed
        if stage_failed and stage is not cfg.stages[-1]:
            executors.report(failed)
            raise UserError(
                f"stage '{stage.name}': {len(stage_failed)} point(s) did not finish, so the later stages were not "
                f"started; fix them and run the same command again (finished points are skipped)"
            )
    if cfg.select.stage:
        unfinished = [p for p, _ in failed if p.stage == cfg.select.stage]
        if unfinished and not cfg.select.allow_incomplete:
            executors.report(failed)
            raise UserError(
                f"select.stage '{cfg.select.stage}': {len(unfinished)} of its points did not finish "
                f"({', '.join(p.name for p in unfinished[:5])}{', ...' if len(unfinished) > 5 else ''}), so no "
                f"finalists were chosen; fix them and run the same command again, or set "
                f"select.allow_incomplete=true to choose among the finished points"
            )
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

    out = ["--out", str(cfg.results_path)] if cfg.results_dir else []  # the default, <output_dir>/_results, is ours
    rc = results_main(["collect", str(root), *out, "--name", cfg.name, "--metric", cfg.select.metric])
    if failed:
        print(f"{len(failed)} point(s) incomplete; run the same command again to finish them", file=sys.stderr)
        return 1
    return rc
