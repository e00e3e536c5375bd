"""The markdown of the result files: a pipe table, and a number's cell."""
from __future__ import annotations

import math


def finite(value) -> bool:
    """Whether `value` is a finite int or float (None, text, NaN and infinities are not)."""
    return isinstance(value, (int, float)) and math.isfinite(value)


def number(value, form: str) -> str:
    """A number in `form`, or – for a missing or non-finite one."""
    return form.format(value) if finite(value) else "–"


def table(head: list[str], rows) -> str:
    """A pipe table: the header, its rule and one line per row of cells, each line ending in a newline."""
    return "".join("| " + " | ".join(cells) + " |\n" for cells in [head, ["---"] * len(head), *rows])
