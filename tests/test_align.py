"""Teachers with their own tokenizer (distill/align.py): the project's byte-level BPE as the student's
tokenizer, GPT-2's real 50k BPE (../shared/data/hf_tiny_gpt2) as the teacher's, on real BLiMP and
BabyLM text. The alignment is checked against a naive reference that decodes every prefix."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from common.errors import UserError
from conftest import shared

BABYLM_DEV = ["aochildes.dev", "cbt.dev", "children_stories.dev", "switchboard.dev"]


@pytest.fixture(scope="module", params=["babylm-1000", "demo-512"])
def tokenizers(request, tmp_path_factory):
    """The student's tokenizer: the project's BPE trained on the BabyLM dev files (1,000 tokens), or on
    the embedded demo corpus as the demo recipes train it (512 tokens); the teacher's: GPT-2's."""
    from transformers import AutoTokenizer

    from tokenizer.bpe import train_bpe

    folder = tmp_path_factory.mktemp("bpe")
    if request.param == "demo-512":
        demo = request.getfixturevalue("demo_root")
        student = train_bpe(sorted((demo / "train").glob("*")), 512, 2, folder / "tok")
    else:
        student = train_bpe(
            [shared("babylm_2023_partial", "dev", name) for name in BABYLM_DEV], 1000, 2, folder / "tok"
        )
    return student, AutoTokenizer.from_pretrained(str(shared("hf_tiny_gpt2")))


def real_lines(n_per_source: int = 60) -> list[str]:
    lines = []
    for name in sorted(shared("blimp_filtered").glob("*.jsonl"))[:6]:
        rows = [json.loads(x) for x in name.read_text().splitlines()[:10]]
        lines += [r["sentence_good"] for r in rows] + [r["sentence_bad"] for r in rows]
    for name in BABYLM_DEV:
        text = shared("babylm_2023_partial", "dev", name).read_text(encoding="utf-8").splitlines()
        picked = [x for x in text if x.strip()][:n_per_source]
        picked += [x for x in text if any(ord(c) > 127 for c in x)][:20]  # accents, curly quotes, dashes
        lines += picked
    return lines


def packed_blocks(tokenizer, lines: list[str], block: int) -> torch.Tensor:
    """As tokenizer/prepare.py packs: each line with its BOS, concatenated, cut into blocks (mid-word,
    mid-character)."""
    ids = [i for line in lines for i in tokenizer(line)["input_ids"]]
    return torch.tensor(ids[: len(ids) // block * block]).view(-1, block)


def naive_index(student, teacher, s_ids: list[int], t_ids: list[int]) -> list[int]:
    """For each student position, the last teacher position whose decoded prefix is the same text
    after the same number of special tokens; -1 where none is, or where the student's prefix ends
    inside a character (its decoded text is not a prefix of the whole)."""
    def keys(tok, ids):
        special = set(tok.all_special_ids)
        return [
            (tok.decode(ids[: i + 1], skip_special_tokens=True), sum(x in special for x in ids[: i + 1]))
            for i in range(len(ids))
        ]

    whole = student.decode(s_ids, skip_special_tokens=True)
    t_keys = keys(teacher, t_ids)
    out = []
    for key in keys(student, s_ids):
        found = [j for j, k in enumerate(t_keys) if k == key]
        out.append(found[-1] if found and whole.startswith(key[0]) else -1)
    return out


def test_byte_alphabet_is_the_byte_level_one(tokenizers):
    from tokenizers.pre_tokenizers import ByteLevel

    from distill.align import byte_decoder, student_pieces

    table = byte_decoder()
    assert sorted(table.values()) == list(range(256)) and set(table) == set(ByteLevel.alphabet())
    student, _ = tokenizers
    pieces = student_pieces(student)
    for line in real_lines(5)[:40]:
        ids = student(line, add_special_tokens=False)["input_ids"]
        assert b"".join(pieces[i] for i in ids).decode("utf-8") == student.decode(ids)


@pytest.mark.parametrize("block", [16, 64])
def test_alignment_matches_the_naive_reference_on_real_text(tokenizers, block):
    from distill.align import CrossTokenizer

    student, teacher = tokenizers
    blocks = packed_blocks(student, real_lines(), block)
    cross = CrossTokenizer(student, teacher, "test")
    r = cross(blocks)
    aligned = total = 0
    for b in range(len(blocks)):
        s_ids = blocks[b].tolist()
        t_ids = r.teacher_ids[b][r.teacher_mask[b].bool()].tolist()
        assert r.index[b].tolist() == naive_index(student, teacher, s_ids, t_ids), b
        # the teacher reads the same text: its tokens decode to the student's (specials aside)
        assert teacher.decode(t_ids, skip_special_tokens=True) == student.decode(s_ids, skip_special_tokens=True)
        aligned += int((r.index[b] >= 0).sum())
        total += len(s_ids)
    # every line start (BOS) is aligned, and many word ends are: a small BPE splits words GPT-2 keeps whole
    assert all(
        r.index[b, i] >= 0 for b in range(len(blocks)) for i in range(block) if blocks[b, i] == student.bos_token_id
    )
    assert 0.2 < aligned / total < 1.0, aligned / total


def test_gathered_outputs_sit_at_the_aligned_positions(tokenizers):
    from distill.align import CrossTokenizer, gather

    student, teacher = tokenizers
    blocks = packed_blocks(student, real_lines(3), 32)[:4]
    r = CrossTokenizer(student, teacher, "test")(blocks)
    values = torch.arange(r.teacher_ids.numel()).view(*r.teacher_ids.shape, 1).float().expand(-1, -1, 3)
    got = gather(values, r.index)
    assert got.shape == (*blocks.shape, 3)
    keep = r.index >= 0
    assert torch.equal(got[keep][:, 0], values[torch.arange(4)[:, None].expand_as(r.index)[keep], r.index[keep], 0])


def test_a_teacher_longer_than_its_positions_is_cut_and_the_rest_unaligned(tokenizers):
    from distill.align import CrossTokenizer

    student, teacher = tokenizers
    blocks = packed_blocks(student, real_lines(3), 64)[:2]
    full = CrossTokenizer(student, teacher, "test")(blocks)
    cut = CrossTokenizer(student, teacher, "test", max_positions=10)(blocks)
    assert cut.teacher_ids.shape[1] == 10
    assert torch.equal(cut.index, torch.where(full.index < 10, full.index, -1))


def test_a_student_tokenizer_that_is_not_byte_level_is_refused(tokenizers):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from distill.align import CrossTokenizer

    wp = Tokenizer(models.WordPiece({"[UNK]": 0, "the": 1, "cat": 2}, unk_token="[UNK]"))
    wp.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(UserError, match="byte-level student tokenizer"):
        CrossTokenizer(
            PreTrainedTokenizerFast(tokenizer_object=wp, unk_token="[UNK]"), tokenizers[1], "distill.teachers[0]"
        )


def test_a_teacher_tokenizer_that_is_not_fast_is_refused(tokenizers, tmp_path):
    from transformers import ByT5Tokenizer

    from distill.teachers import own_tokenizer

    student, _ = tokenizers
    student.save_pretrained(tmp_path / "student")
    teacher = tmp_path / "teacher"
    ByT5Tokenizer().save_pretrained(teacher)  # a pure-Python tokenizer: no offsets
    with pytest.raises(UserError, match=r"distill.teachers\[0\].*not a fast tokenizer"):
        own_tokenizer(teacher, tmp_path / "student", "distill.teachers[0] (t)", None)
    shutil.rmtree(teacher)
