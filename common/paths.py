"""Where the repository is, how files are written so that a crash never leaves half a file, and how they are hashed."""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent  # the checkout: config/, eval/tasks/ and friends are found from here


def local_folder(relative: str | Path) -> Path | None:
    """`relative` under the working directory, else under the repository, where it is a folder; else None."""
    return next((base / relative for base in (Path.cwd(), REPO) if (base / relative).is_dir()), None)


@contextlib.contextmanager
def replacing(path: Path):
    """A temporary file beside `path` to write (yielded), renamed over `path` when the block ends. A failure removes
    it (a full disk must not leave half a file behind), and an OSError that names no file (a failed write on an open
    file) names `path`."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        tmp.replace(path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            from common.errors import naming

            raise naming(exc, path) from exc
        raise


@contextlib.contextmanager
def building(*folders: Path):
    """Folders of ours that the block builds before they are whole (a cache built beside its place, a work folder):
    what a killed command left under their names is removed first, and they are removed again when the block fails
    (a full disk, Ctrl-C), so that a failed command does not leave behind the space it asks to be freed."""
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
    try:
        yield
    except BaseException:
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
        raise


@contextlib.contextmanager
def replacing_folder(folder: Path, main: bool = True):
    """A folder written beside `folder` (`.<name>.tmp`, yielded) and renamed into its place when the block ends, so
    that `folder` is whole whenever it is there (an exported model that a full disk cut short would otherwise look
    like one). It is `building`'s: a killed command's is removed first, a failure removes it. What stood at `folder`
    (ours: an earlier attempt's) is replaced. `main` False, for the other ranks of one training (they take part in
    gathering a sharded model, rank 0 writes): the block only runs."""
    tmp = folder.with_name(f".{folder.name}.tmp")
    if not main:
        yield tmp
        return
    with building(tmp):
        tmp.mkdir(parents=True)
        yield tmp
        shutil.rmtree(folder, ignore_errors=True)
        tmp.replace(folder)


def write_atomic(path: Path, text: str | bytes) -> None:
    """Write `text` (UTF-8), or bytes as they are, to a temporary file beside `path`, then rename it over `path`."""
    with replacing(Path(path)) as tmp:
        tmp.write_bytes(text) if isinstance(text, bytes) else tmp.write_text(text, encoding="utf-8")


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
    try:
        with replacing(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png", metadata={"Software": FIGURE_SOFTWARE})
    finally:
        plt.close(fig)
    return path


def is_our_figure(path: Path) -> bool:
    """A PNG that `save_figure` wrote (its `Software` text says so), which a figure of ours may replace."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.format == "PNG" and image.text.get("Software") == FIGURE_SOFTWARE
    except Exception:  # noqa: BLE001 - anything that is not such a PNG is not ours
        return False


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
