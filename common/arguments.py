"""Command-line numbers checked as argparse reads them: `type=number("--seed", ge=0, le=SEED_MAX)`.

A value that is not a number of that kind, is NaN, infinite or beyond float32's range, or falls outside its
range is one `error:` line naming the flag and the value (a `UserError`, which argparse lets through to the entry
point's error boundary), before anything is loaded or written. argparse's own `type=int` let 0, -1 and NaN through
to wherever they broke: a negative `--seed` ended in numpy's traceback, a `--batch-size 0` only after the model had
loaded and the results folder had been made.
"""
from __future__ import annotations

from typing import Callable

from common.config import FLOAT_MAX, RANGE_TESTS, range_text, too_large
from common.errors import UserError

SEED_MAX = 2**32 - 1  # numpy's legacy seeding (the HF Trainer's set_seed) takes 0 .. 2**32 - 1
KINDS = {int: "a whole number", float: "a number"}


def number(flag: str, kind: type = int, *, auto: bool = False, ge: float | None = None, gt: float | None = None,
           le: float | None = None) -> Callable[[str], int | float | str]:
    """An argparse `type=`: the text as `kind` (int or float), finite and within the bounds (ge/gt/le as in
    `common.config.field`); with `auto`, the word `auto` too (returned as is)."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le)) if v is not None}
    wanted = " ".join(filter(None, [KINDS[kind], range_text(bounds)]))
    wanted = f"{wanted}, or auto" if auto else wanted

    def parse(text: str) -> int | float | str:
        if auto and text == "auto":
            return text
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is not None and too_large(value):
            raise UserError(f"{flag} {text}: give {wanted}, finite and at most {FLOAT_MAX:.4g} in size (float32's "
                            "largest)")
        if value is None or not all(RANGE_TESTS[k](value, b) for k, b in bounds.items()):
            raise UserError(f"{flag} {text}: give {wanted}")
        return value

    parse.__name__ = kind.__name__
    return parse


def seed(flag: str = "--seed") -> Callable[[str], int]:
    """An argparse `type=` for a seed: a whole number from 0 to 2**32 - 1."""
    return number(flag, int, ge=0, le=SEED_MAX)
