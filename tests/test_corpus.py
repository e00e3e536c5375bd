"""Finding and cleaning BabyLM files, on the real 2023 and 2024 files in ../shared/data."""
from __future__ import annotations

import pytest

from common.errors import UserError
from conftest import shared
from tokenizer import corpus


def test_finds_the_2023_partial_domains():
    files = corpus.find_files(shared("babylm_2023_partial", "train_10M"))
    assert [f.domain for f in files] == ["aochildes", "cbt", "children_stories", "switchboard"]


def test_domain_subset():
    files = corpus.find_files(shared("babylm_2023_partial", "dev"), ["cbt", "switchboard"])
    assert [f.domain for f in files] == ["cbt", "switchboard"]


def test_2024_switchboard_speaker_tags_removed():
    (f,) = corpus.find_files(shared("babylm_2024_switchboard", "train_10M"))
    raw = f.path.read_text(encoding="utf-8").splitlines()
    assert sum(line.startswith(("A:\t", "B:\t")) for line in raw) > 0.9 * len(raw)
    lines = corpus.read_clean_lines(f)
    assert not any(line.startswith(("A:", "B:")) or "\t" in line for line in lines)
    assert "That's right," in lines


def test_aochildes_detokenized():
    f = next(f for f in corpus.find_files(shared("babylm_2023_partial", "train_10M")) if f.domain == "aochildes")
    lines = corpus.read_clean_lines(f)
    assert "what's the matter?" in lines and "what's that?" in lines
    assert not any(line.endswith(" ?") or line.endswith(" .") for line in lines)


def test_cbt_quotes_and_spacing():
    f = next(f for f in corpus.find_files(shared("babylm_2023_partial", "train_10M")) if f.domain == "cbt")
    lines = corpus.read_clean_lines(f)
    assert not any("-LRB-" in line or "``" in line or " ," in line for line in lines)
    assert any("queen's head" in line for line in lines)


@pytest.mark.parametrize("line, cleaned", [
    ("= = = Early life = = =", None),
    ("= Title =", None),
    ("He was born in 1900 .", "He was born in 1900 ."),
])
def test_wiki_headings(line, cleaned):
    assert corpus.clean_wiki(line) == cleaned


def test_subtitles_and_gutenberg():
    assert corpus.clean_subtitles("- <i>Where are you &amp; me?</i>") == "Where are you & me?"
    assert corpus.clean_gutenberg("*** START OF THIS PROJECT GUTENBERG EBOOK ***") is None
    assert corpus.clean_gutenberg("It was _very_ cold.") == "It was very cold."
    assert corpus.clean_speech("*CHI:\tI want it .") == "I want it."


def test_missing_folder(tmp_path):
    with pytest.raises(UserError, match=r"nope: corpus folder not found \(data.train_dir\)"):
        corpus.find_files(tmp_path / "nope")


def test_folder_without_recognised_files(tmp_path):
    (tmp_path / "notes.md").write_text("hello")
    (tmp_path / "novels.train").write_text("hello")
    with pytest.raises(UserError, match="no recognised files"):
        corpus.find_files(tmp_path)


def test_empty_file(tmp_path):
    (tmp_path / "cbt.train").write_text("")
    with pytest.raises(UserError, match=r"cbt.train: empty corpus file"):
        corpus.find_files(tmp_path)


def test_not_utf8_names_file_and_line(tmp_path):
    (tmp_path / "switchboard.train").write_bytes(b"fine line\nsecond\nbad \xff\xfe here\n")
    (f,) = corpus.find_files(tmp_path)
    with pytest.raises(UserError, match=r"switchboard.train:3: not UTF-8 text \(byte 0xff at column 5\)"):
        corpus.read_clean_lines(f)


def test_fingerprint_follows_content(tmp_path):
    (tmp_path / "cbt.train").write_text("one\n")
    files = corpus.find_files(tmp_path)
    before = corpus.fingerprint(files)
    assert corpus.fingerprint(files) == before
    (tmp_path / "cbt.train").write_text("two\n")
    assert corpus.fingerprint(files) != before


def test_a_cache_from_before_the_checksum_gains_it_when_its_lines_agree(tmp_path):
    """Clean texts cached before 2026-12-03 have word counts without the text's sha256: one whose line count agrees
    gains it (and is checked by it from then on); one that does not is refused in one line."""
    import numpy as np

    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "switchboard.train").write_text("A:\thello there\nB:\tyes\nA:\tgood .\n")
    files = corpus.find_files(tmp_path / "corpus")
    (text,) = corpus.write_clean(files, tmp_path / "clean")
    counts = corpus.words_file(text)
    with np.load(counts) as z:
        lines, total, digest = z["lines"], z["corpus"], str(z["sha256"])
    np.savez(counts, lines=lines, corpus=total)  # as written before the checksum
    assert corpus.write_clean(files, tmp_path / "clean") == [text]
    with np.load(counts) as z:
        assert str(z["sha256"]) == digest and z["lines"].tolist() == lines.tolist()
    np.savez(counts, lines=lines, corpus=total)
    text.write_text("hello there\nyes\n")
    with pytest.raises(UserError, match=r"clean text has 2 lines where its word counts have 3; move the folder"):
        corpus.write_clean(files, tmp_path / "clean")
    assert text.read_text() == "hello there\nyes\n"  # refused, not rewritten
