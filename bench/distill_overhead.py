"""Training-step cost of distillation: the student alone, online KD from two teachers, KD from the teacher cache
in each of its storage formats (fp16, q8, q4, s8, s7: step time and bytes per token), and each logit term (logit_kd,
reverse_kl, jsd, ...) and attention_relation on teacher outputs computed outside the timed step.

    python bench/distill_overhead.py                  # CPU, tiny models (teachers ~6x and ~12x the student)
    python bench/distill_overhead.py --preset babyllama --device cuda   # Llama-58M from Llama-360M + GPT2-705M
                                                                        # (teachers in bf16)

Everything runs through the project's own pieces: DistillationWrapper (the composite loss), run_teachers
(frozen, no_grad) and TeacherCache (the memory-mapped top-k shards written by write_cache). A step is forward +
backward + AdamW on one batch of packed blocks.

- The student alone, online KD and each cache format run alone, each in its own child process (so its peak
  memory is its own), in two rounds of mirrored order (the faster round kept): step time, tokens/s, peak memory,
  and online KD's ratio to the student next to the FLOP estimate 1 + N_teachers / (3 · N_student) (teachers run
  forward only: 2N per token against the student's 6N).
- The ratios with targets (each cache format against the student alone, target <= 1.15x; each term against
  logit_kd, target <= 1.1x for the logit terms) come from one more child process that holds every compared mode
  (each its own student copy and optimizer) and takes one step of each per batch, in an order that rotates with
  the batch; a ratio is the median over batches of the two modes' times on that batch. A slow spell of a shared
  machine then falls on both sides of a ratio alike (the separate processes moved ±8% between runs).
- Reading a batch from each cache is also timed alone, with each block's CRC-32 checked (as training reads it)
  and without, the two interleaved, against the student's step.
- The `dense:<term>` modes run the teachers before the clock starts, so the time is the student's step plus the
  term itself, which the teachers' forward would otherwise hide.
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


class Modes:
    """The models of one child process: the student wrapper of each mode (each with its own copy of the student
    and its own AdamW), the teachers when a mode needs them, the caches; `step(mode, index)` times one training
    step of that mode."""

    def __init__(self, args, modes: list[str]):
        from transformers import AutoModelForCausalLM

        from distill.cache import TeacherCache
        from distill.teachers import Teacher, num_layers
        from distill.wrapper import DistillationWrapper
        from train.chunked import logit_head

        work = Path(args.work)
        info = json.loads((work / "info.json").read_text())
        self.device, self.batch, self.block = torch.device(args.device), info["batch"], info["block"]
        self.teachers, self.caches, self.wrappers, self.optimizers = [], {}, {}, {}
        if any(m == "online" or m.startswith("dense:") for m in modes):
            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
            for i in range(info["n_teachers"]):
                m = AutoModelForCausalLM.from_pretrained(work / f"teacher{i}", dtype=dtype).to(self.device).eval()
                m.requires_grad_(False)
                self.teachers.append(Teacher(f"t{i}", m, 1.0, [], m.config.hidden_size, num_layers(m.config),
                                             head=logit_head(m)))
        for mode in modes:
            torch.manual_seed(0)
            student = AutoModelForCausalLM.from_pretrained(work / "student").to(self.device)
            teachers = self.teachers if mode == "online" or mode.startswith("dense:") else []
            wrapper = DistillationWrapper(student, teachers, loss_cfg(mode), args.logits_chunk).to(self.device)
            self.wrappers[mode] = wrapper.train()
            self.optimizers[mode] = torch.optim.AdamW(wrapper.parameters(), lr=1e-4)
            if mode.startswith("cached:"):
                self.caches[mode] = TeacherCache(work / f"cache-{mode.split(':')[1]}", {})
        self.blocks = torch.load(work / "blocks.pt")
        # per teacher, the blocks whose queries, keys and values some mode reads
        self.teacher_qkv = [sorted({b for w in self.wrappers.values() for b in (w.teacher_qkv[k] if w.teacher_qkv
                                                                                 else [])})
                            for k in range(len(self.teachers))]
        self.dense: tuple = (None, None, None)  # (batch index, teacher outputs, their qkv) for the dense modes

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def step(self, mode: str, index: int) -> float:
        """One training step of `mode` on batch `index`; returns its seconds. A `dense:` mode's teacher outputs are
        computed before the clock starts (once per batch, shared by the dense modes)."""
        from distill.attention import capture_qkv
        from distill.teachers import run_teachers

        wrapper, B = self.wrappers[mode], self.batch
        idx = torch.arange(index * B, (index + 1) * B) % len(self.blocks)
        ids = self.blocks[idx].to(self.device)
        extra = {}
        if mode.startswith("dense:"):
            if self.dense[0] != index:  # computed untimed, once per batch, shared by the dense modes
                with contextlib.ExitStack() as stack:
                    qkv = [stack.enter_context(capture_qkv(t.model, blocks))
                           for t, blocks in zip(self.teachers, self.teacher_qkv)]
                    self.dense = (index, run_teachers(self.teachers, ids, None, hidden=False), qkv)
            extra["teacher_outputs"] = self.dense[1]
            if wrapper.needs.qkv:
                extra["teacher_qkv"] = self.dense[2]
        self.sync()
        t0 = time.perf_counter()
        if mode == "online":
            extra["teacher_outputs"] = run_teachers(self.teachers, ids, None, hidden=False)
        elif mode in self.caches:
            extra["cached_targets"] = tuple(x.to(self.device) for x in self.caches[mode].lookup(idx))
        elif mode == "student":
            extra["teacher_outputs"] = []
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            out = wrapper(ids, labels=ids, n_tokens=ids[:, 1:].numel(), **extra)
        out["loss"].backward()
        self.optimizers[mode].step()
        self.optimizers[mode].zero_grad(set_to_none=True)
        self.sync()
        return time.perf_counter() - t0


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args) -> None:
    """One configuration alone: time `--steps` training steps after `--warmup`; print a JSON line."""
    modes = Modes(args, [args.one])
    if modes.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = [modes.step(args.one, i) for i in range(args.warmup + args.steps)][args.warmup:]
    step_s = middle(times)
    print("RESULT " + json.dumps({"step_s": step_s, "tokens_per_s": modes.batch * modes.block / step_s,
                                  "peak_mb": peak_mb(modes.device)}))


def paired(args) -> None:
    """Every mode of `--paired` in one process, one step of each per batch in an order that rotates with the batch,
    so that a slow spell of a shared machine falls on all of them alike; prints each mode's per-step seconds."""
    names = args.paired.split(",")
    modes = Modes(args, names)
    times: dict[str, list[float]] = {m: [] for m in names}
    for i in range(args.warmup + args.steps):
        for mode in names[i % len(names):] + names[:i % len(names)]:
            t = modes.step(mode, i)
            if i >= args.warmup:
                times[mode].append(t)
    print("RESULT " + json.dumps(times))


def middle(values) -> float:
    """The median as this bench takes it: the upper middle value."""
    values = sorted(values)
    return values[len(values) // 2]


def paired_ratio(times: dict[str, list[float]], mode: str, base: str) -> float:
    """The median over batches of mode's step time over base's on the same batch."""
    return middle(a / b for a, b in zip(times[mode], times[base]))


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
    p.add_argument("--paired", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    if args.one:
        return child(args)
    if args.paired:
        return paired(args)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        info = prepare(args, work)
        ratio_t = [n / info["n_student"] for n in info["n_teacher_params"]]
        print(f"{args.preset} on {args.device}: student {info['n_student']:,} parameters; teachers "
              + ", ".join(f"{n:,} ({r:.1f}x)" for n, r in zip(info["n_teacher_params"], ratio_t))
              + f"; batch {info['batch']} x {info['block']} tokens; top-k {args.top_k}; median of {args.steps} steps")
        results: dict[str, dict] = {}
        # Each alone, for its memory: two rounds in mirrored order (A B C C B A), keeping each mode's faster round.
        cached = [f"cached:{fmt}" for fmt in FORMATS]
        alone = ["student", "online", *cached]
        terms = [key for key in args.terms.split(",") if key]
        dense = [f"dense:{key}" for key in ["logit_kd", *terms]] if terms else []  # no terms: no teachers to load
        common = ["--work", str(work), "--device", args.device, "--steps", str(args.steps), "--warmup",
                  str(args.warmup), "--logits-chunk", str(args.logits_chunk)]
        for mode in alone + alone[::-1]:
            r = run_child(["--one", mode, *common], mode)
            if mode not in results or r["step_s"] < results[mode]["step_s"]:
                results[mode] = r
        # The ratios: the modes compared, interleaved step by step in one process.
        times = run_child(["--paired", ",".join(["student", *cached, *dense]), *common], "the paired run")
        for mode, r in results.items():
            print(f"{mode:24s}: {r['step_s'] * 1000:8.1f} ms/step  {r['tokens_per_s']:10.0f} tokens/s  peak "
                  f"{r['peak_mb']:8.0f} MiB  (alone)")
        for mode in dense:
            print(f"{mode:24s}: {middle(times[mode]) * 1000:8.1f} ms/step  (paired)")
        base = results["student"]["step_s"]
        flops = 1 + sum(info["n_teacher_params"]) / (3 * info["n_student"])
        print(f"online KD: {results['online']['step_s'] / base:.2f}x the student alone (FLOP estimate 1 + "
              f"N_teachers/(3 N_student) = {flops:.2f})")
        print("Ratios below: the median over the steps of the two modes' times on the same batch, the modes "
              "interleaved in one process")
        for mode in cached:
            fmt = mode.split(":")[1]
            size = json.loads((work / f"cache-{fmt}" / "cache.json").read_text())["bytes_per_token"]
            print(f"cached KD ({fmt}, {size:g} bytes/token): {paired_ratio(times, mode, 'student'):.2f}x the "
                  f"student alone (target <= 1.15); {paired_ratio(times, mode, 'cached:fp16'):.2f}x the fp16 "
                  "cache's step")
        for fmt, (checked, unchecked) in lookup_cost(work, info, args.steps).items():
            print(f"reading a batch from the {fmt} cache: {checked * 1000:.2f} ms with each block's CRC-32 checked, "
                  f"{unchecked * 1000:.2f} ms unchecked: the check adds {(checked - unchecked) / base:.1%} of the "
                  "student's step")
        from distill.losses import REGISTRY
        from distill.losses.logit_family import LogitTerm

        for mode in dense[1:]:
            target = "; target <= 1.1" if issubclass(REGISTRY[term_of(mode)], LogitTerm) else ""
            print(f"{term_of(mode)}: {paired_ratio(times, mode, 'dense:logit_kd'):.2f}x logit_kd (the student's "
                  f"step plus the term, teachers untimed{target})")


def lookup_cost(work: Path, info: dict, steps: int) -> dict[str, tuple[float, float]]:
    """Per format, the median seconds of reading one batch's targets from the cache with each block's CRC-32 checked
    and without (the same cache, its `checked` turned off), the two interleaved batch by batch."""
    from distill.cache import TeacherCache

    costs = {}
    for fmt in FORMATS:
        cache = TeacherCache(work / f"cache-{fmt}", {})
        times: dict[bool, list[float]] = {True: [], False: []}
        for i in range(steps):
            idx = torch.arange(i * info["batch"], (i + 1) * info["batch"]) % cache.n_blocks
            for checked in (True, False)[:: 1 if i % 2 else -1]:
                cache.checked = checked
                t0 = time.perf_counter()
                cache.lookup(idx)
                times[checked].append(time.perf_counter() - t0)
        costs[fmt] = (middle(times[True]), middle(times[False]))
    return costs


def run_child(argv: list[str], what: str):
    proc = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        sys.exit(f"{what} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line.split(" ", 1)[1])


if __name__ == "__main__":
    main()
