"""One training step of K = 4 peers (weighted mutual learning) against four separate single-model steps on the same tokens.

    python bench/wml_step.py [--device cuda] [--steps 30] [--frequency 10]

Both sides run in one process on the same batches, alternating, through the project's own
pieces: the peers wrapper (distill.wml.peers: the inner loss with its mutual KL terms)
with one AdamW over all peers, and, for the other side, each peer alone with its own
cross-entropy and AdamW. The outer step of the WML side (the hypergradient and the
mirror-descent update of ω) is timed on its own and amortised over `--frequency` steps, as
in training. Prints the median step times, the ratio (target ≤ 1.10) and the peak memory of
each side (CUDA) or the RSS growth (CPU).
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PEERS = [  # four GPT-2 peers at about N/2 ... N/5 of a 1M-parameter reference (vocabulary 512)
    {"n_embd": 96, "n_layer": 4, "n_head": 4},
    {"n_embd": 80, "n_layer": 4, "n_head": 4},
    {"n_embd": 64, "n_layer": 4, "n_head": 4},
    {"n_embd": 64, "n_layer": 3, "n_head": 4},
]


def build(seed: int):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    return [AutoModelForCausalLM.from_config(AutoConfig.for_model("gpt2", **f, vocab_size=512, n_positions=256, bos_token_id=1,
                                                                   eos_token_id=2, pad_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0,
                                                                   attn_pdrop=0.0)) for f in PEERS]


def main() -> None:
    from distill.wml import objective as W
    from distill.wml.peers import PeersWrapper

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--frequency", type=int, default=100, help="outer (peer-weight) step every this many steps (the wml-* recipes' 100)")
    p.add_argument("--outer-samples", type=int, default=5, help="outer steps timed")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--block", type=int, default=128)
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"

    wrapper = PeersWrapper(build(0), "causal", 0.5, "mutual").to(dev).train()
    wml_opt = torch.optim.AdamW(wrapper.parameters(), lr=1e-4)
    alone = [m.to(dev).train() for m in build(0)]
    alone_opt = [torch.optim.AdamW(m.parameters(), lr=1e-4) for m in alone]
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(5, 512, (args.batch, args.block), generator=g) for _ in range(args.warmup + args.steps + 1)]
    n_tokens = args.batch * (args.block - 1)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def outer_step(ids: torch.Tensor, dev_ids: torch.Tensor) -> float:
        """The peer-weight update: the hypergradient through one inner step and the mirror-descent step."""
        sync()
        t0 = time.perf_counter()
        gr = wrapper.weight_hypergradient({"input_ids": ids, "labels": ids}, {"input_ids": dev_ids, "labels": dev_ids}, 1e-4)
        wrapper.omega.copy_(W.mirror_step(wrapper.omega, gr, 0.05))
        sync()
        return time.perf_counter() - t0

    def wml_step(ids: torch.Tensor) -> float:
        sync()
        t0 = time.perf_counter()
        out = wrapper(ids, labels=ids, n_tokens=n_tokens, ensemble=False)
        out["loss"].backward()
        wml_opt.step()
        wml_opt.zero_grad(set_to_none=True)
        sync()
        return time.perf_counter() - t0

    def alone_steps(ids: torch.Tensor) -> float:
        sync()
        t0 = time.perf_counter()
        for m, opt in zip(alone, alone_opt):
            m(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        sync()
        return time.perf_counter() - t0

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t_wml, t_alone, peak = [], [], {}
    for side in ("alone", "wml"):  # the memory of each side, measured before the other side runs
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        ids = batches[0].to(dev)
        (alone_steps(ids) if side == "alone" else (outer_step(ids, batches[1].to(dev)), wml_step(ids)))
        peak[side] = torch.cuda.max_memory_allocated() / 2**20 if cuda else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    t_outer = []
    for step in range(args.warmup + args.steps):  # alternate the two sides so machine noise falls on both
        ids, dev_ids = batches[step].to(dev), batches[step + 1].to(dev)
        a, w = alone_steps(ids), wml_step(ids)
        if step >= args.warmup:
            t_alone.append(a)
            t_wml.append(w)
        if step < args.outer_samples:
            t_outer.append(outer_step(ids, dev_ids))
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    sizes = [sum(q.numel() for q in m.parameters()) for m in alone]
    print(f"{args.device}: 4 GPT-2 peers of {', '.join(f'{s:,}' for s in sizes)} parameters; batch {args.batch} x {args.block}; "
          f"outer step every {args.frequency}; median of {args.steps} steps")
    amortised = med(t_wml) + med(t_outer) / args.frequency
    what = "peak GPU" if cuda else "RSS growth (cumulative: the separate steps ran first)"
    print(f"four separate steps : {med(t_alone) * 1000:8.1f} ms   {what} {peak['alone']:7.0f} MiB")
    print(f"one WML step (K=4)  : {med(t_wml) * 1000:8.1f} ms   {what} {peak['wml']:7.0f} MiB")
    print(f"outer step          : {med(t_outer) * 1000:8.1f} ms (hypergradient + mirror descent), every {args.frequency} steps")
    print(f"ratio: {amortised / med(t_alone):.2f}x with the outer step amortised (target <= 1.10); "
          f"{med(t_wml) / med(t_alone):.2f}x for the inner step alone")


if __name__ == "__main__":
    main()
