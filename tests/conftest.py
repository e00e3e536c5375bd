"""Shared fixtures: the real data beside the project, a generated demo corpus, a shared cache, CLI runner."""
from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import re
import signal
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("BABYDISTILL_SHARED_DATA", ROOT.parent / "shared" / "data"))
DEMO_SENTENCES = 4000

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two pytest workers share the two cores: one thread each, inherited by every process a test starts.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

# Every process a test starts writes its Python stacks on SIGABRT (and on a crash): `ended_or_dumped` sends it to a
# process that hangs, and the test fails with where each of its processes was.
os.environ.setdefault("PYTHONFAULTHANDLER", "1")

if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    # A suite started in the background (`bash .ci/run &`, nohup) inherits SIGINT ignored, and so would every run a
    # test starts: it would never see the Ctrl-C a test sends. A handler here (not inherited: exec resets it to the
    # default) gives the runs a test starts the disposition of a terminal's foreground job.
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config, items):
    """The SLURM tests first: with `-n 2 --dist loadfile --no-loadscope-reorder` (test.sh) each file runs on one
    worker, in collection order, and the SLURM file, the longest by far (~7 min), would otherwise end the run alone
    (xdist's default order, the files with the most tests first, puts its four tests near the end)."""
    items.sort(key=lambda item: item.get_closest_marker("slurm") is None)


# --------------------------------------------------------------------------- a test that hangs
# pytest-timeout (pyproject.toml: 900 s, SIGALRM) fails a test that waits too long, with the traceback of where it
# waited, and the run goes on. A wait that no signal interrupts (a deadlock inside C code) ends here: past
# BACKSTOP_S the worker writes every thread's stack to a file and exits, and the main pytest process prints that file
# at the end of the run (with `--max-worker-restart=0`, as test.sh runs, the run then ends instead of retrying).
BACKSTOP_S = float(os.environ.get("BABYDISTILL_TEST_BACKSTOP_S", 1020))
HANG_DUMP = pytest.StashKey()


def _hang_file(main_pid: int, worker: str) -> Path:
    import tempfile

    return Path(tempfile.gettempdir()) / f"babydistill-hang-{main_pid}-{worker}.txt"


def pytest_configure(config):
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:  # an xdist worker, a child of the main pytest process
        config.stash[HANG_DUMP] = open(_hang_file(os.getppid(), worker), "w", encoding="utf-8")


def pytest_unconfigure(config):
    dump = config.stash.get(HANG_DUMP, None)
    if dump is not None:
        dump.close()
        Path(dump.name).unlink()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    import faulthandler

    dump = item.config.stash.get(HANG_DUMP, None)
    if dump is None:
        yield
        return
    dump.seek(0)
    dump.truncate()
    dump.write(f"{item.nodeid} had not ended after {BACKSTOP_S:.0f} s; its worker's threads were here:\n")
    dump.flush()
    faulthandler.dump_traceback_later(BACKSTOP_S, exit=True, file=dump)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def pytest_terminal_summary(terminalreporter):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    pattern = _hang_file(os.getpid(), "*")
    for path in sorted(pattern.parent.glob(pattern.name)):
        text = path.read_text(encoding="utf-8", errors="replace")
        if "Timeout (" in text:  # faulthandler's heading: the backstop fired
            terminalreporter.write_sep("=", "a worker stopped by the hang backstop")
            terminalreporter.write_line(text)
        path.unlink()  # this run's (its main process's pid is in the name)


def shared(*parts: str) -> Path:
    """A path under ../shared/data; a missing file fails the test (it is never skipped)."""
    path = SHARED.joinpath(*parts)
    assert path.exists(), f"real data missing: {path} (tests read ../shared/data; set BABYDISTILL_SHARED_DATA)"
    return path


def slice_corpus(src: Path, dst: Path, lines: int) -> Path:
    """Copy the first `lines` lines of every file in `src` (real BabyLM data) into `dst`."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        with open(f, encoding="utf-8") as handle:
            (dst / f.name).write_text("".join(next(handle) for _ in range(lines)), encoding="utf-8")
    return dst


def run_cli(*args: str, cwd: Path = ROOT, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m <args>` in a subprocess, as a user would type it."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )


def assert_user_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2 and a single `error:` line on stderr that contains every needle."""
    errors = [line for line in re.split(r"[\r\n]", proc.stderr) if line.startswith("error:")]
    assert proc.returncode == 2, f"rc={proc.returncode}\nstdout:{proc.stdout[-2000:]}\nstderr:{proc.stderr[-3000:]}"
    assert len(errors) == 1, proc.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], f"{needle!r} not in {errors[0]!r}"
    return errors[0]


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def assert_bitwise_equal(a: dict, b: dict) -> None:
    import torch

    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ: {different[:5]}"


def start_and_kill(
    module: str, args: list[str], run: Path, after_step: int, sig: int = signal.SIGKILL
) -> subprocess.Popen:
    """Start `python -m <module>`, send it `sig` (SIGKILL) once metrics.jsonl shows `after_step`, wait for its end."""
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 300
    metrics = run / "metrics.jsonl"
    try:
        while time.time() < deadline and proc.poll() is None:
            if metrics.exists() and any(json.loads(line).get("step", 0) >= after_step
                                        for line in metrics.read_text().splitlines() if line.endswith("}")):
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before step {after_step}"
        proc.send_signal(sig)
    finally:
        proc.stderr_text = proc.communicate()[1]
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    return proc


def freeze_when(module: str, args: list[str], condition, timeout: float = 300) -> subprocess.Popen:
    """Start `python -m <module>` and stop it (SIGSTOP) as soon as `condition()` (or `condition(pid)`) holds, polled
    every 5 ms: the test then sees the run directory as the stopped process left it, and chooses the signal that
    follows."""
    import inspect

    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    holds = (lambda: condition(proc.pid)) if inspect.signature(condition).parameters else condition
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline and not holds():
        time.sleep(0.005)
    assert proc.poll() is None, f"the run ended before the condition held:\n{proc.communicate()[1][-3000:]}"
    proc.send_signal(signal.SIGSTOP)
    return proc


def descendants(pid: int) -> list[int]:
    """The processes under `pid`, children first."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    found, todo = [], [pid]
    while todo:
        above = todo.pop(0)
        kids = [p for p, parent in parents.items() if parent == above]
        found += kids
        todo += kids
    return found


def ended_or_dumped(proc: subprocess.Popen, timeout: float, logs: str = "") -> str:
    """`proc`'s stderr once it has ended. One still running after `timeout` s hangs: it and every process under it get
    SIGABRT, on which each writes its Python stacks (PYTHONFAULTHANDLER), and the test fails with them: the
    process's stderr and the files matching the glob `logs` (where a grid point's output goes)."""
    try:
        return proc.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        for pid in [*descendants(proc.pid), proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGABRT)
        err = proc.communicate(timeout=60)[1]
        tails = "".join(f"\n--- {p}:\n{Path(p).read_text(errors='replace')[-4000:]}"
                        for p in (sorted(glob.glob(logs)) if logs else []))
        raise AssertionError(f"still running after {timeout} s; the stacks of its processes:\n{err[-6000:]}{tails}")


def interrupt_when(module: str, args: list[str], condition, sig: int = signal.SIGINT) -> subprocess.Popen:
    """`python -m <module> <args>`, stopped (SIGSTOP) as soon as `condition()` holds, then sent SIGINT (or `sig`) and
    let go: Ctrl-C (or SIGTERM) at that very moment. Returns the ended process, its stderr in `stderr_text`."""
    proc = freeze_when(module, args, condition)
    proc.send_signal(sig)
    proc.send_signal(signal.SIGCONT)
    proc.stderr_text = ended_or_dumped(proc, 600)
    return proc


def assert_interrupted(proc: subprocess.Popen, line: str, sig: int = signal.SIGINT) -> None:
    """Ended by SIGINT (a shell reports 130; or by `sig`), no traceback, and `line` as the last line on stderr."""
    lines = [x for x in proc.stderr_text.replace("\r", "\n").splitlines() if x.strip()]
    assert proc.returncode == -sig, proc.stderr_text[-3000:]
    assert "Traceback" not in proc.stderr_text and lines[-1] == line, proc.stderr_text[-3000:]


def swallow_a_ctrl_c(monkeypatch, owner=None, name: str = "forward", at: int = 3) -> dict:
    """Ctrl-C at the `at`-th call of `owner.name` (this process's `at`-th embedding lookup by default), while a
    finalizer runs: Python raises its KeyboardInterrupt inside `__del__`, reports it as unraisable and goes on, as it
    does wherever the garbage collector (which may run at any allocation) is finalizing something when the signal
    comes. The dict returned says whether that happened (`swallowed`) and how many calls ran (`calls`)."""
    if owner is None:
        import torch

        owner = torch.nn.Embedding
    seen = {"calls": 0, "swallowed": False}

    class Finalizing:
        def __del__(self):
            try:
                signal.raise_signal(signal.SIGINT)
            except KeyboardInterrupt:
                seen["swallowed"] = True
                raise

    original = getattr(owner, name)

    def counted(*args, **kwargs):
        seen["calls"] += 1
        if seen["calls"] == at:
            Finalizing()  # dropped at once: its finalizer runs here
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return seen


def logged_steps(metrics: Path) -> set[int]:
    """The steps metrics.jsonl has a training row for (a line still being written is skipped)."""
    from common.paths import read_jsonl

    return {r["step"] for r in read_jsonl(metrics) if "loss" in r}


def stop_at_budget(module: str, args: list[str], run: Path, last: int, window: str) -> subprocess.Popen:
    """The two ways a run stops at its last step without DONE. `kill`: SIGKILL after checkpoint-<last> is
    marked COMPLETE, while the final evaluation and export run. `usr2`: SIGUSR2 while step <last> trains
    (the SLURM preemption path: the trainer saves checkpoint-<last> and exits 75). Needs logging_steps=1."""
    if window == "kill":
        proc = freeze_when(module, args, lambda: (run / "checkpoints" / f"checkpoint-{last}" / "COMPLETE").exists())
        assert not (run / "DONE").exists(), "the run finished before it could be stopped"
        proc.send_signal(signal.SIGKILL)
    else:
        proc = freeze_when(module, args, lambda: last - 1 in logged_steps(run / "metrics.jsonl"))
        assert (
            last not in logged_steps(run / "metrics.jsonl")
            and not (run / "checkpoints" / f"checkpoint-{last}").exists()
        )
        proc.send_signal(signal.SIGUSR2)  # delivered when it continues, inside step <last>
    proc.send_signal(signal.SIGCONT)
    proc.stderr_text = proc.communicate(timeout=300)[1]
    return proc


def tiny_llama(hidden: int, layers: int, vocab: int = 48, seed: int = 0):
    """A randomly initialised Llama causal LM small enough for unit tests (seeded)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(
        "llama",
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=32,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg)


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    from tokenizer import demo

    return demo.generate(tmp_path_factory.mktemp("demo"), seed=7, n_sentences=DEMO_SENTENCES)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def workdir(tmp_path) -> Path:
    """A working folder with the repository's config/ in it, as a user's checkout would have."""
    (tmp_path / "config").symlink_to(ROOT / "config")
    return tmp_path


@pytest.fixture
def demo_args(demo_root, cache_dir, tmp_path) -> list[str]:
    """Overrides that point the demo teacher recipe at the test's corpus, cache and output folder; short training."""
    return [
        "config/runs/demo-teacher.yaml",
        f"data.train_dir={demo_root / 'train'}",
        f"data.dev_dir={demo_root / 'dev'}",
        f"data.cache_dir={cache_dir}",
        f"output.dir={tmp_path / 'runs'}",
        "train.max_steps=30",
        "train.save_steps=10",
        "train.eval_steps=10",
        "train.logging_steps=5",
        "optim.warmup_steps=5",
    ]


def call(main, *argv: str) -> subprocess.CompletedProcess:
    """An entry point's main(argv) in this process, its output captured like a subprocess's."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return subprocess.CompletedProcess(argv, rc, out.getvalue(), err.getvalue())


def run_here(module: str, *args: str) -> subprocess.CompletedProcess:
    """`python -m <module> <args>` in this process (`call` on `<module>.__main__.main`, as the grid's debug executor
    runs a point): for tests of what a run does, without the ~8 s of interpreter start and imports each subprocess
    costs here. How a process starts, stops and is signalled is tested through `run_cli`."""
    import importlib

    return call(importlib.import_module(f"{module}.__main__").main, *args)


def in_terminal(argv: list[str], cwd: Path = ROOT, timeout: int = 600) -> tuple[int, str, float]:
    """`argv` under a pseudo-terminal of 120 columns (progress bars draw as on a person's screen): the exit code,
    everything written to the terminal (line ends as `\n`, bar redraws as `\r`) and the wall time in seconds.
    The child is started by subprocess (no Python code runs between fork and exec in this process, which earlier
    in-process runs have left with threads), in its own session; past `timeout` it is killed with everything it
    started and the test fails. Also used by bench/grid_output.py."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    start = time.perf_counter()
    terminal, child_side = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=child_side, stdout=child_side, stderr=child_side,
                            start_new_session=True)
    os.close(child_side)  # the child's copies are the only ones left: the terminal ends when they close
    out, deadline, closed, rc = bytearray(), time.time() + timeout, False, None
    try:
        while not closed and time.time() < deadline:
            if not select.select([terminal], [], [], min(1.0, max(0.0, deadline - time.time())))[0]:
                continue
            try:
                data = os.read(terminal, 65536)
            except OSError:  # EIO: every process holding the terminal has closed it
                data = b""
            closed = not data
            out.extend(data)
        rc = proc.wait(timeout=max(1.0, deadline - time.time())) if closed else None
    except subprocess.TimeoutExpired:
        rc = None
    finally:
        if rc is None:  # past the deadline: the child and everything it started go
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        os.close(terminal)
    screen = out.decode(errors="replace").replace("\r\n", "\n")
    assert rc is not None, f"{argv} did not end within {timeout} s:\n{screen[-3000:]}"
    return rc, screen, time.perf_counter() - start


def hang_up_when(argv: list, condition, cwd: Path = ROOT, timeout: float = 300) -> tuple[int, str]:
    """`argv` in a session of its own whose controlling terminal is a pseudo-terminal (util-linux
    `setsid -c`), as a command typed over ssh runs; once `condition()` holds the terminal hangs up (its other side is
    closed, as when the connection drops): the kernel sends SIGHUP, and writes to the terminal fail from then on.
    Returns the exit code and what the terminal showed until then."""
    import pty
    import select

    terminal, child_side = pty.openpty()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(["setsid", "-c", *map(str, argv)], cwd=cwd, env=env, stdin=child_side, stdout=child_side,
                            stderr=child_side)
    os.close(child_side)
    out, deadline = bytearray(), time.time() + timeout
    try:
        while proc.poll() is None and time.time() < deadline and not condition():
            if select.select([terminal], [], [], 0.05)[0]:
                with contextlib.suppress(OSError):
                    out.extend(os.read(terminal, 65536))
        assert proc.poll() is None, f"it ended before the condition held:\n{out.decode(errors='replace')[-3000:]}"
    finally:
        os.close(terminal)  # the hang-up
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return rc, out.decode(errors="replace")


def run_in_terminal(*args: str, cwd: Path = ROOT, timeout: int = 600) -> tuple[int, str]:
    """`python -m <args>` under a pseudo-terminal (in_terminal): the exit code and the terminal's text."""
    rc, screen, _ = in_terminal([sys.executable, "-m", *args], cwd, timeout)
    return rc, screen


# -------------------------------------------------------- the 2025 evaluation data (test_eval2025, test_own_code)
def _subset(src: str, dst: Path, every: int) -> None:
    lines = [line for line in src.splitlines() if line.strip()]
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("\n".join(lines[::every]) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def extras(tmp_path_factory) -> Path:
    """A 2025 evaluation_data folder: the real entity tracking, WUG adjective and reading files (thinned), BLiMP,
    the supplement and EWoK (thinned), and COMPS and WUG past tense written in their published formats."""
    root = tmp_path_factory.mktemp("eval2025")
    raw = tmp_path_factory.mktemp("raw")
    with tarfile.open(shared("babylm2025_extra_tasks.tar.gz")) as tf:
        tf.extractall(raw, filter="data")
    for name in ("regular", "ambiref", "move_contents"):
        _subset((raw / "entity_tracking" / f"{name}.jsonl").read_text(), root / "entity_tracking" / f"{name}.jsonl", 60)
    _subset(
        (raw / "entity_tracking" / "regular.jsonl").read_text(), root / "entity_tracking_fast" / "regular.jsonl", 90
    )
    shutil.copytree(raw / "wug_adj_nominalization", root / "wug_adj_nominalization")
    (root / "reading").mkdir()
    shutil.copy(raw / "reading" / "reading_data.csv", root / "reading" / "reading_data.csv")
    for folder, fast, names in (("blimp_filtered", "blimp_fast", ("adjunct_island", "anaphor_gender_agreement")),
                                ("blimp_supplement", "supplement_fast", ("hypernym", "turn_taking"))):
        for name in names:
            text = shared(folder, f"{name}.jsonl").read_text(encoding="utf-8")
            _subset(text, root / folder / f"{name}.jsonl", 40)
            _subset(text, root / fast / f"{name}.jsonl", 80)
    with zipfile.ZipFile(shared("ewok_filtered.zip")) as zf:  # extracted into the test's temporary folder only
        for member in zf.namelist()[:3]:
            if member.endswith(".jsonl"):
                text = zf.read(member, pwd=b"ewok").decode()
                _subset(text, root / "ewok_filtered" / Path(member).name, 50)
                _subset(text, root / "ewok_fast" / Path(member).name, 100)
    words = ["blick", "dax", "wug", "fep", "zorp", "tove", "gling", "spow", "cleem", "frull"]
    (root / "wug_past_tense").mkdir()
    rows = [{"sentences": f"Yesterday she {w}ed the ball.\tYesterday she {w}t the ball.", "ratio": (k * 7 % 10) / 10}
            for k, w in enumerate(words)]
    (root / "wug_past_tense" / "wug_past_tense.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "comps").mkdir()
    for stem in ("comps_base", "comps_wugs", "comps_wugs_dist-before", "comps_wugs_dist-in_between"):
        rows = [
            {
                "id": k,
                "prefix_acceptable": f"A {a} is an animal that",
                "prefix_unacceptable": f"A {b} is an animal that",
                "property_phrase": p,
                "negative_sample_type": "taxonomic",
            }
            for k, (a, b, p) in enumerate(
                [
                    ("robin", "table", "can fly."),
                    ("dog", "spoon", "has four legs."),
                    ("cat", "rock", "likes to sleep."),
                    ("fish", "lamp", "can swim."),
                ]
            )
        ]
        (root / "comps" / f"{stem}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


# one row per task in the published glue_filtered format (fields as the 2025 pipeline's dataset.py reads them)
GLUE_ROWS = {
    "boolq": {"question": "is the sky blue", "passage": "The sky is blue on a clear day.", "label": 1},
    "mnli": {"premise": "A dog runs in the park.", "hypothesis": "An animal is outside.", "label": 0},
    "mrpc": {"sentence1": "The cat sat on the mat.", "sentence2": "On the mat sat the cat.", "label": 1},
    "multirc": {"question": "Who sat?", "answer": "the cat", "paragraph": "The cat sat on the mat.", "label": 1},
    "qqp": {"question1": "How do I cook rice?", "question2": "What is the way to cook rice?", "label": 1},
    "rte": {"sentence1": "The man bought a car.", "sentence2": "The man owns a car.", "label": 0},
    "wsc": {"text": "Mark told Pete he was late.", "span1_text": "Pete", "span2_text": "he", "label": 0},
}


@pytest.fixture(scope="module")
def glue(tmp_path_factory) -> Path:
    """glue_filtered/<task>.{train,valid}.jsonl for the seven tasks: 32 rows (one batch at the tasks' largest default,
    which drops an incomplete one) and 8, labels alternating."""
    root = tmp_path_factory.mktemp("glue_filtered")
    for task, row in GLUE_ROWS.items():
        classes = 3 if task == "mnli" else 2
        for split, n in (("train", 32), ("valid", 8)):
            rows = [{**row, "idx": k, "label": k % classes} for k in range(n)]
            (root / f"{task}.{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@contextlib.contextmanager
def mounted(folder: Path, size: str = "4m", read_only: bool = False, fill=None):
    """A real tmpfs at `folder` (this suite runs as root, as CI does): `fill(folder)` writes its content,
    then it is remounted read-only when asked. Unmounted at the end."""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True)
    try:
        if fill is not None:
            fill(folder)
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def unfinished_left(folder: Path) -> list[Path]:
    """What a failed command left under `folder` of the temporary files and folders the project writes before they
    are whole: `.<name>.tmp<pid>` files, `<name>.tmp` and `.<name>.tmp` folders, the data cache's `<blocks>.work`,
    a teacher cache's `<out>.partial`."""
    return sorted(p for p in folder.rglob("*") if ".tmp" in p.name or p.name.endswith((".work", ".partial")))
