"""Corpus -> clean text -> tokenizer -> packed blocks, each step cached under `data.cache_dir`.

Every cached artefact lives in a folder named by a fingerprint of everything it was built
from (raw corpus bytes, cleaner version, tokenizer, block size), so a changed corpus or
tokenizer builds anew and an unchanged one loads in a second. Folders are written under a
temporary name and renamed, so an interrupted run never leaves a half-built cache entry.
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import UserError, reading, stop_if_swallowed
from common.locks import file_lock
from common.paths import building, read_json
from tokenizer import bpe, corpus, demo
from tokenizer.config import DataConfig, TokenizerConfig

PACK_VERSION = "2"  # 2: every block carries the raw words it holds (`words`)


@dataclass
class Prepared:
    tokenizer_dir: str  # a folder AutoTokenizer loads (the cache entry, or the pretrained folder / Hub name)
    train_blocks: Path
    dev_blocks: Path | None
    fingerprint: str  # of the training blocks


def _hash(*parts: object) -> str:
    return hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()[:16]


def ensure_demo(data: DataConfig) -> None:
    """With data.demo, generate the demo corpus if data.train_dir does not exist yet."""
    train_dir = Path(data.train_dir)
    if not data.demo:
        return
    if train_dir.exists():
        if (
            train_dir.name == "train"
            and (train_dir.parent / "pairs").is_dir()
            and demo.add_task(train_dir.parent, data.seed)
        ):
            print(f"added the demo's missing task files to {train_dir.parent} (finetune/, aoa/: the folder predates "
                  "them)")
        return
    root = train_dir.parent
    if train_dir.name != "train" or (data.dev_dir and Path(data.dev_dir) != root / "dev"):
        raise UserError(
            f"data.demo writes <root>/train, <root>/dev and <root>/pairs: set data.train_dir={root}/train and "
            f"data.dev_dir={root}/dev"
        )
    demo.check_target(root, data.demo_sentences)
    with file_lock(root / demo.LOCK):  # runs with other caches generating the same demo take turns
        if train_dir.exists():  # written by one of them while this one waited
            return
        print(f"generating the demo corpus in {root} (seed {data.seed}, {data.demo_sentences} sentences)")
        demo.generate(root, seed=data.seed, n_sentences=data.demo_sentences)


def _bpe_fingerprint(tok_cfg: TokenizerConfig, train_fp: str) -> str:
    return _hash("bpe-1", train_fp, tok_cfg.vocab_size, tok_cfg.min_frequency)


def _pretrained_fingerprint(tokenizer) -> str:
    return _hash("pretrained", tokenizer.backend_tokenizer.to_str())


def _blocks_key(text_fp: str, tok_fp: str, data: DataConfig) -> str:
    """The packed blocks' cache key: the raw text, the tokenizer, the block size and the layout."""
    layout = () if data.packing else ("padded",)  # packed caches keep their old keys
    return _hash(PACK_VERSION, text_fp, tok_fp, data.block_size, *layout)


def blocks_names(data: DataConfig, tok_cfg: TokenizerConfig) -> dict[str, str | None] | None:
    """The cache names `prepare` gives the packed train and dev blocks now ({"data.train_dir": .., "data.dev_dir":
    ..}, as a run's inputs record them), from the raw files' bytes, without cleaning, training or packing anything;
    None when they cannot be known before `prepare` runs (a corpus folder not there yet, such as the demo's before
    its first run; a pretrained tokenizer that does not load)."""
    try:
        train_fp = corpus.fingerprint(corpus.find_files(data.train_dir, data.domains, key="data.train_dir"))
        dev_fp = (corpus.fingerprint(corpus.find_files(data.dev_dir, data.domains, key="data.dev_dir"))
                  if data.dev_dir else None)
        if tok_cfg.type == "from_scratch":
            tok_fp = _bpe_fingerprint(tok_cfg, train_fp)
        elif not Path(tok_cfg.name_or_path).is_dir():  # a Hub name: known once `prepare` has fetched it
            return None
        else:
            tok_fp = _pretrained_fingerprint(bpe.load_pretrained(tok_cfg.name_or_path))
    except (UserError, OSError, ValueError):
        return None
    return {"data.train_dir": f"train-{_blocks_key(train_fp, tok_fp, data)}",
            "data.dev_dir": f"dev-{_blocks_key(dev_fp, tok_fp, data)}" if dev_fp else None}


def load_tokenizer(tok_cfg: TokenizerConfig, clean_train: list[Path], train_fp: str, cache: Path):
    """Return (tokenizer, folder or name to reload it from, fingerprint)."""
    if tok_cfg.type == "from_scratch":
        fp = _bpe_fingerprint(tok_cfg, train_fp)
        out = cache / "tokenizers" / fp
        if not out.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            print(f"training a {tok_cfg.vocab_size}-token byte-level BPE on {len(clean_train)} files -> {out}")
            bpe.train_bpe(clean_train, tok_cfg.vocab_size, tok_cfg.min_frequency, out)
        return bpe.load_pretrained(str(out), cached=True), str(out), fp
    tok = bpe.load_pretrained(tok_cfg.name_or_path)
    return tok, tok_cfg.name_or_path, _pretrained_fingerprint(tok)


def _tokenize_batch(batch: dict, tokenizer, prefix: int) -> dict:
    """Token ids of each line, each starting with the prefix token (BOS, else EOS)."""
    stop_if_swallowed()  # a Ctrl-C that a finalizer swallowed: no further batch
    ids = tokenizer(batch["text"])["input_ids"]
    return {"input_ids": [x if x[:1] == [prefix] else [prefix] + x for x in ids]}


def words_before(positions: np.ndarray, starts: np.ndarray, lengths: np.ndarray, words: np.ndarray) -> np.ndarray:
    """Raw words before each token position of the concatenated lines (positions in [0, total tokens]).

    A line of w words and n tokens spreads its words evenly over its tokens: the first j of its
    tokens hold ceil(j * w / n) of its words. Counts are whole numbers and add up exactly: the
    words of a block are words_before(its end) - words_before(its start)."""
    before_line = np.concatenate([[0], np.cumsum(words)])
    line = np.searchsorted(starts, positions, side="right") - 1
    line = np.minimum(line, len(starts) - 1)
    inside = positions - starts[line]
    return before_line[line] + (inside * words[line] + lengths[line] - 1) // lengths[line]


def pack(text_files: list[Path], tokenizer, block_size: int, num_proc: int, out: Path, packing: bool = True,
         source: str = "the corpus") -> Path:
    """Tokenize `text_files` with datasets (batched, multi-process) and pack into fixed blocks at `out`.

    Every block carries `words`: the raw words of the text it holds (`words_before`), so that
    training counts words seen exactly. Without `packing`, every line is its own example instead:
    truncated to `block_size`, right-padded with the pad token, with its true `length` stored
    beside it (the collator masks the padding out of attention and loss). Lines with nothing to
    predict are dropped.
    """
    if out.exists():
        check_packed(out)
        return out
    work, tmp = out.with_name(out.name + ".work"), out.with_name(out.name + ".tmp")
    with building(work, tmp):
        _build(text_files, tokenizer, block_size, num_proc, out, work, tmp, packing, source)
        tmp.replace(out)
    shutil.rmtree(work, ignore_errors=True)
    return out


def _build(text_files: list[Path], tokenizer, block_size: int, num_proc: int, out: Path, work: Path, tmp: Path,
           packing: bool, source: str) -> None:
    """`pack`'s blocks for `out`, tokenized with `work` as the datasets cache, saved with their stats.json to `tmp`."""
    import datasets
    import pyarrow as pa
    import pyarrow.compute as pc

    raw = datasets.load_dataset("text", data_files=[str(p) for p in text_files], split="train",
                                cache_dir=str(work / "hf"), keep_in_memory=False)
    tokenized = raw.map(_tokenize_batch, batched=True, num_proc=num_proc if num_proc > 1 else None,
                        remove_columns=["text"], fn_kwargs={"tokenizer": tokenizer, "prefix": bpe.prefix_id(tokenizer)},
                        desc=f"tokenizing {out.parent.name}/{out.name}", new_fingerprint=_hash("tok", out))
    flat = pc.list_flatten(tokenized.data.column("input_ids")).to_numpy().astype(np.int32)
    lengths = np.asarray(
        pc.list_value_length(tokenized.data.column("input_ids")).to_numpy(zero_copy_only=False), dtype=np.int64
    )
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    words, corpus_words = corpus.read_words(text_files)
    if len(words) != len(lengths):  # the text loader split lines differently from the cleaner: never count wrongly
        raise RuntimeError(f"{out}: {len(lengths)} tokenized lines but {len(words)} word counts")
    if packing:
        n_blocks = len(flat) // block_size
        if n_blocks == 0:
            raise UserError(
                f"{source}: only {len(flat)} tokens, fewer than one block of data.block_size={block_size}; lower "
                "data.block_size or add text"
            )
        blocks = pa.FixedSizeListArray.from_arrays(pa.array(flat[: n_blocks * block_size]), block_size)
        block_words = np.diff(words_before(np.arange(n_blocks + 1) * block_size, starts, lengths, words))
        ds = datasets.Dataset(pa.table({"input_ids": blocks, "words": pa.array(block_words)}))
    else:
        keep = np.flatnonzero(lengths >= 2)
        if len(keep) == 0:
            raise UserError(f"{source}: no line has two tokens; nothing to train on")
        n_blocks = len(keep)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        rows = np.full((n_blocks, block_size), pad, dtype=np.int32)
        used = np.minimum(lengths[keep], block_size)
        for r, (start, n) in enumerate(zip(starts[keep], used)):
            rows[r, :n] = flat[start:start + n]
        blocks = pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1)), block_size)
        block_words = (used * words[keep] + lengths[keep] - 1) // lengths[
            keep
        ]  # a truncated line: its first `used` tokens' words
        ds = datasets.Dataset(
            pa.table({"input_ids": blocks, "length": pa.array(used.astype(np.int32)), "words": pa.array(block_words)})
        )
    ds.save_to_disk(str(tmp))
    (tmp / "stats.json").write_text(json.dumps({
        "tokens": int(len(flat)), "blocks": n_blocks, "block_size": block_size, "packing": packing, "lines": len(raw),
        "words": int(block_words.sum()),  # raw words in the blocks: one epoch
        "kept_words": int(words.sum()),  # raw words of the lines cleaning kept
        "corpus_words": corpus_words,  # raw words of the files, dropped lines included
        "files": [p.name for p in text_files]}))


def check_packed(out: Path) -> None:
    """Packed blocks found in the cache can be read: stats.json (which training's word counts come from) and the
    dataset, which hold the same number of blocks. A damaged folder (a copy cut short, a disk error; each is written
    whole, then renamed) is one error line naming it, before anything is written, and is never packed over."""
    import datasets

    fix = "move that folder away (the blocks are packed again from the corpus)"
    stats = read_json(out / "stats.json", "the cached blocks' statistics", fix, {"blocks": int})
    with reading(out, "the cached packed blocks", fix):
        found = len(datasets.load_from_disk(str(out)))
    if found != stats["blocks"]:
        raise UserError(f"{out}: holds {found} blocks where its stats.json says {stats['blocks']}; {fix}")


def prepare(data: DataConfig, tok_cfg: TokenizerConfig) -> Prepared:
    """Clean, build or load the tokenizer, and pack train (and dev) blocks; all cached. Jobs that
    share the cache take turns (a lock file in it); the later ones find everything made."""
    from common.errors import writing

    with file_lock(Path(data.cache_dir) / ".prepare.lock"), writing(data.cache_dir):  # a full disk names the cache
        return _prepare(data, tok_cfg)


def _prepare(data: DataConfig, tok_cfg: TokenizerConfig) -> Prepared:
    ensure_demo(data)
    cache = Path(data.cache_dir)
    train_files = corpus.find_files(data.train_dir, data.domains, key="data.train_dir")
    train_fp = corpus.fingerprint(train_files)
    clean_train = corpus.write_clean(train_files, cache / "clean" / train_fp)
    tokenizer, tokenizer_dir, tok_fp = load_tokenizer(tok_cfg, clean_train, train_fp, cache)
    blocks = cache / "blocks"
    train_key = _blocks_key(train_fp, tok_fp, data)
    train_blocks = pack(
        clean_train,
        tokenizer,
        data.block_size,
        data.num_proc,
        blocks / f"train-{train_key}",
        data.packing,
        f"{data.train_dir} (data.train_dir)",
    )
    dev_blocks = None
    if data.dev_dir:
        dev_files = corpus.find_files(data.dev_dir, data.domains, key="data.dev_dir")
        dev_fp = corpus.fingerprint(dev_files)
        clean_dev = corpus.write_clean(dev_files, cache / "clean" / dev_fp)
        dev_key = _blocks_key(dev_fp, tok_fp, data)
        dev_blocks = pack(clean_dev, tokenizer, data.block_size, data.num_proc, blocks / f"dev-{dev_key}", data.packing,
                          f"{data.dev_dir} (data.dev_dir)")
    return Prepared(tokenizer_dir, train_blocks, dev_blocks, train_key)


def block_words(blocks) -> np.ndarray:
    """The `words` of every block of a Dataset from `load_blocks(..., with_words=True)`, as one array."""
    return blocks.select_columns(["words"]).with_format("numpy")[:]["words"]


def load_blocks(path: Path, fraction: float = 1.0, seed: int = 0, with_index: bool = False, with_words: bool = False,
                limit: int = 0):
    """The packed blocks at `path` as a torch-formatted Dataset; a seeded subset when fraction < 1 or when `limit`
    (> 0) is below the number of blocks (the subset keeps the blocks' order).
    `with_index` adds `block_index`, each block's row in the full packed set; `with_words` keeps
    `words`, the raw words each block holds (training counts them)."""
    import datasets

    ds = datasets.load_from_disk(str(path))
    if not with_words:
        ds = ds.remove_columns(["words"])
    if with_index:
        ds = ds.add_column("block_index", np.arange(len(ds), dtype=np.int64))
    keep = max(1, math.ceil(len(ds) * fraction)) if fraction < 1.0 else len(ds)
    if 0 < limit < keep:
        keep = limit
    if keep < len(ds):
        ds = ds.select(np.sort(np.random.default_rng(seed).permutation(len(ds))[:keep]))
    return ds.with_format("torch")
