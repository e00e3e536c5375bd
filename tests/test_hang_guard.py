"""The suite's guard against a test that hangs (pyproject.toml's pytest-timeout, conftest.py's backstop): run on a
small suite of its own under two xdist workers, as test.sh runs the real one, with the limits cut to seconds."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

HANGS = '''
import signal
import time


def test_waits_in_python():
    time.sleep(60)  # a signal interrupts it: pytest-timeout fails the test and the worker goes on


def test_after_the_wait():
    pass


def test_deaf_to_signals():
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})  # as a deadlock in C code: no handler ever runs
    time.sleep(60)


def test_never_reached():
    pass
'''


def test_a_hang_fails_its_test_and_one_no_signal_reaches_ends_the_worker_with_its_stack(tmp_path):
    suite = tmp_path / "suite"
    suite.mkdir()
    shutil.copy(ROOT / "tests" / "conftest.py", suite / "conftest.py")
    (suite / "test_hangs.py").write_text(HANGS)
    (suite / "test_other.py").write_text("def test_fine():\n    pass\n")
    scratch = tmp_path / "tmp"  # the run's temporary folder, where its workers keep their stack files
    scratch.mkdir()
    env = {**os.environ, "BABYDISTILL_TEST_BACKSTOP_S": "6", "TMPDIR": str(scratch)}
    env.pop("PYTEST_XDIST_WORKER", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(suite), "-n", "2", "--dist", "loadfile", "--max-worker-restart=0",
         "-p", "no:cacheprovider", "-o", "timeout=2", "-o", "timeout_method=signal", "--rootdir", str(suite)],
        cwd=suite, env=env, capture_output=True, text=True, timeout=240,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "FAILED test_hangs.py::test_waits_in_python - Failed: Timeout" in out, out
    assert "FAILED test_hangs.py::test_deaf_to_signals" in out and "crashed" in out, out
    assert "test_never_reached" not in out.split("short test summary info")[-1], out  # not retried, not run
    backstop = out.split("a worker stopped by the hang backstop")[1]
    assert "test_hangs.py::test_deaf_to_signals had not ended after 6 s" in backstop
    line = HANGS.splitlines().index("    time.sleep(60)", HANGS.splitlines().index("def test_deaf_to_signals():")) + 1
    assert f'File "{suite / "test_hangs.py"}", line {line} in test_deaf_to_signals' in backstop, backstop
    assert "2 passed" in out, out  # test_after_the_wait and test_fine
    assert not list(scratch.glob("babydistill-hang-*")), "the stack files are removed at the end of the run"
