"""Every reader of a user's text file (configs, corpus files, task JSONL inside folders and archives, fine-tuning
splits, the reading and CDI CSVs, collate's size table) reads a file that starts with UTF-8's byte-order mark, as a
Windows editor saves it, exactly as it reads the same file without one; a byte that is not UTF-8 is named by line and
column. Until 2026-12-03 the JSONL readers refused such a file ("not valid JSON (Unexpected UTF-8 BOM)", at line 1,
telling the user to fix or delete the line) and the corpus kept the mark in the first line's training text."""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import pandas as pd
import pytest

from common.errors import UserError
from common.paths import REPO
from conftest import shared

BOM = b"\xef\xbb\xbf"


def with_bom(path: Path) -> None:
    path.write_bytes(BOM + path.read_bytes())


def read_config(folder: Path):
    from common.config import read_yaml

    return read_yaml(folder / "demo-teacher.yaml")


def read_corpus(folder: Path):
    from tokenizer import corpus

    (f,) = corpus.find_files(folder)
    return corpus.clean_file(f)


def read_blimp(folder: Path):
    from eval.tasks import load_task

    return [(i.subtask, i.choices) for i in load_task("blimp_filtered", str(folder)).items]


def read_blimp_archive(folder: Path):
    from eval.tasks import load_task

    return [(i.subtask, i.choices) for i in load_task("blimp", str(folder)).items]


def read_glue(folder: Path):
    from eval.finetune import read_split, spec_of

    return read_split(folder / "rte.train.jsonl", spec_of("rte"), "rte")


def read_reading(folder: Path):
    from eval.reading import read_table

    return read_table(folder / "reading_data.csv").to_dict("list")


def read_cdi(folder: Path):
    from eval.aoa_fit import read_cdi

    return read_cdi(folder / "cdi.csv").to_dict("list")


def read_sizes(folder: Path):
    from eval.collate import collate

    with pytest.raises(UserError) as caught:  # no results there: the table was read before that was found
        collate(folder, "causal", folder / "sizes.yaml", results=folder / "eval")
    return str(caught.value)


def read_aoa_words(folder: Path):
    from eval.aoa import read_words

    return read_words(folder / "cdi_childes.json")


def write_aoa_words(folder: Path) -> Path:
    text = '{\n"dog": [{"context": "the dog ran ."}, {"context": "a dog ."}],\n"ball": [{"context": "the ball ."}]\n}\n'
    (folder / "cdi_childes.json").write_text(text, encoding="utf-8")
    return folder / "cdi_childes.json"


def write_config(folder: Path) -> Path:
    shutil.copy(REPO / "config" / "runs" / "demo-teacher.yaml", folder)
    return folder / "demo-teacher.yaml"


def write_corpus(folder: Path) -> Path:
    lines = (shared("babylm_2023_partial", "train_10M") / "cbt.train").read_text(encoding="utf-8").splitlines()[:50]
    (folder / "cbt.train").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder / "cbt.train"


def write_blimp(folder: Path) -> Path:
    (folder / "blimp_filtered").mkdir()
    source = sorted(shared("blimp_filtered").glob("*.jsonl"))[0]
    target = folder / "blimp_filtered" / source.name
    target.write_text("\n".join(source.read_text(encoding="utf-8").splitlines()[:5]) + "\n", encoding="utf-8")
    return target


def write_blimp_archive(folder: Path) -> Path:
    """A paradigm's file, which pack_archive puts into blimp_full.tar.gz once with_bom has marked it or not."""
    source = sorted(shared("blimp_filtered").glob("*.jsonl"))[0]
    text = "\n".join(source.read_text(encoding="utf-8").splitlines()[:5]) + "\n"
    (folder / "member.jsonl").write_text(text, encoding="utf-8")
    return folder / "member.jsonl"


def write_glue(folder: Path) -> Path:
    rows = [{"sentence1": "The man bought a car.", "sentence2": "The man owns a car.", "label": k % 2}
            for k in range(6)]
    (folder / "rte.train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return folder / "rte.train.jsonl"


def write_reading(folder: Path) -> Path:
    with tarfile.open(shared("babylm2025_extra_tasks.tar.gz")) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("reading/reading_data.csv"))
        frame = pd.read_csv(io.BytesIO(tar.extractfile(member).read()), dtype={"item": str})
    frame.head(60).to_csv(folder / "reading_data.csv", index=False)
    return folder / "reading_data.csv"


def write_cdi(folder: Path) -> Path:
    (folder / "cdi.csv").write_text("word,16,20,24\ncat,0.1,0.4,0.8\ndog,0.2,0.5,0.9\n", encoding="utf-8")
    return folder / "cdi.csv"


def write_sizes(folder: Path) -> Path:
    (folder / "eval").mkdir()
    (folder / "sizes.yaml").write_text("full:\n  blimp_filtered: {adjunct_island: 5}\n", encoding="utf-8")
    return folder / "sizes.yaml"


READERS = {
    "config YAML": (write_config, read_config),
    "corpus file": (write_corpus, read_corpus),
    "task JSONL": (write_blimp, read_blimp),
    "task JSONL in an archive": (write_blimp_archive, read_blimp_archive),
    "fine-tuning split": (write_glue, read_glue),
    "reading CSV": (write_reading, read_reading),
    "CDI CSV": (write_cdi, read_cdi),
    "collate --sizes": (write_sizes, read_sizes),
    "AoA --words JSON": (write_aoa_words, read_aoa_words),
}


def pack_archive(folder: Path) -> None:
    """For the archive case: member.jsonl as a paradigm's file in blimp_full.tar.gz (blimp.yaml's second source)."""
    with tarfile.open(folder / "blimp_full.tar.gz", "w:gz") as tar:
        tar.add(folder / "member.jsonl", arcname="data/adjunct_island.jsonl")


@pytest.mark.parametrize("kind", READERS)
def test_a_leading_byte_order_mark_reads_as_the_same_file_without_it(kind, tmp_path):
    write, read = READERS[kind]
    plain, marked = tmp_path / "plain", tmp_path / "marked"
    for folder in (plain, marked):
        folder.mkdir()
        file = write(folder)
        if folder is marked:
            with_bom(file)
            assert file.read_bytes().startswith(BOM)
        if kind == "task JSONL in an archive":
            pack_archive(folder)
    got, expected = read(marked), read(plain)
    if kind == "collate --sizes":  # the message names its folder
        got = got.replace(str(marked), str(plain))
    assert got == expected
    assert "\ufeff" not in repr(got)


def test_the_corpus_caches_of_files_without_the_mark_keep_their_names(tmp_path):
    """Dropping the mark changed the clean text of files that start with one, and of no other file: only their
    fingerprint (the name of every cache built on them, and what a resumed run compares) changes."""
    from tokenizer import corpus

    file = write_corpus(tmp_path)
    (f,) = corpus.find_files(tmp_path)
    before = hashlib.sha256(f"cleaner-{corpus.CLEANER_VERSION}".encode())  # the formula until 2026-12-03
    before.update(f"{f.domain}\0{f.path.name}\0".encode() + file.read_bytes())
    assert corpus.fingerprint([f]) == before.hexdigest()[:16]
    with_bom(file)
    before = hashlib.sha256(f"cleaner-{corpus.CLEANER_VERSION}".encode())
    before.update(f"{f.domain}\0{f.path.name}\0".encode() + file.read_bytes())
    assert corpus.fingerprint([f]) != before.hexdigest()[:16]


@pytest.mark.parametrize("kind", ["config YAML", "corpus file", "task JSONL", "fine-tuning split",
                                  "AoA --words JSON"])
def test_a_byte_that_is_not_utf8_is_named_by_line_and_column(kind, tmp_path):
    write, read = READERS[kind]
    file = write(tmp_path)
    lines = file.read_bytes().split(b"\n")
    lines[2] = lines[2][:4] + b"\xff" + lines[2][4:]
    file.write_bytes(b"\n".join(lines))
    with pytest.raises(UserError, match=rf"{file.name}:3: not UTF-8 text \(byte 0xff at column 5\); re-save the file "
                                        "as UTF-8"):
        read(tmp_path)
