"""Nothing lost, nothing wrong: every bad input and fault of the issue "Nothing lost, nothing wrong", each
asserting the exit code, one `error:` line without a traceback, and byte-identical files that were there before.

Config-level refusals run the entry points in this process (`call`); anything that trains runs as a
subprocess, as a user would. Read-only folders and a full disk are real: small tmpfs mounts (`mounted`).
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from conftest import (ROOT, assert_bitwise_equal, assert_user_error, call, mounted, ok, run_cli, shared,
                      unfinished_left, weights)

DEMO = str(ROOT / "config" / "runs" / "demo-teacher.yaml")


# --------------------------------------------------------------------------- helpers

def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def no_traceback(proc: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, demo_root, cache_dir) -> Path:
    """A tiny trained causal LM (a real `python -m train` run) with its run directory around it."""
    out = tmp_path_factory.mktemp("bad-inputs-runs")
    ok(run_cli("train", DEMO, f"data.train_dir={demo_root / 'train'}", f"data.dev_dir={demo_root / 'dev'}",
               f"data.cache_dir={cache_dir}", f"output.dir={out}", "train.max_steps=20", "train.save_steps=10",
               "train.eval_steps=10", "optim.warmup_steps=5"))
    return out / "demo" / "teacher" / "model"


def model_copy(model_dir: Path, dest: Path) -> Path:
    shutil.copytree(model_dir, dest)
    return dest


def train_args(demo_root, cache_dir, out: Path, *extra: str) -> list[str]:
    return [
        DEMO,
        f"data.train_dir={demo_root / 'train'}",
        f"data.dev_dir={demo_root / 'dev'}",
        f"data.cache_dir={cache_dir}",
        f"output.dir={out}",
        "train.max_steps=20",
        "train.save_steps=10",
        "train.eval_steps=10",
        "optim.warmup_steps=5",
        *extra,
    ]


# --------------------------------------------------------------------------- 1. NaN is never scored as correct

def test_a_nan_model_is_refused_not_scored_perfect(model_dir, demo_root, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from eval.__main__ import main

    broken = model_copy(model_dir, tmp_path / "nan-model")
    tensors = load_file(str(broken / "model.safetensors"))
    save_file({k: torch.full_like(v, float("nan")) for k, v in tensors.items()}, str(broken / "model.safetensors"))
    proc = call(main, broken, "--tasks", "demo_pairs", "--data-dir", demo_root, "--no-progress")
    assert_user_error(proc, str(broken), "every score on task demo_pairs is NaN or infinite")
    assert not (broken / "eval" / "demo_pairs.json").exists()  # no result file marks it evaluated


def test_non_finite_items_count_wrong_and_the_files_stay_valid_json(tmp_path):
    import numpy as np

    from eval.report import decide, summarise, write_results
    from eval.tasks import Item, Task, TaskSpec

    items = [Item("para", i, f"x.jsonl:{i + 1}", "", [f"good {i}", f"bad {i}"], 0) for i in range(4)]
    task = Task("toy", TaskSpec(choices=["sentence_good", "sentence_bad"]), Path("toy.yaml"), items, "toy/*.jsonl")
    scores = np.array([[-1.0, -2.0], [float("nan"), -2.0], [-1.0, float("inf")], [-3.0, -2.0]])
    _, right, tied, bad = decide(scores, np.zeros(4, int))
    summary = summarise(task, scores, right, tied, bad)
    assert summary["accuracy"] == 0.25 and summary["non_finite"] == 2 and summary["subtasks"]["para"]["non_finite"] == 2
    files = write_results(tmp_path, task, scores, summary, {"model": "toy"})

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in a result file"))

    rows = [strict(line) for line in files["pairs"].read_text().split("\n") if line]
    assert [r["correct"] for r in rows] == [True, False, False, False]
    assert rows[1]["scores"] == [None, -2.0] and rows[1]["pred"] == -1 and rows[1]["non_finite"]
    assert strict(files["result"].read_text())["non_finite"] == 2
    assert strict(files["predictions"].read_text())["toy"]["para"]["predictions"][1]["pred"] is None
    # a correlation task (WUG) with a non-finite item has no rho, and its 2025 predictions carry null
    from eval.report import write_official

    wug = Task(
        "wug",
        TaskSpec(choice_list="sentences", metric="spearman", target="ratio"),
        Path("wug.yaml"),
        [
            Item(
                "wug", i, f"w.jsonl:{i + 1}", "", ["a", "b"], 0, sentences=["a", "b"], completions=["a", "b"], target=t
            )
            for i, t in enumerate([0.1, 0.5, 0.9, 0.3])
        ],
        "w/*.jsonl",
    )
    summary = summarise(wug, scores, *decide(scores, np.zeros(4, int))[1:])
    assert summary["metric"] == "spearman" and np.isnan(summary["score"]) and summary["non_finite"] == 2
    official = strict(write_official(tmp_path, wug, scores).read_text())["wug"]["predictions"]
    assert official[1] == {"id": "wug_1", "pred": None, "prob": None} and official[0]["prob"] > 0.5


# --------------------------------------------------------------------------- 2, 3. no folder of the user's is deleted

def test_cache_teachers_never_deletes_a_folder_it_did_not_write(tmp_path):
    from distill.__main__ import main

    teacher = tmp_path / "teacher"  # cache-teachers refuses before it needs a real teacher
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    before = snapshot(mine)
    recipe = tmp_path / "kd.yaml"
    recipe.write_text(yaml.safe_dump({"data": {"train_dir": str(tmp_path / "corpus")}, "distill": {
        "teachers": [{"path": str(teacher)}], "losses": {"ce": {"weight": 1.0}}}}))
    teacher.mkdir()
    proc = call(main, "cache-teachers", recipe, "--out", mine)
    assert_user_error(proc, f"--out {mine}", "not a teacher cache", "not replaced")
    assert snapshot(mine) == before
    # The temporary folder beside it is never taken from the user either.
    from distill.cache import PARTIAL
    from common.paths import remove_ours
    from common.errors import UserError

    partial = tmp_path / "out.partial"
    partial.mkdir()
    (partial / "notes.txt").write_text("mine too")
    with pytest.raises(UserError, match="is not an unfinished teacher cache"):
        remove_ours(partial, PARTIAL, "an unfinished teacher cache")
    assert (partial / "notes.txt").read_text() == "mine too"


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "x" * 256, '"a\\nb"', '"tab\\there"'])  # YAML escapes
def test_a_run_name_must_be_one_folder(name, tmp_path):
    from train.__main__ import main

    sibling = tmp_path / "runs" / "demo" / "teacher"
    sibling.mkdir(parents=True)
    (sibling / "keep.txt").write_text("a sibling run's file")
    proc = call(main, DEMO, f"output.dir={tmp_path / 'runs'}", f"output.name={name}", "--overwrite")
    assert_user_error(proc, "output.name", "command line")
    assert (sibling / "keep.txt").read_text() == "a sibling run's file"
    assert sorted(p.name for p in (tmp_path / "runs" / "demo").iterdir()) == ["teacher"]


def test_overwrite_removes_only_a_run_directory_of_ours(tmp_path, demo_root, cache_dir):
    from train.__main__ import main

    folder = tmp_path / "runs" / "demo" / "teacher"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("mine: true\n")  # looks like a run to a careless check
    (folder / "data.csv").write_text("1,2,3\n")
    before = snapshot(folder)
    proc = call(main, *train_args(demo_root, cache_dir, tmp_path / "runs"), "--overwrite")
    assert_user_error(proc, str(folder), "not a babydistill run directory", "choose another output.name")
    assert snapshot(folder) == before


# -------------------------------------------------------------- 5. one process per run directory, one launcher per grid


def test_a_second_process_on_a_run_is_refused_and_a_dead_ones_lock_is_taken_over(tmp_path, demo_root, cache_dir):
    from common.locks import FolderLock
    from train.__main__ import main

    run = tmp_path / "runs" / "demo" / "teacher"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time; sys.path.insert(0, sys.argv[1]); from common.locks import FolderLock; "
                "lock = FolderLock(sys.argv[2]); lock.__enter__(); print('held', flush=True); time.sleep(120)"
            ),
            str(ROOT),
            str(run),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = call(main, *train_args(demo_root, cache_dir, tmp_path / "runs"), "--resume")
        assert_user_error(proc, str(run), "another process is working on this run",
                          f"host {socket.gethostname()}, pid {holder.pid}, since")
        assert sorted(p.name for p in run.iterdir()) == ["LOCK"]  # nothing written
    finally:
        holder.kill()
        holder.wait()
    # The holder died without releasing: its LOCK file is still there and names it; the next run takes it over.
    assert f"pid {holder.pid}" in (run / "LOCK").read_text()
    lock = FolderLock(run)
    lock.acquire()
    assert f"pid {os.getpid()}" in (run / "LOCK").read_text()
    lock.release()
    assert not (run / "LOCK").exists()


OTHER_NODE = "host other-node, pid 4242, since 2026-12-04T10:00:00+00:00"  # a holder on another machine


def another_nodes_holder(lock: Path, beats: int | None = None) -> subprocess.Popen:
    """A process that plays a lock's holder on another node where flock is local to each machine: it holds no flock
    here, and rewrites `lock` as a holder does (OTHER_NODE and a beat count) every 0.1 s; after `beats` beats it
    releases the lock (removes the file), or with None it beats until killed."""
    lock.write_text(f"{OTHER_NODE}, beat 0\n")
    return subprocess.Popen([sys.executable, "-c", (
        "import os, sys, time\nn, last = 0, int(sys.argv[3])\nwith open(sys.argv[1], 'r+') as f:\n"
        "    while last < 0 or n < last:\n        n += 1\n"
        "        f.seek(0); f.write(f'{sys.argv[2]}, beat {n}\\n'); f.truncate(); f.flush(); time.sleep(0.1)\n"
        "os.remove(sys.argv[1])"), str(lock), OTHER_NODE, str(-1 if beats is None else beats)])


def test_a_lock_another_node_holds_is_refused_and_a_lost_nodes_is_taken_over(tmp_path, demo_root, cache_dir,
                                                                             monkeypatch, capsys):
    """Where flock is local to each machine (Lustre mounted with localflock, BeeGFS by default, NFSv3 with
    local_lock=flock), a holder on another node does not hold this machine's flock: it shows here only as a LOCK file
    that names another host and whose beat count changes. A process plays that holder, rewriting LOCK as a holder
    does, without flock. The run is refused in one line naming that host (until 2026-12-04 the lock was taken at once
    and both nodes trained into the run); once that process is killed (a lost node), the lock is taken over after
    three beats without a change, with a note."""
    import time

    from common.locks import FolderLock
    from train.__main__ import main

    monkeypatch.setenv("BABYDISTILL_LOCK_BEAT_S", "1")
    run = tmp_path / "runs" / "demo" / "teacher"
    run.mkdir(parents=True)
    other = OTHER_NODE
    beats = another_nodes_holder(run / "LOCK")
    try:
        proc = call(main, *train_args(demo_root, cache_dir, tmp_path / "runs"), "--resume")
        assert_user_error(proc, str(run), "another process is working on this run", f"({other})")
        assert sorted(p.name for p in run.iterdir()) == ["LOCK"]  # nothing written
        assert (run / "LOCK").read_text().startswith(other)  # its LOCK is left as it is
    finally:
        beats.kill()
        beats.wait()
    capsys.readouterr()
    lock = FolderLock(run)
    start = time.monotonic()
    lock.acquire()
    waited = time.monotonic() - start
    note = capsys.readouterr().err
    assert f"note: {run / 'LOCK'}: held by {other}, another machine; watching it for 3 s" in note
    assert f"note: {run / 'LOCK'}: taken over from {other}, whose lock has not changed for 3 s" in note
    assert 3 <= waited < 10
    assert (run / "LOCK").read_text().startswith(f"host {socket.gethostname()}, pid {os.getpid()}, since ")
    lock.release()
    assert not (run / "LOCK").exists()


def test_a_shared_cache_waits_for_its_holder_on_another_machine(tmp_path, monkeypatch, capsys):
    """The data cache's lock (`file_lock`, which a grid's jobs take in turn) waits for a holder on another node, seen
    only by its beats as above, until that holder releases it (4 s here, longer than the three beats a lost holder is
    given), saying once that it watches; it then holds the lock itself, and removes it at the end."""
    import time

    from common.locks import file_lock

    monkeypatch.setenv("BABYDISTILL_LOCK_BEAT_S", "1")
    lock = tmp_path / ".prepare.lock"
    other = OTHER_NODE
    beats = another_nodes_holder(lock, beats=40)
    try:
        start = time.monotonic()
        with file_lock(lock):
            waited = time.monotonic() - start
            assert lock.read_text().startswith(f"host {socket.gethostname()}, pid {os.getpid()}, since ")
        assert beats.wait(timeout=60) == 0
    finally:
        beats.kill()
        beats.wait()
    assert 3.5 <= waited < 15
    assert capsys.readouterr().err.count(f"note: {lock}: held by {other}, another machine; watching it") == 1
    assert not lock.exists()


@pytest.mark.parametrize("beat", ["abc", "0", "-1", "nan", "inf", "1e9"])
def test_a_lock_beat_that_is_not_a_duration_is_one_line(beat, model_dir, tmp_path, monkeypatch):
    """$BABYDISTILL_LOCK_BEAT_S (the tests' short beats): a beat of 0 would rewrite the lock file without pause."""
    from results.__main__ import main

    monkeypatch.setenv("BABYDISTILL_LOCK_BEAT_S", beat)
    assert_user_error(call(main, "collect", model_dir.parent.parent, "--out", tmp_path / "results"),
                      f"BABYDISTILL_LOCK_BEAT_S={beat}: give the seconds between a lock's beats, 0.01 to 3600")
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())


def test_a_lock_holder_beats_until_it_releases(tmp_path, monkeypatch):
    """The holder rewrites its LOCK every beat (that is how another node tells it is alive), and stops at release."""
    import threading
    import time

    from common.locks import FolderLock

    monkeypatch.setenv("BABYDISTILL_LOCK_BEAT_S", "0.1")
    lock = FolderLock(tmp_path)
    lock.acquire()
    first = (tmp_path / "LOCK").read_text()
    time.sleep(0.5)
    later = (tmp_path / "LOCK").read_text()
    assert first.endswith(", beat 0\n") and later != first and later.startswith(first.removesuffix("0\n"))
    assert int(later.rsplit(" ", 1)[1]) >= 2
    lock.release()
    assert not (tmp_path / "LOCK").exists()
    assert "lock beats" not in [t.name for t in threading.enumerate()]


def test_two_launchers_on_one_grid(workdir, tmp_path):
    from common.locks import FolderLock

    grid = workdir / "g.yaml"
    grid.write_text(f"name: g\noutput_dir: {tmp_path / 'runs'}\nexecutor: {{kind: debug}}\n"
                    f"stages:\n  - name: s\n    recipes: [config/runs/demo-teacher.yaml]\n")
    with FolderLock(tmp_path / "runs" / "g" / "_grid"):
        proc = subprocess.run(
            [sys.executable, str(ROOT / "launch_grid.py"), str(grid)],
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert_user_error(proc, "another launcher is running this grid", f"pid {os.getpid()}")
    assert not (tmp_path / "runs" / "g" / "teacher").exists()


# --------------------------------------------------------------------------- 6, 7. checkpoints checked whole

def test_a_checkpoint_with_a_missing_file_is_not_used_and_torn_saves_get_free_names(tmp_path, demo_root, cache_dir):
    args = train_args(demo_root, cache_dir, tmp_path / "runs", "train.max_steps=30")
    ok(run_cli("train", *args, "output.name=reference"))
    reference = weights(tmp_path / "runs" / "demo" / "reference" / "model")
    ok(run_cli("train", *args))
    run = tmp_path / "runs" / "demo" / "teacher"
    ckpts = run / "checkpoints"
    (run / "DONE").unlink()
    shutil.rmtree(run / "model")
    (ckpts / "checkpoint-30" / "optimizer.pt").unlink()  # AdamW would restart from zero without a word
    # An earlier torn save at the same step already holds the name corrupt-checkpoint-30.
    (ckpts / "corrupt-checkpoint-30").mkdir()
    (ckpts / "corrupt-checkpoint-30" / "model.safetensors").write_bytes(b"\0" * 10)
    proc = ok(run_cli("train", *args, "--resume"))
    assert "checkpoint-30 is unusable (optimizer.pt is missing)" in proc.stderr
    assert (
        "moved to corrupt-checkpoint-30.2" in proc.stderr and f"resuming from {ckpts / 'checkpoint-20'}" in proc.stdout
    )
    assert (ckpts / "corrupt-checkpoint-30" / "model.safetensors").read_bytes() == b"\0" * 10  # the older one is kept
    assert_bitwise_equal(weights(run / "model"), reference)


def test_checkpoint_validator_needs_every_part(tmp_path):
    from common.checkpoints import checkpoint_problem, required_files_problem, write_manifest

    ckpt = tmp_path / "checkpoint-5"
    ckpt.mkdir()
    for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"):
        (ckpt / name).write_text("x")
    assert required_files_problem(ckpt) is None
    for name, what in (("scheduler.pt", "scheduler state"), ("rng_state.pth", "random-number state"),
                       ("trainer_state.json", "trainer state"), ("optimizer.pt", "optimizer state")):
        data = (ckpt / name).read_bytes()
        (ckpt / name).unlink()
        assert what in required_files_problem(ckpt)
        (ckpt / name).write_bytes(data)
    write_manifest(ckpt)
    (ckpt / "rng_state.pth").write_text("xx")  # a different size than it was saved with
    assert "rng_state.pth has 2 bytes, not the 1" in checkpoint_problem(ckpt)


# ----------------------------------------------------------- 8, 9. grids: safe point names, checks before anything runs


def test_grid_point_names_are_safe_single_folders(workdir, tmp_path):
    from grid.plan import expand, load_grid

    grid = workdir / "g.yaml"
    long = "tokenizer_" + "x" * 300
    grid.write_text(yaml.safe_dump({"name": "g", "output_dir": str(tmp_path / "runs"), "stages": [
        {"name": "s", "recipes": ["config/runs/demo-teacher.yaml"],
         "axes": {"tokenizer.name_or_path": ["runs/demo/teacher/model/", "../../etc", long]}}]}))
    points = expand(load_grid(grid), grid)
    for p in points:
        assert "/" not in p.name and p.name not in (".", "..") and len(p.name.encode()) <= 255
        assert Path(p.run).parent == tmp_path / "runs" / "g"
    assert points[0].name.startswith("teacher__tokenizer.name_or_path=runs-demo-teacher-model__")
    assert points[0].axes == {"tokenizer.name_or_path": "runs/demo/teacher/model/"}  # the exact value, for grid.json
    assert len({p.name for p in points}) == 3


def test_two_spellings_of_one_value_are_one_point(workdir, tmp_path):
    grid = workdir / "g.yaml"
    grid.write_text(
        f"name: g\noutput_dir: {tmp_path / 'runs'}\nstages:\n  - name: s\n    recipes: "
        "[config/runs/demo-teacher.yaml]\n"
        f'    axes: {{optim.lr: [0.001, "1e-3"]}}\n'
    )
    proc = subprocess.run([sys.executable, str(ROOT / "launch_grid.py"), str(grid), "--dry-run"], cwd=workdir,
                          capture_output=True, text=True, timeout=300)
    assert_user_error(proc, "an axis lists one value twice", "0.001 and 1e-3", "remove the repeat")
    assert "output.name" not in proc.stderr


@pytest.mark.parametrize("change, needles", [
    ({"tasks": ["demo_pairs", "blimp_filterd"]}, ("tasks[1]", "unknown task 'blimp_filterd'", "blimp_filtered")),
    ({"output_dir": "FILE"}, ("output_dir", "is a file")),
    ({"name": ".."}, ("name", "'..'")),
    ({"stages[0].axes": {"optim.lr": [float("nan")]}}, ("optim.lr", "finite")),
    ({"stages[0].axes": {"train.seed": [-1]}}, ("train.seed", "at least 0")),
    ({"results_dir": "PAPER"}, ("paper/g.md: exists and was not written by python -m results collect",)),
])
def test_grid_checks_come_before_any_training(change, needles, workdir, tmp_path):
    raw = {
        "name": "g",
        "output_dir": str(tmp_path / "runs"),
        "stages": [{"name": "s", "recipes": ["config/runs/demo-teacher.yaml"]}],
    }
    for key, value in change.items():
        if key.startswith("stages[0]."):
            raw["stages"][0][key.split(".", 1)[1]] = value
        else:
            raw[key] = value
    if raw["output_dir"] == "FILE":
        (tmp_path / "file").write_text("x")
        raw["output_dir"] = str(tmp_path / "file")
    if raw.get("results_dir") == "PAPER":  # the user's own table where the grid's would go: refused before training
        (tmp_path / "paper").mkdir()
        (tmp_path / "paper" / "g.md").write_text("| by hand |\n")
        raw["results_dir"] = str(tmp_path / "paper")
    grid = workdir / "g.yaml"
    grid.write_text(yaml.safe_dump(raw))
    proc = subprocess.run([sys.executable, str(ROOT / "launch_grid.py"), str(grid), "executor.kind=debug"], cwd=workdir,
                          capture_output=True, text=True, timeout=300)
    assert_user_error(proc, *needles)
    assert not (tmp_path / "runs" / "g" / "teacher").exists()


def staged_grid(workdir: Path, tmp_path: Path, **change) -> Path:
    """Teachers, then students that read them from runs/demo/ (not there yet: the first stage writes them), then
    WML solo twins, then finalists of the students."""
    raw = {
        "name": "demo",  # the students' recipes read runs/demo/teacher*/model
        "output_dir": str(tmp_path / "runs"),
        "stages": [
            {"name": "teachers", "recipes": ["config/runs/demo-teacher.yaml", "config/runs/demo-teacher-llama.yaml"]},
            {"name": "students", "recipes": ["config/runs/demo-kd.yaml"], "axes": {"optim.lr": [0.003, 0.001]}},
            {"name": "twins", "recipes": ["config/runs/demo-wml.yaml"], "axes": {"wml.solo_peer": [0, 1]}},
        ],
        "select": {"stage": "students", "metric": "demo_pairs", "finalists": 1},
        "executor": {"kind": "debug"},
    }
    for key, value in change.items():
        if key in ("students", "twins"):
            next(s for s in raw["stages"] if s["name"] == key).update(value)
        else:
            raw[key] = {**raw.get(key, {}), **value}
    grid = workdir / "g.yaml"
    grid.write_text(yaml.safe_dump(raw))
    return grid


@pytest.mark.parametrize("change, needles", [
    ({"students": {"overrides": {"optim.min_lr": 0.002}}},
     ("stages[1] (students), recipe config/runs/demo-kd.yaml", "optim.min_lr: is 0.002, above optim.lr=0.001")),
    ({"students": {"overrides": {"distill.losses.logit_kd.weight": 0, "distill.losses.ce.weight": 0}}},
     ("stages[1] (students)", "distill.losses: no term has a positive weight")),
    ({"twins": {"axes": {"wml.solo_peer": [0, 3]}}},
     ("stages[2] (twins)", "wml.solo_peer: is 3 but there are only wml.num_peers=2 peers")),
    ({"select": {"overrides": {"optim.min_lr": 0.002}}},
     ("select.overrides on point kd__optim.lr=0.001", "optim.min_lr: is 0.002, above optim.lr=0.001")),
    ({"students": {"overrides": {"train.precision": "bf16"}}},  # the points run here, on a CPU
     ("stages[1] (students)", "train.precision: is bf16, which needs a GPU")),
])
def test_a_grid_checks_every_points_values_together_before_the_first_stage_trains(change, needles, workdir,
                                                                                  tmp_path, monkeypatch):
    """Values that do not go together (one from a recipe, one from a stage's axes or overrides, or from
    select.overrides for the finalists) fail the whole grid in one line before its first stage trains, not after."""
    import launch_grid

    monkeypatch.chdir(workdir)
    assert_user_error(call(launch_grid.main, staged_grid(workdir, tmp_path, **change)), *needles)
    assert not (tmp_path / "runs").exists()


def test_a_grid_leaves_to_each_point_what_only_it_can_check(workdir, tmp_path, monkeypatch):
    """The students' teachers come from the first stage, and a SLURM point's GPU is the node's: both plan. A teacher
    that is not there and that no earlier stage writes fails the launch before anything trains."""
    import launch_grid
    from grid.plan import check_other_runs, expand, load_grid

    monkeypatch.chdir(workdir)
    assert not (workdir / "runs" / "demo" / "teacher").exists()
    proc = ok(call(launch_grid.main, staged_grid(workdir, tmp_path), "--dry-run"))
    assert "6 point(s)" in proc.stdout, proc.stdout
    grid = staged_grid(workdir, tmp_path)
    check_other_runs(load_grid(grid), expand(load_grid(grid), grid), grid)  # the first stage writes both teachers
    typo = {"students": {"overrides": {"distill.teachers": [{"path": "runs/demo/teachr/model"}]}}}
    assert_user_error(call(launch_grid.main, staged_grid(workdir, tmp_path, **typo)),
                      "stages[1] (students), recipe config/runs/demo-kd.yaml", "distill.teachers[0].path",
                      "runs/demo/teachr/model does not exist and no earlier stage's point writes it")
    assert not (tmp_path / "runs").exists()
    solo = "runs/demo/wml__wml.solo_peer=0/model/peer-0-solo"  # the twins' stage writes it, after the students
    assert any(Path(p.run) == tmp_path / "runs" / "demo" / "wml__wml.solo_peer=0" and p.stage == "twins"
               for p in expand(load_grid(grid), grid))
    later = {"students": {"overrides": {"distill.teachers": [{"path": solo}]}}}
    assert_user_error(call(launch_grid.main, staged_grid(workdir, tmp_path, **later)), "stages[1] (students)",
                      f"{solo} does not exist and no earlier stage's point writes it")


def _finetune_folder(tmp_path: Path, bad_line: str | None) -> Path:
    folder = tmp_path / "glue"
    folder.mkdir()
    good = "".join(json.dumps({"sentence": f"the dog runs {i} .", "label": i % 2}) + "\n" for i in range(4))
    (folder / "demo_acceptability.train.jsonl").write_text(good + (bad_line + "\n" if bad_line else ""))
    (folder / "demo_acceptability.valid.jsonl").write_text(good)
    return folder


@pytest.mark.parametrize(
    "change, needles",
    [
        ({"finetune": ["demo_acceptabilty"]}, ("finetune[0]", "'demo_acceptabilty'", "demo_acceptability")),
        ({"finetune": ["demo_pairs"]}, ("finetune[0]", "not a fine-tuning task")),
        (
            {"finetune": ["demo_acceptability"], "tasks": ["demo_pairs", "demo_acceptability"]},
            ("tasks[1]", "unknown task"),
        ),
        (
            {"finetune": ["demo_acceptability"], "finetune_data_dir": "MISSING"},
            ("finetune_data_dir", "MISSING", "no such folder"),
        ),
        (
            {"finetune": ["demo_acceptability"], "finetune_data_dir": 'BAD:{"sentence": "x", "label": 7}'},
            ("demo_acceptability.train.jsonl:5", "label 7", "classes 0..1"),
        ),
        (
            {"finetune": ["demo_acceptability"], "finetune_data_dir": 'BAD:{"text": "x", "label": 0}'},
            ("demo_acceptability.train.jsonl:5", "no field 'sentence'"),
        ),
        (  # 4 examples: less than one batch of the task's 32, and the incomplete batch is dropped
            {"finetune": ["demo_acceptability"], "finetune_data_dir": "SMALL"},
            ("demo_acceptability.train.jsonl: 4 training example(s), fewer than the task's batch of 32",
             "nothing would be trained", "give it 32 or more examples"),
        ),
        (
            {"finetune": ["demo_acceptability"], "select": {"stage": "s", "metric": "demo_acceptabilty"}},
            ("select.metric", "demo_acceptability"),
        ),
    ],
)
def test_grid_finetune_checks_come_before_any_training(change, needles, workdir, tmp_path, monkeypatch):
    """A grid's fine-tuning tasks: an unknown name, a folder that is not there, a bad line in a split file, a training
    split smaller than one batch: one line, exit 2, before the first point trains (in-process: launch_grid.main)."""
    import launch_grid

    raw = {
        "name": "g",
        "output_dir": str(tmp_path / "runs"),
        "stages": [{"name": "s", "recipes": ["config/runs/demo-teacher.yaml"]}],
        "executor": {"kind": "debug"},
        **change,
    }
    folder = raw.get("finetune_data_dir", "")
    if folder == "MISSING":
        raw["finetune_data_dir"] = str(tmp_path / "MISSING")
    elif folder.startswith("BAD:"):
        raw["finetune_data_dir"] = str(_finetune_folder(tmp_path, folder[4:]))
    elif folder == "SMALL":
        raw["finetune_data_dir"] = str(_finetune_folder(tmp_path, None))
    grid = workdir / "g.yaml"
    grid.write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(workdir)
    assert_user_error(call(launch_grid.main, grid), *needles)
    assert not (tmp_path / "runs" / "g" / "teacher").exists()


def test_the_debug_executor_runs_every_point_when_one_breaks(tmp_path, monkeypatch, capsys):
    from grid import executors
    from grid.plan import Point
    from grid.report import Reporter

    ran = []

    def fake_run(point, verbose=False):  # the points themselves are stubs: what is tested is the executor's loop
        ran.append(point.name)
        if point.name == "b":
            raise ZeroDivisionError("a defect inside one point")

    monkeypatch.setattr(executors, "run_in_process", fake_run)
    points = [Point("g", "s", n, "r.yaml", "train", {}, {}, str(tmp_path / n), []) for n in "abc"]
    failed = executors.run_debug(points, tmp_path, None, Reporter("s", len(points)))
    assert ran == ["a", "b", "c"]
    assert [(p.name, why.split(" (")[0]) for p, why in failed] == [
        ("b", "ZeroDivisionError: a defect inside one point")
    ]
    out = capsys.readouterr().out  # one line as each point starts and ends; the failure says what broke
    assert [line.split(":")[0] for line in out.splitlines() if not line.startswith(" ")] == [
        "a",
        "a",
        "b",
        "b",
        "c",
        "c",
    ]
    assert "b: FAILED after" in out and "ZeroDivisionError: a defect inside one point" in out
    assert "ZeroDivisionError" in (tmp_path / "b" / "logs" / "debug-executor-error.txt").read_text()


# ----------------------------------------------------------------- 9. run checks before anything is written (the class)


@pytest.mark.parametrize(
    "override, key",
    [
        ("optim.lr=nan", "optim.lr"),
        ("optim.lr=inf", "optim.lr"),
        ("optim.beta1=1.0", "optim.beta1"),
        ("optim.beta2=-0.1", "optim.beta2"),
        ("train.seed=-1", "train.seed"),
        ("train.num_workers=-1", "train.num_workers"),
        ("model.overrides.n_head=0", "model.overrides.n_head"),
        ("tokenizer.min_frequency=-1", "tokenizer.min_frequency"),
        ("data.train_fraction=nan", "data.train_fraction"),
        ("tokenizer.vocab_size=261", "tokenizer.vocab_size"),
        ("train.precision=bf16", "train.precision"),
    ],
)
def test_bad_values_are_refused_before_the_run_directory_exists(override, key, tmp_path, demo_root, cache_dir):
    from train.__main__ import main

    proc = call(main, *train_args(demo_root, cache_dir, tmp_path / "runs"), override)
    assert_user_error(proc, key)
    assert not (tmp_path / "runs").exists()


def every_number_field():
    import dataclasses
    from typing import get_type_hints

    from distill.config import DistillRunConfig
    from distill.wml.config import WMLRunConfig
    from eval.tasks import TaskSpec
    from grid.config import GridConfig
    from train.config import RunConfig

    def walk(cls, prefix=""):
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            item = getattr(tp, "__args__", (None,))[0]
            if dataclasses.is_dataclass(tp):
                yield from walk(tp, f"{prefix}{f.name}.")
            elif dataclasses.is_dataclass(item):  # a list of sections (distill.teachers)
                yield from walk(item, f"{prefix}{f.name}[].")
            elif tp in (int, float) or tp in (list[int], list[float]):
                yield cls, f, prefix + f.name

    for schema in (RunConfig, DistillRunConfig, WMLRunConfig, GridConfig, TaskSpec):
        yield from walk(schema)


def test_every_number_in_every_config_has_a_range():
    missing = [key for _, f, key in every_number_field() if not f.metadata.get("range")]
    assert not missing, f"fields without a declared range: {missing}"


def test_every_float_refuses_nan_and_every_number_its_range():
    """And every float one beyond float32's range: optim.lr=1e300 ended in torch's "value cannot be converted to type
    float without overflow", a KD temperature of 1e300 in Python's OverflowError (T**2), both tracebacks."""
    from common.config import ConfigError, _build, _field_names

    checked = 0
    for cls, f, key in every_number_field():
        bounds = f.metadata["range"]
        below = bounds.get("ge", bounds.get("gt"))
        leaf = key.rsplit(".", 1)[-1]
        floats = [float("nan"), 1e300, -1e300] if "float" in str(f.type) else []
        for bad in floats + ([below - 1] if below is not None else []):
            value = [bad] if "list" in str(f.type) else bad
            with pytest.raises(ConfigError, match="float32's largest" if bad in floats[1:] else None) as caught:
                _build(cls, {leaf: value}, "", _field_names(cls))
            assert caught.value.key == (f"{leaf}[0]" if "list" in str(f.type) else leaf), (key, caught.value.key)
            checked += 1
    assert checked > 100


def test_an_override_is_blamed_on_the_command_line_and_a_list_item_on_its_line(tmp_path):
    from common.config import load
    from common.errors import UserError
    from distill.config import DistillRunConfig

    recipe = tmp_path / "kd.yaml"
    recipe.write_text("data:\n  train_dir: x\ndistill:\n  teachers:\n    - path: ''\n  losses:\n    ce: {weight: 1}\n")
    with pytest.raises(UserError, match=rf"{recipe}:4: distill.teachers\[0\].path: is empty"):
        load(DistillRunConfig, recipe)
    with pytest.raises(UserError, match=r"^command line: optim.lr: must be above 0"):
        load(DistillRunConfig, recipe, ["optim.lr=-1"])


# ----------------------------------------------------------- 10. corrupt or unreadable inputs: one line, the file named


@pytest.mark.parametrize("command, file, needles", [
    ("train", "config/grids/demo.yaml", ("demo.yaml:11", "'stages:' makes this file a grid", "launch_grid.py")),
    ("train", "config/runs/demo-kd.yaml", ("'student:' makes this file a distillation recipe", "python -m distill")),
    ("train", "config/runs/demo-wml.yaml", ("'wml:' makes this file a weighted-mutual-learning recipe",
                                            "python -m distill.wml train")),
    ("distill", "config/runs/demo-teacher.yaml", ("demo-teacher.yaml:12", "'model:' makes this file a training "
                                                  "recipe", "python -m train")),
    ("distill", "config/grids/demo.yaml", ("'stages:' makes this file a grid",)),
    ("distill.wml", "config/runs/demo-kd.yaml", ("'student:' makes this file a distillation recipe",)),
    ("grid", "config/runs/demo-teacher.yaml", ("'model:' makes this file a training recipe", "python -m train")),
    ("grid", "config/runs/demo-wml.yaml", ("'wml:' makes this file a weighted-mutual-learning recipe",)),
    ("launch", "config/grids/demo.yaml", ("'stages:' makes this file a grid", "launch_grid.py")),
    ("eval", "config/runs/demo-kd.yaml", ("config/runs/demo-kd.yaml: is a file, not a model folder",)),
])
def test_a_file_given_to_the_wrong_command_names_the_right_one(command, file, needles, tmp_path, monkeypatch):
    """A grid, a distillation or WML recipe, or a training recipe given to a command that reads another kind of file:
    one line naming the section that tells, and the command that reads it (it said "unknown key 'name'")."""
    import importlib

    import launch_grid

    monkeypatch.chdir(tmp_path)
    (tmp_path / "config").symlink_to(ROOT / "config")
    argv = (["train"] if command == "distill.wml" else []) + [file]
    if command == "launch":  # it replaces its process with the run's: in a subprocess
        proc = run_cli(command, *argv, cwd=tmp_path)
    else:
        proc = call(launch_grid.main if command == "grid" else importlib.import_module(f"{command}.__main__").main,
                    *argv)
    assert_user_error(proc, file, *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config"]  # nothing written


def test_yaml_that_is_not_utf8_or_names_a_key_twice(tmp_path):
    from train.__main__ import main

    latin = tmp_path / "latin1.yaml"
    latin.write_bytes("output:\n  name: caf\xe9\n".encode("latin-1"))
    assert_user_error(call(main, latin), f"{latin}:2", "not UTF-8")
    twice = tmp_path / "twice.yaml"
    twice.write_text("optim:\n  lr: 0.1\n  min_lr: 0.0\n  lr: 0.2\n")
    assert_user_error(call(main, twice), f"{twice}:4", "'optim.lr' is given twice (lines 2 and 4)")


def edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


# Every way a saved folder can disagree with itself. transformers loads most of them anyway: layers the config
# builds but the weights lack start from random values, weights the config has no place for are dropped, and
# another model's tokenizer gives ids past the embedding. Each must stop at one line before anything is written.
DAMAGE = {
    "truncated_weights": (
        lambda m: (m / "model.safetensors").write_bytes((m / "model.safetensors").read_bytes()[:20_000]),
        ("model.safetensors", "cannot be read", "save the model again"),
    ),
    "positions": (
        lambda m: edit_config(m, n_positions=32), ("config.json does not fit the weights", "transformer.wpe")
    ),
    "more_layers": (
        lambda m: edit_config(m, n_layer=4),
        ("config.json does not fit the weights", "tensors the weights lack", "transformer.h.2."),
    ),
    "fewer_layers": (
        lambda m: edit_config(m, n_layer=1),
        ("config.json does not fit the weights", "tensors the config has no place for", "transformer.h.1."),
    ),
    "unbuildable": (lambda m: edit_config(m, vocab_size=-5), ("config.json", "its values do not build a gpt2 model")),
    "config_not_json": (lambda m: (m / "config.json").write_text("{ not json"),
                        ("config.json", "the model's config cannot be read")),
    "tokenizer": (  # valid JSON, but not a tokenizer
        lambda m: (m / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "Nonsense"}})),
        ("the tokenizer in the model folder cannot be read",),
    ),
    "another_models_tokenizer": (
        lambda m: [shutil.copy(f, m) for f in shared("hf_tiny_gpt2").glob("*") if "token" in f.name
                   or f.name in ("vocab.json", "merges.txt")],
        ("the tokenizer there has 50257 tokens, the model's embedding only 512 rows", "another model's tokenizer"),
    ),
    "no_tokenizer": (lambda m: [f.unlink() for f in m.glob("tokenizer*")], ("no tokenizer in the model folder",)),
}


@pytest.mark.parametrize("command", ["eval", "finetune"])
@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_model_folder_is_one_line(damage, command, model_dir, demo_root, tmp_path):
    from eval.__main__ import main

    m = model_copy(model_dir, tmp_path / "m")
    edit, needles = DAMAGE[damage]
    edit(m)
    before = snapshot(m)
    out = tmp_path / "out"
    if command == "eval":
        proc = call(main, m, "--tasks", "demo_pairs", "--data-dir", demo_root, "--out", out, "--no-progress")
    else:
        proc = call(main, "finetune", m, "--tasks", "demo_acceptability", "--data-dir", demo_root / "finetune",
                    "--epochs", "1", "--out", out, "--no-progress")
    assert_user_error(proc, str(m), *needles)
    assert snapshot(m) == before
    assert not out.exists()


def test_a_folder_above_the_model_says_which_folder_to_give(model_dir, demo_root, tmp_path):
    """A run directory, or WML's model/ with a folder per peer, instead of a model folder: the line names the one
    to give."""
    from eval.__main__ import main

    run = model_dir.parent
    assert_user_error(call(main, run, "--tasks", "demo_pairs", "--data-dir", demo_root, "--no-progress"),
                      f"{run}: not a Hugging Face model folder", f"it is a run directory: give its model, {model_dir}")
    peers = tmp_path / "model"
    for name in ("peer-0", "peer-1"):
        model_copy(model_dir, peers / name)
    assert_user_error(call(main, "finetune", peers, "--tasks", "demo_acceptability", "--data-dir",
                           demo_root / "finetune", "--no-progress"),
                      "it holds 2 model folder(s): give one of them", str(peers / "peer-0"))
    assert_user_error(call(main, tmp_path, "--tasks", "demo_pairs", "--data-dir", demo_root, "--no-progress"),
                      "no config.json); give the folder save_pretrained wrote")


def test_eval_device_length_and_task_list(model_dir, demo_root, tmp_path):
    from eval.__main__ import main

    base = [model_dir, "--data-dir", demo_root, "--no-progress"]
    assert_user_error(call(main, *base, "--tasks", "demo_pairs", "--device", "cuda"), "--device cuda", "CPU build")
    assert_user_error(
        call(main, *base, "--tasks", "demo_pairs", "--max-length", "100000"), "--max-length 100000", "positions"
    )
    assert_user_error(call(main, *base, "--tasks", ","), "--tasks ','", "names no task")
    proc = ok(call(main, *base, "--tasks", "demo_pairs, demo_pairs", "--out", tmp_path))
    assert proc.stdout.count("demo_pairs ") == 1  # a task named twice is scored once (it was scored, and shown, twice)


ENTRY_POINTS = [("eval", []), ("eval", ["finetune"]), ("eval", ["curve"]), ("eval", ["aoa"]), ("eval", ["collate"]),
                ("eval", ["download"]), ("results", ["collect"]), ("results", ["compare"]), ("tokenizer", ["prepare"]),
                ("tokenizer", ["demo"]), ("train", []), ("distill", []), ("distill", ["cache-teachers"]),
                ("distill.wml", ["train"]), ("distill.wml", ["search"]), ("launch_grid", [])]


def parser_of(module: str, sub: list[str], monkeypatch) -> argparse.ArgumentParser:
    """The argparse parser of `python -m <module> <sub>` (the last one its --help reaches: a subcommand's own)."""

    seen = []
    original = argparse.ArgumentParser.parse_known_args
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args",
                        lambda self, *a, **k: (seen.append(self), original(self, *a, **k))[1])
    main = importlib.import_module(module if module == "launch_grid" else f"{module}.__main__").main
    with pytest.raises(SystemExit), contextlib.redirect_stdout(open(os.devnull, "w")):
        main([*sub, "--help"])
    return seen[-1]


@pytest.mark.parametrize("module,sub", ENTRY_POINTS, ids=[" ".join([m, *s]) for m, s in ENTRY_POINTS])
def test_every_number_and_device_flag_is_checked_as_the_command_line_is_read(module, sub, monkeypatch, tmp_path):
    """The class, not the cases: no flag of any entry point reads a plain int or float (argparse's `type=int` let 0,
    -1 and NaN through to a numpy traceback, or to a refusal after the model had loaded and the results folder was
    made); each number flag refuses a word, NaN, infinity, a negative number, a number beyond float32's range (--lr
    1e300 reached torch's "cannot be converted to type float without overflow"; a whole number of 400 digits
    overflowed math.isfinite) (and a fraction for a whole number) in one line naming it, and each --device refuses
    an unknown name and a missing GPU, before anything happens."""
    from eval.model import device_name

    parser = parser_of(module, sub, monkeypatch)
    monkeypatch.chdir(tmp_path)
    main = importlib.import_module(module if module == "launch_grid" else f"{module}.__main__").main
    for action in parser._actions:
        flag = next(iter(action.option_strings), action.dest)
        assert action.type not in (int, float), f"{module} {' '.join(sub)} {flag}: reads a plain {action.type.__name__}"
        bad = []
        if getattr(action.type, "__module__", "") == "common.arguments":
            bad = ["abc", "nan", "inf", "-1", "1e300", "1" + "0" * 400] + (["1.5"] if action.type.__name__ == "int"
                                                                          else [])
        elif action.dest == "device":
            assert action.type is device_name, f"{flag} is not checked as it is read"
            bad = ["foo", "cuda:7"]
        for value in bad:
            assert_user_error(call(main, *sub, flag, value), f"{flag} {value}:")
    assert not any(tmp_path.iterdir())


def test_a_bad_batch_size_makes_no_results_folder_even_when_nothing_is_left_to_score(model_dir, demo_root, tmp_path):
    from eval.__main__ import main

    run = tmp_path / "run"
    shutil.copytree(model_dir.parent, run)
    assert_user_error(call(main, run / "model", "--tasks", "demo_pairs", "--data-dir", demo_root, "--batch-size", "0",
                           "--out", tmp_path / "out", "--no-progress"), "--batch-size 0:")
    assert not (tmp_path / "out").exists()  # it was made, with two lock files, before the refusal
    milestone = run / "milestones" / "chck_1k"
    shutil.copytree(run / "model", milestone)
    (milestone / "words_seen.json").write_text(json.dumps({"milestone": "1k", "words_seen": 1000, "step": 1}))
    ok(call(main, "curve", run, "--tasks", "demo_pairs", "--data-dir", demo_root, "--no-progress"))
    before = snapshot(run)
    for flag, value in (("--batch-size", "0"), ("--device", "cuda:7")):  # every milestone scored: it was accepted
        assert_user_error(call(main, "curve", run, "--tasks", "demo_pairs", "--data-dir", demo_root, flag, value,
                               "--no-progress"), f"{flag} {value}:")
    assert snapshot(run) == before


DAMAGED_JSON = {"torn": b'{"words_seen": ', "a list": b"[1]", "not UTF-8": b"\xff\xfe{}", "no key": b'{"step": 1}',
                "a wrong type": b'{"words_seen": "many", "score": [], "tasks": 1}'}


def test_a_damaged_record_of_ours_is_one_line_naming_it(model_dir, demo_root, tmp_path):
    """The records this project writes and reads again (a milestone's words_seen.json and results, eval/
    predictions.json, a checkpoint's JSON, cached blocks, the WML search, a grid's champion.json and GPU figures):
    one that was cut short by a copy, edited by hand or is not an object is one line naming it, and nothing is
    written. Each was a traceback (JSONDecodeError, KeyError, TypeError) until 2026-12-03."""
    from eval.__main__ import main

    run = tmp_path / "run"
    shutil.copytree(model_dir.parent, run)
    milestone = sorted((run / "milestones").glob("chck_*"))[0]
    record = milestone / "words_seen.json"
    good = record.read_bytes()
    ok(call(main, "curve", run, "--tasks", "demo_pairs", "--data-dir", demo_root, "--no-progress"))
    ok(call(main, run / "model", "--tasks", "demo_pairs", "--data-dir", demo_root, "--no-progress"))
    words = tmp_path / "cdi_childes.json"
    words.write_text(json.dumps({"dog": [{"context": "a dog"}], "ball": [{"context": "the ball"}]}))
    before = snapshot(run)
    for name, damage in DAMAGED_JSON.items():
        record.write_bytes(damage)
        for argv in (["curve", run, "--tasks", "demo_pairs", "--data-dir", demo_root],
                     ["aoa", run, "--words", words, "--out", tmp_path / "aoa"]):
            assert_user_error(call(main, *argv, "--no-progress"), f"{record}: the milestone's words-seen record "
                              "cannot be read", "move the milestone folder away")
        record.write_bytes(good)
        result = milestone / "eval" / "demo_pairs.json"
        result.write_bytes(damage)
        assert_user_error(call(main, "curve", run, "--tasks", "demo_pairs", "--data-dir", demo_root, "--no-progress"),
                          f"{result}: the result of demo_pairs cannot be read")
        result.write_bytes(before[str(result.relative_to(run))])
        for file, needle in ((run / "eval" / "predictions.json", "the predictions of the tasks evaluated there"),
                             (run / "eval" / "demo_pairs.json", "exists and is not a result of demo_pairs")):
            file.write_bytes(damage)  # refused before scoring, not after an hour of it
            assert_user_error(call(main, run / "model", "--tasks", "demo_pairs", "--data-dir", demo_root,
                                   "--no-progress"), f"{file}: ", needle)
            file.write_bytes(before[str(file.relative_to(run))])
        assert snapshot(run) == before and not (tmp_path / "aoa").exists()

    # a checkpoint's JSON (words_seen.json, trainer_state.json): one that does not parse makes the checkpoint unusable
    # (the one before it is resumed from); a words_seen.json without its count stops the resume in one line
    from common.checkpoints import checkpoint_problem

    ckpt = sorted((run / "checkpoints").glob("checkpoint-*"))[-1]
    for name in ("words_seen.json", "trainer_state.json"):
        file = ckpt / name
        kept = file.read_bytes()
        file.write_bytes(b"{" + b" " * (len(kept) - 1))  # the size its manifest records
        assert checkpoint_problem(ckpt).startswith("unreadable: JSONDecodeError"), name
        file.write_bytes(kept)
    assert checkpoint_problem(ckpt) is None
    from common.errors import exit_on_user_error
    from train.words import Budget, WordsSeen

    counter = WordsSeen(run, Budget(max_steps=20, epochs=0, max_words=None, schedule_steps=None, epoch_words=1000,
                                    step_words=100.0, budget_words=2000.0))
    counter.restore(ckpt)
    assert counter.total == json.loads((ckpt / "words_seen.json").read_text())["words_seen"] > 0
    for damage in (b'{"step": 20}', b'{"step": 20, "words_seen": 1.5}'):
        (ckpt / "words_seen.json").write_bytes(damage)
        assert_user_error(call(exit_on_user_error(lambda _: counter.restore(ckpt))),
                          f"{ckpt / 'words_seen.json'}: the checkpoint's words-seen record cannot be read")


def test_damaged_cached_blocks_and_search_results_are_refused_before_a_run_starts(tmp_path, demo_root, cache_dir):
    from distill.wml.__main__ import main as wml
    from train.__main__ import main as train

    cache = tmp_path / "cache"
    shutil.copytree(cache_dir, cache, ignore=shutil.ignore_patterns("*.lock"))
    args = [DEMO, f"data.train_dir={demo_root / 'train'}", f"data.dev_dir={demo_root / 'dev'}",
            f"data.cache_dir={cache}", f"output.dir={tmp_path / 'runs'}", "train.max_steps=2"]
    from tokenizer.__main__ import main as tokenizer

    prepared = ok(call(tokenizer, "prepare", *args[:4])).stdout
    blocks = [Path(line.split()[1]) for line in prepared.splitlines() if line.startswith(("train: ", "dev: "))]
    assert len(blocks) == 2
    for folder in blocks:
        for file, damage in ((folder / "stats.json", b'{"tokens": '), (folder / "stats.json", b'{"tokens": 1}'),
                             (next(folder.glob("*.arrow")), b"\0" * 64)):
            kept = file.read_bytes()
            file.write_bytes(damage)
            error = assert_user_error(call(train, *args), str(folder), "move that folder away")
            assert ("statistics" in error) == (file.name == "stats.json")
            file.write_bytes(kept)
            assert not (tmp_path / "runs").exists()
    texts = sorted((cache / "clean").glob("*/*.txt"))  # the cleaned corpus: checked against its sha256 on every use
    assert len(texts) == 2
    for text in texts:
        counts = text.with_name(text.name[:-len(".txt")] + ".words.npz")
        kept_text, kept_counts = text.read_bytes(), counts.read_bytes()
        for file, damage, needle in ((counts, kept_counts[:100], "the cached word counts of"),
                                     (text, kept_text[:-40], "the cached clean text is not the one written there"),
                                     (text, kept_text + b"\xff\xfe\n", "its sha256 differs")):
            file.write_bytes(damage)  # each was a traceback (BadZipFile, RuntimeError, DatasetGenerationError)
            assert_user_error(call(train, *args), f"{file}: ", needle, f"move the folder {text.parent} away")
            file.write_bytes(kept_counts if file == counts else kept_text)
            assert not (tmp_path / "runs").exists()
    tokenizer_file = Path(prepared.split("tokenizer: ")[1].split()[0]) / "tokenizer.json"  # named as the cache folder
    tokenizer_file.write_bytes(tokenizer_file.read_bytes()[:100])
    assert_user_error(call(train, *args), f"{tokenizer_file.parent}: the cached tokenizer cannot be read",
                      "move that folder away")
    assert not (tmp_path / "runs").exists()

    recipe = str(ROOT / "config" / "runs" / "demo-wml.yaml")
    wml_args = [recipe, f"data.train_dir={demo_root / 'train'}", f"data.dev_dir={demo_root / 'dev'}",
                f"data.cache_dir={cache}", f"output.dir={tmp_path / 'wml'}"]
    saved = tmp_path / "wml" / "demo-wml" / "arch_search_results" / "search.json"
    saved.parent.mkdir(parents=True)
    for damage, reuse in itertools.product((b'{"peers": ', b'{"settings": {}, "peers": {}}', b"[]"), ("true", "false")):
        saved.write_bytes(damage)  # never searched over (true: a search with these settings is reused, else made)
        assert_user_error(call(wml, "train", *wml_args, f"wml.use_opt_config={reuse}"),
                          f"{saved}: the peer search's result cannot be read", "move it away to search again")
        assert saved.read_bytes() == damage and sorted(p.name for p in saved.parent.parent.iterdir()) == [
            "arch_search_results"]


def test_a_grid_reads_damaged_records_of_its_points_in_one_line(tmp_path):
    from common.errors import exit_on_user_error
    from grid.estimate import measured_mfu
    from grid.plan import Point

    run = tmp_path / "wml"
    (run / "model").mkdir(parents=True)
    (run / "eval").mkdir()
    point = Point(grid="g", stage="s", name="wml", recipe="r.yaml", kind="wml", axes={}, overrides={}, run=str(run),
                  tasks=["demo_pairs"], tasks_per_milestone=["demo_pairs"])
    for damage in (b'{"peers": ', b'{"champion": 0}', b'{"peers": "peer-0"}'):
        (run / "model" / "champion.json").write_bytes(damage)
        assert_user_error(call(exit_on_user_error(lambda _: point.model_dirs())),
                          "champion.json: the WML run's peers and champion")
    (run / "model" / "champion.json").write_text(json.dumps({"peers": ["peer-0"], "champion": 0}))
    (run / "eval" / "peer-0").mkdir()
    (run / "eval" / "peer-0" / "demo_pairs.json").write_text("{}")
    for damage, evaluated in ((b'{"tasks": {"demo_pairs": []}}', True), (b'{"tasks": ', False), (b"[]", False)):
        (run / "eval" / "curve.json").write_bytes(damage)  # a damaged curve is made again, as a missing one is
        assert point.evaluated() is evaluated
    figures = tmp_path / "gpu_check.json"
    for damage in (b'{"training": ', b"[]", b'{"machine": "h200"}'):
        figures.write_bytes(damage)
        assert_user_error(call(exit_on_user_error(lambda _: measured_mfu(figures))),
                          f"{figures}: the GPU check's figures")
    figures.write_text(json.dumps({"training": [{"arch": "gpt2-97m", "mfu": 0.4}, "torn", {"mfu": 0.2}]}))
    assert measured_mfu(figures) == {"gpt2-97m": 0.4}


def test_damaged_archives_are_one_line(tmp_path, model_dir):
    from eval.__main__ import main

    # a truncated .tar.gz (EOFError inside gzip)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    raw = shared("blimp_full.tar.gz").read_bytes()
    (data_dir / "blimp_full.tar.gz").write_bytes(raw[: len(raw) // 3])
    proc = call(main, model_dir, "--tasks", "blimp", "--data-dir", data_dir, "--no-progress")
    assert_user_error(proc, str(data_dir / "blimp_full.tar.gz"), "cannot be read", "download it again")
    # a zip damaged inside a member's deflate stream (zlib.error or a CRC error)
    damaged = tmp_path / "ewok_filtered.zip"
    zdata = bytearray(shared("ewok_filtered.zip").read_bytes())
    with zipfile.ZipFile(shared("ewok_filtered.zip")) as zf:
        info = max(zf.infolist(), key=lambda i: i.compress_size)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + 12
    for i in range(start + 50, start + 4000, 7):
        zdata[i] ^= 0x5A
    damaged.write_bytes(bytes(zdata))
    proc = call(
        main, model_dir, "--tasks", "ewok_filtered", "--ewok-zip", damaged, "--ewok-password", "ewok", "--no-progress"
    )
    assert_user_error(proc, str(damaged))
    no_traceback(proc)


def test_download_says_when_it_wrote_nothing(tmp_path):
    from eval.__main__ import main

    only_plain_ewok = tmp_path / "ewok-plain.zip"
    with zipfile.ZipFile(only_plain_ewok, "w") as zf:
        zf.writestr("evaluation_data/ewok_filtered/agent-properties.jsonl", '{"Context1": "x"}\n')
    proc = call(main, "download", "--from", only_plain_ewok, "--dest", tmp_path / "dest")
    assert_user_error(proc, str(only_plain_ewok), "plain EWoK file(s)", "never written out")
    raw = shared("blimp_full.tar.gz").read_bytes()
    truncated = tmp_path / "blimp.tar.gz"
    truncated.write_bytes(raw[: len(raw) // 2])
    assert_user_error(
        call(main, "download", "--from", truncated, "--dest", tmp_path / "dest"), str(truncated), "download it again"
    )


def test_valid_jsonl_with_unicode_line_separators_inside_strings(tmp_path):
    from eval.tasks import load_task

    folder = tmp_path / "blimp_filtered"
    folder.mkdir()
    rows = [
        {"sentence_good": "A\u2028b.", "sentence_bad": "A\u0085c.\x1c"},
        {"sentence_good": "Ok.", "sentence_bad": "Ko."},
    ]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    (folder / "p.jsonl").write_text(text, encoding="utf-8")
    assert len(text.splitlines()) > 2  # what str.splitlines would have made of it
    task = load_task("blimp_filtered", str(tmp_path))
    assert [it.choices for it in task.items] == [["A\u2028b.", "A\u0085c.\x1c"], ["Ok.", "Ko."]]


def test_a_run_config_that_no_longer_parses_then_resume(model_dir, tmp_path, demo_root, cache_dir):
    from train.__main__ import main

    run = tmp_path / "runs" / "demo" / "teacher"
    shutil.copytree(model_dir.parent, run)
    (run / "config.yaml").write_text("data: [unclosed\n")
    before = snapshot(run)
    proc = call(main, *train_args(demo_root, cache_dir, tmp_path / "runs"), "--resume")
    assert_user_error(proc, str(run / "config.yaml"), "cannot be read", "--overwrite")
    assert snapshot(run) == before


def test_an_output_path_that_is_a_file(tmp_path, demo_root, cache_dir):
    from train.__main__ import main

    (tmp_path / "runs").write_text("not a folder")
    proc = call(main, *train_args(demo_root, cache_dir, tmp_path / "runs"))
    assert_user_error(proc, str(tmp_path / "runs"), "is a file")
    assert (tmp_path / "runs").read_text() == "not a folder"


def test_read_only_output_cache_and_results_folders(tmp_path, demo_root, cache_dir, model_dir):
    from results.__main__ import main as results_main
    from train.__main__ import main as train_main

    with mounted(tmp_path / "ro", read_only=True) as ro:
        proc = call(train_main, *train_args(demo_root, cache_dir, ro / "runs"))
        assert_user_error(proc, str(ro / "runs"), "read-only")
        proc = call(train_main, *train_args(demo_root, ro / "cache", tmp_path / "runs"))
        assert_user_error(proc, str(ro / "cache"), "read-only")
        assert not (tmp_path / "runs").exists()
        proc = call(results_main, "collect", model_dir.parent.parent, "--out", ro / "results")
        assert_user_error(proc, str(ro / "results"), "read-only")


@pytest.mark.parametrize("code", [errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP], ids=errno.errorcode.get)
def test_a_file_system_without_file_locks_is_one_line_naming_the_lock(code, tmp_path, demo_root, cache_dir,
                                                                       model_dir, workdir, monkeypatch):
    """flock answers ENOSYS on Lustre mounted without -o flock, ENOLCK on NFS without its lock daemon, EOPNOTSUPP on
    some network file systems. None is mounted here, so flock is made to answer so. Every lock a command takes on a
    folder it writes says so in one line naming the lock file, exit 2, no traceback, no file left (each was a
    traceback until 2026-12-04): a run directory's LOCK (train), the data cache's lock (tokenizer prepare, and
    training from a new cache), an evaluation's locks
    (eval), a fine-tuning's (eval finetune), the collection's (results collect), the launcher's (a grid)."""
    import fcntl

    import launch_grid
    from eval.__main__ import main as eval_main
    from results.__main__ import main as results_main
    from tokenizer.__main__ import main as tokenizer_main
    from train.__main__ import main as train_main

    def no_locks(handle, operation):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    monkeypatch.chdir(workdir)
    out = tmp_path / "out"
    grid = workdir / "g.yaml"
    grid.write_text(yaml.safe_dump({"name": "g", "output_dir": str(out / "grid"), "executor": {"kind": "debug"},
                                    "stages": [{"name": "s", "recipes": ["config/runs/demo-teacher.yaml"]}]}))
    commands = [
        (train_main, train_args(demo_root, cache_dir, out / "runs"), out / "runs" / "demo" / "teacher" / "LOCK"),
        (tokenizer_main, ["prepare", *train_args(demo_root, out / "cache", out / "runs")], out / "cache"),
        (eval_main, [model_dir, "--tasks", "demo_pairs", "--data-dir", demo_root, "--out", out / "eval",
                     "--no-progress"], out / "eval"),
        (eval_main, ["finetune", model_dir, "--tasks", "demo_phenomenon", "--data-dir", demo_root / "finetune",
                     "--out", out / "tuned", "--no-progress"], out / "tuned"),
        (results_main, ["collect", model_dir.parent.parent, "--out", out / "results"], out / "results"),
        (launch_grid.main, [grid], out / "grid" / "g" / "_grid" / "LOCK"),
    ]
    for main, argv, lock in commands:
        proc = call(main, *argv)
        assert_user_error(proc, str(lock), "has no file locks", f"(flock: {os.strerror(code)})", "node-local scratch")
        no_traceback(proc)
    assert not [p for p in out.rglob("*") if p.is_file()]


@pytest.mark.parametrize("left_kib", [160, 900, 2000, 3400, 4400])
def test_a_full_disk_during_training_then_resume_works(tmp_path, demo_root, cache_dir, left_kib):
    """Wherever training meets the full disk: the first checkpoint's weights (safetensors says so), or its optimizer
    state (torch.save says only that its stream failed; that was a traceback until 2026-12-03), the first milestone's
    export (its `.chck_10k.tmp` stayed behind until 2026-12-04), the second checkpoint's optimizer state, the final
    model (until 2026-12-04 a `model/` of a config and no weights). Nothing unfinished is left, no `model/` at all, and
    `--resume`, as the line says, finishes the run once there is space, replacing what an older version's cut export
    left as `model/`."""
    out = tmp_path / "disk"
    args = train_args(demo_root, cache_dir, out, "train.max_steps=20")

    def fill(folder):
        (folder / "filler").write_bytes(b"\0" * (8 * 1024 - left_kib) * 1024)  # too little for the whole run

    with mounted(out, size="8m", fill=fill):
        proc = run_cli("train", *args)
        assert_user_error(proc, str(out / "demo" / "teacher"), "disk is full", "free space")
        no_traceback(proc)
        assert not unfinished_left(out), sorted(out.rglob("*"))
        model = out / "demo" / "teacher" / "model"
        assert not model.exists(), sorted(model.rglob("*"))  # written beside its place: never a cut model/
        (out / "filler").unlink()
        model.mkdir()
        (model / "config.json").write_text("{}")  # what a cut export left before 2026-12-04
        proc = ok(run_cli("train", *args, "--resume"))  # as the line says, once there is space
        assert json.loads((out / "demo" / "teacher" / "DONE").read_text())["step"] == 20
        assert (model / "model.safetensors").is_file() and json.loads((model / "config.json").read_text())


@pytest.mark.parametrize("left_kib", [100, 600, 2100])
def test_a_full_disk_during_finetuning_then_the_same_command_works(model_dir, demo_root, tmp_path, left_kib):
    """Fine-tuning writes a checkpoint after its first epoch: a full disk there is one line naming the task's folder,
    exit 2, no traceback, wherever the disk fills up (the weights, ~0.6 MB here, which safetensors reports; the
    optimizer state, ~1.1 MB, where torch.save says only that its stream failed; `best.pt`, written after the
    checkpoint's files, whose half-written temporary file stayed until 2026-12-04); no temporary file is left; once
    there is space, the same command fine-tunes the task."""
    out = tmp_path / "disk"
    args = ["finetune", str(model_dir), "--tasks", "demo_phenomenon", "--data-dir", str(demo_root / "finetune"),
            "--epochs", "2", "--out", str(out), "--no-progress"]

    def fill(folder):
        (folder / "filler").write_bytes(b"\0" * (8 * 1024 - left_kib) * 1024)  # too little for the first checkpoint

    with mounted(out, size="8m", fill=fill):
        proc = run_cli("eval", *args)
        assert_user_error(proc, str(out / "finetune" / "demo_phenomenon"), "disk is full", "free space",
                          "run the same command again to continue")
        no_traceback(proc)
        assert not unfinished_left(out), sorted(out.rglob("*"))
        (out / "filler").unlink()
        ok(run_cli("eval", *args))
        assert json.loads((out / "demo_phenomenon.json").read_text())["epochs"] == 2


# each command at the sizes where its disk fills up at a different file
@pytest.mark.parametrize("command,size", [("prepare", s) for s in ("8k", "40k", "160k", "200k", "300k")]
                         + [("eval", s) for s in ("8k", "40k", "300k")] + [("collect", s) for s in ("8k", "20k", "40k")]
                         + [("curve", "4k"), ("curve", "8k"), ("aoa", "4k"), ("demo", "40k"), ("demo", "300k")])
def test_a_full_disk_is_one_line_naming_a_file_there_wherever_it_fills(command, size, model_dir, demo_root, tmp_path):
    """The data cache, zero-shot results, a results collection, curves, AoA and the demo corpus, each written into a
    disk that fills up at a different file by its size: the line names the file (or folder) where the disk is full,
    never "a file" (a failed write or flush on an open file names none: the predictions' temporary file, a PNG's, a
    lock's text, a datasets arrow file said "a file" until 2026-12-04; one that datasets wraps says "No space left on
    device" since then, not "An error occurred while generating the dataset"), exit 2, no traceback, nothing
    unfinished left (a figure's half-written PNG, the tokenizer's `<hash>.tmp` and the data blocks' `.work` and `.tmp`
    folders, which can be larger than the corpus, stayed behind until 2026-12-04), and once there is room the same
    command works (a collection stopped part-way left files that the same command then refused as not its own, until
    2026-12-04; so did the demo corpus, whose half-written `train/demo.train` a run given that folder took for the
    whole corpus)."""
    disk = tmp_path / "disk"
    run = tmp_path / "run"  # curve and aoa score the run's milestones and write into it: a copy, off the small disk
    shutil.copytree(model_dir.parent, run)
    words = tmp_path / "cdi_childes.json"
    words.write_text(json.dumps({"dog": [{"context": "a dog"}], "ball": [{"context": "the ball"}]}))
    argv = {
        "prepare": ["tokenizer", "prepare", DEMO, f"data.train_dir={demo_root / 'train'}",
                    f"data.dev_dir={demo_root / 'dev'}", f"data.cache_dir={disk / 'cache'}"],
        "eval": ["eval", str(model_dir), "--tasks", "demo_pairs", "--data-dir", str(demo_root), "--out",
                 str(disk / "eval")],
        "collect": ["results", "collect", str(model_dir.parent.parent.parent), "--out", str(disk / "results")],
        "curve": ["eval", "curve", str(run), "--tasks", "demo_pairs", "--data-dir", str(demo_root), "--out",
                  str(disk / "figures"), "--no-progress"],
        "aoa": ["eval", "aoa", str(run), "--words", str(words), "--out", str(disk / "aoa"), "--no-progress"],
        "demo": ["tokenizer", "demo", str(disk / "demo"), "--sentences", "2000"],
    }[command]
    with mounted(disk, size=size):
        proc = run_cli(*argv)
        line = assert_user_error(proc, "No space left on device", "the disk is full", "free space")
        assert line.startswith(f"error: {disk}/"), line
        no_traceback(proc)
        assert not unfinished_left(disk), sorted(disk.rglob("*"))
        subprocess.run(["mount", "-o", "remount,size=2m", str(disk)], check=True)
        ok(run_cli(*argv))
        assert not [p for p in disk.rglob("*") if ".tmp" in p.name or p.name.endswith(".collecting")]


def test_the_model_of_an_unfinished_run_is_refused_wherever_a_model_is_read(model_dir, demo_root, tmp_path):
    """A run writes model/ at its end and DONE last: a model/ without DONE (an export that met a full disk left a
    config and no weights, or cut ones; the run may still be writing it) was read as any model folder until
    2026-12-04, and a cut one could pass. `eval` and `eval finetune` refuse it in one line naming the run and its
    status, exit 2, nothing written (teachers and warm starts: tests/test_distill.py::test_bad_inputs); with its DONE,
    the same folder is evaluated."""
    run = tmp_path / "run"
    shutil.copytree(model_dir.parent, run)
    (run / "DONE").unlink()
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "status": "failed"}))
    out = tmp_path / "out"
    commands = (["eval", str(run / "model"), "--tasks", "demo_pairs", "--data-dir", str(demo_root), "--out",
                 str(out / "eval")],
                ["eval", "finetune", str(run / "model"), "--tasks", "demo_phenomenon", "--data-dir",
                 str(demo_root / "finetune"), "--out", str(out / "tuned"), "--no-progress"])
    for argv in commands:
        assert_user_error(run_cli(*argv), f"{run / 'model'}: the model of a run that has not finished (no DONE in "
                          f"{run}; its run.json says failed)", "rerun its training with --resume")
    assert not out.exists()
    shutil.copy(model_dir.parent / "DONE", run / "DONE")
    ok(run_cli(*commands[0]))


def test_a_full_disk_during_download_is_one_line_and_leaves_no_part_file(tmp_path):
    """`eval download` of the shared data (BLiMP's archive alone is larger) into a 1 MB disk: one line naming the
    folder, exit 2, no traceback, no temporary file (hidden, beside its target); the files written before it are
    whole."""
    dest = tmp_path / "disk"
    with mounted(dest, size="1m"):
        proc = run_cli("eval", "download", "--dest", str(dest), "--from", str(shared("blimp_full.tar.gz")))
        assert_user_error(proc, str(dest), "disk is full", "free space", "run the same command again")
        no_traceback(proc)
        assert not [p for p in dest.rglob(".*")]
        written = [p for p in dest.rglob("*.jsonl")]
        assert all(p.read_text().endswith("\n") for p in written)


def test_a_crash_of_ours_leaves_run_json_failed_and_resume_finishes(tmp_path, demo_root, cache_dir, monkeypatch):
    """An exception no check foresaw (a defect, a device fault) keeps its traceback, and run.json says failed, not
    running, with its type and message; the newest checkpoint then resumes as after any other failure."""
    from train.__main__ import main
    from train.trainer import BabyTrainer

    out = tmp_path / "crash"
    args = train_args(demo_root, cache_dir, out)
    step = BabyTrainer.training_step

    def faulty(self, *a, **k):
        if self.state.global_step == 14:
            raise RuntimeError("injected fault at step 15")
        return step(self, *a, **k)

    with monkeypatch.context() as patch:
        patch.setattr(BabyTrainer, "training_step", faulty)
        with pytest.raises(RuntimeError, match="injected fault"):
            main(args)
    run = out / "demo" / "teacher"
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "failed" and info["error"] == "RuntimeError: injected fault at step 15", info
    assert not (run / "DONE").exists()
    assert ok(call(main, *args, "--resume")).returncode == 0
    assert json.loads((run / "DONE").read_text())["step"] == 20
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "done" and info["attempts"][-1]["resumed_from"].endswith("checkpoint-10"), info


# -------------------------------------------------------------------------- 11. results and compare survive one bad run


def test_collect_lists_each_bad_run_and_collects_the_rest(model_dir, tmp_path):
    from results.__main__ import main

    good = model_dir.parent
    runs = tmp_path / "runs"
    damages = {
        "weights": lambda r: (r / "model" / "model.safetensors").write_bytes(b"\0" * 20),
        "config-list": lambda r: (r / "config.yaml").write_text("- a\n- b\n"),
        "runjson-list": lambda r: (r / "run.json").write_text("[1, 2]"),
        "gridjson-list": lambda r: (r / "grid.json").write_text("[]"),
        "devloss-string": lambda r: (r / "run.json").write_text(
            json.dumps({**json.loads((good / "run.json").read_text()), "dev_loss": "low"})
        ),
    }
    shutil.copytree(good, runs / "ok")
    (runs / "ok" / "eval").mkdir(exist_ok=True)
    (runs / "ok" / "eval" / "curve.json").write_text('{"tasks": {"demo_pairs": [{"score": 0.5}]}}')  # no words_seen
    for name, damage in damages.items():
        shutil.copytree(good, runs / name)
        damage(runs / name)
    proc = call(main, "collect", runs, "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    for name, file in (("weights", "model"), ("config-list", "config.yaml"), ("runjson-list", "run.json"),
                       ("gridjson-list", "grid.json"), ("devloss-string", "run.json")):
        assert f"incomplete: {runs / name}: {file}" in proc.stdout, proc.stdout
    import pandas as pd

    assert list(pd.read_csv(tmp_path / "out" / "runs.csv")["run"]) == [str(runs / "ok")]
    # a damaged learning curve leaves only that curve out of the plots (a traceback until 2026-12-03)
    assert f"warning: {runs / 'ok' / 'eval' / 'curve.json'}: unreadable (KeyError: 'words_seen')" in proc.stdout


def test_plots_and_tables_never_replace_a_users_file_in_the_folder_given(model_dir, demo_root, tmp_path):
    """`eval curve --out DIR` and `results collect --out DIR` replace only files they wrote there (a PNG marked as
    ours; a table or plot the collection's manifest lists): a user's own file of the same name is refused in one line,
    before anything is evaluated or written. Both replaced them until 2026-12-03."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from common.paths import is_our_figure
    from eval.__main__ import main as eval_main
    from results.__main__ import main as results

    run = tmp_path / "run"
    shutil.copytree(model_dir.parent, run)
    figures = tmp_path / "paper"
    figures.mkdir()
    for mine in ("demo_pairs.png", "run-curve-demo_pairs.png"):
        plt.plot([1, 2]), plt.savefig(figures / mine), plt.close()  # a plot of the user's, as matplotlib writes it
    (figures / "run.md").write_text("| our results, by hand |\n")
    before, runs = snapshot(figures), snapshot(run)
    curve = ["curve", run, "--tasks", "demo_pairs", "--data-dir", demo_root, "--out", figures, "--no-progress"]
    assert_user_error(call(eval_main, *curve), f"{figures / 'demo_pairs.png'}: exists and is not a plot of ours")
    assert snapshot(run) == runs  # refused before any milestone was evaluated
    assert_user_error(call(results, "collect", run, "--out", figures), f"{figures / 'run.md'}: exists and was not "
                      "written by python -m results collect", "pass another --name or --out")
    (figures / "run.md").unlink()
    assert_user_error(call(results, "collect", run, "--out", figures), f"{figures / 'run-curve-demo_pairs.png'}")
    assert snapshot(figures) == {k: v for k, v in before.items() if k != "run.md"}
    (figures / "demo_pairs.png").rename(figures / "mine.png")
    (figures / "run-curve-demo_pairs.png").rename(figures / "mine-2.png")
    for _ in range(2):  # its own files it replaces
        ok(call(eval_main, *curve))
        ok(call(results, "collect", run, "--out", figures))
    assert is_our_figure(figures / "demo_pairs.png") and (figures / "run.csv").is_file()
    assert not is_our_figure(figures / "mine.png") and (figures / "mine.png").read_bytes() == before["demo_pairs.png"]
    kept = snapshot(figures)  # --name is the stem of every file written: one folder name, or nothing is
    for name, needle in (("a/b", "without '/'"), ("..", "above"), ("x\ny", "control character")):
        assert_user_error(call(results, "collect", run, "--out", figures, "--name", name), "--name is ", needle)
    assert snapshot(figures) == kept  # '..' wrote ...csv and ..-tasks.png; a/b failed on a temporary file's path

    # results of `eval` and `eval finetune` into a folder of the user's: a same-named file there that is not a result
    # of that task (or predictions.json that is not the tasks' predictions) is refused before anything is scored
    for mine, command in ((figures / "demo_pairs.json", ["--tasks", "demo_pairs", "--data-dir", demo_root]),
                          (figures / "predictions.json", ["--tasks", "demo_pairs", "--data-dir", demo_root]),
                          (figures / "demo_acceptability.json", ["finetune", "--tasks", "demo_acceptability",
                                                                 "--data-dir", demo_root / "finetune"])):
        mine.write_text(json.dumps({"model": "ours, by hand", "accuracy": 0.9}))
        kept = snapshot(figures)
        args = command[:1] + [run / "model"] + command[1:] if command[0] == "finetune" else [run / "model", *command]
        assert_user_error(call(eval_main, *args, "--out", figures, "--no-progress"), f"{mine}: ")
        assert snapshot(figures) == kept
        mine.unlink()


def test_compare_refuses_bad_arguments_and_bad_pair_files(model_dir, tmp_path, demo_root):
    from eval.__main__ import main as eval_main
    from results.__main__ import main

    run = tmp_path / "run"
    shutil.copytree(model_dir.parent, run)
    ok(call(eval_main, run / "model", "--tasks", "demo_pairs", "--data-dir", demo_root, "--no-progress"))
    assert_user_error(call(main, "compare", run, run, "--task", "demo_pairs", "--samples", "0"), "--samples 0")
    assert_user_error(
        call(main, "compare", run, run, "--task", "demo_pairs", "--out", tmp_path), f"--out {tmp_path}", "is a folder"
    )
    pairs = run / "eval" / "pairs" / "demo_pairs.jsonl"
    pairs.write_text(pairs.read_text() + "[1, 2]\n")
    assert_user_error(call(main, "compare", run, run, "--task", "demo_pairs"), f"{pairs}:", "not a pair record")


# ----------------------------------------------------------------- 12, 14. advice that holds, and silent wrong outcomes


def test_tiny_corpus_is_not_told_to_use_a_vocabulary_below_the_minimum(tmp_path, cache_dir):
    from train.__main__ import main

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "switchboard.train").write_text("A:\tyes\nB:\tno\n")
    proc = call(
        main,
        DEMO,
        "data.demo=false",
        f"data.train_dir={corpus}",
        "data.dev_dir=",
        f"data.cache_dir={tmp_path / 'c'}",
        "tokenizer.vocab_size=300",
        "model.vocab_size=300",
        f"output.dir={tmp_path / 'runs'}",
    )
    line = assert_user_error(proc, "data.train_dir", "too small for a BPE tokenizer")
    assert "vocab_size=2" not in line
    # a corpus too short for one block is named as the corpus, not as the cache folder
    proc = call(
        main,
        DEMO,
        "data.demo=false",
        f"data.train_dir={corpus}",
        "data.dev_dir=",
        f"data.cache_dir={tmp_path / 'c'}",
        "tokenizer.type=pretrained",
        f"tokenizer.name_or_path={shared('hf_tiny_gpt2')}",
        "model.vocab_size=50257",
        f"output.dir={tmp_path / 'runs'}",
    )
    assert_user_error(proc, f"{corpus} (data.train_dir)", "fewer than one block")


def test_demo_never_writes_over_a_corpus(tmp_path):
    """Over a whole demo, and over a folder holding any one of the folders the demo writes (a file in `aoa/` was
    written over until 2026-12-04): refused naming it, nothing changed; empty ones are written into."""
    from tokenizer import demo
    from tokenizer.__main__ import main

    ok(call(main, "demo", tmp_path / "d", "--sentences", "50"))
    before = snapshot(tmp_path / "d")
    assert_user_error(call(main, "demo", tmp_path / "d", "--seed", "9", "--sentences", "50"), "already holds", "train/")
    assert snapshot(tmp_path / "d") == before
    for part in demo.PARTS:
        mine = tmp_path / part / part
        mine.mkdir(parents=True)
        (mine / "notes.txt").write_text("mine")
        before = snapshot(tmp_path / part)
        assert_user_error(call(main, "demo", tmp_path / part, "--sentences", "50"), "already holds", f" {part}/;")
        assert snapshot(tmp_path / part) == before
    empty = tmp_path / "empty"
    for part in demo.PARTS:
        (empty / part).mkdir(parents=True)
    ok(call(main, "demo", empty, "--sentences", "50"))
    assert sorted(p.name for p in empty.iterdir()) == sorted(demo.PARTS)
    assert_user_error(call(main, "demo", tmp_path / "e", "--sentences", "-5"), "--sentences -5")
    assert not (tmp_path / "e").exists()


def test_per_teacher_weights_all_zero_and_cache_top_k_above_the_vocabulary(tmp_path):
    from common.config import load
    from common.errors import UserError
    from distill.config import DistillRunConfig

    (tmp_path / "t").mkdir()
    recipe = tmp_path / "kd.yaml"

    def write(weight: float) -> Path:
        recipe.write_text(
            yaml.safe_dump(
                {
                    "data": {"train_dir": "x"},
                    "student": {"arch": "llama-tiny", "vocab_size": 512},
                    "tokenizer": {"vocab_size": 512},
                    "distill": {
                        "teachers": [{"path": str(tmp_path / "t"), "weight": weight}] * 2,
                        "losses": {"logit_kd": {"weight": 1.0, "ensemble": "per_teacher"}},
                    },
                }
            )
        )
        return recipe

    with pytest.raises(UserError, match="every teacher's weight is 0"):
        load(DistillRunConfig, write(0.0))
    load(DistillRunConfig, write(0.5))
    with pytest.raises(UserError, match="distill.cache_top_k: is 600, more than the vocabulary"):
        load(DistillRunConfig, write(0.5), ["distill.cache_top_k=600"])


def test_wml_seed_and_eval_tasks_are_checked_before_training(tmp_path):
    from common.config import load
    from common.errors import UserError
    from distill.wml.config import WMLRunConfig

    recipe = ROOT / "config" / "runs" / "demo-wml.yaml"
    with pytest.raises(UserError, match=r"command line: wml.seed: must be at least 0"):
        load(WMLRunConfig, recipe, ["wml.seed=-1"])
    with pytest.raises(UserError, match=r"wml.eval_tasks\[0\]: unknown task 'demo_pair'.*demo_pairs"):
        load(WMLRunConfig, recipe, ["wml.eval_tasks=[demo_pair]"])


# --------------------------------------------------------------------------- 16. bookkeeping after a resume, and Ctrl-C

def test_sigint_says_interrupted_and_resume_keeps_one_row_per_step_and_every_attempts_time(
    tmp_path, demo_root, cache_dir
):
    from conftest import start_and_kill

    args = train_args(
        demo_root,
        cache_dir,
        tmp_path / "runs",
        "train.max_steps=40",
        "train.logging_steps=1",
        "data.train_fraction=0.05",
    )
    run = tmp_path / "runs" / "demo" / "teacher"
    proc = start_and_kill("train", args, run, 5, signal.SIGINT)  # 35 steps of margin: the run must still be training
    assert proc.returncode == -signal.SIGINT  # ends by SIGINT itself: the shell reports 130 (common.errors.leave)
    assert proc.stderr_text.strip().splitlines()[-1] == (f"{run}: interrupted; rerun with --resume to continue from "
                                                         "its newest checkpoint")
    assert "Traceback" not in proc.stderr_text
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "interrupted" and info["attempts"][0]["train_seconds"] > 0
    ok(run_cli("train", *args, "--resume"))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().split("\n") if line]
    from train.trainer import row_kind

    keys = [(r["step"], row_kind(r)) for r in rows]
    assert len(keys) == len(set(keys)), "a step logged twice"
    assert [r["step"] for r in rows if row_kind(r) == "train"] == list(range(1, 41))
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "done" and all(a["train_seconds"] > 0 for a in info["attempts"])
    from results.collect import read_run

    hours = read_run(run)[0]["train_hours"]
    assert hours == pytest.approx(sum(a["train_seconds"] for a in info["attempts"]) / 3600, abs=1e-4)
