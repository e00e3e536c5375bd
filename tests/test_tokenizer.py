"""Tokenizers (from scratch, pretrained folder, Hub name) and the cached tokenize + pack step."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from common.errors import UserError
from conftest import shared, slice_corpus
from tokenizer.config import DataConfig, TokenizerConfig
from tokenizer.prepare import load_blocks, prepare


@pytest.fixture(scope="module")
def babylm_slice(tmp_path_factory):
    root = tmp_path_factory.mktemp("babylm")
    slice_corpus(shared("babylm_2023_partial", "train_10M"), root / "train", 3000)
    slice_corpus(shared("babylm_2023_partial", "dev"), root / "dev", lines=500)
    return root


def test_from_scratch_bpe_adds_bos_and_reloads(babylm_slice, tmp_path):
    from transformers import AutoTokenizer

    data = DataConfig(
        train_dir=str(babylm_slice / "train"), dev_dir=str(babylm_slice / "dev"), cache_dir=str(tmp_path), block_size=32
    )
    prepared = prepare(data, TokenizerConfig(vocab_size=1000))
    tok = AutoTokenizer.from_pretrained(prepared.tokenizer_dir)
    assert len(tok) == 1000
    ids = tok("The dog runs.")["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[1:] == tok(" The dog runs.")["input_ids"][1:]
    assert tok.mask_token == "<mask>" and tok.pad_token == "<pad>" and tok.eos_token == "</s>"
    assert tok.decode(ids, skip_special_tokens=True).strip() == "The dog runs."
    blocks = load_blocks(prepared.train_blocks)
    assert blocks[0]["input_ids"].shape == (32,) and blocks[0]["input_ids"][0] == tok.bos_token_id
    stats = json.loads((prepared.train_blocks / "stats.json").read_text())
    assert stats["blocks"] == len(blocks) == stats["tokens"] // 32


def test_cached_deterministic_and_invalidated(babylm_slice, tmp_path):
    data = DataConfig(
        train_dir=str(babylm_slice / "train"),
        cache_dir=str(tmp_path / "c1"),
        block_size=32,
        domains=["cbt", "switchboard"],
    )
    first = prepare(data, TokenizerConfig(vocab_size=800))
    again = prepare(data, TokenizerConfig(vocab_size=800))
    assert again.train_blocks == first.train_blocks  # a cache hit
    other_cache = prepare(
        DataConfig(**{**data.__dict__, "cache_dir": str(tmp_path / "c2")}), TokenizerConfig(vocab_size=800)
    )
    a, b = (np.asarray(load_blocks(p.train_blocks)["input_ids"]) for p in (first, other_cache))
    assert np.array_equal(a, b)  # rebuilt from nothing: identical
    changed_tok = prepare(data, TokenizerConfig(vocab_size=900))
    assert changed_tok.train_blocks != first.train_blocks
    corpus = tmp_path / "corpus"
    shutil.copytree(babylm_slice / "train", corpus)
    with open(corpus / "cbt.train", "a", encoding="utf-8") as handle:
        handle.write("One more line changes the fingerprint.\n")
    changed_corpus = prepare(DataConfig(**{**data.__dict__, "train_dir": str(corpus)}), TokenizerConfig(vocab_size=800))
    assert changed_corpus.train_blocks != first.train_blocks and changed_corpus.tokenizer_dir != first.tokenizer_dir


def test_blocks_names_are_the_names_prepare_gives_without_packing(babylm_slice, tmp_path):
    """What a grid's launch compares with a run's recorded inputs: the cache names of the train and dev blocks, from
    the raw bytes alone, equal to prepare's for a tokenizer from scratch or pretrained, packed or padded, before and
    after a corpus edit; None for a corpus folder not there yet."""
    from tokenizer.prepare import blocks_names

    corpus = tmp_path / "corpus"
    shutil.copytree(babylm_slice, corpus)
    data = DataConfig(train_dir=str(corpus / "train"), dev_dir=str(corpus / "dev"), cache_dir=str(tmp_path / "c"),
                      block_size=32, domains=["cbt", "switchboard"])
    for tok in (TokenizerConfig(vocab_size=800), TokenizerConfig(type="pretrained", name_or_path=str(
            shared("hf_tiny_gpt2")))):
        for packing in (True, False):
            d = DataConfig(**{**data.__dict__, "packing": packing})
            names = blocks_names(d, tok)
            prepared = prepare(d, tok)
            assert names == {"data.train_dir": prepared.train_blocks.name, "data.dev_dir": prepared.dev_blocks.name}
    before = blocks_names(data, TokenizerConfig(vocab_size=800))
    with open(corpus / "train" / "cbt.train", "a", encoding="utf-8") as handle:
        handle.write("One more line changes the fingerprint.\n")
    after = blocks_names(data, TokenizerConfig(vocab_size=800))
    assert after["data.train_dir"] != before["data.train_dir"]
    assert after["data.train_dir"] == prepare(data, TokenizerConfig(vocab_size=800)).train_blocks.name
    assert blocks_names(DataConfig(**{**data.__dict__, "train_dir": str(tmp_path / "not-yet")}),
                        TokenizerConfig(vocab_size=800)) is None


def test_train_fraction_is_a_seeded_subset(babylm_slice, tmp_path):
    data = DataConfig(train_dir=str(babylm_slice / "train"), cache_dir=str(tmp_path), block_size=32)
    prepared = prepare(data, TokenizerConfig(vocab_size=800))
    full = load_blocks(prepared.train_blocks)
    part = load_blocks(prepared.train_blocks, 0.2, seed=1)
    assert len(part) == int(np.ceil(len(full) * 0.2))
    assert np.array_equal(
        np.asarray(part["input_ids"]), np.asarray(load_blocks(prepared.train_blocks, 0.2, seed=1)["input_ids"])
    )
    assert not np.array_equal(
        np.asarray(part["input_ids"]), np.asarray(load_blocks(prepared.train_blocks, 0.2, seed=2)["input_ids"])
    )


def test_a_block_limit_is_a_seeded_subset_in_order(babylm_slice, tmp_path):
    """data.dev_blocks: at most `limit` blocks, the same ones for a seed, in their original order; a limit at or
    above the count, or 0, keeps every block."""
    data = DataConfig(train_dir=str(babylm_slice / "train"), cache_dir=str(tmp_path), block_size=32)
    prepared = prepare(data, TokenizerConfig(vocab_size=800))
    full = np.asarray(load_blocks(prepared.train_blocks)["input_ids"])
    rows = {tuple(r): i for i, r in enumerate(full)}
    part = np.asarray(load_blocks(prepared.train_blocks, seed=3, limit=7)["input_ids"])
    assert len(part) == 7 and np.array_equal(part, np.asarray(load_blocks(prepared.train_blocks, seed=3, limit=7)[
        "input_ids"]))
    at = [rows[tuple(r)] for r in part]
    assert at == sorted(at) and len(set(at)) == 7
    assert not np.array_equal(part, np.asarray(load_blocks(prepared.train_blocks, seed=4, limit=7)["input_ids"]))
    for keep_all in (0, len(full), len(full) + 5):
        assert len(load_blocks(prepared.train_blocks, seed=3, limit=keep_all)) == len(full)


@pytest.mark.parametrize("kind", ["pretrained", "pretrained_hf"])
def test_pretrained_tokenizer_from_local_folder(kind, tmp_path):
    sw = shared("babylm_2024_switchboard", "train_10M")
    data = DataConfig(train_dir=str(sw), cache_dir=str(tmp_path), block_size=64)
    prepared = prepare(data, TokenizerConfig(type=kind, name_or_path=str(shared("hf_tiny_gpt2"))))
    blocks = load_blocks(prepared.train_blocks)
    assert int(blocks[:]["input_ids"].max()) < 50257
    assert int(blocks[0]["input_ids"][0]) == 50256  # GPT-2 has no BOS of its own: <|endoftext|> prefixes each line


def test_bad_pretrained_tokenizer(tmp_path):
    data = DataConfig(train_dir=str(shared("babylm_2024_switchboard", "train_10M")), cache_dir=str(tmp_path))
    with pytest.raises(UserError, match=r"tokenizer.name_or_path=.*nothing-here: no such folder"):
        prepare(data, TokenizerConfig(type="pretrained", name_or_path=str(tmp_path / "nothing-here")))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "Nonsense"}}')
    with pytest.raises(UserError, match=r"tokenizer.name_or_path=.*broken: the tokenizer cannot be read"):
        prepare(data, TokenizerConfig(type="pretrained", name_or_path=str(broken)))


def test_corpus_too_small_for_vocab(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "cbt.train").write_text("a tiny corpus .\n" * 50)
    data = DataConfig(train_dir=str(tmp_path / "train"), cache_dir=str(tmp_path / "c"))
    # so small that even the smallest vocabulary (300) is out of reach: no advice that would fail again
    with pytest.raises(
        UserError, match=r"data.train_dir: the corpus is too small for a BPE tokenizer \(it supports \d+ tokens"
    ):
        prepare(data, TokenizerConfig(vocab_size=16000))
    (tmp_path / "train" / "cbt.train").write_text(" ".join(f"word{i} thing{i * 7}" for i in range(400)) + "\n")
    with pytest.raises(
        UserError, match=r"tokenizer.vocab_size: the corpus in data.train_dir supports only (\d+) BPE tokens"
    ) as exc:
        prepare(data, TokenizerConfig(vocab_size=16000))
    assert int(exc.value.args[0].split("only ")[1].split()[0]) >= 300


def test_padded_examples_instead_of_packing(babylm_slice, tmp_path):
    """data.packing=false: one line per example, truncated and padded; the collator keeps padding out of attention and
    loss."""
    from transformers import AutoTokenizer

    from train.trainer import make_collator

    data = DataConfig(
        train_dir=str(babylm_slice / "train"), cache_dir=str(tmp_path), block_size=16, packing=False, domains=["cbt"]
    )
    prepared = prepare(data, TokenizerConfig(vocab_size=800))
    assert (
        prepared.train_blocks
        != prepare(DataConfig(**{**data.__dict__, "packing": True}), TokenizerConfig(vocab_size=800)).train_blocks
    )
    tok = AutoTokenizer.from_pretrained(prepared.tokenizer_dir)
    blocks = load_blocks(prepared.train_blocks)
    lines = [ln for ln in (tmp_path / "clean").rglob("cbt*.txt")][0].read_text(encoding="utf-8").splitlines()
    first = next(ln for ln in lines if ln.strip())
    expected = ([tok.bos_token_id] + tok(first)["input_ids"][1:])[:16]
    row = blocks[0]
    assert int(row["length"]) == len(expected) and row["input_ids"][:len(expected)].tolist() == expected
    assert (row["input_ids"][len(expected):] == tok.pad_token_id).all()
    lengths = np.asarray(blocks["length"])
    assert (
        lengths.min() >= 2 and lengths.max() == 16 and (lengths < 16).any()
    )  # long lines truncated, short ones padded
    batch = make_collator("causal", tok, 0.15)([blocks[i] for i in range(4)])
    for i in range(4):
        n = int(blocks[i]["length"])
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (16 - n)
        assert (batch["labels"][i, n:] == -100).all() and (batch["labels"][i, :n] == batch["input_ids"][i, :n]).all()
