"""Where a stage's points run: `debug` (in this process), `local` (one after another, here) or
`slurm` (one submitit job array per stage). Each returns the points that did not finish.

The SLURM executor records every submitted job id in <root>/_grid/jobs.json; a rerun
reattaches to a point's job while SLURM still has it queued or running, instead of
submitting the same run directory twice.
"""
from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common.errors import UserError, interrupt_deferred, stop_if_swallowed, summary
from common.paths import read_json, write_atomic
from grid.config import ExecutorConfig
from grid.plan import Point
from grid.point import PointFailed, PointJob, run_in_process
from grid.report import Reporter

ALIVE = {
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "CONFIGURING",
    "COMPLETING",
    "SUSPENDED",
    "RESIZING",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
}


def run_debug(points: list[Point], root: Path, ex: ExecutorConfig, report: Reporter) -> list[tuple[Point, str]]:
    """Every point in this process; a point that fails, however it fails, is reported and the next one runs."""
    import traceback

    failed = []
    for p in points:
        report.start(p)
        try:
            run_in_process(p, report.verbose)
        except (PointFailed, UserError) as exc:
            failed.append((p, str(exc)))
        except Exception as exc:  # noqa: BLE001 - a defect in one point must not cost the others their run
            log = Path(p.run) / "logs" / "debug-executor-error.txt"
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(traceback.format_exc())
            failed.append((p, f"{summary(exc, 200)} (traceback in {log})"))
        report.end(p, *((failed[-1][1], newest_log(p)) if failed and failed[-1][0] is p else ()))
    return failed


def run_local(points: list[Point], root: Path, ex: ExecutorConfig, report: Reporter) -> list[tuple[Point, str]]:
    failed = []
    for i, p in enumerate(points):
        report.start(p, f"{i + 1}/{len(points)}")
        try:
            PointJob(p, verbose=report.verbose)()
            report.end(p)
        except (PointFailed, UserError) as exc:
            failed.append((p, str(exc)))
            report.end(p, str(exc), newest_log(p))
            if (
                isinstance(exc, PointFailed) and exc.preempted
            ):  # SIGUSR2 reached this machine's job: start no further point
                failed.extend((q, "not started: the grid was stopped by SIGUSR2") for q in points[i + 1:])
                break
    return failed


def check_slurm() -> None:
    if shutil.which("sbatch") is None:
        raise UserError("executor.kind=slurm: sbatch is not on the PATH; run on a SLURM login node, "
                        "or use executor.kind=local to run the points here")


def _executor(root: Path, ex: ExecutorConfig, job_name: str):
    import submitit

    executor = submitit.AutoExecutor(folder=str(_logs(root) / "%j"), cluster="slurm",
                                     slurm_max_num_timeout=ex.max_requeues)
    extra = {"requeue": True}
    setup = [f"source {ex.venv}/bin/activate"] if ex.venv else []
    params = dict(
        name=job_name,
        timeout_min=ex.time_min,
        nodes=ex.nodes,
        tasks_per_node=1,
        cpus_per_task=ex.cpus_per_task,
        slurm_array_parallelism=ex.array_parallelism,
        slurm_signal_delay_s=ex.signal_delay_s,
        slurm_additional_parameters=extra,
        slurm_setup=setup,
    )
    if ex.gpus_per_node:
        params["gpus_per_node"] = ex.gpus_per_node
    if ex.partition:
        params["slurm_partition"] = ex.partition
    if ex.mem_gb:
        params["mem_gb"] = ex.mem_gb
    executor.update_parameters(**params)
    return executor


# sbatch's refusals that name what was asked, and the executor key that asked it (the first that matches)
REFUSED = (
    ("qos policy", None),  # "Job violates accounting/QOS policy (... size and/or time limits)": no one key
    ("partition", "executor.partition"),
    ("gres", "executor.gpus_per_node"),
    ("gpu", "executor.gpus_per_node"),
    ("memory", "executor.mem_gb"),
    ("time limit", "executor.time_min"),
    ("node count", "executor.nodes"),
    ("processors", "executor.cpus_per_task"),
    ("cpu", "executor.cpus_per_task"),
)


# The files submitit writes before sbatch answers: one pickled job per point (renamed into the job's folder once
# SLURM gives an id) and the array's sbatch script.
SUBMITIT_SCRATCH = re.compile(r"^(?:[0-9a-f]{32}\.pkl|\.submission_file_[0-9a-f]{32}\.sh)$")


def _submit(points: list[Point], root: Path, ex: ExecutorConfig, verbose: bool) -> list[tuple[Point, object]]:
    """Submit the points as one job array. A submission sbatch refuses (a partition the cluster lacks, more GPUs,
    memory or time than it grants) is one UserError naming the executor key and sbatch's reason; nothing is
    recorded in jobs.json and the files submitit wrote for it are removed, so the same command runs again once the
    key is fixed."""
    import submitit

    executor = _executor(root, ex, f"{points[0].grid}-{points[0].stage}")
    before = _listing(_logs(root))
    said = io.StringIO()  # submitit prints sbatch's error lines before raising: they go into the one error line
    try:
        with contextlib.redirect_stderr(said), executor.batch():
            pending = [
                (p, executor.submit(PointJob(p, grace_s=max(10, ex.signal_delay_s - 20), verbose=verbose)))
                for p in points
            ]
    except submitit.core.utils.FailedJobError as exc:
        for scratch in _listing(_logs(root)) - before:  # what submitit wrote for the refused array: no job will read it
            if SUBMITIT_SCRATCH.match(scratch.name):
                scratch.unlink()
        raise UserError(_refusal(str(exc) or summary(exc), ex, points[0].stage)) from None
    sys.stderr.write(said.getvalue())
    return pending


def _refusal(sbatch_said: str, ex: ExecutorConfig, stage: str) -> str:
    """The one error line for a job array sbatch refused: the executor key its reason points at, sbatch's reason,
    and what the jobs asked."""
    reasons = [line.removeprefix("sbatch: error: ").strip() for line in sbatch_said.splitlines() if line.strip()]
    reason = "; ".join(dict.fromkeys(reasons))
    key = next((key for word, key in REFUSED if word in reason.lower()), None)
    asked = (f"partition {ex.partition or '(the default)'}, {ex.nodes} node(s), {ex.gpus_per_node} GPU(s) and "
             f"{ex.cpus_per_task} CPU core(s) per node, {f'{ex.mem_gb} GB' if ex.mem_gb else 'the default memory'}"
             f" per node, {ex.time_min} min")
    return (f"{key or 'executor'}: sbatch refused stage '{stage}' ({reason}); its jobs asked for {asked}: fix "
            f"{key or 'the executor keys'} (sinfo lists the partitions and their limits), then run the same command "
            f"again")


def _jobs_file(root: Path) -> Path:
    return root / "_grid" / "jobs.json"


def _logs(root: Path) -> Path:
    """submitit's folder: each job's logs in <id>/, and what it writes before sbatch answers."""
    return root / "_grid" / "logs"


def _listing(folder: Path) -> set[Path]:
    return set(folder.iterdir()) if folder.is_dir() else set()


def run_slurm(
    points: list[Point], root: Path, ex: ExecutorConfig, report: Reporter, wait: bool = True
) -> list[tuple[Point, str]]:
    import submitit

    check_slurm()
    jobs_file = _jobs_file(root)
    what = "the grid's submitted SLURM jobs"
    fix = "see squeue for the grid's jobs, then move it away (its points are then submitted again)"
    known = read_json(jobs_file, what, fix) if jobs_file.is_file() else {}
    if not all(isinstance(job, str) for job in known.values()):
        raise UserError(f"{jobs_file}: {what} cannot be read (a job id that is not text); {fix}")
    earlier = {p.name: submitit.SlurmJob(folder=str(_logs(root) / "%j"), job_id=known[p.name])
               for p in points if p.name in known}
    jobs = {}
    for name, still in _still_there(earlier).items():
        report.line(f"{name}: job {earlier[name].job_id} {still}; waiting for it")
        jobs[name] = earlier[name]
    todo = [p for p in points if p.name not in jobs]
    if todo:
        with interrupt_deferred():  # Ctrl-C between sbatch's answer and jobs.json: the next launch submitted them again
            pending = _submit(todo, root, ex, report.verbose)
            for p, job in pending:
                jobs[p.name] = job
                known[p.name] = job.job_id
            jobs_file.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(jobs_file, json.dumps(known, indent=2))
        report.line(f"submitted {len(todo)} point(s) as job array {pending[0][1].job_id.split('_')[0]}")
    for p in points:
        report.start(p, f"job {jobs[p.name].job_id}")
    if not wait:
        return []
    failed = []
    by_name = {p.name: p for p in points}
    lost: dict[str, int] = {}
    remaining = dict(jobs)
    told: dict[str, str] = {}  # what was said of jobs waiting for a person, by point
    next_look = 0.0
    while remaining:
        if time.time() >= next_look:  # a job that waits for a person, not for the queue: say so, once per reason
            stuck = _stuck(remaining)
            for name, text in stuck.items():
                if told.get(name) != text:
                    report.line(f"{name}: job {remaining[name].job_id} {text}")
            told, next_look = stuck, time.time() + PERSON_LOOK_S
        for name in _vanished({name: job for name, job in remaining.items() if not job.done()}):
            lost[name] = lost.get(name, 0) + 1  # no queue entry, no live accounting record, three looks running
            if lost[name] >= 3:
                failed.append((by_name[name], f"job {remaining[name].job_id}: SLURM no longer lists it and it left "
                                              f"no result (cancelled while pending, or preempted without a requeue?)"))
                report.end(by_name[name], failed[-1][1], newest_log(by_name[name]))
                del remaining[name]
        for name, job in list(remaining.items()):
            if job.done():
                try:
                    job.result()
                    report.end(by_name[name])
                except Exception as exc:  # a failed or cancelled job: reported, the others go on
                    failed.append(
                        (
                            by_name[name],
                            f"job {job.job_id}: "
                            f"{str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else type(exc).__name__}",
                        )
                    )
                    report.end(by_name[name], failed[-1][1], newest_log(by_name[name]))
                del remaining[name]
        time.sleep(2)
        stop_if_swallowed()  # a Ctrl-C that a finalizer (submitit's, squeue's pipes) swallowed: the launcher stops
    return failed


PERSON_LOOK_S = 10.0  # how often a waiting launcher asks squeue for jobs that wait for a person


def _queue(jobs: dict) -> dict[str, tuple[str, str]] | None:
    """What the controller says of these jobs (one `squeue` call, whatever their number: a controller out of reach
    takes ~18 s to say so): (state, reason) by point for each job it still lists; a job it does not list is one it
    no longer knows. None when squeue cannot tell: missing, stuck for a minute, or the controller out of reach (during
    a controller restart or outage every job would look gone)."""
    if not jobs:
        return {}
    names = {str(job.job_id): name for name, job in jobs.items()}
    try:
        queued = subprocess.run(["squeue", "-h", "-r", "-j", ",".join(names), "-o", "%i|%T|%r"],
                                capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if queued.returncode != 0:  # one id alone that the controller does not know is an error; among others it is not
        return {} if "Invalid job id" in queued.stderr else None
    said = {}
    for line in queued.stdout.splitlines():
        job_id, state, reason = (line.split("|") + ["", ""])[:3]
        if job_id in names:
            said[names[job_id]] = (state, reason)
    return said


# Pending reasons of a job SLURM accepted but can never start as submitted (sbatch accepts a request beyond the
# partition's limits unless the cluster sets EnforcePartLimits), with what the job asked that causes it.
NEVER_STARTS = {
    "PartitionConfig": "it asks for more than the partition's nodes have: executor.cpus_per_task, gpus_per_node, "
                       "mem_gb or nodes",
    "PartitionNodeLimit": "it asks for more nodes than the partition allows: executor.nodes",
    "PartitionTimeLimit": "its time limit exceeds the partition's: executor.time_min",
    "BadConstraints": "no node meets its constraints",
    "InvalidAccount": "the account it runs under is not valid on this cluster",
    "InvalidQOS": "its QOS is not valid on this cluster",
}
PER_JOB_LIMIT = re.compile(r"^(Assoc|QOS)Max\w*Per(Job|Node)")  # e.g. QOSMaxGRESPerJob: over what the QOS grants


def _stuck(jobs: dict) -> dict[str, str]:
    """The points whose jobs stay PENDING until a person acts, each with what the launcher says of it."""
    queued = _queue(jobs) or {}  # None: the next look tries again
    said = {name: _waits_for_a_person(jobs[name].job_id, state, reason) for name, (state, reason) in queued.items()}
    return {name: text for name, text in said.items() if text}


def _waits_for_a_person(job_id: str, state: str, reason: str) -> str:
    """What the launcher says of a job that stays PENDING until a person acts, from squeue's state and reason: held
    (by a user or an administrator, or a restart that failed to launch and was requeued held), or asking for what
    the partition, the account or the QOS never grants. Empty for a job that waits for the queue (Resources,
    Priority, a group limit that frees up as other jobs end) or runs."""
    if state != "PENDING":
        return ""
    if "held" in reason.lower():
        return f"is held by SLURM ({reason}); it waits until someone runs scontrol release {job_id}"
    if reason in NEVER_STARTS or PER_JOB_LIMIT.match(reason):
        meaning = NEVER_STARTS.get(reason, "it asks for more than the account or QOS grants a job")
        return (f"cannot start as submitted ({reason}: {meaning}); it stays pending until someone runs scancel "
                f"{job_id}; then fix the executor keys and run the same command again")
    return ""


def _vanished(jobs: dict) -> list[str]:
    """The points whose jobs SLURM no longer knows: sacct has no live state for them and the controller no longer
    lists them."""
    unaccounted = {name: job for name, job in jobs.items() if job.state.split()[0] not in ALIVE}
    queued = _queue(unaccounted)
    return [] if queued is None else [name for name in unaccounted if name not in queued]


def _still_there(jobs: dict) -> dict[str, str]:
    """Of the jobs of an earlier launch, by point, those still with SLURM and how, said for the terminal ("is still
    RUNNING"); the others SLURM says are over, and their points are submitted again. sacct alone cannot say so: it
    has no state for a job slurmdbd has not recorded yet, nor for any job while slurmdbd is down, and submitting
    such a job again runs the point twice. So where sacct has no live state the controller is asked too, and a job
    neither can account for is waited on (the wait gives up on it once the controller says it is gone)."""
    states = {name: job.state.split()[0] for name, job in jobs.items()}
    still = {name: f"is still {state}" for name, state in states.items() if state in ALIVE}
    queued = _queue({name: job for name, job in jobs.items() if name not in still})
    for name, state in states.items():
        if name in still:
            continue
        if queued is not None and queued.get(name, ("",))[0] in ALIVE:
            still[name] = f"is still {queued[name][0]} (squeue; sacct has no live state for it)"
        elif queued is None and state == "UNKNOWN":
            still[name] = "may still run (sacct has no state for it and squeue did not answer)"
    return still


EXECUTORS = {"debug": run_debug, "local": run_local, "slurm": run_slurm}


def run_stage(
    stage: str, points: list[Point], root: Path, ex: ExecutorConfig, verbose: bool = False
) -> list[tuple[Point, str]]:
    todo = [p for p in points if p.state() != "done"]
    if not todo:
        return []
    report = Reporter(stage, len(todo), verbose)
    try:
        return EXECUTORS[ex.kind](todo, root, ex, report)
    finally:
        report.close()


def newest_log(point: Point) -> Path | None:
    logs = sorted((Path(point.run) / "logs").glob("grid-*.log"), key=lambda p: p.stat().st_mtime)
    return logs[-1] if logs else None


def report(failed: list[tuple[Point, str]]) -> None:
    for p, why in failed:
        print(f"incomplete: {p.name}: {why}", file=sys.stderr)
