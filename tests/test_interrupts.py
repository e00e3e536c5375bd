"""Ctrl-C (and SIGTERM, SIGHUP) at any moment. Each command says in one line what is kept and what to do, ends by
the same signal (so that a shell script running it stops too), and leaves only whole files, or folders marked as
its own, which the same command then continues from or removes. (Until 2026-12-03 every entry point but training
printed a traceback, a result file was written before the files it vouches for, and a teacher cache stopped
while being moved into place left a folder that every later command refused.)"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import (ROOT, assert_interrupted, call, ended_or_dumped, hang_up_when, interrupt_when, ok, run_cli,
                      run_here, shared, swallow_a_ctrl_c)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory, demo_root, cache_dir) -> Path:
    """A tiny trained causal LM's run directory, with two milestones."""
    out = tmp_path_factory.mktemp("interrupt-runs")
    ok(run_here("train", "config/runs/demo-teacher.yaml", f"data.train_dir={demo_root / 'train'}",
                f"data.dev_dir={demo_root / 'dev'}", f"data.cache_dir={cache_dir}", f"output.dir={out}",
                "train.max_steps=20", "train.save_steps=10", "train.eval_steps=10", "optim.warmup_steps=5",
                "train.word_checkpoints=1k,5k"))
    return out / "demo" / "teacher"


def finetune_slice(demo_root: Path, dest: Path) -> Path:
    dest.mkdir()
    for split, n in (("train", 200), ("valid", 50)):
        lines = (demo_root / "finetune" / f"demo_acceptability.{split}.jsonl").read_text().splitlines()[:n]
        (dest / f"demo_acceptability.{split}.jsonl").write_text("\n".join(lines) + "\n")
    return dest


@pytest.mark.parametrize(("command", "sig"), [(c, signal.SIGINT) for c in ("eval", "finetune", "curve", "download",
                                                                            "prepare")]
                         + [(c, signal.SIGTERM) for c in ("eval", "prepare")] + [("eval", signal.SIGHUP)])
def test_ctrl_c_says_what_is_kept_in_one_line_and_the_same_command_continues(command, sig, run, demo_root, tmp_path):
    """Each long command of the suite, stopped while it works by Ctrl-C (or SIGTERM: `kill`, `timeout`, scancel; or
    SIGHUP, its terminal closed): one line, ended by the same signal, and the same command (with what the line says
    to add) then ends as it would have. (Until 2026-12-04 SIGTERM and SIGHUP ended every command at once, without a
    word.)"""
    model, out = run / "model", tmp_path / "out"
    if command == "eval":
        args = ["eval", model, "--tasks", "demo_pairs", "--data-dir", demo_root, "--out", out, "--no-progress"]
        working = lambda: (out / ".demo_pairs.lock").exists()  # noqa: E731 - scoring
        line = (f"{out}: interrupted; the tasks whose results were written are kept; the same command with "
                "--keep-scored scores only the others")
        again = ["--keep-scored"]
    elif command == "finetune":
        args = ["eval", "finetune", model, "--tasks", "demo_acceptability", "--data-dir",
                finetune_slice(demo_root, tmp_path / "tasks"), "--epochs", "2", "--out", out, "--no-progress"]
        working = lambda: (out / "finetune" / "demo_acceptability" / "attempt.json").exists()  # noqa: E731
        line = (f"{out}: interrupted; the tasks whose results were written are kept, and demo_acceptability its "
                "newest checkpoint if it wrote one; the same command with --tasks demo_acceptability continues")
        again = []
    elif command == "curve":
        args = ["eval", "curve", run, "--tasks", "demo_pairs", "--data-dir", demo_root, "--out", out,
                "--no-progress"]
        working = lambda: (run / "milestones" / "chck_1k" / "eval" / ".demo_pairs.lock").exists()  # noqa: E731
        line = (f"{run}: interrupted; the milestones' results written are kept; run the same command again: it "
                "scores only those missing")
        again = []
    elif command == "download":
        args = ["eval", "download", "--from", shared(), "--dest", out]
        working = lambda: out.exists()  # noqa: E731 - the first file is written
        line = (f"{out}: interrupted; each file written is whole, but the folder may lack some: run the same "
                "command again before scoring from it")
        again = []
    else:
        args = ["tokenizer", "prepare", "config/runs/demo-teacher.yaml", f"data.train_dir={demo_root / 'train'}",
                f"data.dev_dir={demo_root / 'dev'}", f"data.cache_dir={out}"]
        working = lambda: (out / "clean").exists()  # noqa: E731 - the first domain is being cleaned
        line = "interrupted; nothing half-written is kept; run the same command again"
        again = []
    args = [str(a) for a in args]
    if sig != signal.SIGINT:
        line = line.replace("interrupted;", f"stopped by {sig.name};")
    assert_interrupted(interrupt_when(args[0], args[1:], working, sig), line, sig)
    ok(run_cli(*args, *again))
    if command == "eval":
        assert (out / "demo_pairs.json").is_file()
    if command == "curve":
        assert all((run / "milestones" / m / "eval" / "demo_pairs.json").is_file() for m in ("chck_1k", "chck_5k"))
    if command == "download":  # every file there, as an uninterrupted download leaves them
        ok(run_cli("eval", "download", "--from", str(shared()), "--dest", str(tmp_path / "whole")))
        assert tree(out) == tree(tmp_path / "whole")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("command", ["train", "eval", "finetune", "prepare"])
def test_a_ctrl_c_a_finalizer_swallowed_still_stops_the_command(command, run, demo_root, cache_dir, tmp_path,
                                                                 monkeypatch):
    """Ctrl-C that comes while the garbage collector finalizes something is raised inside that finalizer, where
    Python drops it. A training, a fine-tuning and a scoring raise it again at their next step or batch, a corpus
    being prepared after the file it cleans (a teacher cache at its next batch: tests/test_distill.py; a SLURM grid's
    launcher at its next look at the queue: tests/test_slurm.py). (Until 2026-12-04 the command went on to its end,
    and a grid launcher waiting for that point waited with it.)"""
    from tokenizer import corpus

    out = tmp_path / "out"
    seen = (swallow_a_ctrl_c(monkeypatch, corpus, "clean_file", at=1) if command == "prepare"
            else swallow_a_ctrl_c(monkeypatch))
    if command == "prepare":
        proc = run_here("tokenizer", "prepare", "config/runs/demo-teacher.yaml",
                        f"data.train_dir={demo_root / 'train'}", f"data.dev_dir={demo_root / 'dev'}",
                        f"data.cache_dir={out}")
        assert seen["calls"] == 1 and not (out / "blocks").exists(), seen  # stopped after the first file
    elif command == "train":
        proc = run_here("train", "config/runs/demo-teacher.yaml", f"data.train_dir={demo_root / 'train'}",
                        f"data.dev_dir={demo_root / 'dev'}", f"data.cache_dir={cache_dir}", f"output.dir={out}",
                        "train.max_steps=30", "train.save_steps=10", "train.eval_steps=10", "optim.warmup_steps=5")
        info = json.loads((out / "demo" / "teacher" / "run.json").read_text())  # stopped before its first checkpoint
        assert info["status"] == "interrupted" and not any((out / "demo" / "teacher" / "checkpoints").iterdir()), info
    elif command == "finetune":
        proc = run_here("eval", "finetune", run / "model", "--tasks", "demo_acceptability", "--data-dir",
                        finetune_slice(demo_root, tmp_path / "tasks"), "--out", out, "--no-progress")
        assert not (out / "demo_acceptability.json").exists()
        assert not any((out / "finetune" / "demo_acceptability" / "trainer").glob("checkpoint-*"))  # before the first
    else:
        proc = run_here("eval", run / "model", "--tasks", "demo_pairs", "--data-dir", demo_root, "--out", out,
                        "--batch-size", "4", "--no-progress")
        assert not (out / "demo_pairs.json").exists()
    assert seen["swallowed"] and proc.returncode == 130, (seen, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr and "interrupted;" in proc.stderr.splitlines()[-1], proc.stderr[-3000:]


def test_ctrl_c_stops_a_tokenizer_training_while_it_runs(tmp_path):
    """tokenizers trains a BPE in Rust and never looks at signals: Ctrl-C waited for the training's end (4 s on
    8.8M words, minutes on the 100M corpus). The training now runs in a thread of its own, and Ctrl-C ends the
    command while it still runs, with nothing written."""
    import threading

    from tokenizer.bpe import TRAINING_THREAD

    def training():
        return next((t for t in threading.enumerate() if t.name == TRAINING_THREAD), None)

    ended = threading.Event()

    def ctrl_c_while_training():
        while not ended.is_set() and training() is None:
            time.sleep(0.001)
        if not ended.is_set():
            os.kill(os.getpid(), signal.SIGINT)

    sender = threading.Thread(target=ctrl_c_while_training, daemon=True)
    sender.start()
    out = tmp_path / "cache"  # the real strict-small files: 1.47M words, a BPE training of a second or two
    try:
        proc = run_here("tokenizer", "prepare", "config/runs/demo-teacher.yaml",
                        f"data.train_dir={shared('babylm_2023_partial', 'train_10M')}",
                        f"data.dev_dir={shared('babylm_2023_partial', 'dev')}", f"data.cache_dir={out}",
                        "tokenizer.vocab_size=16000", "model.vocab_size=16000")
    finally:
        ended.set()
        sender.join()
    # threading.enumerate() lists a thread until its function has returned; is_alive() would not do: Python 3.11
    # marks a thread stopped when Ctrl-C interrupts a join() on it (bpo-45274), although it runs on
    assert training() is not None, "the command waited for the training's end"
    deadline = time.time() + 300
    while training() is not None and time.time() < deadline:  # not to train on during the next test
        time.sleep(0.05)
    assert proc.returncode == 130 and proc.stderr.splitlines()[-1] == ("interrupted; nothing half-written is kept; "
                                                                       "run the same command again"), proc.stderr
    assert not (out / "tokenizers").exists() or not any((out / "tokenizers").iterdir())


def test_sigterm_stops_a_finetuning_after_a_checkpoint_and_names_the_tasks_left(run, demo_root, tmp_path):
    """SIGTERM while the second task fine-tunes: a checkpoint at the step's end, ended by SIGTERM, one line naming the
    --tasks to run; that command continues from the checkpoint and leaves the first task's result as it was."""
    from common.checkpoints import checkpoint_problem

    tasks = finetune_slice(demo_root, tmp_path / "tasks")
    for split, n in (("train", 200), ("valid", 50)):
        lines = (demo_root / "finetune" / f"demo_phenomenon.{split}.jsonl").read_text().splitlines()[:n]
        (tasks / f"demo_phenomenon.{split}.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    trainer = out / "finetune" / "demo_phenomenon" / "trainer"
    args = ["finetune", str(run / "model"), "--data-dir", str(tasks), "--epochs", "3", "--out", str(out),
            "--no-progress"]
    proc = interrupt_when("eval", [*args, "--tasks", "demo_acceptability,demo_phenomenon"],
                          lambda: any(trainer.glob("checkpoint-*/COMPLETE")), signal.SIGTERM)
    stopped = sorted(trainer.glob("checkpoint-*"), key=lambda c: int(c.name.split("-")[1]))[-1]
    assert checkpoint_problem(stopped) is None
    assert_interrupted(proc, f"demo_phenomenon: stopped by SIGTERM after saving {stopped}; run the same command with "
                             "--tasks demo_phenomenon to continue from it", signal.SIGTERM)
    first = (out / "demo_acceptability.json").read_bytes()
    assert not (out / "demo_phenomenon.json").exists()
    proc = ok(run_here("eval", *args, "--tasks", "demo_phenomenon"))
    assert f"demo_phenomenon: continuing from {stopped}" in proc.stdout
    assert (out / "demo_phenomenon.json").is_file() and (out / "demo_acceptability.json").read_bytes() == first


def test_a_stop_while_an_entry_point_loads_torch_is_one_line_too():
    """Ctrl-C in the second or two an entry point takes to import torch: eval and distill imported it before their
    boundary, and printed a traceback. Now no entry point imports torch (or any library that takes long) before
    main: what is left before the boundary is Python's own start and the standard library."""
    script = ("import importlib, sys; importlib.import_module(sys.argv[1]); "
              "print(','.join(m for m in ('torch', 'transformers', 'datasets', 'numpy', 'pandas', 'submitit') "
              "if m in sys.modules))")
    for module in ("train.__main__", "distill.__main__", "distill.wml.__main__", "eval.__main__",
                   "tokenizer.__main__", "results.__main__", "launch.__main__", "launch.where", "launch.torchrun",
                   "launch_grid"):
        loaded = subprocess.run([sys.executable, "-c", script, module], cwd=ROOT, capture_output=True, text=True)
        assert loaded.returncode == 0 and loaded.stdout.strip() == "", (module, loaded.stdout, loaded.stderr[-2000:])

    def loading_torch(pid: int) -> bool:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()

    for module, args in (("eval", ["no-such-model"]), ("distill", ["config/runs/demo-kd.yaml"])):
        for sig, how in ((signal.SIGINT, "interrupted"), (signal.SIGTERM, "stopped by SIGTERM")):
            assert_interrupted(interrupt_when(module, args, loading_torch, sig),
                               f"{how}; nothing half-written is kept; run the same command again", sig)


def test_an_error_a_library_raises_from_the_stop_is_said_as_the_stop():
    """A C extension whose import Ctrl-C cut reports "ImportError: initialization failed"; inside a `reading` block
    that became "error: <file>: ... cannot be read (ImportError: initialization failed)", exit 2, as if the file
    were bad. An error raised after Ctrl-C or SIGTERM is said as the stop, in the words of the block around it."""
    script = """
import os, signal, sys, time
from common.errors import exit_on_user_error, if_interrupted, leave, reading

@exit_on_user_error
def main(sig):
    with if_interrupted("out", "what is kept"), reading("model.bin", "the model", "save it again"):
        try:
            os.kill(os.getpid(), sig)
            time.sleep(5)
        except KeyboardInterrupt:
            raise ImportError("initialization failed") from None

leave(main(int(sys.argv[1])))
"""
    for sig, how in ((signal.SIGINT, "interrupted"), (signal.SIGTERM, "stopped by SIGTERM")):
        proc = subprocess.run([sys.executable, "-c", script, str(int(sig))], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == -sig and proc.stderr == f"out: {how}; what is kept\n", proc.stderr


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_task_result_is_written_after_every_file_it_vouches_for(run, demo_root, tmp_path, monkeypatch):
    """A stop after each file an evaluation writes: wherever it stops, a task with a result file has its per-item
    file and both predictions files, the ones --keep-scored, a learning curve and a grid take it for having (the
    result was written first, and a stop right after it left a task that was taken for scored without them)."""
    import common.paths
    from eval import __main__ as eval_main, report

    out = tmp_path / "out"
    args = [run / "model", "--tasks", "demo_pairs", "--data-dir", demo_root, "--convention", "babylm2025",
            "--out", out, "--no-progress"]
    real = common.paths.write_atomic
    for stop in range(1, 10):
        written = []

        def write_then_stop(path, text):
            real(path, text)
            written.append(Path(path).name)
            if len(written) == stop:
                raise KeyboardInterrupt

        monkeypatch.setattr(report, "write_atomic", write_then_stop)
        proc = call(eval_main.main, *args)
        if proc.returncode == 0:  # every file was written before the stop
            break
        assert proc.returncode == 130 and proc.stderr.strip().endswith("--keep-scored scores only the others")
        if (out / "demo_pairs.json").is_file():
            assert (out / "pairs" / "demo_pairs.jsonl").is_file()
            assert "demo_pairs" in json.loads((out / "predictions.json").read_text())
            assert (out / report.OFFICIAL_DIR / "demo_pairs" / "predictions.json").is_file()
        shutil.rmtree(out)
    assert stop == 5 and written == ["demo_pairs.jsonl", "predictions.json", "predictions.json", "demo_pairs.json"]


def test_a_teacher_cache_replaced_is_whole_or_marked_ours_wherever_it_stops(tmp_path, monkeypatch):
    """`distill.cache.replace` (a finished cache put in the old one's place) stopped before each file-system step:
    the cache folder then holds the old cache whole, the new one whole, nothing (or an empty folder), or a folder
    marked as unfinished, which no training reads; the next cache-teachers takes what is left and puts its cache in
    place."""
    from common.errors import UserError
    from distill.cache import MANIFEST, PARTIAL, TeacherCache, check_target, replace
    from common.paths import remove_ours

    def cache(folder: Path, which: str, partial: bool) -> Path:
        (folder / "sub").mkdir(parents=True)
        for i in range(3):
            (folder / f"shard-{i:05d}.ids.npy").write_text(which)
        (folder / "sub" / "x").write_text(which)
        (folder / MANIFEST).write_text(json.dumps({"which": which}))
        if partial:
            (folder / PARTIAL).write_text("unfinished")
        return folder

    def state(folder: Path) -> str:
        if not folder.exists():
            return "none"
        if (folder / PARTIAL).is_file():
            return "marked"
        if not any(folder.iterdir()):  # its last step removes it: an empty folder is taken as a new one
            return "empty"
        names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))
        assert names == [MANIFEST, "shard-00000.ids.npy", "shard-00001.ids.npy", "shard-00002.ids.npy", "sub",
                         "sub/x"], names  # whole
        return json.loads((folder / MANIFEST).read_text())["which"]

    seen = set()
    for stop in range(1, 40):
        root = tmp_path / f"stop{stop}"
        out, tmp = cache(root / "c", "old", False), cache(root / "c.partial", "new", True)
        steps = []

        def count(real):
            def step(*a, **k):
                steps.append(real.__name__)
                if len(steps) == stop:
                    raise KeyboardInterrupt
                return real(*a, **k)
            return step

        with monkeypatch.context() as m:
            for name in ("unlink", "rmdir", "rename"):
                m.setattr(os, name, count(getattr(os, name)))
            m.setattr(Path, "write_text", count(Path.write_text))
            try:
                replace(out, tmp)
                done = True
            except KeyboardInterrupt:
                done = False
        seen.add(state(out))
        if state(out) == "marked":
            with pytest.raises(UserError, match="no finished cache there .* left unfinished"):
                TeacherCache(out, {})
        # the next cache-teachers: the folder passes its check, the unfinished one goes, a new one is put in place
        check_target(out)
        remove_ours(tmp, PARTIAL, "an unfinished teacher cache")
        replace(out, cache(tmp, "newer", True))
        assert state(out) == "newer" and sorted(p.name for p in root.iterdir()) == ["c"]
        if done:
            break
    assert done and stop > 10 and seen == {"old", "marked", "empty", "none", "new"}, (stop, seen)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["int", "term", "hup"])
def test_ctrl_c_stops_a_grid_under_the_debug_and_local_executors(sig, workdir, demo_root, cache_dir):
    """The debug executor trains in the launcher's process: Ctrl-C stopped only the point training (its run said
    interrupted) and the launcher went on with the next point. The local executor's training is a child process: a
    SIGINT (or SIGTERM) sent to the launcher alone is passed on to it, so that no training goes on without its
    launcher. SIGTERM and SIGHUP stop the training after a checkpoint."""
    grid = workdir / "grid.yaml"  # a point trains far longer than the launcher's 10 s wait before it passes SIGINT on
    sets = [f"data.train_dir={demo_root / 'train'}", f"data.dev_dir={demo_root / 'dev'}",
            f"data.cache_dir={cache_dir}", "train.max_steps=20000", "train.save_steps=10", "train.eval_steps=10",
            "train.logging_steps=1", "optim.warmup_steps=5", "data.train_fraction=0.2"]
    for kind in ("debug", "local"):
        grid.write_text(f"name: stop-{kind}-{sig.name}\nstages:\n  - name: grid\n"
                        "    recipes: [config/runs/demo-student.yaml]\n"
                        f"    axes: {{train.seed: [1, 2]}}\nexecutor: {{kind: {kind}}}\n")
        runs = workdir / "runs" / f"stop-{kind}-{sig.name}"
        cmd = [sys.executable, str(ROOT / "launch_grid.py"), str(grid), *[a for s in sets for a in ("--set", s)]]
        proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        first = None
        try:
            while proc.poll() is None and first is None:  # the first point has trained a step
                time.sleep(0.05)
                first = next((m.parent for m in runs.glob("*/metrics.jsonl") if m.read_text().strip()), None)
            assert first is not None, proc.communicate()[1][-3000:]
            proc.send_signal(sig)  # to the launcher alone (at a terminal, its training gets one too)
            err = ended_or_dumped(proc, 300, f"{runs}/*/logs/*.log")
        finally:
            proc.kill()
        lines = [x for x in err.replace("\r", "\n").splitlines() if x.strip()]
        assert proc.returncode == -sig and "Traceback" not in err, err[-3000:]
        how = "interrupted" if sig == signal.SIGINT else f"stopped by {sig.name}"
        assert lines[-1] == (f"runs/stop-{kind}-{sig.name}: {how}; the point that was training stopped, and resumes "
                             "from its newest checkpoint; the same command continues the grid (finished points are "
                             "skipped)")
        info = json.loads((first / "run.json").read_text())
        assert info["status"] == ("interrupted" if sig == signal.SIGINT else "terminated")
        if sig != signal.SIGINT:  # a checkpoint at the stop, and the signal named
            assert info["signal"] == sig.name
            assert (first / "checkpoints" / f"checkpoint-{info['step']}" / "COMPLETE").is_file()
        assert sorted(p.name for p in runs.iterdir() if not p.name.startswith("_")) == [first.name]  # no next point
        assert not (first / "LOCK").exists()  # its training is over too


def test_a_local_grid_whose_terminal_hangs_up_stops_after_a_checkpoint(workdir, demo_root, cache_dir):
    """A grid launched at a terminal over ssh, the connection lost while a point trains: the launcher and the
    training both get SIGHUP. The training saves a checkpoint; the launcher's own writes after the point's log
    (pointed back at the terminal, which is gone) go nowhere instead of failing, and it ends by SIGHUP."""
    grid = workdir / "grid.yaml"
    grid.write_text("name: hup\nstages:\n  - name: grid\n    recipes: [config/runs/demo-student.yaml]\n"
                    "    axes: {train.seed: [1, 2]}\nexecutor: {kind: local}\n")
    sets = [f"data.train_dir={demo_root / 'train'}", f"data.dev_dir={demo_root / 'dev'}",
            f"data.cache_dir={cache_dir}", "train.max_steps=20000", "train.save_steps=1000", "train.eval_steps=1000",
            "train.logging_steps=1", "optim.warmup_steps=5", "data.train_fraction=0.2"]
    runs = workdir / "runs" / "hup"
    started = lambda: any(m.read_text().strip() for m in runs.glob("*/metrics.jsonl"))  # noqa: E731
    rc, _ = hang_up_when([sys.executable, ROOT / "launch_grid.py", grid, *[a for s in sets for a in ("--set", s)]],
                         started, cwd=workdir)
    first = next(m.parent for m in runs.glob("*/metrics.jsonl"))
    info = json.loads((first / "run.json").read_text())
    log = "".join(p.read_text(errors="replace") for p in (first / "logs").glob("grid-*.log"))
    assert rc == -signal.SIGHUP, (info, log[-3000:])
    assert info["status"] == "terminated" and info["signal"] == "SIGHUP", info
    assert (first / "checkpoints" / f"checkpoint-{info['step']}" / "COMPLETE").is_file()
    assert "Traceback" not in log and "stopped by SIGHUP after saving" in log, log[-3000:]
    assert sorted(p.name for p in runs.iterdir() if not p.name.startswith("_")) == [first.name]  # no next point
    assert not (first / "LOCK").exists()


def test_ctrl_c_while_a_local_grid_evaluates_a_point_stops_the_grid(workdir, demo_root, cache_dir):
    """A point's evaluation runs in the launcher's process: Ctrl-C there ended only that evaluation (exit 130), the
    point was listed as failed and the launcher went on with the next point."""
    grid = workdir / "grid-eval.yaml"
    grid.write_text("name: stop-eval\nstages:\n  - name: grid\n    recipes: [config/runs/demo-student.yaml]\n"
                    f"    axes: {{train.seed: [1, 2]}}\neval_data_dir: {demo_root}\nexecutor: {{kind: local}}\n")
    sets = [f"data.train_dir={demo_root / 'train'}", f"data.dev_dir={demo_root / 'dev'}",
            f"data.cache_dir={cache_dir}", "train.max_steps=10", "train.save_steps=10", "train.eval_steps=10",
            "optim.warmup_steps=2", "data.train_fraction=0.2"]
    runs = workdir / "runs" / "stop-eval"
    cmd = [sys.executable, str(ROOT / "launch_grid.py"), str(grid), *[a for s in sets for a in ("--set", s)]]
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    try:
        while proc.poll() is None and not any(runs.glob("*/eval/.demo_pairs.lock")):  # the first point is scored
            time.sleep(0.01)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        proc.send_signal(signal.SIGINT)
        err = ended_or_dumped(proc, 300, f"{runs}/*/logs/*.log")
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGINT and "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("runs/stop-eval: interrupted; ")
    assert len([p for p in runs.iterdir() if not p.name.startswith("_")]) == 1  # no next point


def test_a_process_that_hangs_fails_its_test_with_the_stacks_of_its_processes(tmp_path):
    """What a hanging signal test reports (`ended_or_dumped`): where its process and each under it were; the logs."""
    (tmp_path / "point.log").write_text("the point's own output\n")
    waiting = "import subprocess, sys; subprocess.run([sys.executable, '-c', 'import time; time.sleep(60)'])"
    proc = subprocess.Popen([sys.executable, "-c", waiting], stderr=subprocess.PIPE, text=True)
    time.sleep(1)
    with pytest.raises(AssertionError) as failed:
        ended_or_dumped(proc, 1, f"{tmp_path}/*.log")
    stacks = str(failed.value)
    assert proc.returncode == -signal.SIGABRT and "still running after 1 s" in stacks, stacks
    assert stacks.count("most recent call first") == 2 and "the point's own output" in stacks, stacks


def test_an_interrupt_deferred_takes_effect_as_the_block_ends():
    """The grid submits a stage's jobs and records their ids in jobs.json under `interrupt_deferred`: Ctrl-C between
    sbatch's answer and the record left jobs the next launch did not know of, and it submitted their points again.
    The block runs to its end, then the interrupt is raised (also when the block fails); a program it runs still
    gets its own Ctrl-C."""
    script = """
import os, signal, subprocess, sys
from common.errors import interrupt_deferred
done = []
try:
    with interrupt_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        done.append("block ended")
        done.append(subprocess.run([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGINT)"],
                                   stderr=subprocess.DEVNULL).returncode)
except KeyboardInterrupt:
    done.append("interrupted after")
try:
    with interrupt_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        raise ValueError("the block failed")
except KeyboardInterrupt:
    done.append("interrupted, not the failure")
print(done, signal.getsignal(signal.SIGINT) is signal.default_int_handler)
"""
    out = ok(subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)).stdout
    assert out.strip() == "['block ended', -2, 'interrupted after', 'interrupted, not the failure'] True"


def test_the_one_line_closes_the_bars_of_its_entry_point_and_no_other(capsys):
    """A bar the entry point left open is closed before its one line (closed at exit, it drew itself again after
    it); a bar of a caller in the same process (the debug executor's stage bar, around a point's training) stays."""
    from tqdm import tqdm

    from common.errors import UserError, exit_on_user_error

    for failure in (KeyboardInterrupt, UserError("x.yaml: bad")):
        inner = []

        @exit_on_user_error
        def main(argv):
            inner.append(tqdm(total=10, desc="scoring"))
            inner[0].update(3)
            raise failure

        with tqdm(total=4, desc="stage") as caller:
            assert main([]) == (130 if failure is KeyboardInterrupt else 2)
            assert not caller.disable and inner[0].disable  # the caller's is open, the entry point's closed
            err = capsys.readouterr().err
        last = err.replace("\r", "\n").splitlines()[-1]
        assert last in ("interrupted; nothing half-written is kept; run the same command again", "error: x.yaml: bad")
