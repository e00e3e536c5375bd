"""The demo grid before and after a change, in one run: wall time and what the terminal shows.

    python bench/grid_output.py                       # before: bc894cc (the last commit before the grid reported
    python bench/grid_output.py --before REV --runs 2 #   one line per point), after: the working tree's HEAD

Each side is a fresh `git worktree` of its commit with an empty runs/ and cache/ (so the demo corpus and tokenizer
are built as a new user's first run builds them), run with this venv's python under a pseudo-terminal of 120
columns, as a person would see it. Sides alternate (before, after, before, after, ...). Prints per run the wall
time, the terminal's lines (line ends; a progress bar redrawn in place is one line) and its redraws (carriage
returns), then the medians and the after/before ratio of the wall time. Run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from conftest import in_terminal  # noqa: E402 - the tests' pseudo-terminal runner


def one_run(commit: str, tmp: Path, label: str, i: int) -> dict:
    tree = tmp / f"{label}-{i}"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(tree), commit], check=True)
    try:
        rc, screen, seconds = in_terminal([sys.executable, "launch_grid.py", "config/grids/demo.yaml"], tree)
        if rc != 0:
            sys.exit(f"{label} ({commit}) exited {rc}:\n{screen[-3000:]}")
        return {"seconds": seconds, "lines": screen.count("\n"), "redraws": screen.count("\r")}
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", default="bc894cc", help="the commit to compare against (default bc894cc)")
    p.add_argument("--after", default="HEAD", help="the commit measured (default HEAD)")
    p.add_argument("--runs", type=int, default=2, help="runs per side (at least 2 for a figure)")
    args = p.parse_args()
    results: dict[str, list[dict]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            for label, commit in (("before", args.before), ("after", args.after)):
                r = one_run(commit, Path(tmp), label, i)
                results[label].append(r)
                print(f"{label} ({commit}) run {i + 1}: {r['seconds']:.1f} s, {r['lines']} terminal lines, "
                      f"{r['redraws']} redraws", flush=True)
    measures = ("seconds", "lines", "redraws")
    med = {k: {m: statistics.median(r[m] for r in v) for m in measures} for k, v in results.items()}
    for k in ("before", "after"):
        print(f"{k}: median {med[k]['seconds']:.1f} s, {med[k]['lines']:.0f} lines, {med[k]['redraws']:.0f} redraws")
    print(f"wall time after/before: {med['after']['seconds'] / med['before']['seconds']:.3f}x; "
          f"terminal lines {med['before']['lines']:.0f} -> {med['after']['lines']:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
