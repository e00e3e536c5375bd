"""`python -m eval aoa` against the official procedure, at one checkpoint (the task repeats it at each of 19 or 28).

    .venv/bin/python bench/aoa_speed.py                 # hf_tiny_gpt2
    .venv/bin/python bench/aoa_speed.py --llama58m      # a random llama-58m with a 16k BPE (bench/.cache)

The words: a CDI-sized stand-in (cdi_childes.json is not in ../shared/data): the `--words`
most frequent words of more than one character of the shared AO-CHILDES text, each with
`--contexts` contexts, so 656 x 10 = 6,560 entries, the official file's count. The official
procedure (AoA_word/evaluation_functions.py at use_bos_only): one forward pass per entry, the
BOS text + the word encoded with offsets, the word's tokens summed; timed on `--naive-entries`
entries and scaled to all. This project: `eval.aoa.surprisals`, each word once, batched. Both
sides run in this one process on the same words; their surprisals are compared.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"


def cdi_stand_in(n_words: int, contexts: int, path: Path) -> Path:
    text = (SHARED / "babylm_2023_partial" / "train_10M" / "aochildes.train").read_text(encoding="utf-8").lower()
    counts = collections.Counter(w.strip(".,!?\"'") for w in text.split())
    words = [w for w, _ in counts.most_common() if len(w) > 1 and w.isalpha()][:n_words]
    path.write_text(json.dumps({w: [{"context": f"the {w} {k}"} for k in range(contexts)] for w in words}))
    return path


def naive(folder: str, words: list[str]) -> tuple[list[float], float]:
    """The pipeline's compute_surprisal_causal, one entry at a time; (surprisals, seconds)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder).eval()
    out = []
    t0 = time.perf_counter()
    for word in words:
        text = tok.bos_token + word
        enc = tok(text, return_offsets_mapping=True)
        start = len(text) - len(word)
        mask = torch.tensor([float(end > start) for _, end in enc["offset_mapping"]])[1:]
        ids = torch.tensor([enc["input_ids"]])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids[:, :-1], attention_mask=torch.ones_like(ids[:, :-1])).logits,
                                     -1)[0]
        out.append(-float((logp.gather(-1, ids[0, 1:, None])[:, 0] * mask).sum()))
    return out, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", default=str(SHARED / "hf_tiny_gpt2"))
    p.add_argument("--llama58m", action="store_true", help="MODEL: a random llama-58m with a 16k BPE")
    p.add_argument("--words", type=int, default=656)
    p.add_argument("--contexts", type=int, default=10)
    p.add_argument("--naive-entries", type=int, default=400)
    p.add_argument("--batch-size", default="64")
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    if args.llama58m:
        from bench.eval2025 import llama58m

        args.model = str(llama58m(SHARED))
    from eval.aoa import read_words, surprisals

    with tempfile.TemporaryDirectory() as tmp:
        words = read_words(cdi_stand_in(args.words, args.contexts, Path(tmp) / "cdi.json"))
    entries = sum(w.contexts for w in words)
    surprisals(args.model, words[:8], "causal", args.batch_size, "cpu", progress=False)  # warm-up: imports, threads
    t0 = time.perf_counter()
    ours = surprisals(args.model, words, "causal", args.batch_size, "cpu", progress=False)
    t_ours = time.perf_counter() - t0
    sample = [w.text for w in words for _ in range(w.contexts)][: args.naive_entries]
    theirs, t_naive = naive(args.model, sample)
    per_entry = t_naive / len(sample)
    first = {}
    for k, w in enumerate(words):
        first.setdefault(w.text, k)
    gap = max(abs(theirs[i] - ours[first[text]]) for i, text in enumerate(sample))
    print(f"model {args.model}: {len(words)} words, {entries} entries per checkpoint")
    print(f"this project       : {t_ours:7.2f} s a checkpoint ({entries / t_ours:9.1f} entries/s; each word once, "
          f"batch {args.batch_size}, model load included)")
    print(f"official procedure : {per_entry * entries:7.2f} s a checkpoint ({1 / per_entry:9.1f} entries/s; timed on "
          f"{len(sample)} entries, model load not included)")
    print(f"surprisals: largest difference {gap:.1e} nats over the {len(sample)} entries both scored")
    print(f"speed ratio: {per_entry * entries / t_ours:.1f}x the official procedure "
          f"(of which {args.contexts}x is scoring each word once, not once per context)")


if __name__ == "__main__":
    main()
