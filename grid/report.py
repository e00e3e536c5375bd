"""What a grid shows on the terminal: one line per point as it starts and as it ends (status, wall time,
dev CE and the grid's task scores), a bar over the points when the terminal is a TTY, and, for a point that
failed, the path of its log and that log's last error line. Everything a point prints (training, evaluation,
fine-tuning, warnings, progress bars) goes to `<run>/logs/grid-<time>.log` instead; `-v` keeps it on the terminal.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

from common.errors import hang_up, hung_up
from common.paths import REPO
from grid.plan import Point


def log_path(point: Point) -> Path:
    return Path(point.run) / "logs" / f"grid-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{os.getpid()}.log"


@contextlib.contextmanager
def output_to(log: Path | None):
    """Everything this process and its children write to stdout and stderr (file descriptors 1 and 2, so
    C extensions, loggers and subprocesses included) goes to `log` (appended); None: left alone."""
    if log is None:
        yield
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "ab") as handle:
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            if hung_up():  # the terminal they are back on has gone meanwhile: writes there go nowhere
                hang_up()


def last_error(log: Path | None) -> str:
    """The log's `error:` line, else its last line that is not a progress bar frame (a traceback's last line)."""
    if log is None or not log.is_file():
        return ""
    with open(log, "rb") as handle:
        handle.seek(max(0, log.stat().st_size - 65536))
        lines = [
            part.strip() for line in handle.read().decode(errors="replace").splitlines() for part in line.split("\r")
        ]
    lines = [line for line in lines if line and "%|" not in line]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or [""])[-1][:300]


def scores(point: Point, tasks: list[str]) -> str:
    """`dev CE 1.7832, demo_pairs 0.854` from the run directory (a WML point: its best peer by dev CE)."""
    from results.collect import read_run

    try:
        rows = read_run(Path(point.run))
    except Exception:  # noqa: BLE001 - a summary line never stops the grid
        return ""
    finite = [r for r in rows if isinstance(r.get("dev_ce"), (int, float))]
    row = min(finite, key=lambda r: r["dev_ce"]) if finite else (rows[0] if rows else {})
    parts = [f"dev CE {row['dev_ce']:.4f}"] if isinstance(row.get("dev_ce"), (int, float)) else []
    parts += [f"{t} {row[t]:.3f}" for t in tasks if isinstance(row.get(t), (int, float))]
    return ", ".join(parts)


class Reporter:
    """The terminal's view of one stage: a start and an end line per point, a bar over the points."""

    def __init__(self, stage: str, total: int, verbose: bool = False):
        self.verbose = verbose
        self.bar = tqdm(total=total, desc=f"stage {stage}", unit="point", file=sys.stderr, leave=False,
                        disable=verbose or not sys.stderr.isatty())
        self.started: dict[str, float] = {}

    def line(self, text: str) -> None:
        self.bar.write(text, file=sys.stdout)
        sys.stdout.flush()

    def start(self, point: Point, note: str = "") -> None:
        self.started[point.name] = time.perf_counter()
        self.line(f"{point.name}: started ({point.state()}{', ' + note if note else ''})")

    def end(self, point: Point, why: str | None = None, log: Path | None = None) -> None:
        seconds = time.perf_counter() - self.started.pop(point.name, time.perf_counter())
        if why is None:
            got = scores(point, [*point.tasks, *point.finetune])
            self.line(f"{point.name}: done in {seconds:.1f} s" + (f"; {got}" if got else ""))
        else:
            error = last_error(log)
            self.line(f"{point.name}: FAILED after {seconds:.1f} s: {why}"
                      + (f"\n  {error}" if error and error not in why else "") + (f"\n  log: {log}" if log else ""))
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def print_plan(points, cfg) -> None:
    """The points, their axes and state; on a grid with GPUs also each point's expected tokens and GPU hours
    (grid.estimate) and their sum."""
    import pandas as pd

    axes = list(dict.fromkeys(k for p in points for k in p.axes))  # an axis a stage does not vary: blank in its rows
    rows = [{"stage": p.stage, "point": p.name, "kind": p.kind, "recipe": p.recipe,
             **{k: p.axes.get(k) for k in axes}, "state": p.state()} for p in points]
    gpus = cfg.executor.gpus_per_node * cfg.executor.nodes
    if gpus:
        from grid.estimate import ASSUMED_MFU, MEASURED, PEAK_FLOPS, estimate, measured_mfu

        measured = measured_mfu()
        figures = [estimate(p, points, gpus, measured) for p in points]
        for row, e in zip(rows, figures):
            row.update({"tokens": f"{e.tokens / 1e6:,.0f}M", "GPU h": f"{e.gpu_hours:.2f}", "note": e.note})
    print(pd.DataFrame(rows, dtype=object).fillna("").to_string(index=False))
    if gpus:
        rate = (f"the MFU measured in {MEASURED.relative_to(REPO)}" if measured else
                f"an assumed {ASSUMED_MFU:.0%} MFU (no {MEASURED.relative_to(REPO)} yet: run bash bench/gpu_check.sh "
                "on the cluster's GPU)")
        print(f"expected: {sum(e.gpu_hours for e in figures):.1f} GPU hours of training in all (evaluation and "
              f"finalists not counted), from each architecture's FLOPs per token at {rate} of "
              f"{PEAK_FLOPS / 1e12:.0f} TFLOP/s (dense bf16, H100/H200 SXM)")
    sel = cfg.select
    print(
        f"{len(points)} point(s) on executor '{cfg.executor.kind}'; tasks: {', '.join(cfg.tasks) or 'none'}"
        + (f"; fine-tuning: {', '.join(cfg.finetune)}" if cfg.finetune else "")
        + (
            f"; then the best {sel.finalists} of stage '{sel.stage}' by {sel.metric}, retrained with {sel.overrides}"
            if sel.stage
            else ""
        )
    )
