"""Finding BabyLM corpus files and cleaning them, one cleaner per domain.

Both editions are recognised by file stem: 2023 (`aochildes`, `bnc_spoken`, `cbt`,
`children_stories`, `gutenberg`, `open_subtitles`, `qed`, `simple_wikipedia`,
`switchboard`, `wikipedia`) and 2024 (`childes`, `bnc_spoken`, `gutenberg`,
`open_subtitles`, `simple_wiki`, `switchboard` with `A:\\t` speaker tags). Any subset
works; a folder with none of them is an error. Cleaning keeps one utterance or
sentence per line and writes BLiMP-like surface text ("what's that?", not
"what 's that ?") so that training text and zero-shot test sentences look alike.
"""
from __future__ import annotations

import hashlib
import html
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from common.errors import UserError, stop_if_swallowed
from common.paths import decode_utf8, write_atomic

if TYPE_CHECKING:  # numpy is imported where the words are read
    import numpy as np

SPLIT_SUFFIXES = (".train", ".dev", ".test", ".txt")
CLEANER_VERSION = "1"  # bump when a cleaner changes: it invalidates every cache built on cleaned text
BOM = b"\xef\xbb\xbf"  # UTF-8's byte-order mark: dropped where a file starts with it (since 2026-12-03)

# ----------------------------------------------------------------------------- cleaners
# A cleaner maps one raw line to a clean line, or None to drop it.

_SPEAKER_TAG = re.compile(r"^\*?[A-Z]{1,4}:\t")  # `A:\t` (2024 switchboard), `*CHI:\t` (CHILDES)
_SPACE_BEFORE_PUNCT = re.compile(r" +([.,!?;:%)\]}]|n't|'s|'re|'ve|'m|'ll|'d)(?=\s|$|[.,!?;:])")
_SPACE_AFTER_OPEN = re.compile(r"([(\[{]) +")
_WIKI_HEADING = re.compile(r"^\s*=(\s*=)*\s.*\s=(\s*=)*\s*$")
_TIMESTAMP = re.compile(r"\b\d{1,2}:\d{2}(:\d{2})?([.,]\d+)?\b")
_HTML_TAG = re.compile(r"</?[a-zA-Z][^>]*>")
_SPACES = re.compile(r"\s+")


def _squash(line: str) -> str | None:
    line = _SPACES.sub(" ", line).strip()
    return line or None


def _detokenize(line: str) -> str:
    """Undo PTB-style spacing: `that 's nice .` -> `that's nice.`"""
    line = _SPACE_BEFORE_PUNCT.sub(r"\1", line)
    line = _SPACE_BEFORE_PUNCT.sub(r"\1", line)  # twice: `it 's .` has two in a row
    return _SPACE_AFTER_OPEN.sub(r"\1", line)


def clean_plain(line: str) -> str | None:
    return _squash(line)


def clean_speech(line: str) -> str | None:
    """CHILDES / Switchboard: drop speaker tags, undo tokenised spacing."""
    line = _SPEAKER_TAG.sub("", line)
    line = _squash(line)
    return _detokenize(line) if line else None


def clean_cbt(line: str) -> str | None:
    """Children's Book Test: PTB brackets and quote marks, `_BOOK_TITLE_` lines."""
    if line.startswith("_BOOK_TITLE_"):
        return None
    line = line.replace("-LRB-", "(").replace("-RRB-", ")").replace("``", '"').replace("''", '"').replace("`", "'")
    line = _squash(line)
    return _detokenize(line) if line else None


def clean_gutenberg(line: str) -> str | None:
    """Project Gutenberg: drop licence markers and chapter headings, italics underscores."""
    if "*** START OF" in line or "*** END OF" in line or re.match(r"^\s*\*?\s*CHAPTER\b", line, re.I):
        return None
    return _squash(line.replace("_", ""))


def clean_subtitles(line: str) -> str | None:
    """OpenSubtitles / QED: HTML entities and tags, timestamps, leading dialogue dashes."""
    line = html.unescape(line)
    line = _HTML_TAG.sub("", line)
    line = _TIMESTAMP.sub("", line)
    line = re.sub(r"^\s*-\s*", "", line)
    return _squash(line)


def clean_wiki(line: str) -> str | None:
    """Wikipedia / Simple Wikipedia: drop `= = = Heading = = =` lines."""
    if _WIKI_HEADING.match(line):
        return None
    return _squash(line)


CLEANERS: dict[str, Callable[[str], str | None]] = {
    # 2023 edition
    "aochildes": clean_speech,
    "bnc_spoken": clean_speech,
    "cbt": clean_cbt,
    "children_stories": clean_plain,
    "gutenberg": clean_gutenberg,
    "open_subtitles": clean_subtitles,
    "qed": clean_subtitles,
    "simple_wikipedia": clean_wiki,
    "switchboard": clean_speech,
    "wikipedia": clean_wiki,
    # 2024 edition (bnc_spoken, gutenberg, open_subtitles, switchboard shared with 2023)
    "childes": clean_speech,
    "simple_wiki": clean_wiki,
    # the project's own generated corpus
    "demo": clean_plain,
}


# ----------------------------------------------------------------------------- discovery


@dataclass(frozen=True)
class CorpusFile:
    domain: str
    path: Path


def find_files(folder: str | Path, domains: list[str] = (), key: str = "data.train_dir") -> list[CorpusFile]:
    """The recognised BabyLM files in `folder`, sorted by domain; errors name the folder and key."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: corpus folder not found ({key}); point {key} at a folder of BabyLM files")
    unknown = [d for d in domains if d not in CLEANERS]
    if unknown:
        raise UserError(f"data.domains: unknown domain '{unknown[0]}'; known domains: {', '.join(sorted(CLEANERS))}")
    found = []
    for path in sorted(folder.iterdir()):
        stem, suffix = path.stem, path.suffix
        if path.is_file() and suffix in SPLIT_SUFFIXES and stem in CLEANERS and (not domains or stem in domains):
            found.append(CorpusFile(stem, path))
    if not found:
        wanted = f"the domains {', '.join(domains)}" if domains else "recognised files"
        raise UserError(
            f"{folder}: no {wanted} ({key}); expected files named <domain>.train/.dev/.test/.txt "
            f"with a domain among {', '.join(sorted(CLEANERS))}")
    for f in found:
        if f.path.stat().st_size == 0:
            raise UserError(f"{f.path}: empty corpus file; remove it or restrict data.domains")
    return found


def clean_file(f: CorpusFile) -> tuple[list[str], list[int], int]:
    """Decode `f` as UTF-8 line by line (a bad byte names its line) and clean each line.

    Returns the clean lines, the words of each kept line as the BabyLM rules count them
    (whitespace-separated tokens of the raw line, before cleaning changes its spacing), and
    the words of the whole file, dropped lines included."""
    clean = CLEANERS[f.domain]
    lines, words, corpus_words = [], [], 0
    with open(f.path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            text = decode_utf8(raw, str(f.path), number)
            n = len(text.split())
            corpus_words += n
            line = clean(text)
            if line is not None:
                lines.append(line)
                words.append(n)
    if not lines:
        raise UserError(f"{f.path}: no text left after cleaning; remove it or restrict data.domains")
    return lines, words, corpus_words


def read_clean_lines(f: CorpusFile) -> list[str]:
    """The clean lines of `f` (see clean_file)."""
    return clean_file(f)[0]


def fingerprint(files: list[CorpusFile]) -> str:
    """A hash of the raw bytes of every file and the cleaner version. A file that starts with a byte-order mark adds
    that it is dropped: its clean text changed when that began, unlike every other file's, whose caches stay valid."""
    h = hashlib.sha256(f"cleaner-{CLEANER_VERSION}".encode())
    for f in files:
        h.update(f"{f.domain}\0{f.path.name}\0".encode())
        with open(f.path, "rb") as handle:
            if handle.read(len(BOM)) == BOM:
                h.update(b"byte-order mark dropped\0")
            handle.seek(0)
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def words_file(clean: Path) -> Path:
    """Beside each clean text file: the raw words of each of its lines, and of the whole raw file."""
    return clean.with_name(clean.name[:-len(".txt")] + ".words.npz")


def _sha256_and_lines(path: Path, count_lines: bool) -> tuple[str, int | None]:
    """The file's sha256 and, with `count_lines`, its number of lines, in one pass. Counting lines nearly doubles the
    pass, which runs at every start, so it is done only for a cache from before the checksum."""
    digest, lines = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
            if count_lines:
                lines += chunk.count(b"\n")
    return digest.hexdigest(), lines if count_lines else None


def _save_counts(counts: Path, words, corpus_words: int, digest: str) -> None:
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, lines=np.asarray(words, dtype=np.int64), corpus=np.int64(corpus_words), sha256=np.str_(digest))
    write_atomic(counts, buffer.getvalue())


def _check_cached(target: Path, counts: Path) -> None:
    """A cached clean text is the one its word counts were written with (their sha256 of it), else one line: a copy cut
    short, a line edited by hand or bytes that are not UTF-8 would train on other text than the corpus (or end in a
    traceback). A cache from before the checksum (2026-12-03) gains it when its line count agrees."""
    import zipfile

    import numpy as np

    fix = f"move the folder {target.parent} away and run the same command again (it is cleaned again from the corpus)"
    try:
        with np.load(counts) as z:
            lines, corpus_words = z["lines"], int(z["corpus"])
            digest = str(z["sha256"]) if "sha256" in z.files else None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"{counts}: the cached word counts of {target.name} cannot be read ({e}); {fix}") from None
    actual, n = _sha256_and_lines(target, count_lines=digest is None)
    if digest is None:
        if n != len(lines):
            raise UserError(f"{target}: the cached clean text has {n} lines where its word counts have {len(lines)}; "
                            f"{fix}")
        _save_counts(counts, lines, corpus_words, actual)
    elif digest != actual:
        raise UserError(f"{target}: the cached clean text is not the one written there (its sha256 differs from "
                        f"the one recorded in {counts.name}: cut short, or edited); {fix}")


def write_clean(files: list[CorpusFile], out_dir: Path) -> list[Path]:
    """Clean every file into `out_dir/<domain>.<split>.txt`, with its word counts and the text's sha256 beside it
    (`words_file`), each written atomically; a cached text is checked against its sha256 before it is used."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for f in files:
        target = out_dir / f"{f.domain}.{f.path.suffix.lstrip('.')}.txt"
        counts = words_file(target)
        if target.exists() and counts.exists():
            _check_cached(target, counts)
        else:  # new, or cut off between its two files: both written again
            lines, words, corpus_words = clean_file(f)
            text = ("\n".join(lines) + "\n").encode("utf-8")
            _save_counts(counts, words, corpus_words, hashlib.sha256(text).hexdigest())
            write_atomic(target, text)  # after its counts: a text is never there without them
        paths.append(target)
        stop_if_swallowed()  # a Ctrl-C that a finalizer swallowed: no further file
    return paths


def read_words(clean_files: list[Path]) -> tuple[np.ndarray, int]:
    """The raw words of every clean line, in file order, and the words of the raw files."""
    import numpy as np

    per_line, corpus_words = [], 0
    for path in clean_files:
        with np.load(words_file(path)) as counts:
            per_line.append(counts["lines"])
            corpus_words += int(counts["corpus"])
    return np.concatenate(per_line), corpus_words
