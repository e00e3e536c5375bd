"""Tokenize + pack throughput on the shared BabyLM files: cold (tokenize and pack) and cached (load), in one run.

The tokenizer (16k byte-level BPE) is trained first and timed separately; then the blocks
are built from nothing ("cold", with 1 and with 2 processes) and loaded from the cache.

    python bench/data_prep.py [--corpus ../shared/data/babylm_2023_partial/train_10M] [--vocab 16000]
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from tokenizer import corpus
from tokenizer.config import DataConfig, TokenizerConfig
from tokenizer.prepare import load_blocks, prepare

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=str(ROOT.parent / "shared" / "data" / "babylm_2023_partial" / "train_10M"))
    parser.add_argument("--vocab", type=int, default=16000)
    parser.add_argument("--block", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tok = TokenizerConfig(vocab_size=args.vocab)
        t0 = time.perf_counter()
        first = prepare(DataConfig(train_dir=args.corpus, cache_dir=tmp, block_size=args.block), tok)
        first_s = time.perf_counter() - t0
        tokens = json.loads((first.train_blocks / "stats.json").read_text())["tokens"]
        rows = []
        for procs in (1, 2):
            shutil.rmtree(first.train_blocks)  # keep cleaned text and tokenizer: time tokenize + pack alone
            t0 = time.perf_counter()
            prepare(DataConfig(train_dir=args.corpus, cache_dir=tmp, block_size=args.block, num_proc=procs), tok)
            rows.append((f"cold, {procs} process{'es' if procs > 1 else ''}", time.perf_counter() - t0))
        t0 = time.perf_counter()
        cached = prepare(DataConfig(train_dir=args.corpus, cache_dir=tmp, block_size=args.block), tok)
        len(load_blocks(cached.train_blocks))
        rows.append(("cached", time.perf_counter() - t0))
        files = corpus.find_files(args.corpus)  # the part of "cached" that checks the cleaned text's sha256
        clean = Path(tmp) / "clean" / corpus.fingerprint(files)
        t0 = time.perf_counter()
        corpus.write_clean(files, clean)
        check_s = time.perf_counter() - t0
        megabytes = sum(p.stat().st_size for p in clean.glob("*.txt")) / 1e6
    print(f"\n{args.corpus}: {tokens:,} tokens, {args.vocab}-token BPE, blocks of {args.block}")
    print(f"first run (clean + train BPE + tokenize + pack): {first_s:.1f} s")
    for name, seconds in rows:
        print(f"{name:22s}: {seconds:7.2f} s  {tokens / seconds:14,.0f} tokens/s")
    print(f"cached / cold (1 process) speed-up: {rows[0][1] / rows[-1][1]:.1f}x")
    print(f"of the cached load, the cleaned text's sha256 check: {check_s:.3f} s for {megabytes:.1f} MB "
          f"({megabytes / check_s:,.0f} MB/s)")


if __name__ == "__main__":
    main()
