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


def replace_collection(out: Path, name: str, written: list[Path]) -> list[Path]:
    """Record `written` as the collection `name` in `out`; remove the files the previous one listed and this one did
    not write (and the folders of per-run plots they leave empty). Returns the removed files."""
    try:
        before = json.loads(manifest(out, name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        before = []
    now = {p.relative_to(out).as_posix() for p in written}
    removed = []
    for entry in before if isinstance(before, list) else []:
        if not _ours(entry, name) or entry in now:
            continue
        path = out / entry
        if path.is_file():
            path.unlink()
            removed.append(path)
            if path.parent != out and not any(path.parent.iterdir()):
                path.parent.rmdir()
    write_atomic(manifest(out, name), json.dumps(sorted(now), indent=0))
    return removed
