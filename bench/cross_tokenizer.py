"""Step time of KD from a teacher with another tokenizer (re-tokenise, align, ULD) against KD from a
teacher with the student's tokenizer (logit_kd), on real BabyLM text, and where the time goes.

    python bench/cross_tokenizer.py [--steps 20] [--block 128] [--batch 16]

The student reads a 1,000-token byte-level BPE trained here on the BabyLM dev files; the teachers are
the same Llama shape (6 blocks, width 144), one with the student's vocabulary, one with GPT-2's 50,257
tokens (its tokenizer from ../shared/data/hf_tiny_gpt2). A step is the teacher's forward plus the
student's forward, backward and AdamW update, as in training (distill/trainer.py). Both sides run in
this process, alternating (A B B A ...), each figure the median of its steps.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"


def llama(vocab: int, hidden: int, layers: int):
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                                                        num_attention_heads=4, intermediate_size=2 * hidden,
                                                        max_position_embeddings=1024, bos_token_id=1, eos_token_id=2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--block", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    args = p.parse_args()

    from transformers import AutoTokenizer

    from distill.align import CrossTokenizer
    from distill.config import LossesConfig
    from distill.teachers import Teacher, run_teachers
    from distill.wrapper import DistillationWrapper
    from tokenizer.bpe import train_bpe

    dev = sorted((SHARED / "babylm_2023_partial" / "dev").glob("*.dev"))
    with tempfile.TemporaryDirectory() as tmp:
        student_tok = train_bpe(dev, 1000, 2, Path(tmp) / "tok")
    teacher_tok = AutoTokenizer.from_pretrained(str(SHARED / "hf_tiny_gpt2"))
    lines = [x for f in dev for x in f.read_text(encoding="utf-8").splitlines() if x.strip()][:20000]
    ids = [i for line in lines for i in student_tok(line)["input_ids"]]
    need = args.batch * args.block * (2 * args.steps + 2)
    blocks = torch.tensor((ids * (need // len(ids) + 1))[:need]).view(-1, args.block)

    cross = CrossTokenizer(student_tok, teacher_tok, "bench")
    sides = {}
    for name, vocab, key in (("same", len(student_tok), "logit_kd"), ("cross", len(teacher_tok), "uld")):
        teacher = llama(vocab, 144, 6).eval().requires_grad_(False)
        t = Teacher(name, teacher, 1.0, [], 144, 6, cross=cross if name == "cross" else None)
        losses = LossesConfig()
        losses.ce.weight = 0.5
        getattr(losses, key).weight = 0.5
        wrapper = DistillationWrapper(llama(len(student_tok), 64, 4), [t], losses).train()
        sides[name] = (t, wrapper, torch.optim.AdamW(wrapper.parameters(), lr=1e-4))
    times = {
        k: []
        for k in ("same", "cross", "cross: re-tokenise + align", "cross: teacher forward", "same: teacher forward")
    }

    def step(name: str, batch: torch.Tensor) -> None:
        t, wrapper, opt = sides[name]
        t0 = time.perf_counter()
        outs = run_teachers([t], batch, None, hidden=False)
        t1 = time.perf_counter()
        out = wrapper(batch, labels=batch, teacher_outputs=outs, n_tokens=batch[:, 1:].numel())
        out["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times[name].append(time.perf_counter() - t0)
        times[f"{name}: teacher forward"].append(t1 - t0)

    order = ["same", "cross", "cross", "same"]
    for i in range(2 * args.steps + 2):
        batch = blocks[i * args.batch:(i + 1) * args.batch]
        if i < 2:  # warm-up, untimed
            step(order[i % 4], batch)
            for v in times.values():
                v.clear()
            continue
        step(order[i % 4], batch)
        t0 = time.perf_counter()
        cross(batch)
        times["cross: re-tokenise + align"].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) * 1000 for k, v in times.items() if v}
    aligned = float((cross(blocks[: args.batch]).index >= 0).float().mean())
    print(
        f"student 1,000-token BPE, teacher GPT-2 BPE (50,257); batch {args.batch} x {args.block}; {aligned:.0%} of "
        "positions aligned; "
        f"median of {args.steps} steps per side"
    )
    for k in ("same", "same: teacher forward", "cross", "cross: teacher forward", "cross: re-tokenise + align"):
        print(f"{k:28s} {med[k]:8.1f} ms")
    rest = med["cross"] - med["cross: teacher forward"] - (med["same"] - med["same: teacher forward"])
    print(
        f"cross-tokenizer KD: {med['cross'] / med['same']:.2f}x same-tokenizer KD; of the difference, the teacher's "
        "forward "
        f"(re-tokenising included) {med['cross: teacher forward'] - med['same: teacher forward']:.1f} ms, "
        f"the loss and the student's step {rest:.1f} ms"
    )


if __name__ == "__main__":
    main()
