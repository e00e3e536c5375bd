"""The command that starts a recipe of any kind: `python -m <entry>` alone, or torchrun around it with
several processes per node or several nodes (the convention is in `python -m launch`'s doc)."""
from __future__ import annotations

import os
import subprocess
import sys

from launch.kinds import module_argv


def _first_node() -> str:
    nodelist = os.environ.get("SLURM_JOB_NODELIST")
    if not nodelist:
        return "localhost"
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], check=True, capture_output=True, text=True).stdout
    return out.split()[0]


def command(kind: str, argv: list[str]) -> list[str]:
    """`python -m <entry> argv` for a recipe of this kind, or torchrun around it (see the module doc)."""
    procs = int(os.environ.get("BABYDISTILL_PROCS_PER_NODE") or os.environ.get("SLURM_GPUS_ON_NODE") or 1)
    nodes = int(os.environ.get("SLURM_NNODES") or 1)
    entry = module_argv(kind)
    if procs <= 1 and nodes <= 1:
        return [sys.executable, *entry, *argv]
    job = os.environ.get("SLURM_JOB_ID", "0")
    port = 20000 + int(job) % 10000 if job.isdigit() else 29500
    return [sys.executable, "-m", "launch.torchrun", f"--nnodes={nodes}", f"--nproc_per_node={max(procs, 1)}",
            "--rdzv_backend=c10d", f"--rdzv_endpoint={_first_node()}:{port}", f"--rdzv_id={job}", *entry, *argv]
