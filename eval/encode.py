"""Text -> token requests, following the official BabyLM scoring conventions exactly.

Causal, `babylm2024` (the BabyLM 2024 pipeline, a fork of lm-evaluation-harness 0.4):
every choice is the request (context, " " + choice) -- one space is the harness's default
target delimiter. With an empty context (BLiMP) the continuation is encoded without
special tokens and scored after the model's prefix token (BOS, else EOS). With a context
(EWoK) context and continuation are encoded together and split as the harness's
`_encode_pair` does: trailing spaces of the context move to the continuation, the context
is encoded alone, and the continuation is what the whole encoding has beyond it.

`babylm2025` (the 2025 pipeline, `sentence_zero_shot/dataset.py`), every backend: each
choice is a whole text (the task's `sentence` template) of which a suffix (`completion`)
counts. The text is encoded once with the tokenizer's own special tokens and character
offsets (a fast tokenizer is needed); the scored tokens are those whose offset span ends
after the completion's first character. Causal: that first character is counted from the
first token's start offset, and position 0 is never scored (no position predicts it); the
sum of the scored tokens' log-probabilities is the choice's score. Masked (`mlm`): each
scored token is masked in its own copy and read where it is, summed (special tokens have
empty spans, so they are never scored). `mntp`: the same copies, read one position earlier;
position 0 is skipped when the tokenizer has neither CLS nor BOS.

Masked (`hf-mlm` of the 2024 pipeline, which calls minicons' MaskedLMScorer.conditional_score):
the text is prefix + " " + continuation, where the prefix is the context or, when that is
empty, the tokenizer's EOS text. It is encoded with special tokens; the scored positions
are those from the number of prefix tokens (the prefix encoded alone, counting every token
that is not padding or SEP) onwards, skipping padding, CLS and SEP. Each scored position is
masked in its own copy (pseudo-log-likelihood, Salazar et al. 2020, eq. 2), and the score
is the mean of their log-probabilities: conditional_score's default reduction
(minicons 0.2.44 to 0.3.39), which the 2024 pipeline calls with its defaults.
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
    shift: int = 0  # read the logits this many positions before the masked one (mntp: 1)
    target_ids: list[int] | None = None  # the token each target is scored as (default: the token at that position)


def _encode(tokenizer, texts: list[str], special: bool) -> list[list[int]]:
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=special)["input_ids"]


def causal_requests(
    tokenizer, contexts: list[str], choices: list[str], prefix_id: int, convention: str
) -> list[CausalRequest]:
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


def _offsets(tokenizer, sentences: list[str]) -> tuple[list[list[int]], list[list[tuple[int, int]]]]:
    enc = tokenizer(sentences, add_special_tokens=True, return_offsets_mapping=True)
    return [list(x) for x in enc["input_ids"]], [[tuple(o) for o in x] for x in enc["offset_mapping"]]


def offset_requests(tokenizer, sentences: list[str], completions: list[str], backend: str) -> list:
    """2025 convention: one request per (sentence, completion), the completion's tokens found by character offsets.

    Causal requests are (ctx, cont) with cont the scored tokens; the tokens after the last
    scored one (an appended EOS) cannot change a causal score and are dropped. A choice with
    no scored token (a one-token sentence without BOS) gets an empty cont and scores 0, as
    the pipeline's masked sum does."""
    ids_list, offsets_list = _offsets(tokenizer, sentences)
    out = []
    for ids, offsets, sentence, completion in zip(ids_list, offsets_list, sentences, completions):
        if backend == "causal":
            start = len(sentence) - len(completion) + (offsets[0][0] if offsets else 0)
            scored = [i for i, (_, end) in enumerate(offsets) if end > start and i >= 1]
            if not scored:
                out.append(CausalRequest(ids, []))
                continue
            first, last = scored[0], scored[-1]
            if scored != list(range(first, last + 1)):
                raise ValueError(f"the completion's tokens are not contiguous in {sentence!r}")
            out.append(CausalRequest(ids[:first], ids[first:last + 1]))
        else:
            start = len(sentence) - len(completion)
            prepend = tokenizer.cls_token_id is not None or tokenizer.bos_token_id is not None
            scored = [
                i for i, (_, end) in enumerate(offsets) if end > start and (backend == "mlm" or i != 0 or prepend)
            ]
            out.append(MaskedRequest(ids, scored, shift=1 if backend == "mntp" else 0))
    return out
