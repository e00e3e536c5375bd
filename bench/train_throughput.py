"""Tokens/s of the project's training step against a minimal hand-written PyTorch loop, in one process.

Both sides train the same model (same seed, so the same initial weights) on the same packed
demo blocks with the same batch, AdamW, warmup+cosine schedule, clipping and precision
(bf16 autocast on a GPU that supports it, else fp32). The first `--warmup` steps of each
side are not timed. Prints tokens/s of each, their ratio (target >= 0.9) and peak memory.

    python bench/train_throughput.py [--arch llama-16m] [--steps 40] [--batch 16] [--block 64]
"""
from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, TrainerCallback, get_scheduler, set_seed

from common import config as cfglib
from tokenizer.prepare import block_words, load_blocks, prepare
from train import models, words
from train.config import RunConfig
from train.rundir import RunDir
from train.trainer import build_trainer, make_collator, precision_flags, training_arguments

ROOT = Path(__file__).resolve().parent.parent


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():  # high-water RSS of the process
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class StepTimer(TrainerCallback):
    def __init__(self, warmup: int):
        self.warmup, self.start, self.end = warmup, None, None

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.warmup:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.end = time.perf_counter()


def project_side(cfg, tokenizer, train_ds, work: Path, warmup: int) -> float:
    set_seed(cfg.train.seed)
    objective, model = models.build_model(cfg.model, tokenizer)
    run = RunDir(work / "project")
    with run.locked():  # as python -m train holds it: the run's LOCK, its checks and its bookkeeping are all timed
        run.create({}, "start")
        budget = words.plan(cfg.train, block_words(train_ds), 1)
        trainer = build_trainer(
            cfg, run, training_arguments(cfg, run), model, objective, tokenizer, train_ds, None, budget
        )
        timer = StepTimer(warmup)
        trainer.add_callback(timer)
        run.begin(["bench"], None)
        trainer.train()
    return (cfg.train.max_steps - warmup) * cfg.train.batch_size * cfg.data.block_size / (timer.end - timer.start)


def hand_side(cfg, tokenizer, train_ds, warmup: int) -> float:
    set_seed(cfg.train.seed)
    objective, model = models.build_model(cfg.model, tokenizer)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).train()
    o = cfg.optim
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=o.lr,
        betas=(o.beta1, o.beta2),
        eps=o.eps,
    )
    scheduler = get_scheduler("cosine_with_min_lr", optimizer, num_warmup_steps=o.warmup_steps,
                              num_training_steps=cfg.train.max_steps, scheduler_specific_kwargs={"min_lr": o.min_lr})
    loader = torch.utils.data.DataLoader(train_ds, batch_size=cfg.train.batch_size, shuffle=True, drop_last=True,
                                         collate_fn=make_collator(objective, tokenizer, cfg.data.mlm_probability))
    bf16 = precision_flags(cfg.train.precision)["bf16"]
    step, start = 0, None
    while step < cfg.train.max_steps:
        for batch in loader:
            if step == warmup:
                if device == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), o.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step == cfg.train.max_steps:
                break
    if device == "cuda":
        torch.cuda.synchronize()
    return (cfg.train.max_steps - warmup) * cfg.train.batch_size * cfg.data.block_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="llama-16m")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--block", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cfg = cfglib.load(
            RunConfig,
            ROOT / "config" / "runs" / "demo-teacher.yaml",
            [
                f"data.train_dir={work}/demo/train",
                "data.dev_dir=",
                f"data.cache_dir={work}/cache",
                f"data.block_size={args.block}",
                f"model.arch={args.arch}",
                f"train.max_steps={args.steps}",
                f"train.batch_size={args.batch}",
                f"train.save_steps={args.steps + 1}",
                f"train.logging_steps={args.steps}",
                "train.early_stopping_patience=0",
                "train.word_checkpoints=none",
            ],
        )  # steps, not exports (bench/milestone_overhead.py times those)
        prepared = prepare(cfg.data, cfg.tokenizer)
        tokenizer = AutoTokenizer.from_pretrained(prepared.tokenizer_dir)
        train_ds = load_blocks(prepared.train_blocks, with_words=True)  # python -m train counts the words of every step
        hand = hand_side(cfg, tokenizer, train_ds.remove_columns(["words"]), args.warmup)
        hand_mem = peak_memory_mb()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        ours = project_side(cfg, tokenizer, train_ds, work, args.warmup)
        ours_mem = peak_memory_mb()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\n{args.arch}, batch {args.batch} x {args.block} tokens, {args.steps - args.warmup} timed steps, {device}, "
          f"{'bf16' if precision_flags('auto')['bf16'] else 'fp32'}")
    print(f"hand-written loop : {hand:12,.0f} tokens/s   peak memory {hand_mem:,.0f} MiB")
    print(f"python -m train   : {ours:12,.0f} tokens/s   peak memory {ours_mem:,.0f} MiB"
          + ("" if torch.cuda.is_available() else " (process high-water mark, includes the first side)"))
    print(f"ratio project / hand-written: {ours / hand:.3f}  (target >= 0.9)")
    if not math.isfinite(ours / hand):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
