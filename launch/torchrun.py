"""python -m launch.torchrun [torchrun's options] -m <entry> ...: torchrun (torch.distributed.run), as `python -m
launch` starts it with several processes per node or several nodes, without torchrun's traceback where its ranks have
already said in one line why they stopped.

torchrun stopped by SIGTERM (scancel, a preemption), SIGHUP (its terminal closed) or Ctrl-C passes the signal on to
its ranks, waits for them (a trainer saves its checkpoint first) and then raised SignalException, a 20-line traceback
after the ranks' own line; ranks that ended with one of this project's exit codes (a one-line error, a stop after a
checkpoint, Ctrl-C, SIGTERM, SIGHUP) got a ChildFailedError report around it. Here such an end is the ranks' exit
code, or the signal, and nothing more; any other failure of a rank keeps torchrun's report (it names the rank and
where to look).
"""
from __future__ import annotations

import signal
import sys

from common.errors import EXIT_PREEMPTED, EXIT_STOPPED, EXIT_USER_ERROR, leave

# exit codes of ranks that said why they ended (a rank ended by a signal has the negative signal number)
SAID = {EXIT_USER_ERROR, EXIT_PREEMPTED, *EXIT_STOPPED.values(), *(-s for s in EXIT_STOPPED)}


def main(argv: list[str]) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        torchrun(argv)
    except SignalException as exc:  # torchrun got SIGTERM, SIGHUP or Ctrl-C: its ranks stopped and said so
        return EXIT_STOPPED.get(signal.Signals(exc.sigval), 128 + int(exc.sigval))
    except ChildFailedError as exc:
        codes = [failure.exitcode for failure in exc.failures.values()]
        if not codes or not all(code in SAID for code in codes):
            raise
        code = codes[0]
        return EXIT_STOPPED[signal.Signals(-code)] if code < 0 else code
    return 0


if __name__ == "__main__":
    leave(main(sys.argv[1:]))
