"""Where the repository is, how files are written so that a crash never leaves half a file, and how they are hashed."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent  # the checkout: config/, eval/tasks/ and friends are found from here


def local_folder(relative: str | Path) -> Path | None:
    """`relative` under the working directory, else under the repository, where it is a folder; else None."""
    return next((base / relative for base in (Path.cwd(), REPO) if (base / relative).is_dir()), None)


def write_atomic(path: Path, text: str | bytes) -> None:
    """Write `text` (UTF-8), or bytes as they are, to a temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(text) if isinstance(text, bytes) else tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not leave half a temporary file behind
        raise


def decode_utf8(data: bytes, where: str, first_line: int = 1) -> str:
    """A user's text as str. A leading byte-order mark (which Windows editors write) is dropped where the text starts
    the file (`first_line` 1), as pandas and PyYAML drop it; a byte that is not UTF-8 is one error naming its line
    (`first_line` is the number of the text's first line in the file) and column."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        from common.errors import UserError

        line = first_line + data[: exc.start].count(b"\n")
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise UserError(f"{where}:{line}: not UTF-8 text (byte {data[exc.start]:#x} at column {column}); re-save the "
                        "file as UTF-8") from None
    return text[1:] if first_line == 1 and text.startswith("\ufeff") else text


def read_json(path: str | Path, what: str, fix: str, keys: dict[str, type | tuple[type, ...]] | None = None) -> dict:
    """The JSON object in `path`, each of `keys` present with a value of its type: a record this project wrote (a
    milestone's words_seen.json, a task result, a grid's jobs). One that cannot be read, is not JSON (torn by a copy,
    edited by hand), is not an object or lacks a key is one error line naming it:
    `<path>: <what> cannot be read (...); <fix>`."""
    import json

    from common.errors import reading

    with reading(path, what, fix):
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"it holds a JSON {type(data).__name__}, not an object")
        for key, kind in (keys or {}).items():
            if key not in data:
                raise ValueError(f"it has no {key!r}")
            if not isinstance(data[key], kind) or (isinstance(data[key], bool) and kind is not bool):
                raise ValueError(f"its {key!r} is {data[key]!r}")
    return data


def check_replaceable(path: str | Path, ours, flag: str, what: str) -> None:
    """A file a command is told to write (`flag PATH`) may replace only an earlier file of its own kind (`ours(data)`
    of its JSON is true): anything else there (a model's config.json, a path mistyped) is refused in one line, before
    anything is computed, as is a folder or a path under a file."""
    import json

    from common.errors import UserError

    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path}: is a folder; give a file path for {what}")
    if any(up.exists() and not up.is_dir() for up in path.parents):
        raise UserError(f"{flag} {path}: is under a file; give a file path for {what}")
    if not path.exists():
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        data = None
    if not ours(data):
        raise UserError(f"{flag} {path}: exists and is not {what}, and writing would replace it; give a new path, or "
                        "move that file away")


def parse_jsonl(text: str) -> list[dict]:
    """The JSON objects of JSONL text, one per line. Lines end at \\n only (str.splitlines would also cut at U+2028,
    U+0085 and \\x1c-\\x1e, which JSON strings may hold); a line that is not a JSON object (torn by a kill or a node
    failure mid-write) is left out."""
    import json

    rows = []
    for line in text.split("\n"):
        try:
            row = json.loads(line) if line.strip() else None
        except ValueError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_jsonl(path: Path) -> list[dict]:
    """`parse_jsonl` of the file at `path`; no file, no rows."""
    return parse_jsonl(Path(path).read_text(encoding="utf-8")) if Path(path).is_file() else []


FIGURE_SOFTWARE = "babydistill"  # the `Software` text of every PNG this project writes: how it knows its own figures


def save_figure(fig, path: Path) -> Path:
    """A matplotlib figure as PNG (marked as ours: `is_our_figure`), written beside `path` and renamed over it; the
    figure is closed."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fig.savefig(tmp, dpi=100, format="png", metadata={"Software": FIGURE_SOFTWARE})
    plt.close(fig)
    tmp.replace(path)
    return path


def is_our_figure(path: Path) -> bool:
    """A PNG that `save_figure` wrote (its `Software` text says so), which a figure of ours may replace."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.format == "PNG" and image.text.get("Software") == FIGURE_SOFTWARE
    except Exception:  # noqa: BLE001 - anything that is not such a PNG is not ours
        return False


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


# --------------------------------------------------------------------------- names and folders of ours

MAX_NAME_BYTES = 255  # one path component on every common file system


def name_problem(name: str) -> str | None:
    """Why `name` cannot be one folder name (a run, an experiment, a grid point), or None."""
    if not name or not name.strip():
        return "is empty"
    if name in (".", ".."):
        return f"is '{name}', which names a folder above the run"
    if "/" in name or "\\" in name or "\0" in name:
        return f"is '{name}': it must be one folder name, without '/'"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):  # a newline would split every line and table that names it
        return f"is {name!r}: it holds a control character (a newline, a tab)"
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        return f"is {len(name.encode('utf-8'))} bytes long, more than the {MAX_NAME_BYTES} a folder name may have"
    return None


def file_in_the_way(folder: Path) -> Path | None:
    """The file (not a folder) at `folder` or at one of its parents, which would keep it from being made; or None."""
    return next((p for p in [Path(folder), *Path(folder).parents] if p.exists() and not p.is_dir()), None)


def remove_ours(path: Path, marker: str, what: str) -> None:
    """Delete the folder `path` only if it holds `marker`, the file this project writes into every
    folder of that kind; otherwise refuse (the project never deletes a folder it did not create).
    The marker goes last: a removal stopped part-way (Ctrl-C, a kill) leaves a folder that is still
    marked as ours, which the next removal takes, not one the project refuses to touch."""
    from common.errors import UserError

    path = Path(path)
    if not path.exists():
        return
    if path.is_symlink() or not path.is_dir() or not (path / marker).is_file():
        raise UserError(f"{path}: exists and is not {what} (no {marker} in it), so it is not removed; "
                        f"move it away or choose another path")
    for folder, subfolders, files in os.walk(path, topdown=False):  # deepest first; links are not followed
        for name in files:
            if not (folder == str(path) and name == marker):
                os.unlink(os.path.join(folder, name))
        for name in subfolders:
            inner = os.path.join(folder, name)
            os.unlink(inner) if os.path.islink(inner) else os.rmdir(inner)
    (path / marker).unlink()
    path.rmdir()


# --------------------------------------------------------------------------- the lock of a folder


class Locked(Exception):
    """Another live process holds the lock; `holder` says who (host, pid, since)."""

    def __init__(self, path: Path, holder: str):
        super().__init__(f"{path}: {holder}")
        self.path, self.holder = path, holder


def beat_s() -> float:
    """Seconds between a lock holder's beats (`FolderLock`): $BABYDISTILL_LOCK_BEAT_S (tests shorten it), else 20."""
    return float(os.environ.get("BABYDISTILL_LOCK_BEAT_S") or 20)


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

        told = False
        while True:
            try:
                self._take(tell=not told)
                return
            except Locked:
                if not wait:
                    raise
                told = True
                time.sleep(min(0.5, beat_s() / 10))

    def _take(self, tell: bool) -> None:
        """`acquire` once. `tell`: say that a holder on another machine is being watched."""
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
                          f"{3 * beat_s():g} s to tell whether that holder is alive", file=sys.stderr)
                seen = self._watch(found)
                if seen == "alive":
                    handle.close()
                    raise Locked(self.path, who(found))
                if seen == "gone":
                    print(f"note: {self.path}: taken over from {who(found)}, whose lock has not changed for "
                          f"{3 * beat_s():g} s (its node was lost, or its process killed)", file=sys.stderr)
                    break
            handle.close()  # the holder removed the file between our open and our lock: lock the new one
        since = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        line = f"host {host}, pid {os.getpid()}, since {since}"
        _write_lock_text(handle, f"{line}, beat 0")
        self._handle, self._stop = handle, threading.Event()
        self._beats = threading.Thread(target=self._beat, args=(handle, line, self._stop), name="lock beats",
                                       daemon=True)
        self._beats.start()

    def _watch(self, found: str) -> str:
        """`alive` when the lock file's text changes within three beats (a holder on another host rewrites it), `gone`
        when it does not, `removed` when that holder releases it meanwhile. The file is opened again at every look: a
        network file system shows another client's writes at the next open."""
        import time

        end = time.monotonic() + 3 * beat_s()
        while time.monotonic() < end:
            time.sleep(beat_s() / 10)
            try:
                now = self.path.read_text(encoding="utf-8").strip()
            except FileNotFoundError:
                return "removed"
            if now != found:
                return "alive"
        return "gone"

    @staticmethod
    def _beat(handle, line: str, stop) -> None:
        n = 0
        while not stop.wait(beat_s()):
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


def hash_files(folder: Path, patterns: tuple[str, ...]) -> str:
    """A hash of the names and bytes of `folder`'s files that match `patterns`, in order."""
    h = hashlib.sha256()
    for pattern in patterns:
        for path in sorted(folder.glob(pattern)):
            h.update(path.name.encode())
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 24), b""):
                    h.update(chunk)
    return h.hexdigest()[:16]


def model_hash(folder: Path) -> str:
    """A hash of what makes a model folder's model: its config.json, weight files and its own code (a model whose
    classes are Python files beside config.json; a folder without any hashes as it did before they counted)."""
    return hash_files(folder, ("config.json", "*.safetensors", "*.bin", "*.py"))
