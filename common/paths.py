"""Where the repository is, and how files are written so that a crash never leaves half a file."""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent  # the checkout: config/, eval/tasks/ and friends are found from here


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def save_figure(fig, path: Path) -> Path:
    """A matplotlib figure as PNG, written beside `path` and renamed over it; the figure is closed."""
    import matplotlib.pyplot as plt

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive lock on `path` (created if needed), held for the `with` block: jobs that share a
    cache folder (a grid's points starting together) take turns instead of writing the same files."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
