"""User-facing errors: one line, exit code 2, nothing written."""
from __future__ import annotations

import functools
import sys
from typing import Callable

EXIT_USER_ERROR = 2
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: training stopped on SIGUSR2 after saving a checkpoint; rerun with --resume


class UserError(Exception):
    """A problem with the user's input (file, config key, data) that they can fix.

    The message is one line that names the file, line or key and says what to do.
    """


def exit_on_user_error(main: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap an entry point: a UserError prints `error: <message>` on stderr and exits 2."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs) or 0
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USER_ERROR

    return wrapped
