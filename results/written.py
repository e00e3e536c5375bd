"""What one `collect` wrote into its folder, kept in a manifest (`.<name>.collected.json`), so that the next collection
under the same name removes the files of the last one that it did not write again: a baselines table, a seeds table
or a plot of a run no longer collected would otherwise sit beside the new table as if they belonged to it. Only
files the manifest lists, inside the folder and under the collection's own name (`<name>.csv`, `<name>.md`,
`<name>-*`), are ever removed."""
from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

from common.paths import write_atomic


def manifest(out: Path, name: str) -> Path:
    return out / f".{name}.collected.json"


def _ours(entry, name: str) -> bool:
    """A manifest entry that names one of this collection's files: relative, no '..', `<name>.csv`, `<name>.md` or
    under `<name>-`."""
    if not isinstance(entry, str):
        return False
    path = PurePosixPath(entry)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        return False
    return path.parts[0] in (f"{name}.csv", f"{name}.md") or path.parts[0].startswith(f"{name}-")


WRITES = ("{name}.csv", "{name}.md", "{name}-baselines.md", "{name}-seeds.md", "{name}-tasks.png", "{name}-curves.png",
          "{name}-heatmap.png", "{name}-curve-*.png", "{name}-terms/*.png", "{name}-omega/*.png")  # what collect writes


def unfinished(out: Path, name: str) -> Path:
    """Written before a collection's first file and removed after its manifest: a collection stopped between the two
    (a full disk, a kill) leaves it."""
    return out / f".{name}.collecting"


def begin(out: Path, name: str) -> None:
    write_atomic(unfinished(out, name), "a collection being written by python -m results collect\n")


def listed(out: Path, name: str) -> set[str]:
    """The files the last collection `name` in `out` recorded (relative paths); none when it has no manifest. After a
    collection that stopped part-way (`unfinished`), also every file there where a collection writes (`WRITES`): that
    one wrote them, since none was there unrecorded when it began (`check_free`); without them, the same command
    refused the files its stopped run had written."""
    try:
        before = json.loads(manifest(out, name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        before = []
    ours = {entry for entry in before if _ours(entry, name)} if isinstance(before, list) else set()
    if unfinished(out, name).is_file():
        ours |= {path.relative_to(out).as_posix() for pattern in WRITES for path in out.glob(pattern.format(name=name))}
    return ours


def check_free(out: Path, name: str) -> None:
    """Refused before anything is collected: a file in `out` where the collection `name` writes (`WRITES`) that no
    earlier collection of that name wrote, such as a table or plot of the user's in the folder given as --out."""
    from common.errors import UserError

    ours = listed(out, name)
    for pattern in WRITES:
        for path in sorted(out.glob(pattern.format(name=name))) if out.is_dir() else []:
            if path.relative_to(out).as_posix() not in ours:
                raise UserError(f"{path}: exists and was not written by python -m results collect (it is not in "
                                f"{manifest(out, name).name}), and collecting as --name {name} would replace it; "
                                "pass another --name or --out, or move that file away")


def replace_collection(out: Path, name: str, written: list[Path]) -> list[Path]:
    """Record `written` as the collection `name` in `out`; remove the files the previous one listed and this one did
    not write (and the folders of per-run plots they leave empty). Returns the removed files."""
    now = {p.relative_to(out).as_posix() for p in written}
    removed = []
    for entry in sorted(listed(out, name)):
        if entry in now:
            continue
        path = out / entry
        if path.is_file():
            path.unlink()
            removed.append(path)
            if path.parent != out and not any(path.parent.iterdir()):
                path.parent.rmdir()
    write_atomic(manifest(out, name), json.dumps(sorted(now), indent=0))
    unfinished(out, name).unlink(missing_ok=True)
    return removed
