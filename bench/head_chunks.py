"""The scorer's output head, both chunk rules in one run: rows of about 1M logits at a time (CHUNK_LOGITS) against the
rule eval/scorer.py uses (at least HEAD_ROWS rows once the hidden state is WIDE_HIDDEN wide).

    python bench/head_chunks.py                      # hidden x vocabulary: 2 x 50,257, 512 x 16,000, 768 x 50,257
    python bench/head_chunks.py --shapes 512x16000 --rows 8192 --repeats 5

Times a linear head plus a float32 log_softmax over random hidden states, chunk by chunk, as
`Scorer._logprobs` does, and prints each rule's best time over the repeats and their ratio.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eval.scorer import head_chunk_rows  # noqa: E402


def best_seconds(x: torch.Tensor, weight: torch.Tensor, step: int, repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):  # the first pass warms the allocator and is not counted
        t0 = time.perf_counter()
        for i in range(0, len(x), step):
            torch.log_softmax(torch.nn.functional.linear(x[i:i + step], weight), dim=-1)[:, 0]
        times.append(time.perf_counter() - t0)
    return min(times[1:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="2x50257,512x16000,768x50257", help="hidden x vocabulary, comma-separated")
    p.add_argument("--rows", type=int, default=8192, help="positions normalised")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    for shape in args.shapes.split(","):
        hidden, vocab = (int(v) for v in shape.split("x"))
        x, weight = torch.randn(args.rows, hidden), torch.randn(vocab, hidden) / hidden ** 0.5
        logits_rule, ours = head_chunk_rows(vocab, None), head_chunk_rows(vocab, hidden)
        a = best_seconds(x, weight, logits_rule, args.repeats)
        b = best_seconds(x, weight, ours, args.repeats)
        print(f"{hidden} x {vocab}: {logits_rule} rows a chunk {a:.3f} s, the scorer's {ours} rows {b:.3f} s: "
              f"{a / b:.2f}x", flush=True)


if __name__ == "__main__":
    main()
