"""The prepared GPU check (issue 19): one run, one markdown report.

    bash bench/gpu_check.sh            # one GPU: about 6 minutes on an H200; the report goes to $OUT (else bench/)
    bash bench/gpu_check.sh --cpu      # the same script scaled down to tiny models on a CPU: it is known to run

It measures, each configuration in its own child process (so peak memory is its own):
- training tokens/s, MFU and peak memory of llama-360m, gpt2-705m and llama-58m (--cpu: gpt2-tiny, llama-tiny) with
  bf16 autocast on a GPU (fp32 on a CPU), without and with torch.compile, the loss over chunks of logits as the
  Trainer takes it (and once, for the last model, over whole logits); random tokens, batch x block as the
  BabyLlama recipes train (32 x 128), AdamW. MFU = (6 N + 12 L d T) x tokens/s / peak, N the weights of the linear
  layers (the LM head included, the embedding lookup not), L layers, d width, T block (PaLM's estimate), against
  989 TFLOP/s, the dense bf16 peak of an H100/H200 SXM;
- the BabyLlama-58M distillation step: the student alone, both teachers online, from the cache
  (bench/distill_overhead.py --preset babyllama; --cpu: its tiny preset);
- evaluation pairs/s on blimp_filtered with the llama-58m shape (bench/eval_speed.py's own scorer; needs
  ../shared/data, skipped without it); lm-evaluation-harness is not run here (it needs its own environment);
- the projected wall time of the whole BabyLlama-58M recipe (llama-360m and gpt2-705m for 4 epochs, then the student
  for 6 epochs, on 10M words at --tokens-per-word) from those rates.
Nothing is downloaded: the models are built from config/models/ and the data are random tokens.
"""
from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PEAK_FLOPS = 989e12  # dense bf16, H100/H200 SXM
GPU_ARCHS, CPU_ARCHS = ["llama-360m", "gpt2-705m", "llama-58m"], ["gpt2-tiny", "llama-tiny"]
RECIPE = [("llama-360m", 4), ("gpt2-705m", 4)]  # the teachers and their epochs; the student: llama-58m, 6 epochs
STUDENT_EPOCHS = 6


def build(arch: str, seed: int = 0, vocab: int = 16000):
    """A randomly initialised model of `arch` (config/models/) as python -m train builds it, seeded."""
    import torch

    from train import models
    from train.config import ModelConfig

    class Tokens:
        pad_token_id, bos_token_id, eos_token_id = 0, 1, 2

    torch.manual_seed(seed)
    return models.build_model(ModelConfig(arch=arch, vocab_size=vocab), Tokens())[1]


def train_rate(arch: str, compile_model: bool, batch: int, block: int, steps: int, warmup: int,
               chunk: int | None = 1024) -> dict:
    """One configuration, in this process: tokens/s, MFU, peak memory. The loss is the project's (train.chunked,
    `chunk` positions of logits at a time, as the Trainer takes it), or with `chunk` None the model's own
    (whole [B, T, V] logits)."""
    import torch

    from grid.estimate import flops_per_token as grid_flops
    from train import chunked

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    model = build(arch).to(device).train()
    flops_per_token = grid_flops(model, block)  # the count grid --dry-run plans with
    step_fn = torch.compile(model) if compile_model else model
    head = chunked.logit_head(model) if chunk is not None else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)
    ids = torch.randint(3, 16000, (batch, block), device=device)
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            if head is None:
                loss = step_fn(input_ids=ids, labels=ids).loss
            else:
                _, final = chunked.final_states(step_fn, model, head, input_ids=ids)
                loss = chunked.causal_ce(final, head, ids, None, chunk)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    seconds = sorted(times)[len(times) // 2]
    tokens_per_s = batch * block / seconds
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else rss_mib
    return {"arch": arch, "compile": compile_model, "chunk": chunk,
            "params": sum(p.numel() for p in model.parameters()),
            "tokens_per_s": tokens_per_s, "mfu": flops_per_token * tokens_per_s / PEAK_FLOPS if cuda else None,
            "peak_mib": peak, "finite": bool(torch.isfinite(loss).item())}


def child(args: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--one", json.dumps(args)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["no output"])[-1][:200]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def distillation(cpu: bool, steps: int) -> tuple[dict, str]:
    """bench/distill_overhead.py's step times: {mode: (ms/step, tokens/s, peak MiB)} and its output."""
    cmd = [sys.executable, "bench/distill_overhead.py", "--terms", "", "--steps", str(steps), "--warmup", "2"]
    cmd += ["--preset", "tiny", "--device", "cpu"] if cpu else ["--preset", "babyllama", "--device", "cuda"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    text = out.stdout if out.returncode == 0 else out.stdout + out.stderr[-2000:]
    rows = {m[1]: (float(m[2]), float(m[3]), float(m[4]))
            for m in re.finditer(r"^(\S+)\s*:\s*([\d.]+) ms/step\s+(\d+) tokens/s\s+peak\s+(\d+) MiB", text, re.M)}
    return rows, text


def evaluation(cpu: bool) -> str:
    """blimp_filtered through python -m eval's evaluate() on the GPU (the product's path, timed whole)."""
    import tempfile

    shared = REPO.parent / "shared" / "data"
    if not (shared / "blimp_filtered").is_dir():
        return "skipped: ../shared/data/blimp_filtered is not on this machine"
    from bench import eval_speed
    from bench.eval2025 import llama58m
    from eval.evaluate import Options, evaluate

    model = str(shared / "hf_tiny_gpt2") if cpu else str(llama58m(shared))
    data = eval_speed.paradigm_folder(str(shared), "anaphor_gender_agreement" if cpu else None)
    dtype = "float32" if cpu else "bfloat16"
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        results = evaluate(model, ["blimp_filtered"], Options(data_dir=data, dtype=dtype, batch_size="64" if cpu else
                                                              "256", out=out, progress=False))
        seconds = time.perf_counter() - start
    n = results[0][1]["n_items"]
    what = "hf_tiny_gpt2, one paradigm, fp32" if cpu else "llama-58m shape, bf16"
    return f"{n} pairs in {seconds:.1f} s = {n / seconds:.0f} pairs/s, loading included ({what})"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu", action="store_true", help="tiny models, fp32, few steps: proves the script runs")
    p.add_argument("--out", default=str(REPO / "bench" / "gpu_check.md"), help="the markdown report")
    p.add_argument("--tokens-per-word", type=float, default=1.4, help="BPE tokens per raw word of the 10M corpus")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(train_rate(*json.loads(args.one))))
        return 0
    import torch

    started = time.time()
    machine = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU (no GPU)"
    steps, warmup, batch, block = (4, 2, 8, 64) if args.cpu else (30, 10, 32, 128)
    archs = CPU_ARCHS if args.cpu else GPU_ARCHS
    lines = [f"# GPU check, {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, {machine}", "",
             f"`bash bench/gpu_check.sh{' --cpu' if args.cpu else ''}`; training: random tokens, batch {batch} x "
             f"{block}, {'fp32' if args.cpu else 'bf16 autocast'}, AdamW, median of {steps} steps after {warmup}; MFU "
             f"against {PEAK_FLOPS / 1e12:.0f} TFLOP/s (dense bf16, H100/H200 SXM).", "",
             "Logits: chunks of 1024 positions (train.logits_chunk, the Trainer's path); `whole`: the model's own "
             "loss over the whole [B, T, V] logits, for the memory it takes.", "",
             "| model | compile | logits | parameters | tokens/s | MFU | peak MiB |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    rates = {}
    measured = []  # the training rows, also written as JSON beside the report (grid --dry-run reads their MFU)
    configs = [(arch, compiled, 1024) for arch in archs for compiled in (False, True)] + [(archs[-1], False, None)]
    for arch, compiled, chunk in configs:
        r = child([arch, compiled, batch, block, steps, warmup, chunk])
        logits = "whole" if chunk is None else f"chunks of {chunk}"
        if "error" in r:
            lines.append(f"| {arch} | {compiled} | {logits} | | failed: {r['error']} | | |")
            continue
        if chunk is not None:
            rates[arch] = max(rates.get(arch, 0.0), r["tokens_per_s"])
            measured.append(r)
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a (CPU)"
        lines.append(f"| {arch} | {compiled} | {logits} | {r['params']:,} | {r['tokens_per_s']:,.0f} | {mfu} "
                     f"| {r['peak_mib']:,.0f} |")
        print(lines[-1], flush=True)
    rows, text = distillation(args.cpu, 6 if args.cpu else 20)
    lines += ["", "## Distillation step (bench/distill_overhead.py)", "", "```", text.strip(), "```"]
    if "student" in rows and "online" in rows:
        lines.append(f"- online: {rows['online'][0] / rows['student'][0]:.2f}x the student alone")
    paired = re.search(r"^cached KD \(q8[^)]*\): ([\d.]+)x the student alone", text, re.M)
    if paired:  # the paired ratio (modes interleaved in one process), the one the goal is read against
        lines.append(f"- cached:q8: {paired[1]}x the student alone (paired; goal <= 1.10 on the GPU)")
    lines += ["", "## Evaluation (blimp_filtered, this project's scorer)", "", f"- {evaluation(args.cpu)}"]
    if not args.cpu and all(a in rates for a in GPU_ARCHS) and "online" in rows:
        tokens = 10e6 * args.tokens_per_word
        teachers = sum(tokens * epochs / rates[arch] for arch, epochs in RECIPE)
        student = tokens * STUDENT_EPOCHS / rows["online"][1]
        lines += ["", "## The BabyLlama-58M recipe, projected", "",
                  f"- teachers (llama-360m, gpt2-705m, 4 epochs each): {teachers / 60:.1f} min; student with both "
                  f"teachers online (6 epochs): {student / 60:.1f} min; in all {(teachers + student) / 3600:.2f} h "
                  f"(10M words x {args.tokens_per_word} tokens per word; evaluation not included)"]
    lines += ["", f"Wall time of this check: {time.time() - started:.0f} s."]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    if not args.cpu:  # the CPU run proves the script; its rates are no GPU's
        Path(args.out).with_suffix(".json").write_text(json.dumps({"machine": machine, "training": measured}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
