"""Launcher overhead: seconds from `python launch_grid.py` to all jobs of a 25-point grid submitted,
against 25 plain `sbatch` calls (one per point) on the same cluster, in one run.

    python bench/launch_overhead.py            # starts the tests' one-node SLURM cluster in a temp folder
    SLURM_CONF=/etc/slurm/slurm.conf python bench/launch_overhead.py   # an existing cluster

The grid is 5 x 5 (optim.lr x train.seed) over config/runs/demo-student.yaml. Jobs are
cancelled as soon as they are submitted; nothing is trained. Prints both times and the ratio.
"""
from __future__ import annotations

import os
import pwd
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

GRID = """\
name: overhead
output_dir: {root}/runs
results_dir: {root}/results
stages:
  - name: grid
    recipes: [config/runs/demo-student.yaml]
    axes:
      optim.lr: [1.0e-4, 3.0e-4, 1.0e-3, 3.0e-3, 1.0e-2]
      train.seed: [1, 2, 3, 4, 5]
tasks: [demo_pairs]
executor: {{kind: slurm, cpus_per_task: 1, time_min: 10, signal_delay_s: 60}}
"""


def cancel_all() -> None:
    subprocess.run(["scancel", "--user", pwd.getpwuid(os.getuid()).pw_name], capture_output=True)


def time_launcher(root: Path) -> float:
    grid = root / "grid.yaml"
    grid.write_text(GRID.format(root=root))
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(REPO / "launch_grid.py"), str(grid)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if line.startswith("submitted 25 point(s)"):
            elapsed = time.perf_counter() - start
            break
    else:
        raise SystemExit(f"the launcher ended without submitting 25 points (exit {proc.wait()})")
    cancel_all()
    proc.kill()
    proc.wait()
    return elapsed


def time_sbatch_loop(root: Path) -> float:
    start = time.perf_counter()
    for i in range(25):
        subprocess.run(["sbatch", "--parsable", "--cpus-per-task=1", "--time=10", f"--output={root}/plain-%j.out",
                        "--wrap", f"{sys.executable} -m train config/runs/demo-student.yaml train.seed={i}"],
                       cwd=REPO, check=True, capture_output=True)
    elapsed = time.perf_counter() - start
    cancel_all()
    return elapsed


def main() -> None:
    import slurm_cluster

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        started = None
        if "SLURM_CONF" not in os.environ:
            started = root / "cluster"
            os.environ.update(slurm_cluster.start(started))
        try:
            plain = time_sbatch_loop(root)
            launcher = time_launcher(root)
        finally:
            cancel_all()
            if started is not None:
                slurm_cluster.stop(started)
    print(f"25 plain sbatch calls              : {plain:6.2f} s")
    print(f"launch_grid.py to 25 jobs submitted: {launcher:6.2f} s (plan, config checks, one job array)")
    print(f"ratio: {launcher / plain:.2f}x")


if __name__ == "__main__":
    main()
