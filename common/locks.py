"""Locks on the folders this project writes, so that two commands never write one at once: `FolderLock` (a run
directory, a grid, a task's results: a second holder is refused, `holding`), `file_lock` (a shared cache that jobs take
in turn) and `flock` under both (a file system without file locks is one line). A holder beats (rewrites its lock file)
so that machines whose flock does not reach each other still see it."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import sys
from pathlib import Path

# What flock answers on a file system without file locks: Lustre mounted without -o flock (ENOSYS), NFS without its
# lock daemon (ENOLCK), some network and FUSE file systems (EOPNOTSUPP).
NO_LOCKS = (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP)


def flock(handle, operation: int, path: Path, created: bool) -> None:
    """fcntl.flock on `handle`, the open lock file `path`. A file system without file locks is one line naming the file
    (which is removed when `created`: the caller's open made it), not a traceback; BlockingIOError (another process
    holds the lock) is raised as it is."""
    try:
        fcntl.flock(handle, operation)
    except BlockingIOError:
        raise
    except OSError as exc:
        if exc.errno not in NO_LOCKS:
            raise
        from common.errors import UserError

        handle.close()
        if created:
            with contextlib.suppress(OSError):
                os.unlink(path)
        raise UserError(f"{path}: the file system there has no file locks (flock: {exc.strerror}), and "
                        "babydistill locks a folder it writes so that two commands never write it at once: use a "
                        "folder on a file system with locks (node-local scratch; Lustre mounted with -o flock or "
                        "localflock; NFS with its lock daemon)") from None


def opened_lock(path: Path, mode: str, operation: int):
    """`path` opened in `mode` and locked with `operation` (`flock`); the open handle."""
    created = not path.exists()
    handle = open(path, mode, encoding="utf-8")
    flock(handle, operation, path, created)
    return handle


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive lock on `path` (a `FolderLock` of that name in its folder), held for the `with` block: jobs that
    share a cache folder (a grid's points starting together, on one machine or on several) take turns instead of
    writing the same files."""
    path = Path(path)
    lock = FolderLock(path.parent, path.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock.acquire(wait=True)
    try:
        yield
    finally:
        lock.release()


class Locked(Exception):
    """Another live process holds the lock; `holder` says who (host, pid, since)."""

    def __init__(self, path: Path, holder: str):
        super().__init__(f"{path}: {holder}")
        self.path, self.holder = path, holder


def beat_s() -> float:
    """Seconds between a lock holder's beats (`FolderLock`): $BABYDISTILL_LOCK_BEAT_S (tests shorten it), else 20."""
    given = os.environ.get("BABYDISTILL_LOCK_BEAT_S") or "20"
    try:
        seconds = float(given)
    except ValueError:
        seconds = float("nan")
    if not 0.01 <= seconds <= 3600:  # NaN too: a beat of 0 would rewrite the file without pause
        from common.errors import UserError

        raise UserError(f"BABYDISTILL_LOCK_BEAT_S={given}: give the seconds between a lock's beats, 0.01 to 3600 "
                        f"(unset: 20)")
    return seconds


LOCK_TEXT = re.compile(r"^host (?P<host>[^,\s]+), pid \d+, since \S+?(?:, beat \d+)?$")


class FolderLock:
    """An exclusive lock on a folder, held by one process for the whole of its work on it.

    The lock is `flock` on `<folder>/LOCK`, whose text says who holds it (host, pid, since). The
    kernel releases it when the holder dies, however it dies, so a stale LOCK left by a killed
    process (SIGKILL, a node that went down, a SLURM requeue) is simply taken over; a live
    holder makes `acquire` raise `Locked`. On release the file is removed while still locked, and
    `acquire` checks that the file it locked is still the one at the path, so two processes can
    never both hold a lock on two generations of the file.

    Some cluster file systems keep flock to one machine (Lustre mounted with localflock, BeeGFS
    by default, NFSv3 with local_lock=flock): a process on another node gets a lock of its own on
    the same file. So the holder also rewrites the file every `beat_s()` seconds (a beat count),
    and a process that gets the lock on a file naming another host watches it for three beats:
    if the text changes, that host's holder is alive and the lock is refused (`Locked`); if not,
    the holder is gone (a lost node, SIGKILL) and the lock is taken over, with a note.
    """

    NAME = "LOCK"

    def __init__(self, folder: Path, name: str = NAME):
        """`name`: the lock file's name in `folder`; another name locks one part of the folder (one task's results)."""
        self.folder = Path(folder)
        self.path = self.folder / name
        self._handle = None
        self._stop = None  # set to end the beats
        self._beats = None  # the thread that beats

    def acquire(self, wait: bool = False) -> None:
        """Take the lock; a live holder raises `Locked`, or with `wait` is waited for until it releases the lock."""
        import time

        beat = beat_s()  # read here, where a bad value is one line, not in the thread that beats
        told = False
        while True:
            try:
                self._take(beat, tell=not told)
                return
            except Locked:
                if not wait:
                    raise
                told = True
                time.sleep(min(0.5, beat / 10))

    def _take(self, beat: float, tell: bool) -> None:
        """`acquire` once, with beats every `beat` seconds. `tell`: say that a holder on another machine is being
        watched."""
        import datetime as dt
        import socket
        import threading

        host = socket.gethostname()
        while True:
            created = not self.path.exists()
            handle = os.fdopen(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644), "r+", encoding="utf-8")
            try:
                flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB, self.path, created)
            except BlockingIOError:
                handle.seek(0)
                holder = who(handle.read()) or "another process"
                handle.close()
                raise Locked(self.path, holder) from None
            try:
                same = os.fstat(handle.fileno()).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                handle.seek(0)
                found = handle.read().strip()
                other = LOCK_TEXT.match(found)
                if other is None or other["host"] == host:
                    break  # ours to take: no holder, or one on this machine that the kernel says is gone
                if tell:
                    print(f"note: {self.path}: held by {who(found)}, another machine; watching it for "
                          f"{3 * beat:g} s to tell whether that holder is alive", file=sys.stderr)
                seen = self._watch(found, beat)
                if seen == "alive":
                    handle.close()
                    raise Locked(self.path, who(found))
                if seen == "gone":
                    print(f"note: {self.path}: taken over from {who(found)}, whose lock has not changed for "
                          f"{3 * beat:g} s (its node was lost, or its process killed)", file=sys.stderr)
                    break
            handle.close()  # the holder removed the file between our open and our lock: lock the new one
        since = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        line = f"host {host}, pid {os.getpid()}, since {since}"
        write_lock_text(handle, f"{line}, beat 0", self.path)
        self._handle, self._stop = handle, threading.Event()
        self._beats = threading.Thread(target=self._beat, args=(handle, line, self._stop, beat), name="lock beats",
                                       daemon=True)
        self._beats.start()

    def _watch(self, found: str, beat: float) -> str:
        """`alive` when the lock file's text changes within three beats (a holder on another host rewrites it), `gone`
        when it does not, `removed` when that holder releases it meanwhile. The file is opened again at every look: a
        network file system shows another client's writes at the next open."""
        import time

        end = time.monotonic() + 3 * beat
        while time.monotonic() < end:
            time.sleep(beat / 10)
            try:
                now = self.path.read_text(encoding="utf-8").strip()
            except FileNotFoundError:
                return "removed"
            if now != found:
                return "alive"
        return "gone"

    @staticmethod
    def _beat(handle, line: str, stop, beat: float) -> None:
        n = 0
        while not stop.wait(beat):
            n += 1
            try:
                _write_lock_text(handle, f"{line}, beat {n}")
            except (OSError, ValueError):  # a full disk, the handle closed: the next acquire may then take it over
                return

    def release(self) -> None:
        if self._handle is None:
            return
        self._stop.set()
        self._beats.join()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()
        self._handle = None

    def __enter__(self) -> "FolderLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def who(text: str) -> str:
    """The holder a lock file's text names (host, pid, since), without its beat count."""
    return re.sub(r", beat \d+$", "", text.strip())


def _write_lock_text(handle, text: str) -> None:
    """Replace the lock file's text in place (written over, then cut: the file is never empty, which would read as
    no holder), and push it to the file system's server (fsync), where other nodes read it."""
    handle.seek(0)
    handle.write(text + "\n")
    handle.truncate()
    handle.flush()
    os.fsync(handle.fileno())


def write_lock_text(handle, text: str, path: Path) -> None:
    """`_write_lock_text` into a lock just taken. Where it fails (a full disk), the lock is let go (the handle closed:
    closing flushes the same text again and fails again, which is not said twice) and the error names `path`."""
    try:
        _write_lock_text(handle, text)
    except OSError as exc:
        from common.errors import naming

        with contextlib.suppress(OSError):
            handle.close()
        raise naming(exc, path) from None


@contextlib.contextmanager
def holding(lock: FolderLock, where: Path, doing: str, advice: str):
    """Hold `lock` for the block (its folder made if need be). A live holder is refused in one line:
    `<where>: another <doing> (<holder>); <advice>`."""
    from common.errors import UserError

    lock.folder.mkdir(parents=True, exist_ok=True)
    try:
        lock.acquire()
    except Locked as exc:
        raise UserError(f"{where}: another {doing} ({exc.holder}); {advice}") from None
    try:
        yield
    finally:
        lock.release()
