"""One grid point, start to end: train (or resume), write grid.json, evaluate every model. Its whole output goes
to <run>/logs/grid-<time>.log (grid.report), the terminal shows a line per point.

`PointJob` is what the local and SLURM executors run. Training runs as a child process
(`python -m <entry>`, or torchrun with several GPUs or nodes: launch.command, as in the
.slurm templates) that ignores SIGUSR2 until its trainer arms the checkpoint-and-stop handler
(common.preemption.Preemption). Under submitit the job's own process receives SIGUSR2 before the
time limit or on preemption; `checkpoint` then passes the signal on, waits for the trainer's
checkpoint, and hands submitit the same job to requeue, which resumes from that checkpoint
(every run is started with --resume).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from common.errors import EXIT_PREEMPTED, EXIT_STOPPED, STOPPING, how, stopped_by
from common.paths import write_atomic
from grid.plan import Point
from grid.report import log_path, output_to
from launch.kinds import entry_point
from launch.command import command
from train.tracking import GRID_ENV


class PointFailed(Exception):
    def __init__(self, message: str, preempted: bool = False):
        super().__init__(message)
        self.preempted = preempted  # the trainer stopped on SIGUSR2 after a checkpoint


def _ignore_usr2() -> None:
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def grid_info(point: Point) -> str:
    return json.dumps({"grid": point.grid, "stage": point.stage, "axes": point.axes, "recipe": point.recipe}, indent=2)


def write_grid_json(point: Point) -> None:
    write_atomic(Path(point.run) / "grid.json", grid_info(point))


def eval_argvs(point: Point) -> list[list[str]]:
    """The `python -m eval` command lines (without the program) that evaluate the point: every model (WML: every peer)
    on the grid's tasks it lacks, then on each fine-tuning task it lacks, then its milestones (the learning curve)."""
    argvs = []
    data = ["--data-dir", point.eval_data_dir] if point.eval_data_dir else []
    if point.convention:
        data += ["--convention", point.convention]
    for model in point.model_dirs():
        out = point.eval_dir(model)
        todo = [t for t in point.tasks if not (out / f"{t}.json").is_file()]
        if todo:
            argvs.append([str(model), "--tasks", ",".join(todo), "--backend", point.backend, *data, "--out", str(out),
                          "--no-progress"])
        tune = [t for t in point.finetune if not (out / f"{t}.json").is_file()]
        if tune:
            argvs.append(["finetune", str(model), "--tasks", ",".join(tune), "--out", str(out), "--no-progress",
                          *(["--data-dir", point.finetune_data_dir] if point.finetune_data_dir else [])])
    if point.tasks_per_milestone:
        argvs.append(
            [
                "curve",
                point.run,
                "--tasks",
                ",".join(point.tasks_per_milestone),
                "--backend",
                point.backend,
                *data,
                "--no-progress",
            ]
        )
    return argvs


def evaluate_point(point: Point) -> None:
    """Runs eval's command lines in this process (the same argv a person would type; one interpreter start
    saved per model). Results already there are kept.

    A fine-tuning arms its own SIGUSR2 handler while it trains: a SIGUSR2 then stops it after a checkpoint (exit 75).
    The signal is handed back to the handler this process had before (submitit's, which requeues the job, and the
    requeued job continues the fine-tuning); where there was none, the point is reported stopped."""
    from launch.kinds import resolve

    main = resolve("eval.__main__:main")
    for argv in eval_argvs(point):
        rc = main(argv)
        if rc == EXIT_PREEMPTED:
            if callable(signal.getsignal(signal.SIGUSR2)):
                signal.raise_signal(signal.SIGUSR2)
            raise PointFailed(f"{point.name}: python -m eval {' '.join(argv[:2])} ... stopped on SIGUSR2 after a "
                              "checkpoint; run the launcher again to continue", preempted=True)
        if rc in EXIT_STOPPED.values():  # Ctrl-C, SIGTERM or SIGHUP stopped the evaluation here: the grid too
            raise KeyboardInterrupt
        if rc != 0:
            raise PointFailed(f"{point.name}: python -m eval {' '.join(argv[:2])} ... exited {rc}")


def run_in_process(point: Point, verbose: bool = False) -> None:
    """The debug executor: everything in this process (no signals, no requeue)."""
    if point.state() == "done":
        return
    with output_to(None if verbose else log_path(point)):
        os.environ[GRID_ENV] = grid_info(point)
        try:
            rc = entry_point(point.kind)(point.argv())
        finally:
            del os.environ[GRID_ENV]
        if rc in EXIT_STOPPED.values():  # Ctrl-C, SIGTERM or SIGHUP stopped the training here: the grid too
            raise KeyboardInterrupt
        if rc != 0:
            raise PointFailed(f"{point.name}: training exited {rc}")
        write_grid_json(point)
        evaluate_point(point)


def stop_after_interrupt(proc: subprocess.Popen, wait_s: float = 10.0) -> None:
    """The launcher got Ctrl-C (or SIGTERM) while `proc` trained a point. At a terminal (or under SLURM, or `kill` to
    the process group) the training got it too and is writing its run.json (after SIGTERM, its checkpoint first): it is
    waited for. A signal sent to the launcher alone is passed on, so that no training goes on without a launcher
    (holding its run's lock)."""
    try:
        proc.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        proc.send_signal(stopped_by())
        proc.wait()


class PointJob:
    """A picklable callable for submitit (and the local executor) with submitit's `checkpoint` hook."""

    def __init__(self, point: Point, grace_s: float = 90.0, verbose: bool = False):
        self.point = point
        self.grace_s = grace_s
        self.verbose = verbose
        self._proc: subprocess.Popen | None = None

    def __call__(self) -> str:
        if self.point.state() == "done":
            return f"{self.point.name}: done"
        with output_to(None if self.verbose else log_path(self.point)):  # the point's whole output: <run>/logs/
            return self._run()

    def _run(self) -> str:
        point = self.point
        if not (Path(point.run) / "DONE").is_file():
            self._proc = subprocess.Popen(command(point.kind, point.argv()), preexec_fn=_ignore_usr2,
                                          env={**os.environ, GRID_ENV: grid_info(point)})
            try:
                rc = self._proc.wait()
            except KeyboardInterrupt:
                stop_after_interrupt(self._proc)
                raise
            self._proc = None
            if rc != 0:
                why = {EXIT_PREEMPTED: " (stopped on SIGUSR2 after a checkpoint; run the launcher again to resume)",
                       **{-s: f" ({how(s)}; run the launcher again to resume from its newest checkpoint)"
                          for s in STOPPING}}
                raise PointFailed(f"{point.name}: training exited {rc}{why.get(rc, '')}",
                                  preempted=rc == EXIT_PREEMPTED)
        if int(os.environ.get("SLURM_PROCID", os.environ.get("RANK", "0"))) != 0:
            return f"{point.name}: trained (rank > 0)"
        write_grid_json(point)
        evaluate_point(point)
        return f"{point.name}: done"

    def checkpoint(self, *args, **kwargs):
        """submitit calls this on SIGUSR2: let the trainer save, then requeue this same job."""
        import submitit

        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGUSR2)  # the step's processes may have it already; once more is harmless
            deadline = time.time() + self.grace_s
            while proc.poll() is None and time.time() < deadline:
                time.sleep(0.5)
        return submitit.helpers.DelayedSubmission(PointJob(self.point, self.grace_s, self.verbose))

