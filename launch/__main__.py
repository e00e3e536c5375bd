"""python -m launch RECIPE [key=value ...] [--resume ...]: run a recipe of any kind (train,
distill, WML) as its own process or, with several processes per node or several nodes, under
torchrun. The slurm/*.slurm templates start every training this way, and grid points build the
same command (`command`), so both follow one convention:

- processes per node: $BABYDISTILL_PROCS_PER_NODE (outside SLURM: one per GPU, or CPU ranks over
  gloo where there is none, as the tests run), else $SLURM_GPUS_ON_NODE (one per GPU), else 1;
- nodes: $SLURM_NNODES; torchrun runs once per node and meets the others at a c10d rendezvous
  on the job's first node (`scontrol show hostnames`), on a port derived from the job id so
  that two jobs sharing a node do not collide.

The process replaces itself with the command, so a SIGUSR2 disposition set by the caller (the
templates ignore it until the trainer arms its handler) carries over. Before it starts several
processes, it reads and checks the recipe itself: a bad value is then one `error:` line (per node),
not one from every rank.
"""
from __future__ import annotations

import os
import sys

from common import config as cfglib
from common.errors import UserError, exit_on_user_error, leave
from launch.command import command
from launch.kinds import recipe_and_overrides, recipe_kind, schema


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        raise UserError("python -m launch RECIPE [key=value ...] [--resume]: give a run YAML")
    raw, lines = cfglib.read_yaml(argv[0])
    kind = recipe_kind(raw)
    other = cfglib.wrong_command(schema(kind), raw)  # a grid, say: refused here, not by the process it would become
    if other is not None:
        raise UserError(f"{argv[0]}:{lines.get(other[0], 1)}: {other[1]}")
    cmd = command(kind, argv)
    if "launch.torchrun" in cmd:  # every rank would check the recipe and say the same line
        cfglib.load(schema(kind), *recipe_and_overrides(argv))
    sys.stdout.flush()
    os.execv(cmd[0], cmd)
    return 0  # not reached


if __name__ == "__main__":
    leave(main())
