"""Bytes per token of the teacher cache's formats against DistillKit's two published configurations, each with the
error its storage puts into the KD loss, in one run.

    python bench/cache_bytes.py [--rows 2000]
    python bench/cache_bytes.py --real TEACHER STUDENT --text FILE   # also on two trained models' outputs on real text

Bytes: `distill/cache_format.bytes_per_token` for ours; for DistillKit, its README's two configurations counted as
its `total_bits` does (the exact values at 16 bits each, each fitted term at 32, the ids at ⌈log₂ V⌉ bits, each part
rounded up to whole bytes): the budget pick (k = 50, 1 exact value, terms 1, t, √t) and the recommended one (k = 128,
16 exact values, terms 1, t, t², t³, t⁴, √t). Both sides' bytes are shown at a 16k vocabulary (BabyLM's usual size)
and at GPT-2's 50,257 tokens, since the ids are most of a token's bytes.

Error: the share |stored − top-k| / dense of the forward-KL KD loss (`cached_logit_kd`, T = 1), as the cache command
measures it and tests/test_cache_format.py bounds it (< 1e-3), on 16k-token rows of two kinds: Gaussian logits (the
test's rows) and Zipf-like ones (log-probability falling as −1.1 log rank, plus noise, ids shuffled), with a student
one unit and 0.3 units of logit noise away (the nearer the student, the smaller the loss and the harder the bound).
DistillKit's values are rebuilt here from its README's description, not with its code: the exact values rounded to
bfloat16, the rest a least-squares fit of its terms in the rank t to the sorted log-probabilities, then the same
rescaling to a total of 1 as ours, so that both sides differ only in what they store.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from distill import cache_format as C  # noqa: E402
from distill.losses import cached_logit_kd  # noqa: E402

VOCABS = (16_000, 50_257)
TRIALS = ("q3", "s6")  # narrower codes than the cache offers, to show what fewer bytes cost (the codec takes any width)
DISTILLKIT = {  # name: (k, exact values, fitted terms), from DistillKit's README
    "DistillKit budget": (50, 1, (0, 1, "sqrt")),
    "DistillKit recommended": (128, 16, (0, 1, 2, 3, 4, "sqrt")),
}


def distillkit_bytes(k: int, exact: int, terms: tuple, vocab: int) -> int:
    values = exact * 16 + len(terms) * 32
    return -(-values // 8) + -(-k * C.id_bits(vocab) // 8)


def distillkit_logp(top: torch.Tensor, exact: int, terms: tuple) -> torch.Tensor:
    """top [N, k] sorted descending -> [N, k]: the first `exact` in bfloat16, the rest a least-squares fit in t."""
    t = torch.arange(exact, top.shape[1], dtype=torch.float64)
    basis = torch.stack([t.sqrt() if x == "sqrt" else t ** x for x in terms], 1)  # [k - exact, terms]
    coef = torch.linalg.pinv(basis) @ top[:, exact:].double().T  # [terms, N]
    fitted = (basis @ coef.float().double()).T.float()  # the coefficients stored as float32
    return torch.cat([top[:, :exact].bfloat16().float(), fitted], 1)


def rows(kind: str, n: int, vocab: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if kind == "gaussian":
        return torch.randn(n, vocab, generator=g) * 3.0
    zipf = -1.1 * torch.arange(1, vocab + 1, dtype=torch.float32).log()
    return (zipf + 0.5 * torch.randn(n, vocab, generator=g))[:, torch.randperm(vocab, generator=g)]


def errors(n: int, k: int, vocab: int = 16_000) -> dict[str, dict[str, float]]:
    """{storage: {"<rows>, noise <s>": error share}} for our formats and the DistillKit configuration at this k."""
    out: dict[str, dict[str, float]] = {}
    for kind in ("gaussian", "zipf-like"):
        logits = rows(kind, n, vocab)
        top, ids = F.log_softmax(logits, -1).topk(k, -1)
        rest = (1 - top.exp().sum(-1)).clamp_min(0)
        stored = ours(top, ids, rest, vocab)
        for name, (dk_k, exact, terms) in DISTILLKIT.items():
            if dk_k == k:
                stored[name] = C.rescale(distillkit_logp(top, exact, terms), rest), ids
        for noise in (1.0, 0.3):
            student = logits + noise * torch.randn(logits.shape, generator=torch.Generator().manual_seed(1))
            student = student.double()  # float64 from here: the smallest shares are otherwise float32 rounding
            dense = float(F.kl_div(F.log_softmax(student, -1), F.log_softmax(logits.double(), -1), log_target=True,
                                   reduction="sum"))
            exact_kd = float(cached_logit_kd(student, top.double(), ids, rest.double(), 1.0, 1))
            for name, (logp, got_ids) in stored.items():
                out.setdefault(name, {})[f"{kind}, noise {noise}"] = share(student, logp, got_ids, rest, 1.0, exact_kd,
                                                                           dense)
    return out


def ours(top: torch.Tensor, ids: torch.Tensor, rest: torch.Tensor, vocab: int) -> dict[str, tuple]:
    """{format: (log-probs, ids)} of the top-k as each of our formats (and trials) stores it; the s formats give the
    row back in id order."""
    return {fmt: C.decode(fmt, C.encode(fmt, top, ids, rest, vocab), top.shape[-1], vocab)[:2]
            for fmt in C.FORMATS + TRIALS}


def share(student, logp, ids, rest, temperature: float, exact: float, dense: float) -> float:
    """|stored − top-k| / dense: the KD-loss error the storage adds, as a share of the dense loss."""
    kd = float(cached_logit_kd(student, logp.double(), ids, rest.double(), temperature, 1))
    return abs(kd - exact) / dense


def real_errors(teacher: str, student: str, text: Path, blocks: int, temperature: float) -> dict[int, dict]:
    """{k: {storage: error share}} on real text: a trained teacher's tempered top-k against a trained student (both
    Hugging Face folders sharing the teacher's tokenizer), `blocks` blocks of 128 tokens from the start of `text`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(teacher)
    ids = tok(text.read_text(encoding="utf-8")[: 2000 * blocks], add_special_tokens=False)["input_ids"]
    batch = torch.tensor(ids[: blocks * 128]).view(blocks, 128)
    with torch.no_grad():
        t, s = (AutoModelForCausalLM.from_pretrained(m).eval()(batch).logits.flatten(0, 1).double()
                for m in (teacher, student))
    logp = F.log_softmax(t / temperature, -1)
    dense = temperature ** 2 * float(F.kl_div(F.log_softmax(s / temperature, -1), logp, log_target=True,
                                              reduction="sum"))
    vocab, out = t.shape[-1], {}
    for k in (50, 128):
        top, top_ids = logp.float().topk(k, -1)
        rest = (1 - top.exp().sum(-1)).clamp_min(0)
        exact = float(cached_logit_kd(s, top.double(), top_ids, rest.double(), temperature, 1))
        for fmt, (logp_k, got_ids) in ours(top, top_ids, rest, vocab).items():
            out.setdefault(k, {})[fmt] = (C.bytes_per_token(fmt, k, vocab),
                                          share(s, logp_k, got_ids, rest, temperature, exact, dense))
    print(f"\nreal text ({text.name}, {blocks * 128} tokens), T = {temperature}: teacher {teacher}, student {student}, "
          f"{vocab}-token vocabulary, dense KD {dense / (blocks * 128):.4f} a token\n")
    print("| storage | bytes, k = 50 | error, k = 50 | bytes, k = 128 | error, k = 128 |")
    print("| --- | --- | --- | --- | --- |")
    for fmt in C.FORMATS + TRIALS:
        (b50, e50), (b128, e128) = out[50][fmt], out[128][fmt]
        print(f"| `{fmt}`{' (trial)' if fmt in TRIALS else ''} | {b50} | {e50:.1e} | {b128} | {e128:.1e} |")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=2000, help="rows (token positions) per kind")
    p.add_argument("--real", nargs=2, metavar=("TEACHER", "STUDENT"), help="also measure on two trained model folders")
    p.add_argument("--text", type=Path, help="with --real: a text file to read blocks from")
    p.add_argument("--blocks", type=int, default=16, help="with --real: blocks of 128 tokens")
    p.add_argument("--temperature", type=float, default=2.0, help="with --real: the KD temperature")
    args = p.parse_args()
    if args.real:
        real_errors(*args.real, args.text, args.blocks, args.temperature)
        return
    print("bytes per token (16k vocabulary / GPT-2's 50,257)\n")
    ks = (32, 50, 64, 128)
    print("| storage | " + " | ".join(f"k = {k}" for k in ks) + " |")
    print("| --- |" + " --- |" * len(ks))
    for fmt in C.FORMATS:
        print(f"| `{fmt}` | " + " | ".join(" / ".join(str(C.bytes_per_token(fmt, k, v)) for v in VOCABS) for k in ks)
              + " |")
    for name, (k, exact, terms) in DISTILLKIT.items():
        cells = [" / ".join(str(distillkit_bytes(k, exact, terms, v)) for v in VOCABS) if kk == k else "" for kk in ks]
        print(f"| {name} | " + " | ".join(cells) + " |")
    for k in (50, 128):
        table = errors(args.rows, k)
        cols = list(next(iter(table.values())))
        print(f"\nKD-loss error share |stored − top-k| / dense at k = {k}, 16k vocabulary, {args.rows} rows per kind "
              "(the tests bound ours below 1e-3)\n")
        print("| storage | bytes | " + " | ".join(cols) + " |")
        print("| --- | --- |" + " --- |" * len(cols))
        for name, errs in table.items():
            ours = name in C.FORMATS + TRIALS
            b = C.bytes_per_token(name, k, 16_000) if ours else distillkit_bytes(*DISTILLKIT[name], 16_000)
            label = f"`{name}`" + (" (trial)" if name in TRIALS else "") if ours else name
            print(f"| {label} | {b} | "
                  + " | ".join(f"{errs[c]:.1e}" for c in cols) + " |")


if __name__ == "__main__":
    main()
