"""The markdown of the result files: a pipe table, and a number's cell."""
from __future__ import annotations


def number(value, form: str) -> str:
    """A number in `form`, or – for a missing or non-finite one."""
    if value is None or not isinstance(value, (int, float)) or value != value or value in (float("inf"), float("-inf")):
        return "–"
    return form.format(value)


def table(head: list[str], rows) -> str:
    """A pipe table: the header, its rule and one line per row of cells, each line ending in a newline."""
    return "".join("| " + " | ".join(cells) + " |\n" for cells in [head, ["---"] * len(head), *rows])
