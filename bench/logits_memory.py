"""Peak memory and step time of a training step with the logits whole against in chunks (train.chunked).

    python bench/logits_memory.py                      # CPU: llama-58m shape, 16k vocabulary, blocks of 128
    python bench/logits_memory.py --device cuda        # the same on a GPU, bf16 autocast

Two steps, each at two batch sizes, each side in its own child process (so its peak is its own):
- train: the plain causal LM step; `whole` is the model's own loss (Hugging Face's ForCausalLMLoss over
  [B, T, V] logits), `chunked` is the Trainer's path here (train.logits_chunk = 1024);
- distill: ce + logit_kd from two teachers online (DistillationWrapper, run_teachers); `whole` is
  train.logits_chunk = 0 (every position's logits at once, the student's and each teacher's), `chunked`
  is 1024. The teachers have the student's shape, so that a CPU can run it.
A step is forward + backward + AdamW on random tokens. Peak memory is the child's peak resident set on a
CPU (the model, the optimizer and Python included) or torch's peak allocation on a GPU. Prints each
side's peak and median step time, the chunked/whole ratios, and how much each side's peak grows from
the smaller batch to the larger: with whole logits it grows with B·T·V, chunked only with the activations.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ARCH, VOCAB, BLOCK, CHUNK = "llama-58m", 16000, 128, 1024


def build(seed: int):
    from bench.gpu_check import build as build_arch

    return build_arch(ARCH, seed, VOCAB)


def child(step: str, side: str, batch: int, steps: int, device: torch.device) -> dict:
    from distill.config import LossesConfig
    from distill.teachers import Teacher, run_teachers
    from distill.wrapper import DistillationWrapper
    from train.chunked import causal_ce, final_states, logit_head

    cuda = device.type == "cuda"
    model = build(0).to(device).train()
    chunk = CHUNK if side == "chunked" else 0
    if step == "distill":
        teachers = []
        for i in (1, 2):
            t = build(i).to(device, torch.bfloat16 if cuda else torch.float32).eval().requires_grad_(False)
            teachers.append(Teacher(f"t{i}", t, 1.0, [], t.config.hidden_size, 0, head=logit_head(t)))
        losses = LossesConfig()
        losses.ce.weight, losses.logit_kd.weight = 0.5, 0.5
        model = DistillationWrapper(model, teachers, losses, chunk).to(device).train()
    head = logit_head(model) if step == "train" and side == "chunked" else None
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(3, VOCAB, (batch, BLOCK), generator=torch.Generator().manual_seed(0)).to(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            if step == "distill":
                loss = model(ids, labels=ids, teacher_outputs=run_teachers(teachers, ids, None, hidden=False))["loss"]
            elif head is None:
                loss = model(input_ids=ids, labels=ids).loss
            else:
                loss = causal_ce(final_states(model, model, head, input_ids=ids)[1], head, ids, None, chunk)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if i:  # the first step warms up
            times.append(time.perf_counter() - start)
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else rss_mib
    return {"step_s": sorted(times)[len(times) // 2], "peak_mib": peak, "loss": float(loss)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batches", default="8,32", help="two batch sizes (blocks per step), comma-separated")
    p.add_argument("--steps", type=int, default=3, help="timed steps per side (after one warm-up step)")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    if args.one:
        step, side, batch = args.one.split(":")
        print("RESULT " + json.dumps(child(step, side, int(batch), args.steps, torch.device(args.device))))
        return
    small, large = (int(b) for b in args.batches.split(","))
    print(f"{ARCH} shape, vocabulary {VOCAB}, blocks of {BLOCK}, on {args.device}; chunks of {CHUNK} positions; "
          f"median of {args.steps} steps")
    for step in ("train", "distill"):
        got = {}
        for batch in (small, large):
            for side in ("whole", "chunked"):
                cmd = [sys.executable, __file__, "--one", f"{step}:{side}:{batch}", "--device", args.device,
                       "--steps", str(args.steps)]
                proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
                line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if line is None:
                    sys.exit(f"{step} {side} batch {batch} failed:\n{proc.stderr[-3000:]}")
                got[side, batch] = r = json.loads(line.split(" ", 1)[1])
                print(f"{step:8s} {side:8s} batch {batch:3d}: {r['step_s'] * 1000:8.0f} ms/step  peak "
                      f"{r['peak_mib']:8.0f} MiB  loss {r['loss']:.4f}", flush=True)
        w, c = got["whole", large], got["chunked", large]
        print(f"{step}: at batch {large} chunked/whole peak {c['peak_mib'] / w['peak_mib']:.2f}x "
              f"({c['peak_mib'] - w['peak_mib']:+.0f} MiB), step time {c['step_s'] / w['step_s']:.2f}x; peak growth "
              f"from batch {small} to {large}: whole {w['peak_mib'] - got['whole', small]['peak_mib']:+.0f} MiB, "
              f"chunked {c['peak_mib'] - got['chunked', small]['peak_mib']:+.0f} MiB")


if __name__ == "__main__":
    main()
