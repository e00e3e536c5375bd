"""On a real one-node SLURM cluster (tests/slurm_cluster.py; .ci/run installs the Debian packages):
launch_grid.py with the slurm executor runs a 2 x 2 grid as one submitit job array; a point
preempted mid-training (SIGUSR2, as before a time limit) checkpoints, requeues and finishes
with the weights of an uninterrupted run; a cancelled point is reported incomplete while the
others finish, and running the launcher again finishes it."""
from __future__ import annotations

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
from conftest import ROOT, assert_bitwise_equal, ok, run_cli, weights
from test_grid import TWO_AXES, data_sets, workdir  # noqa: F401  (the fixture)

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


def release_requeued(job: str) -> None:
    """A requeued job waits about 121 s (BeginTime); start it now."""
    state = slurm("squeue", "-h", "-j", job, "-o", "%T %r").strip()
    if state.startswith("PENDING") and "BeginTime" in state:
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True)


SLURM_GRID = TWO_AXES.replace("executor: {kind: debug}", "executor: {kind: slurm, cpus_per_task: 1, time_min: 20, signal_delay_s: 60}") \
                     .replace("select: {stage: grid, metric: demo_pairs, finalists: 1, overrides: {data.train_fraction: 1.0}}\n", "")


def test_grid_on_slurm_survives_preemption_and_cancellation(cluster, workdir, demo_root, cache_dir):  # noqa: F811
    grid = workdir / "grid.yaml"
    grid.write_text(SLURM_GRID.replace("DEMO", str(demo_root)))
    sets = [*data_sets(demo_root, cache_dir), "--set", "train.max_steps=80", "--set", "train.logging_steps=1"]
    launcher = subprocess.Popen([sys.executable, str(ROOT / "launch_grid.py"), str(grid), *sets], cwd=workdir,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    runs = workdir / "runs" / "lr-seed"
    jobs_file = runs / "_grid" / "jobs.json"
    jobs = wait_for(lambda: jobs_file.is_file() and json.loads(jobs_file.read_text()), "the job array")
    assert len(jobs) == 4
    names = sorted(jobs)
    preempted, cancelled = names[0], names[1]
    subprocess.run(["scancel", jobs[cancelled]], check=True)
    wait_for(lambda: step_reached(runs / preempted, 15), f"{preempted} to reach step 15")
    subprocess.run(["scancel", "--signal=USR2", jobs[preempted]], check=True)
    while launcher.poll() is None:
        release_requeued(jobs[preempted])
        time.sleep(1)
    out = launcher.stdout.read()
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
    assert_bitwise_equal(weights(runs / preempted / "model"), weights(workdir / "ref" / "lr-seed" / "reference" / "model"))

    again = subprocess.run([sys.executable, str(ROOT / "launch_grid.py"), str(grid), *sets], cwd=workdir, capture_output=True,
                           text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "submitted 1 point(s)" in again.stdout
    table = pd.read_csv(workdir / "results" / "lr-seed.csv")
    assert len(table) == 4 and table["run"].is_unique and table["demo_pairs"].notna().all()
