"""Text -> token requests, following the official BabyLM scoring conventions exactly.

Causal, `babylm2024` (the BabyLM 2024 pipeline, a fork of lm-evaluation-harness 0.4):
every choice is the request (context, " " + choice) -- one space is the harness's default
target delimiter. With an empty context (BLiMP) the continuation is encoded without
special tokens and scored after the model's prefix token (BOS, else EOS). With a context
(EWoK) context and continuation are encoded together and split as the harness's
`_encode_pair` does: trailing spaces of the context move to the continuation, the context
is encoded alone, and the continuation is what the whole encoding has beyond it.

Causal, `babylm2025` (the 2025 pipeline): no leading space; the sentence is encoded with
the tokenizer's own special tokens (its BOS), and every token after that prefix is scored.
If the tokenizer adds no prefix, the prefix token is put in front as in 2024. A context is
encoded with special tokens and the choice follows it after one space, split as in 2024.

Masked (`hf-mlm` of the 2024 pipeline, which calls minicons' MaskedLMScorer.conditional_score):
the text is prefix + " " + continuation, where the prefix is the context or, when that is
empty, the tokenizer's EOS text. It is encoded with special tokens; the scored positions
are those from the number of prefix tokens (the prefix encoded alone, counting every token
that is not padding or SEP) onwards, skipping padding, CLS and SEP. Each scored position is
masked in its own copy (pseudo-log-likelihood, Salazar et al. 2020, eq. 2).
"""
from __future__ import annotations

from dataclasses import dataclass

CONVENTIONS = ("babylm2024", "babylm2025")
DELIMITER = " "  # lm-evaluation-harness's default target_delimiter


@dataclass
class CausalRequest:
    ctx: list[int]
    cont: list[int]


@dataclass
class MaskedRequest:
    ids: list[int]
    targets: list[int]  # positions to mask one at a time and score


def _encode(tokenizer, texts: list[str], special: bool) -> list[list[int]]:
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=special)["input_ids"]


def causal_requests(tokenizer, contexts: list[str], choices: list[str], prefix_id: int, convention: str) -> list[CausalRequest]:
    """One request per (context, choice); tokenized in batches (fast tokenizers run them in parallel in Rust)."""
    out: list[CausalRequest | None] = [None] * len(choices)
    empty = [i for i, c in enumerate(contexts) if c == ""]
    full = [i for i, c in enumerate(contexts) if c != ""]
    if convention == "babylm2024":
        for i, ids in zip(empty, _encode(tokenizer, [DELIMITER + choices[i] for i in empty], special=False)):
            out[i] = CausalRequest([prefix_id], list(ids))
        ctx_texts, conts = [], []
        for i in full:
            context, continuation = contexts[i], DELIMITER + choices[i]
            n_spaces = len(context) - len(context.rstrip())
            if n_spaces:
                context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
            ctx_texts.append(context)
            conts.append(context + continuation)
        ctx_ids = _encode(tokenizer, ctx_texts, special=False)
        whole_ids = _encode(tokenizer, conts, special=False)
        for i, c, w in zip(full, ctx_ids, whole_ids):
            out[i] = CausalRequest(list(c), list(w[len(c):]))
    elif convention == "babylm2025":
        plain = _encode(tokenizer, [choices[i] for i in empty], special=False)
        special = _encode(tokenizer, [choices[i] for i in empty], special=True)
        for i, p, s in zip(empty, plain, special):
            start = next((k for k in range(len(s) - len(p) + 1) if s[k:k + len(p)] == p), 0)
            prefix = list(s[:start]) or [prefix_id]
            out[i] = CausalRequest(prefix, list(p))
        ctx_ids = _encode(tokenizer, [contexts[i].rstrip() for i in full], special=True)
        whole_ids = _encode(tokenizer, [contexts[i].rstrip() + DELIMITER + choices[i] for i in full], special=True)
        for i, c, w in zip(full, ctx_ids, whole_ids):
            out[i] = CausalRequest(list(c), list(w[len(c):]))
    else:
        raise ValueError(f"unknown convention {convention}")
    return out  # type: ignore[return-value]


def masked_requests(tokenizer, contexts: list[str], choices: list[str]) -> list[MaskedRequest]:
    """minicons' conditional_score framing, one request per (context, choice)."""
    empty_text = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.sep_token
    prefixes = [c if c != "" else empty_text for c in contexts]
    pad, cls, sep = tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id
    prefix_ids = _encode(tokenizer, prefixes, special=True)
    full_ids = _encode(tokenizer, [p + " " + DELIMITER + ch for p, ch in zip(prefixes, choices)], special=True)
    out = []
    for pre, ids in zip(prefix_ids, full_ids):
        start = sum(1 for t in pre if t != pad and t != sep)
        targets = [k for k in range(start, len(ids)) if ids[k] not in (pad, cls, sep)]
        out.append(MaskedRequest(list(ids), targets))
    return out
