"""One training step of K = 4 peers (weighted mutual learning) against four separate single-model steps on the same
tokens.

    python bench/wml_step.py [--device cuda] [--steps 30] [--frequency 10]

Both sides run in one process on the same batches, alternating, through the project's own
pieces: the peers wrapper (distill.wml.peers: the inner loss with its mutual KL terms)
with one AdamW over all peers, and, for the other side, each peer alone with its own
cross-entropy and AdamW. The outer step of the WML side (the hypergradient and the
mirror-descent update of ω) is timed on its own and amortised over `--frequency` steps, as
in training. Prints the median step times, the ratio (target ≤ 1.10) and the peak memory of
each side: on CUDA the allocator's peak, on CPU the peak RSS above the built models, each side
measured in a fresh process of its own (`--peak-of`) so that one side's pages do not hide
the other's.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
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
    return [
        AutoModelForCausalLM.from_config(
            AutoConfig.for_model(
                "gpt2",
                **f,
                vocab_size=512,
                n_positions=256,
                bos_token_id=1,
                eos_token_id=2,
                pad_token_id=0,
                resid_pdrop=0.0,
                embd_pdrop=0.0,
                attn_pdrop=0.0,
            )
        )
        for f in PEERS
    ]


class Sides:
    """Both sides' models, optimizers and step functions (each returns its wall time in seconds)."""

    def __init__(self, dev: torch.device, n_tokens: int, which: tuple[str, ...] = ("alone", "wml")):
        from distill.wml.peers import PeersWrapper

        self.dev, self.n_tokens, self.cuda = dev, n_tokens, dev.type == "cuda"
        if "wml" in which:
            self.wrapper = PeersWrapper(build(0), "causal", 0.5, "mutual").to(dev).train()
            self.wml_opt = torch.optim.AdamW(self.wrapper.parameters(), lr=1e-4)
        if "alone" in which:
            self.alone = [m.to(dev).train() for m in build(0)]
            self.alone_opt = [torch.optim.AdamW(m.parameters(), lr=1e-4) for m in self.alone]

    def _timed(self, fn) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    def outer(self, ids: torch.Tensor, dev_ids: torch.Tensor) -> float:
        """The peer-weight update: the hypergradient through one inner step and the mirror-descent step."""
        from distill.wml import objective as W

        def run():
            w = self.wrapper
            g = w.weight_hypergradient(
                {"input_ids": ids, "labels": ids}, {"input_ids": dev_ids, "labels": dev_ids}, 1e-4
            )
            w.omega.copy_(W.mirror_step(w.omega, g, 0.05))
        return self._timed(run)

    def wml(self, ids: torch.Tensor) -> float:
        def run():
            self.wrapper(ids, labels=ids, n_tokens=self.n_tokens, ensemble=False)["loss"].backward()
            self.wml_opt.step()
            self.wml_opt.zero_grad(set_to_none=True)
        return self._timed(run)

    def alone_steps(self, ids: torch.Tensor) -> float:
        def run():
            for m, opt in zip(self.alone, self.alone_opt):
                m(input_ids=ids, labels=ids).loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
        return self._timed(run)


def peak_mib(args, side: str) -> float:
    """Peak memory of two steps of one side ("alone", "wml" or "outer") above its built models: the
    CUDA allocator's peak, or on CPU the peak RSS of a fresh process running only that side."""
    dev = torch.device(args.device)
    if dev.type != "cuda":
        out = subprocess.run(
            [sys.executable, __file__, "--peak-of", side, "--batch", str(args.batch), "--block", str(args.block)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return float(out.split()[-1])
    sides = Sides(dev, args.batch * (args.block - 1), ("wml",) if side in ("wml", "outer") else ("alone",))
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    measure_side(sides, side, args)
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def measure_side(sides: Sides, side: str, args) -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(2):
        ids, dev_ids = (torch.randint(5, 512, (args.batch, args.block), generator=g).to(sides.dev) for _ in range(2))
        {
            "alone": lambda: sides.alone_steps(ids),
            "wml": lambda: sides.wml(ids),
            "outer": lambda: sides.outer(ids, dev_ids),
        }[side]()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument(
        "--frequency",
        type=int,
        default=100,
        help="outer (peer-weight) step every this many steps (the wml-* recipes' 100)",
    )
    p.add_argument("--outer-samples", type=int, default=5, help="outer steps timed")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--block", type=int, default=128)
    p.add_argument("--peak-of", choices=["alone", "wml", "outer"], help=argparse.SUPPRESS)  # the CPU memory child
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    dev = torch.device(args.device)

    if args.peak_of:  # a fresh process: build one side, then report its peak RSS growth over two steps
        sides = Sides(dev, args.batch * (args.block - 1), ("wml",) if args.peak_of in ("wml", "outer") else ("alone",))
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        measure_side(sides, args.peak_of, args)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024)
        return

    peak = {side: peak_mib(args, side) for side in ("alone", "wml", "outer")}
    sides = Sides(dev, args.batch * (args.block - 1))
    g = torch.Generator().manual_seed(1)
    batches = [
        torch.randint(5, 512, (args.batch, args.block), generator=g) for _ in range(args.warmup + args.steps + 1)
    ]
    t_wml, t_alone, t_outer = [], [], []
    for step in range(args.warmup + args.steps):  # alternate the two sides so machine noise falls on both
        ids, dev_ids = batches[step].to(dev), batches[step + 1].to(dev)
        a, w = sides.alone_steps(ids), sides.wml(ids)
        if step >= args.warmup:
            t_alone.append(a)
            t_wml.append(w)
        if step < args.outer_samples:
            t_outer.append(sides.outer(ids, dev_ids))
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    sizes = [sum(q.numel() for q in m.parameters()) for m in sides.alone]
    print(
        f"{args.device}: 4 GPT-2 peers of {', '.join(f'{s:,}' for s in sizes)} parameters; batch {args.batch} x "
        f"{args.block}; "
        f"outer step every {args.frequency}; median of {args.steps} steps"
    )
    amortised = med(t_wml) + med(t_outer) / args.frequency
    what = "peak GPU memory above the models" if sides.cuda else "peak RSS above the models"
    print(f"four separate steps : {med(t_alone) * 1000:8.1f} ms   {what} {peak['alone']:6.0f} MiB")
    print(f"one WML step (K=4)  : {med(t_wml) * 1000:8.1f} ms   {what} {peak['wml']:6.0f} MiB")
    print(f"outer step          : {med(t_outer) * 1000:8.1f} ms   {what} {peak['outer']:6.0f} MiB "
          f"(hypergradient + mirror descent, every {args.frequency} steps)")
    print(
        f"ratio: {amortised / med(t_alone):.2f}x with the outer step amortised (target <= 1.10); "
        f"{med(t_wml) / med(t_alone):.2f}x for the inner step alone; peak memory {peak['wml'] / peak['alone']:.2f}x "
        "(inner), "
        f"{peak['outer'] / peak['alone']:.2f}x (outer)"
    )


if __name__ == "__main__":
    main()
