"""User-facing errors: one line, exit code 2, nothing lost.

Every entry point has one error boundary (`exit_on_user_error`). It turns the known failure
classes into one `error:` line that names the file and says what to do, instead of a traceback:

- a `UserError`, raised where a check fails;
- an `OSError` on a path that the user fixes: permission denied, a read-only file system, a full
  disk or quota, a file where a folder belongs (the error's own file name is named);
- anything raised inside a `reading(path, what, fix)` block: a library call that parses one file
  (a truncated archive, a damaged zip stream, a corrupt safetensors, tokenizer or config file,
  bytes that are not UTF-8) is reported naming that file.

Anything else is a defect of ours and keeps its traceback. Ctrl-C (KeyboardInterrupt) is one line too,
`<where>: interrupted; <what is kept and what to do>`, in the words of the outermost `if_interrupted`
block around the work (else: nothing half-written is kept), and the process then ends by SIGINT.

SIGTERM (`kill`, `timeout`, `scancel`, a SLURM preemption or time limit without --signal, a container stopped) stops a
command the same way: the boundary makes it a KeyboardInterrupt, so that the same blocks clean up, the line says
`<where>: stopped by SIGTERM; ...`, and the process ends by SIGTERM. Where another program set its own SIGTERM handler
in this process first (submitit's, in a grid's SLURM job), that handler is left in place. A trainer (train/, eval
finetune) checkpoints before it stops (common.preemption).

SIGHUP (the terminal closed: an ssh connection lost, a terminal window shut) stops a command as SIGTERM does. Writes to
a terminal that has hung up fail (EIO), so from that moment what this process wrote to it goes nowhere (`hang_up`):
the cleanup, the checkpoint and run.json's status are not cut short by a progress bar's write. Under `nohup` (SIGHUP
ignored) nothing changes.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import io
import os
import signal
import sys
from typing import Callable

EXIT_USER_ERROR = 2
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: training stopped on SIGUSR2 after saving a checkpoint; rerun with --resume
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT), as a shell reports it
EXIT_TERMINATED = 143  # SIGTERM, as a shell reports it
EXIT_HUNG_UP = 129  # SIGHUP, as a shell reports it
EXIT_STOPPED = {signal.SIGINT: EXIT_INTERRUPTED, signal.SIGTERM: EXIT_TERMINATED,
                signal.SIGHUP: EXIT_HUNG_UP}  # a stop signal -> its exit code
STOPPING = (signal.SIGTERM, signal.SIGHUP)  # stop a command as Ctrl-C does, and a trainer after a checkpoint

# errno -> what the user does about it
OS_ADVICE = {
    errno.ENOSPC: "the disk is full; free space there, then run the same command again",
    errno.EDQUOT: "the disk quota is used up; free space there, then run the same command again",
    errno.EACCES: "permission denied; make it accessible to this user or choose another folder",
    errno.EPERM: "operation not permitted; make it accessible to this user or choose another folder",
    errno.EROFS: "the file system is read-only; choose a writable folder",
    errno.ENOTDIR: "a file stands where a folder is needed; move the file or choose another path",
    errno.EISDIR: "a folder stands where a file is needed; move the folder or choose another path",
    errno.ENAMETOOLONG: "the name is too long for the file system; choose a shorter one",
    errno.EEXIST: "it already exists; move it or choose another path",
    errno.ENOENT: "it does not exist; check the path",
}
# Failures that libraries report without an errno when a write hits a full disk (torch.save, safetensors). torch.save
# of an optimizer state that no longer fits says only that its zip writer's stream failed ("basic_ios::clear:
# iostream error", then "unexpected pos N vs M" as it closes the file).
DISK_FULL_TEXT = ("No space left on device", "StorageFull", "file write failed", "Disk quota exceeded",
                  "basic_ios::clear: iostream error", "] . unexpected pos ")


class UserError(Exception):
    """A problem with the user's input (file, config key, data) that they can fix.

    The message is one line that names the file, line or key and says what to do.
    """


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM, SIGHUP) inside an `if_interrupted` block, with what its one line says."""

    def __init__(self, where, advice: str):
        super().__init__(f"{where}: {how_stopped()}; {advice}")
        self.where, self.advice = where, advice


# The signal that stopped this process (recorded by the boundary's handlers; none recorded: Ctrl-C, which Python
# raises where no handler of ours is set): the same KeyboardInterrupt carries both, and the line and the exit code name
# the one that came.
_stopped_by: list[int] = []
_cut: list[int] = []  # the signals a handler of ours raised a KeyboardInterrupt for (a trainer's stop raises none)
_boundaries: list[None] = []  # entry points running in this process, outermost first (a grid's debug executor nests)
_terminal: set[tuple[int, int]] = set()  # (device, inode) of the terminal fds 1 and 2 were at the outermost boundary
_hung_up: list[bool] = []  # the terminal has hung up


def stopped_by() -> int:
    """The signal that stopped the command (or asked a trainer to stop): SIGTERM or SIGHUP where one did, else
    SIGINT."""
    return _stopped_by[0] if _stopped_by else signal.SIGINT


def how(signum: int) -> str:
    """How a stop by `signum` is said."""
    return "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"


def how_stopped() -> str:
    return how(stopped_by())


def hang_up() -> None:
    """The terminal has hung up: from now on what this process writes to it (fds 1 and 2, where they are that
    terminal) goes to /dev/null, as a write there would fail with EIO and end the cleanup before it is done. The run's
    own files say what happened. A descriptor pointed elsewhere for a while (a grid point's log) is left alone; whoever
    points it back at the terminal calls this again (`hung_up`)."""
    _hung_up[:] = [True]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in (1, 2):
            with contextlib.suppress(OSError):
                if _identity(fd) in _terminal:
                    os.dup2(null, fd)
    finally:
        os.close(null)


def hung_up() -> bool:
    """Whether this process's terminal has hung up (`hang_up`)."""
    return bool(_hung_up)


def _identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def note_stop(signum: int) -> None:
    """Record what stopped this process (the first signal counts)."""
    if not _stopped_by:
        _stopped_by.append(signum)


def _cut_short(signum: int, frame=None):
    """Ctrl-C's handler, and what SIGTERM's and a deferred stop end in: record the stop, raise KeyboardInterrupt."""
    note_stop(signum)
    _cut.append(signum)
    raise KeyboardInterrupt


def cut_short() -> bool:
    """Whether Ctrl-C or SIGTERM has cut this entry point's work short: an error raised after it is the stop's doing
    (a C extension whose import was cut reports "ImportError: initialization failed"), not the user's input."""
    return bool(_cut)


def stop_if_swallowed() -> None:
    """Raise again, at a safe point of a long loop (a training step's end, a scored batch), a stop that this entry
    point's handler raised and the work outlived. Python raises a signal's KeyboardInterrupt in whatever code runs
    when the signal comes; where that is a finalizer (`__del__`, a weakref callback, which the garbage collector runs
    at any allocation) it prints "Exception ignored in ..." and goes on. A training of 20,000 steps then went on to
    its end, and a grid launcher waiting for it with it."""
    if _boundaries and _cut:
        raise KeyboardInterrupt


def _stop(signum, frame):
    """SIGTERM's and SIGHUP's handler at the boundary."""
    if signum == signal.SIGHUP:
        hang_up()
    if _stopped_by:  # a stop is on its way (its cleanup runs now): a second one changes nothing
        return
    _cut_short(signum)


def is_ours(signum: int) -> bool:
    """Whether `signum` (SIGTERM, SIGHUP) stops this process through the boundary (not a handler another program
    installed first, nor ignored, as under nohup)."""
    return signal.getsignal(signum) is _stop


@contextlib.contextmanager
def stop_signals():
    """Ctrl-C, SIGTERM and SIGHUP within the block are a KeyboardInterrupt and are recorded, where they still have
    Python's default action (never over a handler another program set first: submitit's, in a grid's SLURM job, waits
    for SIGUSR2 to requeue; nor over nohup's ignoring SIGHUP). The outermost block forgets an earlier stop (entry
    points called in one process, as tests do)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if not _boundaries:
        _stopped_by.clear()
        _cut.clear()
        _hung_up.clear()
        _terminal.clear()
        _terminal.update(_identity(fd) for fd in (1, 2) if os.isatty(fd))  # a hung-up one no longer says it is one
    _boundaries.append(None)
    ours = {signal.SIGINT: (signal.default_int_handler, _cut_short), signal.SIGTERM: (signal.SIG_DFL, _stop),
            signal.SIGHUP: (signal.SIG_DFL, _stop)}
    installed = {s: default for s, (default, handler) in ours.items() if signal.getsignal(s) == default}
    for s in installed:
        signal.signal(s, ours[s][1])
    try:
        yield
    finally:
        for s, default in installed.items():
            signal.signal(s, default)
        _boundaries.pop()


# What an entry point's Ctrl-C line says where no `if_interrupted` block says more: every file of ours is written
# whole under a temporary name and renamed (common.paths.write_atomic), and a folder being built carries a marker.
INTERRUPTED_ADVICE = "nothing half-written is kept; run the same command again"


@contextlib.contextmanager
def if_interrupted(where, advice: str):
    """Ctrl-C within the block is said as `<where>: interrupted; <advice>` (what is kept, what to do next), SIGTERM as
    `<where>: stopped by SIGTERM; <advice>`. The outermost block's words win: the command that was run says how to run
    it again. An error that a library raised from the stop is the stop too (`cut_short`)."""
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(where, advice) from None
    except Exception:
        if not cut_short():
            raise
        raise Interrupted(where, advice) from None


@contextlib.contextmanager
def interrupt_deferred():
    """Ctrl-C (and a SIGTERM or SIGHUP that stops through the boundary) within the block takes effect as it ends, for
    steps that must not be cut in two (SLURM jobs submitted, and their ids recorded). Only this process waits: a
    program it runs meanwhile (sbatch) gets Ctrl-C from the terminal as usual. Outside the main thread (where no signal
    arrives) the block runs as it is."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []

    def defer(signum, frame):
        if signum == signal.SIGHUP:
            hang_up()
        caught.append(signum)

    deferred = [signal.SIGINT] + [s for s in STOPPING if is_ours(s)]
    previous = {s: signal.signal(s, defer) for s in deferred}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if caught:  # also in place of a failure of the block: the person asked to stop
            _cut_short(caught[0])


def leave(code: int) -> None:
    """End the process with an entry point's exit code. An interrupted command ends by SIGINT itself, as Python does
    for a KeyboardInterrupt nothing caught: the shell reports 130, and a shell script running the command stops at
    Ctrl-C instead of going on with its next line (it treats an ordinary exit as a child that handled the signal).
    A command stopped by SIGTERM or SIGHUP ends by that signal (143, 129), as it would have without its handler.
    Either way what Python runs at its exit runs first (`run_exit_handlers`)."""
    for signum, stopped in EXIT_STOPPED.items():
        if code == stopped:
            run_exit_handlers(code)
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
    sys.exit(code)


def run_exit_handlers(code: int) -> None:
    """What Python runs as it exits (atexit: wandb finishing its run, logging's flush), for a process that ends without
    the interpreter's own exit: by its own signal (`leave`), or by os._exit (several ranks: train.trainer.leave).
    Exit hooks see `code` first, as sys.exit tells them (wandb's records the run's exit code so). A process that ended
    without them left wandb's run empty: not one logged step reached its file."""
    import atexit

    sys.stdout.flush()
    sys.stderr.flush()
    with contextlib.suppress(SystemExit):
        sys.exit(code)  # only hooks on sys.exit see this: the SystemExit itself goes no further
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()


def first_line(exc: BaseException, limit: int = 160) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0][:limit] if text else type(exc).__name__)


def summary(exc: BaseException, limit: int = 120) -> str:
    """`Type: the first line of its message` (or `Type` alone), for one-line reports."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:limit]}" if text else type(exc).__name__


def os_error_message(exc: OSError, where: str | None = None) -> str | None:
    """One line for an OSError the user fixes, or None when it is not one of those."""
    if exc.errno not in OS_ADVICE:
        return None
    name = exc.filename if exc.filename is not None else where
    if exc.filename2 is not None:
        name = f"{exc.filename} -> {exc.filename2}"
    return f"{name or 'a file'}: {exc.strerror or OS_ADVICE[exc.errno]}; {OS_ADVICE[exc.errno]}"


def naming(exc: OSError, path) -> OSError:
    """`exc`, or where it names no file (a failed write or flush on an open file), the same error naming `path`: the
    error line must say where the disk is full."""
    return exc if exc.filename is not None else OSError(exc.errno, exc.strerror, str(path))


def disk_full(exc: BaseException | None) -> BaseException | None:
    """Where `exc` is a write that failed on a full disk, whatever the library made of the OSError (or of the error
    it raised while handling it: the exception's cause and context are read too), the error in that chain that says
    so (the OSError itself where there is one: datasets wraps it in "An error occurred while generating the
    dataset"); else None."""
    seen, said = set(), None
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return exc
        if said is None and any(text in str(exc) for text in DISK_FULL_TEXT):
            said = exc
        exc = exc.__cause__ or exc.__context__
    return said


def out_of_memory(exc: BaseException | None) -> str | None:
    """What an allocation that failed asked for (`400.0 GB asked of the CPU`; `on the GPU` where the message does
    not say how much), or None when `exc` (or what it was raised from) is not one: torch's CUDA OutOfMemoryError,
    its CPU allocator's "can't allocate memory" RuntimeError, a MemoryError."""
    import re

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc)
        asked = re.search(r"tried to allocate (\d+(?:\.\d+)?) ?(bytes|[KMGT]iB)", text, re.IGNORECASE)
        if type(exc).__name__ == "OutOfMemoryError" or "can't allocate memory" in text or isinstance(exc, MemoryError):
            where = "the GPU" if type(exc).__name__ == "OutOfMemoryError" or "CUDA" in text else "the CPU"
            if asked is None:
                return f"on {where}"
            size = float(asked.group(1)) * {"bytes": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}[
                asked.group(2).lower()]
            return f"{size / 1e9:.1f} GB asked of {where}"
        exc = exc.__cause__ or exc.__context__
    return None


@contextlib.contextmanager
def reading(path, what: str, fix: str):
    """Any failure while a library reads `path` (parses an archive, tensors, a tokenizer, a config)
    becomes one UserError: `<path>: <what> cannot be read (<reason>); <fix>`."""
    try:
        yield
    except UserError:
        raise
    except OSError as exc:
        message = os_error_message(exc, str(path))
        if message is not None and exc.errno != errno.ENOENT:
            raise UserError(message) from None
        raise UserError(f"{path}: {what} cannot be read ({first_line(exc)}); {fix}") from None
    except Exception as exc:  # noqa: BLE001 - the block reads one file; whatever breaks, that file is named
        raise UserError(f"{path}: {what} cannot be read ({summary(exc, 160)}); {fix}") from None


@contextlib.contextmanager
def writing(path, fix: str = "then run the same command again"):
    """Writes into `path` (a run directory, a cache): a full disk or a refused write becomes one UserError."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - only the two classes below are turned into a line
        if isinstance(exc, OSError) and (message := os_error_message(exc, str(path))) is not None:
            raise UserError(message) from None
        full = disk_full(exc)
        if isinstance(full, OSError):
            raise UserError(os_error_message(full, str(path))) from None
        if full is not None:
            raise UserError(
                f"{path}: a write failed because the disk is full ({first_line(full, 100)}); free space there, {fix}"
            ) from None
        raise


class NamedStream:
    """sys.stdout or sys.stderr whose failed writes name the file they go to (a log on a full disk: a grid point's,
    a SLURM job's output): a failed write names no file, and a `writing(path)` block around the print would
    otherwise put the blame on its own path."""

    def __init__(self, stream):
        self._stream = stream

    def __getattr__(self, name):
        return getattr(self._stream, name)

    def _where(self) -> str:
        try:
            return os.readlink(f"/proc/self/fd/{self._stream.fileno()}")
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            return "the standard output" if self._stream is sys.__stdout__ else "the program's output"

    def write(self, text):
        try:
            return self._stream.write(text)
        except OSError as exc:
            raise naming(exc, self._where()) from None

    def flush(self):
        try:
            return self._stream.flush()
        except OSError as exc:
            raise naming(exc, self._where()) from None


@contextlib.contextmanager
def streams_named():
    """sys.stdout and sys.stderr as NamedStream for the block."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = NamedStream(sys.stdout), NamedStream(sys.stderr)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


def exit_on_user_error(main: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap an entry point: a UserError (or a user-fixable OSError, or running out of memory) prints one `error:` line
    on stderr and returns 2; Ctrl-C prints one `interrupted` line and returns 130 (`leave` then ends by SIGINT), and
    SIGTERM one `stopped by SIGTERM` line and returns 143 (`leave` then ends by SIGTERM)."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs) -> int:
        bars = _progress_bars()  # those of a caller in this process (a grid's debug executor): left open
        try:
            with stop_signals(), streams_named():
                try:
                    return main(*args, **kwargs) or 0
                except Exception:
                    if cut_short():  # a library's error raised from the stop: said as the stop
                        raise KeyboardInterrupt from None
                    raise
        except KeyboardInterrupt as exc:
            from common.ranks import is_main_process

            said = str(exc) if isinstance(exc, Interrupted) else f"{how_stopped()}; {INTERRUPTED_ADVICE}"
            sys.stdout.flush()
            if is_main_process():  # every rank of a torchrun group gets the Ctrl-C; one says it
                _close_progress_bars(bars)
                print(said, file=sys.stderr)
            return EXIT_STOPPED[stopped_by()]
        except UserError as exc:
            message = str(exc)
        except OSError as exc:
            message = os_error_message(exc)
            if message is None:
                raise
        except Exception as exc:  # out of memory is the machine's limit for a batch the user chose, not a defect
            memory = out_of_memory(exc)
            if memory is None:
                raise
            message = (f"out of memory ({memory}); lower the batch size (--batch-size, or train.batch_size in a "
                       "config), or run where there is more memory")
        sys.stdout.flush()
        _close_progress_bars(bars)
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR

    return wrapped


def _progress_bars() -> set:
    """The tqdm bars open in this process."""
    try:
        from tqdm import tqdm
    except ImportError:
        return set()
    return set(getattr(tqdm, "_instances", ()))


def _close_progress_bars(before: set) -> None:
    """Close the tqdm bars the entry point opened and a failure or Ctrl-C left open (not those in `before`), each
    ending its own line, before the one line is printed: a bar closed later (when the interpreter frees it, at exit)
    drew itself again after that line."""
    for bar in _progress_bars() - before:
        with contextlib.suppress(Exception):
            bar.close()
