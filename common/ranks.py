"""Which process of a torchrun group speaks for the run. Global rank 0 alone writes the run directory and prints what
every rank would print alike (the banner, notes, the resume and stop lines); the other ranks print only their own
errors and warnings about themselves."""
from __future__ import annotations

import os
import sys


def is_main_process() -> bool:
    """True outside torchrun, and in its global rank 0."""
    return int(os.environ.get("RANK", "0")) == 0


def say(text: str, *, err: bool = False) -> None:
    """Print `text` (to stderr with `err`) from the main process only."""
    if is_main_process():
        print(text, file=sys.stderr if err else sys.stdout)


def collective(args) -> bool:
    """Several ranks in an initialised process group (`args`: the Trainer's arguments): callbacks must then act
    together."""
    import torch

    return args.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()


def all_reduce(value, args, op=None):
    """The tensor `value` reduced over every rank (SUM unless `op`), on the device the process group uses."""
    import torch

    value = value.to(args.device if args.device.type == "cuda" else "cpu")
    torch.distributed.all_reduce(value, op=op or torch.distributed.ReduceOp.SUM)
    return value
