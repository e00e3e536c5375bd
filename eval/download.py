"""`python -m eval download`: put the evaluation data where `--data-dir` expects it.

Sources, all unpacked into one folder (default `evaluation_data/`):
- BabyLM's evaluation data (blimp_filtered/, supplement_filtered/, EWoK), published on OSF
  (https://osf.io/ad7qg/). OSF gives no stable direct link to the folder, so download its zip
  in a browser and pass it (or any URL to it) with `--from`.
- The full BLiMP, from its GitHub archive (fetched by default when there is a network).
- A local folder that holds such files or archives (e.g. ../shared/data): its task folders are copied and the
  archives in it unpacked, so one command assembles the folder that `--data-dir` and a grid's eval_data_dir expect.

EWoK stays in its password-protected zip: plain EWoK files found in an archive are not
written out (its terms allow sharing only inside such zips); point `--ewok-zip` at the zip.
"""
from __future__ import annotations

import argparse
import fnmatch
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from common.errors import UserError, if_interrupted, reading, writing
from common.paths import write_atomic

SKIPPED = "ewok (plain, not written)"
BLIMP_URL = "https://github.com/alexwarstadt/blimp/archive/refs/heads/master.tar.gz"
BABYLM_PAGE = "https://osf.io/ad7qg/"
KEEP = {  # folder in the archive -> folder under the destination
    "blimp_filtered": "blimp_filtered",
    "supplement_filtered": "supplement_filtered",
    "blimp_supplement": "blimp_supplement",
    "data": "blimp",  # BLiMP's own archive: <repo>/data/<paradigm>.jsonl
    "blimp_fast": "blimp_fast",  # the 2025 pipeline's extra tasks and fast variants (eval/tasks/*.yaml)
    "supplement_fast": "supplement_fast",
    "entity_tracking": "entity_tracking",
    "entity_tracking_fast": "entity_tracking_fast",
    "wug_adj_nominalization": "wug_adj_nominalization",
    "wug_past_tense": "wug_past_tense",
    "comps": "comps",
    "reading": "reading",
}
TASK_FILES = ("*.jsonl", "*.csv")  # reading/reading_data.csv is the one CSV
ARCHIVES = (".zip", ".tar.gz", ".tgz", ".tar")


def fetch(source: str, work: Path) -> Path:
    """A local path (an archive or a folder) as is; a URL (http, https, file) downloaded into `work`."""
    if "://" not in source:
        path = Path(source)
        if not path.exists():
            raise UserError(f"--from {source}: no such file or folder")
        return path
    target = work / (PurePosixPath(source.split("?")[0]).name or "download")
    try:
        # noqa: S310 - user-given URL
        with urllib.request.urlopen(source, timeout=60) as resp, open(target, "wb") as out:
            shutil.copyfileobj(resp, out)
    except (urllib.error.URLError, OSError) as exc:
        raise UserError(
            f"{source}: download failed ({getattr(exc, 'reason', exc)}); check the network or pass a local file with "
            "--from"
        ) from None
    return target


def _members(archive: Path) -> list[tuple[str, callable]]:
    """(name, read) for every file in a zip or tar archive, or under a folder (names relative to it)."""
    if archive.is_dir():
        return [(p.relative_to(archive).as_posix(), p.read_bytes) for p in sorted(archive.rglob("*")) if p.is_file()]
    if zipfile.is_zipfile(archive):
        zf = zipfile.ZipFile(archive)
        return [(i.filename, (lambda i=i: zf.read(i))) for i in zf.infolist() if not i.is_dir()]
    try:
        tf = tarfile.open(archive)
    except tarfile.TarError:
        raise UserError(f"{archive}: neither a zip nor a tar archive; download it again") from None
    return [(m.name, (lambda m=m: tf.extractfile(m).read())) for m in tf.getmembers() if m.isfile()]


def _is_ewok_zip(name: str) -> bool:
    return name.startswith("ewok") and name.endswith(".zip")


def _encrypted(archive: Path) -> bool:
    """A zip whose members are password-protected: EWoK's own zip, kept whole (read in place by the tasks)."""
    if not zipfile.is_zipfile(archive):
        return False
    with zipfile.ZipFile(archive) as zf:
        return any(info.flag_bits & 0x1 for info in zf.infolist())


def planned(archive: Path, dest: Path) -> tuple[list[tuple[Path, object]], int]:
    """What unpacking `archive` (or a folder, whose archives are unpacked too) into `dest` writes: (target, read) for
    the task folders' JSONL (and CSV) files and any EWoK zip, in order, each read wrapped to name `archive` when it
    fails; and how many plain EWoK files it holds (never written). An EWoK zip given itself is copied as it is."""
    def named(read):
        def wrapped():
            with reading(archive, "the archive", "download it again"):
                return read()
        return wrapped

    if archive.is_file() and _is_ewok_zip(archive.name) and _encrypted(archive):
        return [(dest / archive.name, archive.read_bytes)], 0
    targets, skipped = [], 0
    with reading(archive, "the archive", "download it again"):
        members = _members(archive)
    for name, read in members:
        parts = PurePosixPath(name).parts
        if any(p in ("..", "") for p in parts) or name.startswith("/"):
            continue  # never write outside dest
        if _is_ewok_zip(parts[-1]):
            targets.append((dest / parts[-1], named(read)))
        elif "ewok_filtered" in parts or "ewok" in parts[:-1]:
            skipped += 1
        else:
            folders = [p for p in parts[:-1] if p in KEEP]
            if folders and any(fnmatch.fnmatch(parts[-1], pattern) for pattern in TASK_FILES):
                targets.append((dest / KEEP[folders[-1]] / parts[-1], named(read)))
    if archive.is_dir():
        for nested in sorted(p for p in archive.rglob("*") if p.is_file() and p.name.endswith(ARCHIVES)
                             and not _is_ewok_zip(p.name)):
            more, n = planned(nested, dest)
            targets += more
            skipped += n
    return targets, skipped


def write(targets: list[tuple[Path, object]], dest: Path) -> dict[str, int]:
    """Write every target (the last read given for a path wins), leaving a file whose bytes are already those alone;
    returns files per folder."""
    counts: dict[str, int] = {}
    for target, read in dict(targets).items():
        data = read()
        if not (target.is_file() and target.read_bytes() == data):
            with writing(dest, "then run the same command again"):  # a full disk: one line, no temporary file left
                target.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(target, data)
        key = target.parent.name if target.parent != dest else target.name
        counts[key] = counts.get(key, 0) + 1
    return counts


def unpack(archive: Path, dest: Path) -> dict[str, int]:
    """`planned`, written: files per folder."""
    return write(planned(archive, dest)[0], dest)


def download(dest: str, sources: list[str], overwrite: bool = False) -> dict[str, int]:
    """Every source's task files into `dest`. A file already there whose bytes differ from the download's (a copy
    edited by hand, another release) is kept, and the command refused before anything is written, unless
    `overwrite`."""
    out = Path(dest)
    if out.exists() and not out.is_dir():
        raise UserError(f"--dest {dest}: exists and is not a folder")
    sources = sources or [BLIMP_URL]  # `out` is made by the first file written into it
    targets, plain = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for source in sources:
            found, skipped = planned(fetch(source, Path(tmp)), out)
            plain += skipped
            if not found:  # nothing written: exit 0 here would read as success
                why = (f" (it holds {skipped} plain EWoK file(s), which are never written out: pass EWoK's zip instead)"
                       if skipped else "")
                raise UserError(f"{source}: holds none of {', '.join(sorted(KEEP))} (JSONL) nor an EWoK zip{why}; "
                                f"is it BabyLM's evaluation data?")
            targets += found
        if not overwrite:
            changed = [t for t, read in dict(targets).items() if t.is_file() and t.read_bytes() != read()]
            if changed:
                raise UserError(f"--dest {dest}: {len(changed)} file(s) there differ from the download's "
                                f"({changed[0]}{', ...' if len(changed) > 1 else ''}); they are kept and nothing was "
                                "written: pass --overwrite to replace them, or --dest another folder")
        counts = write(targets, out)
    if plain:
        counts[SKIPPED] = plain
    return counts


def parse_download(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m eval download",
        description=f"Fetch and unpack evaluation data. Default: the full BLiMP ({BLIMP_URL}). "
        f"BabyLM's evaluation_data: download its zip from {BABYLM_PAGE} and pass it with --from.",
    )
    p.add_argument("--dest", default="evaluation_data", help="folder to unpack into (give it to --data-dir)")
    p.add_argument("--from", dest="sources", action="append", default=[], help="a local archive or a URL (repeatable)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace files in --dest whose bytes differ from the download's (else they are kept, and "
                        "nothing is written)")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    """`python -m eval download`: fetch and unpack, then one line per folder with its file count."""
    args = parse_download(argv)
    with if_interrupted(args.dest, "each file written is whole, but the folder may lack some: run the same command "
                                   "again before scoring from it"):
        counts = download(args.dest, args.sources, args.overwrite)
    for key, n in sorted(counts.items()):
        print(f"{args.dest}/{key}: {n} file(s)")
    return 0
