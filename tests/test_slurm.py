"""On a real one-node SLURM cluster (tests/slurm_cluster.py; .ci/run installs the Debian packages):
launch_grid.py with the slurm executor runs a 2 x 2 grid as one submitit job array; a point
preempted mid-training (SIGUSR2, as before a time limit) checkpoints, requeues and finishes
with the weights of an uninterrupted run; a cancelled point is reported incomplete while the
others finish, and running the launcher again finishes it."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

import slurm_cluster
from conftest import (ROOT, SHARED, assert_bitwise_equal, assert_user_error, call, ok, run_cli, swallow_a_ctrl_c,
                      weights)
from test_grid import TWO_AXES, data_sets, write_grid

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    missing = slurm_cluster.missing_binaries()
    assert not missing, f"SLURM is not installed ({', '.join(missing)} missing); .ci/run installs it with apt-get"
    folder = tmp_path_factory.mktemp("slurm")
    env = slurm_cluster.start(folder)
    previous = os.environ.get("SLURM_CONF")
    os.environ.update(env)
    yield env
    slurm_cluster.stop(folder)
    if previous is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = previous


def slurm(*args: str) -> str:
    return subprocess.run(list(args), capture_output=True, text=True, check=True).stdout


def wait_for(check, what: str, timeout: float = 300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def step_reached(run: Path, step: int) -> bool:
    metrics = run / "metrics.jsonl"
    return metrics.exists() and any(json.loads(line).get("step", 0) >= step for line in metrics.read_text().splitlines()
                                    if line.endswith("}"))


_PENDING_SINCE: dict[str, float] = {}


def release_requeued(job: str) -> None:
    """A requeued job waits about 121 s (BeginTime); start it now. Not at once: a job started again within
    the second its credential was revoked (at the requeue) is killed by slurmd ("Job credential revoked")."""
    proc = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T %r"], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:  # the job has ended and left the controller's memory (squeue: "Invalid job id"): nothing
        return                # to release; the launcher's own outcome is what the test checks
    state = proc.stdout.strip()
    if state.startswith("PENDING") and "BeginTime" in state:
        first = _PENDING_SINCE.setdefault(job, time.time())
        if time.time() - first >= 3:
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True, timeout=60)
            _PENDING_SINCE.pop(job, None)
    elif state.startswith("PENDING") and "held" in state.lower():  # a restart that failed to launch (e.g. its
        # credential revoked) is requeued held, and would wait for an administrator for ever
        subprocess.run(["scontrol", "release", job], capture_output=True, timeout=60)


SLURM_GRID = TWO_AXES.replace(
    "executor: {kind: debug}", "executor: {kind: slurm, cpus_per_task: 1, time_min: 20, signal_delay_s: 60}"
).replace("select: {stage: grid, metric: demo_pairs, finalists: 1, overrides: {data.train_fraction: 1.0}}\n", "")


@contextlib.contextmanager
def launching(workdir: Path, *args: str):
    """`launch_grid.py <args>` in the background from `workdir`: yields the process and its log file, and kills it
    on the way out if it still runs (a launcher left waiting would outlive the test and the cluster)."""
    log = workdir / "launcher.log"  # a file, not a pipe: a pipe nobody reads until the end could fill and stop it
    with open(log, "w", encoding="utf-8") as sink:
        launcher = subprocess.Popen([sys.executable, str(ROOT / "launch_grid.py"), *args], cwd=workdir,
                                    stdout=sink, stderr=subprocess.STDOUT)
    try:
        yield launcher, log
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()


def test_grid_on_slurm_survives_preemption_and_cancellation(cluster, workdir, demo_root, cache_dir):
    grid = write_grid(workdir, SLURM_GRID.replace("DEMO", str(demo_root)))
    sets = [*data_sets(demo_root, cache_dir), "--set", "train.max_steps=80", "--set", "train.logging_steps=1"]
    with launching(workdir, str(grid), *sets) as (launcher, log):
        check_grid_on_slurm(launcher, log, workdir)
    again = subprocess.run(
        [sys.executable, str(ROOT / "launch_grid.py"), str(grid), *sets],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "submitted 1 point(s)" in again.stdout
    table = pd.read_csv(workdir / "runs" / "lr-seed" / "_results" / "lr-seed.csv")
    assert len(table) == 4 and table["run"].is_unique and table["demo_pairs"].notna().all()


def check_grid_on_slurm(launcher: subprocess.Popen, log: Path, workdir: Path) -> None:
    """The first launch: holds, a cancelled point, a preempted one that requeues and ends as an uninterrupted run."""
    runs = workdir / "runs" / "lr-seed"
    jobs_file = runs / "_grid" / "jobs.json"
    jobs = wait_for(lambda: jobs_file.is_file() and json.loads(jobs_file.read_text()), "the job array")
    assert len(jobs) == 4
    names = sorted(jobs)
    # every job is held; those still pending wait for a person: the launcher names them and says how to release them
    for job in jobs.values():
        subprocess.run(["scontrol", "hold", job], capture_output=True, timeout=60)
    state = {n: slurm("squeue", "-h", "-r", "-j", jobs[n], "-o", "%T %r").strip() for n in names}
    held = [n for n in names if state[n].startswith("PENDING") and "held" in state[n].lower()]
    assert held, f"no job was still pending to hold (two CPUs, four jobs): {state}"
    wait_for(lambda: all(f"{n}: job {jobs[n]} is held by SLURM (" in log.read_text() for n in held),
             f"the launcher to report the held jobs ({state})", timeout=60)
    told = log.read_text()
    assert f"scontrol release {jobs[held[0]]}" in told
    assert not any(f"{n}: job {jobs[n]} is held" in told for n in names if n not in held), state
    for n in names:
        subprocess.run(["scontrol", "release", jobs[n]], capture_output=True, timeout=60)
    preempted, cancelled = names[0], names[1]
    subprocess.run(["scancel", jobs[cancelled]], check=True)
    wait_for(lambda: step_reached(runs / preempted, 15), f"{preempted} to reach step 15")
    subprocess.run(["scancel", "--signal=USR2", jobs[preempted]], check=True)
    deadline = time.time() + 600
    while launcher.poll() is None and time.time() < deadline:
        release_requeued(jobs[preempted])
        time.sleep(1)
    if launcher.poll() is None:
        queue = subprocess.run(["squeue", "-o", "%i %T %r"], capture_output=True, text=True, timeout=60).stdout
        raise AssertionError(f"the launcher had not ended 600 s after the preemption; the queue:\n{queue}\n"
                             f"its output:\n{log.read_text()[-3000:]}")
    out = log.read_text()
    assert launcher.returncode == 1, out[-3000:]
    assert f"incomplete: {cancelled}" in out and "1 point(s) incomplete" in out

    info = json.loads((runs / preempted / "run.json").read_text())
    assert len(info["attempts"]) == 2 and info["attempts"][1]["resumed_from"], info["attempts"]
    assert info["attempts"][1]["slurm"].get("SLURM_RESTART_COUNT") == "1", info["attempts"][1]  # the same job, requeued
    # the same config run here without interruption ends with the same weights
    config = yaml.safe_load((runs / preempted / "config.yaml").read_text())
    reference = workdir / "reference.yaml"
    config["output"].update(dir=str(workdir / "ref"), name="reference")
    reference.write_text(yaml.safe_dump(config))
    ok(run_cli("train", str(reference)))
    assert_bitwise_equal(
        weights(runs / preempted / "model"), weights(workdir / "ref" / "lr-seed" / "reference" / "model")
    )


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_ctrl_c_leaves_a_slurm_grids_job_running_and_the_same_command_waits_for_it(cluster, workdir, demo_root,
                                                                                   cache_dir, monkeypatch):
    """Ctrl-C stops the launcher alone: its line says the submitted jobs go on, and they do; the same command waits
    for them instead of submitting them again. A Ctrl-C that a finalizer swallowed while the launcher waited (the
    class: tests/test_interrupts.py) stops it too, at its next look at the queue. The job is suspended while the
    launchers are stopped, so that it cannot end before them."""
    import signal
    import types

    import launch_grid
    from grid import executors

    grid = write_grid(workdir, "name: stop\nstages:\n  - name: grid\n    recipes: [config/runs/demo-student.yaml]\n"
                               f"    axes: {{train.seed: [1]}}\ntasks: [demo_pairs]\neval_data_dir: {demo_root}\n"
                               "executor: {kind: slurm, cpus_per_task: 1, time_min: 20}\n")
    sets = [str(grid), *data_sets(demo_root, cache_dir), "--set", "train.max_steps=400", "--set",
            "train.save_steps=100", "--set", "train.eval_steps=100", "--set", "train.logging_steps=1"]
    runs = workdir / "runs" / "stop"
    line = ("runs/stop: interrupted; its submitted jobs go on (squeue lists them); the same command waits for them "
            "again and starts what is left")
    waiting = types.SimpleNamespace(sleep=time.sleep, time=time.time)  # the executors' clock alone
    monkeypatch.setattr(executors, "time", waiting)
    seen = swallow_a_ctrl_c(monkeypatch, waiting, "sleep", at=2)
    monkeypatch.chdir(workdir)
    first = call(launch_grid.main, *sets)  # in this process: the swallowing finalizer is injected here
    assert seen["swallowed"] and seen["calls"] == 2 and first.returncode == 130, (seen, first.stderr[-3000:])
    assert first.stderr.splitlines()[-1] == line and "submitted 1 point(s)" in first.stdout, first.stderr[-3000:]
    job = json.loads((runs / "_grid" / "jobs.json").read_text())["student__train.seed=1"]
    monkeypatch.undo()
    state = lambda: slurm("squeue", "-h", "-j", job, "-o", "%T").strip()  # noqa: E731
    wait_for(lambda: state() == "RUNNING", f"job {job} to start (it is {state()})")
    slurm("scontrol", "suspend", job)

    with launching(workdir, *sets) as (second, log):  # a real Ctrl-C, sent to the launcher alone
        wait_for(lambda: f"job {job} " in log.read_text() and "waiting for it" in log.read_text(), "the reattach")
        second.send_signal(signal.SIGINT)
        second.wait(timeout=120)
    assert second.returncode == -signal.SIGINT and log.read_text().strip().splitlines()[-1] == line, log.read_text()
    assert "submitted 1 point" not in log.read_text() and state() == "SUSPENDED", log.read_text()

    slurm("scontrol", "resume", job)
    third = subprocess.run([sys.executable, str(ROOT / "launch_grid.py"), *sets], cwd=workdir, capture_output=True,
                           text=True, timeout=600)
    assert third.returncode == 0 and "submitted 1 point" not in third.stdout, third.stderr[-3000:]
    info = json.loads((runs / "student__train.seed=1" / "run.json").read_text())
    assert info["status"] == "done" and len(info["attempts"]) == 1, info  # one job, never stopped
    assert json.loads((runs / "_grid" / "jobs.json").read_text()) == {"student__train.seed=1": job}
    assert (runs / "student__train.seed=1" / "eval" / "demo_pairs.json").is_file()


@pytest.mark.parametrize("setting, key, reason", [
    ("executor.partition=nope", "executor.partition", "invalid partition specified: nope"),
    ("executor.gpus_per_node=8", "executor.gpus_per_node", "Invalid generic resource (gres) specification"),
    ("executor.mem_gb=100000", "executor.mem_gb", "Memory specification can not be satisfied"),
])
def test_a_job_array_sbatch_refuses_is_one_error_naming_the_key(cluster, workdir, demo_root, cache_dir, monkeypatch,
                                                                 setting, key, reason):
    """What the cluster cannot grant is refused by sbatch at submission: one error line with the executor key and
    sbatch's reason, exit 2, nothing submitted and nothing recorded, so the fixed command runs as if fresh."""
    import launch_grid

    grid = write_grid(workdir, SLURM_GRID.replace("DEMO", str(demo_root)))
    before = slurm("squeue", "-h", "-o", "%i")
    monkeypatch.chdir(workdir)  # in this process: no interpreter start per case
    refused = call(launch_grid.main, str(grid), setting, *data_sets(demo_root, cache_dir))
    error = assert_user_error(refused, f"error: {key}: sbatch refused stage 'grid' (", reason, "then run the same")
    rest = refused.stderr.replace(error, "")
    assert "Traceback" not in rest and "sbatch: error" not in rest, refused.stderr
    assert not (workdir / "runs" / "lr-seed" / "_grid" / "jobs.json").exists()
    assert slurm("squeue", "-h", "-o", "%i") == before
    left = [p.name for p in (workdir / "runs" / "lr-seed" / "_grid").rglob("*") if p.suffix in (".pkl", ".sh")]
    assert left == []  # submitit's pickled jobs and sbatch script for the refused array are not left behind


def test_a_job_that_can_never_start_is_named_with_what_to_fix(cluster, workdir, demo_root, cache_dir):
    """More CPU cores per task than any node has: sbatch accepts the array (this cluster does not set
    EnforcePartLimits) and SLURM keeps it PENDING (PartitionConfig) for ever. The launcher says so once per job, with
    the keys to fix and the command that ends the wait; cancelled, the points are reported incomplete."""
    grid = write_grid(workdir, SLURM_GRID.replace("DEMO", str(demo_root)))
    args = [str(grid), "executor.cpus_per_task=64", *data_sets(demo_root, cache_dir)]
    with launching(workdir, *args) as (launcher, log):
        jobs_file = workdir / "runs" / "lr-seed" / "_grid" / "jobs.json"
        jobs = wait_for(lambda: jobs_file.is_file() and json.loads(jobs_file.read_text()), "the job array", 120)
        said = wait_for(lambda: all(f"{n}: job {j} cannot start as submitted (PartitionConfig: " in log.read_text()
                                    for n, j in jobs.items()) and log.read_text(), "the launcher to name them", 120)
        assert f"executor.cpus_per_task, gpus_per_node, mem_gb or nodes); it stays pending until someone runs " \
               f"scancel {jobs[sorted(jobs)[0]]}; then fix the executor keys" in said
        for job in jobs.values():
            subprocess.run(["scancel", job], check=True, timeout=60)
        launcher.wait(timeout=300)
    out = log.read_text()
    assert launcher.returncode == 1 and "4 point(s) incomplete" in out, out[-3000:]
    assert sum(out.count(f"job {j} cannot start") for j in jobs.values()) == 4  # said once each, not every look


def free_port() -> int:
    """A port nothing listens on."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def out_of_reach(cluster, folder: Path, *daemons: str) -> str:
    """A copy of the cluster's slurm.conf whose clients cannot reach the given daemons ("ctld": squeue, scontrol;
    "dbd": sacct): each one's port is one nothing listens on. Returns the copy's path, for SLURM_CONF."""
    keys = {"ctld": "SlurmctldPort", "dbd": "AccountingStoragePort"}
    conf = Path(cluster["SLURM_CONF"]).read_text()
    for daemon in daemons:
        line = f"{keys[daemon]}={slurm_cluster.PORTS[daemon]}"
        assert line in conf, line
        conf = conf.replace(line, f"{keys[daemon]}={free_port()}")
    path = folder / f"slurm-without-{'-'.join(daemons)}.conf"
    path.write_text(conf)
    return str(path)


def test_a_job_is_gone_only_when_the_controller_says_so(cluster, tmp_path, monkeypatch):
    """The launcher gives up on a job SLURM no longer knows (squeue: "Invalid job id"), never on one it cannot ask
    about: a controller out of reach (a restart, an outage) says nothing of the job, and the job stays waited for."""
    import submitit

    from grid.executors import _vanished

    never = submitit.SlurmJob(folder=str(tmp_path / "%j"), job_id="999999")  # no such job: sacct has no state for it
    also = submitit.SlurmJob(folder=str(tmp_path / "%j"), job_id="999998")
    assert never.state == "UNKNOWN"
    assert _vanished({"p": never}) == ["p"]  # squeue: "Invalid job id"
    assert _vanished({"p": never, "q": also}) == ["p", "q"]  # squeue: nothing listed
    monkeypatch.setenv("SLURM_CONF", out_of_reach(cluster, tmp_path, "ctld"))
    probe = subprocess.run(["squeue", "-h", "-j", "999999"], capture_output=True, text=True, timeout=120)
    assert probe.returncode != 0 and "Unable to contact slurm controller" in probe.stderr, probe.stderr
    assert _vanished({"p": never}) == [] and _vanished({"p": never, "q": also}) == []


def test_a_rerun_waits_for_a_job_sacct_cannot_see_instead_of_submitting_it_again(cluster, tmp_path, monkeypatch,
                                                                                   capsys):
    """Running the launcher again reattaches to a point's job that SLURM still runs, also while sacct has no state
    for it (slurmdbd down, or not yet recorded): the controller is asked too. A job neither can account for is
    waited on, not submitted twice; one the controller says is gone is submitted again."""
    import submitit

    from grid.config import ExecutorConfig
    from grid.executors import _still_there, run_slurm
    from grid.plan import Point
    from grid.report import Reporter

    # a jobs.json that cannot be read is refused in one line: ignoring it would submit its points a second time
    from common.errors import exit_on_user_error

    point = Point(grid="g", stage="s", name="p", recipe="config/runs/demo.yaml", kind="train", axes={},
                  overrides={}, run=str(tmp_path / "g" / "p"), tasks=[])
    (tmp_path / "_grid").mkdir()
    queued = slurm("squeue", "-h", "-o", "%i").split()
    for damage in (b'{"p": ', b"[]", b'{"p": 12}'):
        (tmp_path / "_grid" / "jobs.json").write_bytes(damage)
        launch = exit_on_user_error(lambda _: run_slurm([point], tmp_path, ExecutorConfig(kind="slurm"),
                                                        Reporter("s", 1), wait=False))
        assert_user_error(call(launch), f"{tmp_path / '_grid' / 'jobs.json'}: the grid's submitted SLURM jobs cannot "
                          "be read", "see squeue")
    assert slurm("squeue", "-h", "-o", "%i").split() == queued  # nothing was submitted

    running = sbatch("--wrap", "sleep 300", f"--output={tmp_path}/sleep-%j.out")
    try:
        wait_for(lambda: slurm("squeue", "-h", "-j", running, "-o", "%T").strip() == "RUNNING", "the job to run")
        monkeypatch.setenv("SLURM_CONF", out_of_reach(cluster, tmp_path, "dbd"))
        probe = subprocess.run(["sacct", "-j", running], capture_output=True, text=True, timeout=120)
        assert probe.returncode != 0, probe.stdout
        job = submitit.SlurmJob(folder=str(tmp_path / "%j"), job_id=running)
        assert job.state == "UNKNOWN"  # submitit bypasses sacct's error
        gone = submitit.SlurmJob(folder=str(tmp_path / "%j"), job_id="999999")
        assert _still_there({"p": job, "q": gone}) == {"p": "is still RUNNING (squeue; sacct has no live state for it)"}
        assert _still_there({"q": gone}) == {}

        (tmp_path / "_grid" / "jobs.json").write_text(json.dumps({"p": running}))
        capsys.readouterr()
        assert run_slurm([point], tmp_path, ExecutorConfig(kind="slurm"), Reporter("s", 1), wait=False) == []
        said = capsys.readouterr().out
        assert f"p: job {running} is still RUNNING (squeue; sacct has no live state for it); waiting for it" in said
        assert "submitted" not in said
        assert json.loads((tmp_path / "_grid" / "jobs.json").read_text()) == {"p": running}

        monkeypatch.setenv("SLURM_CONF", out_of_reach(cluster, tmp_path, "dbd", "ctld"))
        job = submitit.SlurmJob(folder=str(tmp_path / "%j"), job_id=running)
        assert _still_there({"p": job}) == {"p": "may still run (sacct has no state for it and squeue did not answer)"}
    finally:
        monkeypatch.setenv("SLURM_CONF", cluster["SLURM_CONF"])
        subprocess.run(["scancel", running], timeout=60)
    queued = slurm("squeue", "-h", "-o", "%i %j").splitlines()
    assert not [line for line in queued if line.split()[0] != running], queued  # nothing was submitted
    wait_for(lambda: states(running).get(running, "").startswith("CANCELLED"), "sacct to record the cancellation")
    submitit.SlurmJob.watcher.update()  # what a new launcher would read
    assert _still_there({"p": submitit.SlurmJob(folder=str(tmp_path / "%j"), job_id=running)}) == {}


def sbatch(*args: str, env: dict | None = None) -> str:
    """Submit from the repository root, as the templates expect; returns the job id."""
    proc = subprocess.run(
        ["sbatch", "--parsable", "--gpus-per-node=0", "--cpus-per-task=1", "--time=20", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "BABYDISTILL_VENV": str(ROOT / ".venv"), **(env or {})},
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def states(*jobs: str) -> dict[str, str]:
    out = slurm("sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(jobs))
    return dict(line.split("|")[:2] for line in out.splitlines() if line)


def wait_jobs(*jobs: str, timeout: float = 900) -> dict[str, str]:
    final = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL")

    def finished():
        s = states(*jobs)
        queued = slurm("squeue", "-h", "-o", "%i").split()
        return s if s and not queued and all(v.split()[0] in final for v in s.values()) else None
    return wait_for(finished, f"jobs {jobs}", timeout)


def test_templates_outside_slurm_say_how_to_run_them(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    for template in sorted((ROOT / "slurm").glob("*.slurm")):
        proc = subprocess.run(
            ["bash", str(template), "config/runs/demo-kd.yaml"], cwd=tmp_path, capture_output=True, text=True, env=env
        )
        assert proc.returncode == 2, (template.name, proc.stderr)
        assert proc.stderr.startswith("error: ") and f"sbatch slurm/{template.name}" in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and not list(tmp_path.iterdir())


def test_every_template_runs_under_sbatch(cluster, tmp_path, demo_root, cache_dir):
    runs = tmp_path / "runs"
    data = [
        f"data.train_dir={demo_root / 'train'}",
        f"data.dev_dir={demo_root / 'dev'}",
        f"data.cache_dir={cache_dir}",
        f"output.dir={runs}",
        "train.max_steps=60",
        "train.save_steps=10",
        "train.eval_steps=10",
        "train.logging_steps=1",
        "optim.warmup_steps=5",
    ]
    teachers = {"BABYDISTILL_RECIPES": "config/runs/demo-teacher.yaml config/runs/demo-teacher-llama.yaml"}
    out = str(tmp_path / "slurm-%x-%j.out")
    baselines = sbatch("--array=0-1", f"--output={out}", "slurm/train_baselines.slurm", *data, env=teachers)
    # preemption through the template: SIGUSR2 to the batch shell, a checkpoint, a requeue, a resume
    teacher = runs / "demo" / "teacher"
    wait_for(lambda: step_reached(teacher, 15), "the teacher to reach step 15")
    subprocess.run(["scancel", "--batch", "--signal=USR2", f"{baselines}_0"], check=True)
    wait_for(
        lambda: release_requeued(f"{baselines}_0") or (teacher / "DONE").is_file(), "the requeued teacher", timeout=600
    )

    grid = tmp_path / "grid.yaml"
    grid.write_text(
        f"name: lr\noutput_dir: {tmp_path / 'gridruns'}\nresults_dir: {tmp_path / 'results'}\nstages:\n  - name: lr\n "
        "   recipes: [config/runs/demo-student.yaml]\n"
        f"    axes: {{optim.lr: [1.0e-3, 3.0e-3]}}\ntasks: [demo_pairs]\neval_data_dir: {demo_root}\n"
    )
    evaldata = tmp_path / "evaldata"  # a few BLiMP files (the whole of it takes minutes on one core) and EWoK
    for family, count in (("blimp_filtered", 3), ("blimp_supplement", 1)):
        (evaldata / family).mkdir(parents=True)
        for f in sorted((SHARED / family).glob("*.jsonl"))[:count]:
            (evaldata / family / f.name).symlink_to(f)
    (evaldata / "ewok_filtered.zip").symlink_to(SHARED / "ewok_filtered.zip")
    after = f"--dependency=afterok:{baselines}"
    kd_teachers = f"distill.teachers=[{{path: {runs}/demo/teacher/model}}, {{path: {runs}/demo/teacher-llama/model}}]"
    jobs = [
        sbatch(after, f"--output={out}", "slurm/distill.slurm", "config/runs/demo-kd.yaml", *data, kd_teachers),
        sbatch(f"--output={out}", "slurm/train_wml.slurm", "config/runs/demo-wml.yaml", *data, "wml.eval_tasks=[]"),
        sbatch(
            f"--output={out}",
            "slurm/train_gridsearch_finalist.slurm",
            "config/runs/demo-student.yaml",
            *data,
            "output.name=final",
        ),
        sbatch(
            after,
            "--array=0",
            f"--output={out}",
            "slurm/eval-blimp_baselines.slurm",
            f"output.dir={runs}",
            f"--data-dir={evaldata}",
            env={"BABYDISTILL_RECIPES": "config/runs/demo-teacher.yaml"},
        ),
        sbatch(
            after,
            "--array=0",
            f"--output={out}",
            "slurm/eval-all_baselines.slurm",
            f"output.dir={runs}",
            f"--data-dir={evaldata}",
            "--ewok-password=ewok",
            env={"BABYDISTILL_RECIPES": "config/runs/demo-teacher-llama.yaml"},
        ),
        sbatch(
            after,
            "--array=0-1",
            f"--output={out}",
            "slurm/finetune.slurm",
            str(teacher / "model"),
            f"--data-dir={demo_root / 'finetune'}",
            "--epochs=6",
            env={"BABYDISTILL_FINETUNE_TASKS": "demo_phenomenon demo_acceptability"},
        ),
        sbatch(
            f"--output={out}",
            "slurm/grid.slurm",
            str(grid),
            *[a for d in data[:3] for a in ("--set", d)],
            "--set",
            "train.max_steps=20",
            "--set",
            "train.eval_steps=10",
            "--set",
            "train.save_steps=10",
        ),
    ]
    # the fine-tuning too: SIGUSR2 after its first epoch's checkpoint, a requeue, and the rest of its epochs
    tuning = teacher / "eval" / "finetune" / "demo_phenomenon"
    wait_for(lambda: any((tuning / "trainer").glob("checkpoint-*/COMPLETE")), "a fine-tuning checkpoint", timeout=600)
    subprocess.run(["scancel", "--batch", "--signal=USR2", f"{jobs[5]}_0"], check=True)
    wait_for(lambda: release_requeued(f"{jobs[5]}_0") or (teacher / "eval" / "demo_phenomenon.json").is_file(),
             "the requeued fine-tuning", timeout=600)
    wait_jobs(baselines, *jobs)
    assert all(v == "COMPLETED" for v in states(baselines, *jobs).values()), states(baselines, *jobs)
    logs = b"".join(p.read_bytes() for p in tmp_path.glob("slurm-finetune-*.out"))
    assert b"demo_phenomenon: continuing from " + str(tuning / "trainer").encode() in logs, logs[-3000:]
    assert sum("eval_loss" in line for line in (tuning / "history.jsonl").read_text().splitlines()) == 6
    info = json.loads((teacher / "run.json").read_text())
    assert len(info["attempts"]) == 2 and info["attempts"][1]["resumed_from"]
    assert b"requeueing job" in b"".join(p.read_bytes() for p in (teacher / "logs").glob("*.log"))
    for run in ("teacher", "teacher-llama", "kd", "final"):
        assert (runs / "demo" / run / "DONE").is_file(), run
        assert list((runs / "demo" / run / "logs").glob("slurm-*.log")), f"{run}: no log in the run directory"
    assert (runs / "demo-wml" / "wml" / "DONE").is_file()
    assert yaml.safe_load((runs / "demo" / "final" / "config.yaml").read_text())["data"]["train_fraction"] == 1.0
    for run, tasks in (("teacher", ("blimp_filtered", "blimp_supplement")),
                       ("teacher-llama", ("blimp_filtered", "blimp_supplement", "ewok_filtered"))):
        for task in tasks:
            summary = json.loads((runs / "demo" / run / "eval" / f"{task}.json").read_text())
            assert summary["accuracy"] > 0 and summary["model"].startswith(str(runs)), (run, task, summary.get("model"))
    tuned = json.loads((teacher / "eval" / "demo_phenomenon.json").read_text())
    assert tuned["accuracy"] > 0.6 and tuned["pool"] == "last", tuned  # five classes: chance is 0.2
    assert len(json.loads((teacher / "eval" / "finetune" / "demo_phenomenon" / "predictions.json").read_text())
               ["demo_phenomenon"]["predictions"]) == 200
    table = pd.read_csv(tmp_path / "results" / "lr.csv")
    assert len(table) == 2 and table["demo_pairs"].notna().all()
    assert list((tmp_path / "gridruns" / "lr" / "logs").glob("slurm-*.log"))


def test_deepspeed_zero2_on_two_cpu_ranks_under_srun_resumes_after_sigusr2(cluster, tmp_path, demo_root, cache_dir):
    """train_baselines.slurm with BABYDISTILL_DEEPSPEED: torchrun starts 2 CPU ranks (gloo) under srun; SIGUSR2
    mid-training gives a ZeRO checkpoint, a requeue and a resume that ends like an uninterrupted run."""
    runs = tmp_path / "runs"
    data = [
        f"data.train_dir={demo_root / 'train'}",
        f"data.dev_dir={demo_root / 'dev'}",
        f"data.cache_dir={cache_dir}",
        "train.max_steps=40",
        "train.save_steps=10",
        "train.eval_steps=10",
        "train.logging_steps=1",
        "optim.warmup_steps=5",
    ]
    env = {
        "BABYDISTILL_RECIPES": "config/runs/demo-teacher.yaml",
        "BABYDISTILL_DEEPSPEED": "config/deepspeed/zero2.json",
        "BABYDISTILL_PROCS_PER_NODE": "2",
    }
    out = str(tmp_path / "slurm-%x-%j.out")
    reference = sbatch("--array=0", "--cpus-per-task=2", f"--output={out}", "slurm/train_baselines.slurm", *data,
                       f"output.dir={tmp_path / 'reference'}", env=env)
    wait_jobs(reference)
    job = sbatch(
        "--array=0",
        "--cpus-per-task=2",
        f"--output={out}",
        "slurm/train_baselines.slurm",
        *data,
        f"output.dir={runs}",
        env=env,
    )
    run = runs / "demo" / "teacher"
    wait_for(lambda: step_reached(run, 15), "the ZeRO run to reach step 15")
    subprocess.run(["scancel", "--batch", "--signal=USR2", f"{job}_0"], check=True)
    wait_for(lambda: release_requeued(f"{job}_0") or (run / "DONE").is_file(), "the requeued ZeRO run", timeout=600)
    wait_jobs(reference, job)
    assert set(states(reference, job).values()) == {"COMPLETED"}, states(reference, job)
    info = json.loads((run / "run.json").read_text())
    assert [a["world_size"] for a in info["attempts"]] == [2, 2] and info["attempts"][1]["resumed_from"], info[
        "attempts"
    ]
    assert "checkpoint-" in info["attempts"][1]["resumed_from"]  # (rotated away since: save_total_limit)
    assert list((run / "checkpoints").glob("checkpoint-*/global_step*/*optim_states.pt")), (
        "not DeepSpeed ZeRO checkpoints"
    )
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["deepspeed"] == "config/deepspeed/zero2.json"
    assert_bitwise_equal(weights(run / "model"), weights(tmp_path / "reference" / "demo" / "teacher" / "model"))


def test_scancel_stops_a_two_rank_training_after_a_checkpoint_and_sbatch_again_resumes(cluster, tmp_path, demo_root,
                                                                                     cache_dir):
    """scancel sends SIGTERM to every process of the job (as a preemption without SIGUSR2 does, and a time limit
    without --signal), then SIGKILL after KillWait (30 s here). Both ranks under torchrun end the step they are in,
    save one checkpoint together and end; run.json says `terminated` at that step. Until 2026-12-04 they died at once
    and the steps since the last checkpoint were lost. The same sbatch again resumes from that checkpoint."""
    runs = tmp_path / "runs"
    data = [f"data.train_dir={demo_root / 'train'}", f"data.dev_dir={demo_root / 'dev'}",
            f"data.cache_dir={cache_dir}", f"output.dir={runs}", "train.max_steps=400", "train.save_steps=1000",
            "train.eval_steps=1000", "train.logging_steps=1", "optim.warmup_steps=5"]
    env = {"BABYDISTILL_RECIPES": "config/runs/demo-teacher.yaml", "BABYDISTILL_PROCS_PER_NODE": "2"}
    out = str(tmp_path / "slurm-%x-%j.out")
    job = sbatch("--array=0", "--cpus-per-task=2", f"--output={out}", "slurm/train_baselines.slurm", *data, env=env)
    run = runs / "demo" / "teacher"
    wait_for(lambda: step_reached(run, 15), "the two-rank run to reach step 15")
    subprocess.run(["scancel", f"{job}_0"], check=True)
    wait_jobs(job)
    assert states(job)[f"{job}_0"].startswith("CANCELLED"), states(job)
    info = json.loads((run / "run.json").read_text())
    stopped = info.get("step")
    log = b"".join(p.read_bytes() for p in (run / "logs").glob("slurm-*.log")).decode()
    assert info["status"] == "terminated" and stopped >= 15, (info["status"], log[-3000:])
    assert (run / "checkpoints" / f"checkpoint-{stopped}" / "COMPLETE").is_file()  # save_steps=1000: the stop's own
    assert f"{run}: stopped by SIGTERM after saving checkpoint-{stopped}; rerun with --resume" in log
    assert "Traceback" not in log, log[-3000:]
    again = sbatch("--array=0", "--cpus-per-task=2", f"--output={out}", "slurm/train_baselines.slurm", *data, env=env)
    wait_jobs(again)
    assert states(again)[f"{again}_0"] == "COMPLETED", states(again)
    info = json.loads((run / "run.json").read_text())
    assert info["attempts"][1]["resumed_from"].endswith(f"checkpoint-{stopped}") and (run / "DONE").is_file()
