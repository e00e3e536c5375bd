"""One grid point, start to end: train (or resume), write grid.json, evaluate every model.

`PointJob` is what the local and SLURM executors run. Training runs as a child process
(`python -m <entry>`, or torchrun with several GPUs or nodes: launch.command, as in the
.slurm templates) that ignores SIGUSR2 until its trainer arms the checkpoint-and-stop handler
(train.trainer.Preemption). Under submitit the job's own process receives SIGUSR2 before the
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

from common.errors import EXIT_PREEMPTED
from common.paths import write_atomic
from grid.plan import Point
from launch.kinds import entry_point
from launch.command import command


class PointFailed(Exception):
    def __init__(self, message: str, preempted: bool = False):
        super().__init__(message)
        self.preempted = preempted  # the trainer stopped on SIGUSR2 after a checkpoint


def _ignore_usr2() -> None:
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def write_grid_json(point: Point) -> None:
    write_atomic(Path(point.run) / "grid.json", json.dumps({"grid": point.grid, "stage": point.stage, "axes": point.axes,
                                                            "recipe": point.recipe}, indent=2))


def evaluate_point(point: Point) -> None:
    """Every model of the point (WML: every peer) on the grid's tasks, then its fine-tuning tasks; already evaluated
    tasks are kept. Every fine-tuning task's files are read and checked before the first model is evaluated."""
    from eval import finetune
    from eval.evaluate import Options, evaluate

    tuned = {}
    for name in point.finetune:
        data = finetune.data_folder(name, finetune.spec_of(name), point.finetune_data_dir or None)
        tuned[name] = (data, finetune.read_task(name, data))
    for model in point.model_dirs():
        out = point.eval_dir(model)
        todo = [t for t in point.tasks if not (out / f"{t}.json").is_file()]
        if todo:
            evaluate(str(model), todo, Options(backend=point.backend, data_dir=point.eval_data_dir or None, out=str(out),
                                               progress=False))
        for name, (data, task) in tuned.items():
            if not (out / f"{name}.json").is_file():
                summary = finetune.finetune(str(model), name, task, data, out, finetune.Settings(progress=False))
                print(f"{name}: fine-tuned {summary['metric']} {summary['score']:.4f} -> {out / name}.json", flush=True)
    if point.tasks_per_milestone:  # the learning curve: every milestone (every peer), then a PNG per task
        from eval.curve import evaluate_milestones, plot_curves

        run = Path(point.run)
        curve = evaluate_milestones(run, point.tasks_per_milestone, Options(backend=point.backend, data_dir=point.eval_data_dir or None,
                                                                            progress=False))
        plot_curves({run: curve}, run / "eval" / "curves")


def run_in_process(point: Point) -> None:
    """The debug executor: everything in this process (no signals, no requeue)."""
    if point.state() == "done":
        return
    rc = entry_point(point.kind)(point.argv())
    if rc != 0:
        raise PointFailed(f"{point.name}: training exited {rc}")
    write_grid_json(point)
    evaluate_point(point)


class PointJob:
    """A picklable callable for submitit (and the local executor) with submitit's `checkpoint` hook."""

    def __init__(self, point: Point, grace_s: float = 90.0):
        self.point = point
        self.grace_s = grace_s
        self._proc: subprocess.Popen | None = None

    def __call__(self) -> str:
        point = self.point
        if point.state() == "done":
            return f"{point.name}: done"
        if not (Path(point.run) / "DONE").is_file():
            self._proc = subprocess.Popen(command(point.kind, point.argv()), preexec_fn=_ignore_usr2)
            rc = self._proc.wait()
            self._proc = None
            if rc != 0:
                raise PointFailed(f"{point.name}: training exited {rc}" + (" (stopped on SIGUSR2 after a checkpoint; "
                                                                             "run the launcher again to resume)" if rc == EXIT_PREEMPTED else ""),
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
        return submitit.helpers.DelayedSubmission(PointJob(self.point, self.grace_s))

