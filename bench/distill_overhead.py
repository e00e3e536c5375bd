"""Training-step cost of distillation: the student alone, online KD from two teachers, KD from the teacher cache
in each of its storage formats (fp16, q8, q4: step time and bytes per token), and each logit term (logit_kd,
reverse_kl, jsd, ...) and attention_relation on teacher outputs computed outside the timed step.

    python bench/distill_overhead.py                  # CPU, tiny models (teachers ~6x and ~12x the student)
    python bench/distill_overhead.py --preset babyllama --device cuda   # Llama-58M from Llama-360M + GPT2-705M
                                                                        # (teachers in bf16)

Each configuration runs in its own child process (so its peak memory is its own), through
the project's own pieces: DistillationWrapper (the composite loss), run_teachers (frozen,
no_grad) and TeacherCache (the memory-mapped top-k shards written by write_cache). A step is
forward + backward + AdamW on one batch of packed blocks. Prints step time, tokens/s and peak
memory of each (the faster of two rounds run in mirrored order), the cached/online ratios
to the student alone, and next to the online ratio
the FLOP estimate 1 + N_teachers / (3 · N_student) (teachers run forward only: 2N per token
against the student's 6N), and each term's step time against logit_kd's (target <= 1.1x for the logit terms).
Those `dense:<term>` modes run the teachers before each timed step, so the time is the
student's step plus the term itself, which the teachers' forward would otherwise hide.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from distill.cache_format import FORMATS  # noqa: E402

PRESETS = {
    # name: (student arch fields, [teacher fields], vocab, block, batch)
    "tiny": (
        {
            "model_type": "llama",
            "hidden_size": 64,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "intermediate_size": 128,
        },
        [
            {
                "model_type": "llama",
                "hidden_size": 144,
                "num_hidden_layers": 6,
                "num_attention_heads": 4,
                "intermediate_size": 288,
            },
            {"model_type": "gpt2", "n_embd": 168, "n_layer": 8, "n_head": 4},
        ],
        512,
        128,
        16,
    ),
    "babyllama": ("llama-58m", ["llama-360m", "gpt2-705m"], 16000, 128, 32),
}


def build(fields_or_arch, vocab: int):
    from transformers import AutoConfig, AutoModelForCausalLM

    from train.models import read_architecture

    if isinstance(fields_or_arch, str):
        class M:  # the model section of a run config
            arch, overrides = fields_or_arch, {}
        _, fields = read_architecture(M)
    else:
        fields = dict(fields_or_arch)
    fields.setdefault("max_position_embeddings" if fields["model_type"] != "gpt2" else "n_positions", 256)
    config = AutoConfig.for_model(
        fields.pop("model_type"), **fields, vocab_size=vocab, bos_token_id=1, eos_token_id=2, pad_token_id=0
    )
    return AutoModelForCausalLM.from_config(config)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def compared_terms() -> list[str]:
    """The registered terms compared with logit_kd: the other logit terms, and those reading queries, keys and
    values."""
    from distill.losses import REGISTRY
    from distill.losses.logit_family import LogitTerm

    return [key for key, cls in REGISTRY.items() if issubclass(cls, LogitTerm) or cls.needs.qkv]


def term_of(mode: str) -> str | None:
    """The KD term a mode trains with: logit_kd online or cached, a logit term on untimed teacher logits
    (`dense:<key>`), or none."""
    return None if mode == "student" else mode.split(":", 1)[1] if mode.startswith("dense:") else "logit_kd"


def loss_cfg(mode: str):
    from distill.config import LossesConfig

    losses = LossesConfig()
    key = term_of(mode)
    losses.ce.weight = 0.5 if key else 1.0
    if key:
        getattr(losses, key).weight = 0.5
        if hasattr(getattr(losses, key), "temperature"):
            getattr(losses, key).temperature = 2.0  # the cache's and logit_kd's temperature
    return losses


def child(args) -> None:
    """One configuration: time `--steps` training steps after `--warmup`; print a JSON line."""
    from transformers import AutoModelForCausalLM

    from distill.cache import TeacherCache
    from distill.attention import capture_qkv
    from distill.teachers import Teacher, num_layers, run_teachers
    from distill.wrapper import DistillationWrapper
    from train.chunked import logit_head

    work = Path(args.work)
    info = json.loads((work / "info.json").read_text())
    device = torch.device(args.device)
    torch.manual_seed(0)
    student = AutoModelForCausalLM.from_pretrained(work / "student").to(device)
    teachers, cache = [], None
    if args.one == "online" or args.one.startswith("dense:"):
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        for i in range(info["n_teachers"]):
            m = (
                AutoModelForCausalLM.from_pretrained(work / f"teacher{i}", dtype=dtype)
                .to(device)
                .eval()
                .requires_grad_(False)
            )
            teachers.append(Teacher(f"t{i}", m, 1.0, [], m.config.hidden_size, num_layers(m.config),
                                    head=logit_head(m)))
    if args.one.startswith("cached:"):
        cache = TeacherCache(work / f"cache-{args.one.split(':')[1]}", {})
    wrapper = DistillationWrapper(student, teachers, loss_cfg(args.one), args.logits_chunk).to(device).train()
    opt = torch.optim.AdamW(wrapper.parameters(), lr=1e-4)
    blocks = torch.load(work / "blocks.pt")
    B = info["batch"]
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for step in range(args.warmup + args.steps):
        idx = torch.arange(step * B, (step + 1) * B) % len(blocks)
        ids = blocks[idx].to(device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        extra = {}
        if args.one.startswith("dense:"):  # the teachers outside the timed region
            with contextlib.ExitStack() as stack:
                qkv = [stack.enter_context(capture_qkv(t.model, b)) for t, b in zip(teachers, wrapper.teacher_qkv)]
                extra["teacher_outputs"] = run_teachers(teachers, ids, None, hidden=False)
            if wrapper.needs.qkv:
                extra["teacher_qkv"] = qkv
            if device.type == "cuda":
                torch.cuda.synchronize()
        t0 = time.perf_counter()
        if args.one == "online":
            extra["teacher_outputs"] = run_teachers(teachers, ids, None, hidden=False)
        elif cache is not None:
            extra["cached_targets"] = tuple(x.to(device) for x in cache.lookup(idx))
        elif args.one == "student":
            extra["teacher_outputs"] = []
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = wrapper(ids, labels=ids, n_tokens=ids[:, 1:].numel(), **extra)
        out["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    step_s = sorted(times)[len(times) // 2]
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print("RESULT " + json.dumps({"step_s": step_s, "tokens_per_s": B * info["block"] / step_s, "peak_mb": peak}))


def prepare(args, work: Path) -> dict:
    """Save the student and teachers as HF folders, a batch source of random blocks, and the teacher cache."""
    from distill.cache import write_cache
    from distill.config import DistillRunConfig, TeacherConfig
    from distill.teachers import Teacher

    s_fields, t_fields, vocab, block, batch = PRESETS[args.preset]
    torch.manual_seed(0)
    student = build(s_fields, vocab)
    student.save_pretrained(work / "student")
    teachers = []
    for i, f in enumerate(t_fields):
        m = build(f, vocab).eval()
        m.save_pretrained(work / f"teacher{i}")
        teachers.append(Teacher(f"t{i}", m.to(args.device), 1.0, [], 0, 0))
    n_blocks = batch * (args.warmup + args.steps)
    blocks = torch.randint(5, vocab, (n_blocks, block), generator=torch.Generator().manual_seed(1))
    torch.save(blocks, work / "blocks.pt")
    cfg = DistillRunConfig()
    cfg.data.block_size = block
    cfg.distill.teachers = [TeacherConfig(path=str(work / f"teacher{i}")) for i in range(len(t_fields))]
    cfg.distill.cache_top_k = args.top_k

    class Blocks:  # write_cache reads blocks[a:b]["input_ids"]
        def __len__(self):
            return n_blocks

        def __getitem__(self, s):
            return {"input_ids": blocks[s]}

    fp = {"temperature": cfg.distill.losses.logit_kd.temperature, "ensemble": cfg.distill.losses.logit_kd.ensemble,
          "top_k": args.top_k, "block_size": block}  # what TeacherCache reads back
    for fmt in FORMATS:
        cfg.distill.cache_format = fmt
        write_cache(
            work / f"cache-{fmt}", teachers, Blocks(), cfg, fp, batch, torch.device(args.device), progress=False
        )
    info = {
        "n_student": n_params(student),
        "n_teachers": len(teachers),
        "n_teacher_params": [n_params(t.model) for t in teachers],
        "block": block,
        "batch": batch,
    }
    (work / "info.json").write_text(json.dumps(info))
    return info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--top-k", type=int, default=64)
    p.add_argument("--logits-chunk", type=int, default=1024, help="train.logits_chunk (0 = all positions at once)")
    p.add_argument(
        "--terms", default=",".join(compared_terms()), help="terms to compare with logit_kd (comma list; empty = none)"
    )
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    if args.one:
        return child(args)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        info = prepare(args, work)
        ratio_t = [n / info["n_student"] for n in info["n_teacher_params"]]
        print(f"{args.preset} on {args.device}: student {info['n_student']:,} parameters; teachers "
              + ", ".join(f"{n:,} ({r:.1f}x)" for n, r in zip(info["n_teacher_params"], ratio_t))
              + f"; batch {info['batch']} x {info['block']} tokens; top-k {args.top_k}; median of {args.steps} steps")
        results: dict[str, dict] = {}
        # Two rounds in mirrored order (A B C C B A), keeping each mode's faster round, so that a
        # slow spell of a shared machine does not land on one mode only.
        cached = [f"cached:{fmt}" for fmt in FORMATS]
        modes = ["student", "online", *cached] + [f"dense:{key}" for key in ["logit_kd", *args.terms.split(",")] if key]
        from distill.losses.logit_family import LogitTerm
        from distill.losses import REGISTRY

        logit_keys = [k for k in compared_terms() if issubclass(REGISTRY[k], LogitTerm)]
        for mode in modes + modes[::-1]:
            proc = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--one",
                    mode,
                    "--work",
                    str(work),
                    "--device",
                    args.device,
                    "--steps",
                    str(args.steps),
                    "--warmup",
                    str(args.warmup),
                    "--logits-chunk",
                    str(args.logits_chunk),
                ],
                capture_output=True,
                text=True,
            )
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"{mode} failed:\n{proc.stderr[-3000:]}")
            r = json.loads(line.split(" ", 1)[1])
            if mode not in results or r["step_s"] < results[mode]["step_s"]:
                results[mode] = r
        for mode, r in results.items():
            print(
                f"{mode:24s}: {r['step_s'] * 1000:8.1f} ms/step  {r['tokens_per_s']:10.0f} tokens/s  peak "
                f"{r['peak_mb']:8.0f} MiB"
            )
        base = results["student"]["step_s"]
        flops = 1 + sum(info["n_teacher_params"]) / (3 * info["n_student"])
        print(
            f"online KD: {results['online']['step_s'] / base:.2f}x the student alone (FLOP estimate 1 + N_teachers/(3 "
            f"N_student) = {flops:.2f})"
        )
        for mode in cached:
            fmt = mode.split(":")[1]
            size = json.loads((work / f"cache-{fmt}" / "cache.json").read_text())["bytes_per_token"]
            print(
                f"cached KD ({fmt}, {size:g} bytes/token): {results[mode]['step_s'] / base:.2f}x the student alone "
                "(target <= 1.15); "
                f"{results[mode]['step_s'] / results['cached:fp16']['step_s']:.2f}x the fp16 cache's step"
            )
        for mode in modes[2 + len(cached) + 1:]:
            target = "; target <= 1.1" if term_of(mode) in logit_keys else ""
            print(f"{term_of(mode)}: {results[mode]['step_s'] / results['dense:logit_kd']['step_s']:.2f}x logit_kd "
                  f"(the student's step plus the term, teachers untimed{target})")


if __name__ == "__main__":
    main()
