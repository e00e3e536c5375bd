"""What a loss term is: a registered class with its parameters, its needs, its trainable parts,
a pure function over tensors, and the way it prints itself in the composite's formula.

A new term is one new module in this package that defines one `LossTerm` subclass under
`@register`; the config section `distill.losses.<key>`, its `--help` lines, the checks,
the teachers' and student's outputs the trainer computes, and the wrapper's forward all
follow from the class (distill/config.py, distill/wrapper.py, distill/trainer.py).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn


@dataclass(frozen=True)
class Needs:
    """What a term reads besides the student's logits and the labels."""

    teacher: bool = True           # at least one teacher must be configured
    teacher_logits: bool = False   # the teachers' logits (online), or the cache's top-k
    teacher_hidden: bool = False   # the teachers' hidden states (online only)
    student_hidden: bool = False   # the student's hidden states
    qkv: bool = False              # queries, keys and values of chosen blocks, student's and teachers' (`qkv_layers`)
    cache: bool = False  # the teacher cache (top-k log-probabilities) can serve it
    any_tokenizer: bool = (
        False  # reads teachers with their own tokenizer too (teacher.tokenizer: own), at aligned positions
    )

    @staticmethod
    def union(items) -> Needs:
        """What a set of terms reads together (`teacher` and `cache` stay per term)."""
        items = list(items)
        return Needs(
            teacher=any(n.teacher for n in items),
            teacher_logits=any(n.teacher_logits for n in items),
            teacher_hidden=any(n.teacher_hidden for n in items),
            student_hidden=any(n.student_hidden for n in items),
            qkv=any(n.qkv for n in items),
        )


@dataclass
class Setup:
    """What a term's trainable parts are built from: the student's shape and the teachers (distill.teachers.Teacher)."""

    hidden_size: int
    num_layers: int
    vocab_size: int
    teachers: list
    student: nn.Module | None = None


@dataclass
class Batch:
    """One micro-batch as the terms see it. Row tensors are restricted to the N scored positions
    (train.chunked.scored_positions); full [B, T, H] tensors go through `rows` first.

    The logits are never whole: a `rowwise` term is called on chunks of rows (`at`), each with `logits`
    and `teacher_logits` for those rows only; another term that reads logits maps hidden rows to them
    chunk by chunk with `over_chunks` (train.chunked). On the whole batch `logits` and `teacher_logits`
    are None."""

    logits: torch.Tensor | None                   # [n, V] the student's, in a chunk
    targets: torch.Tensor                         # [N] next-token labels ([n] in a chunk)
    n_tokens: float                               # valid tokens of the whole accumulated batch
    rows: Callable[[torch.Tensor], torch.Tensor] | None  # [B, T, ...] -> [N, ...]
    student_hidden: tuple | None = None           # L + 1 tensors [B, T, H] (embeddings first), when needed
    teacher_logits: list | None = None            # one [n, V_k] per teacher online, in a chunk
    teacher_hidden: list | None = None            # one tuple of [B, T, H_k] per teacher, when needed
    cached: tuple | None = None                   # (top_logp [N, k], top_ids [N, k], rest [N]) from the teacher cache
    teacher_weights: tuple = ()                   # distill.teachers[k].weight
    attention_mask: torch.Tensor | None = None    # [B, T] 1 = a real token (None: every token is)
    student_qkv: dict | None = None               # block -> {"q", "k", "v": [B, T, W]}, when needed
    teacher_qkv: list | None = None  # one such dict per teacher, when needed
    teacher_aligned: list | None = None  # one [N] bool per teacher: rows with an aligned teacher position (None: all)
    teacher_final: list | None = None  # one [N, H_k] per teacher online: what its head maps to logits (or the logits)
    teacher_heads: list | None = None  # one output layer per teacher, or None where teacher_final holds logits
    chunk: int = 0                     # rows per chunk (train.logits_chunk; 0 = all at once)

    def at(self, part: slice, logits: torch.Tensor | None) -> Batch:
        """The batch restricted to the rows `part`, with the student's `logits` [n, V] there and the teachers'
        computed there (without gradient)."""
        teacher_logits = None
        if self.teacher_final is not None:
            with torch.no_grad():
                teacher_logits = [
                    head(final[part]) if head is not None else final[part]
                    for final, head in zip(self.teacher_final, self.teacher_heads)
                ]
        return Batch(
            logits=logits,
            targets=self.targets[part],
            n_tokens=self.n_tokens,
            rows=None,
            teacher_logits=teacher_logits,
            cached=tuple(x[part] for x in self.cached) if self.cached is not None else None,
            teacher_weights=self.teacher_weights,
            teacher_aligned=[m if m is None else m[part] for m in self.teacher_aligned]
            if self.teacher_aligned is not None else None,
        )

    def over_chunks(self, hidden_rows: torch.Tensor, head: nn.Module | None,
                    fn: Callable[[torch.Tensor, Batch], torch.Tensor], extra: tuple = ()) -> torch.Tensor:
        """Σ over chunks of fn(head(hidden_rows[chunk]) [n, V], the chunk's batch (`at`)), differentiable with
        respect to `hidden_rows` [N, H], the head's parameters and the parameters `extra` that `fn` uses;
        `fn` must be a sum over its rows."""
        from train.chunked import over_chunks

        return over_chunks(hidden_rows, head, lambda logits, part: fn(logits, self.at(part, logits)), self.chunk,
                           extra)


class LossTerm:
    """One term of the composite loss. Subclasses set the class attributes and `__call__`.

    key      the YAML key (distill.losses.<key>) and the name in metrics.jsonl (loss/<key>)
    title    the one-line doc of its config section
    Params   a config dataclass whose first field is `weight` (0 = off)
    needs    what it reads (`Needs`)
    order    its place in the formula and in metrics (lower first)
    group    the wrapper attribute (an nn.ModuleDict) its trainable parts live in, so checkpoints name them
             `<group>.<name>`; each part's name starts with the key's own prefix
    rowwise  its value is a sum over the scored rows of what it reads there (the student's logits, the
             targets, the teachers' logits, the cache, the alignment, its own parts): it is then called on
             chunks of rows (`Batch.at`), so no logits tensor is ever whole. A term that is not rowwise
             gets no logits; it maps hidden rows to logits itself with `Batch.over_chunks` (as aux_kd does)
    """

    key: ClassVar[str]
    title: ClassVar[str]
    Params: ClassVar[type]
    needs: ClassVar[Needs] = Needs()
    order: ClassVar[int]
    group: ClassVar[str] = "projections"
    rowwise: ClassVar[bool] = False

    def __init__(self, params, setup: Setup):
        self.params = params
        self.weight = params.weight

    @classmethod
    def check(cls, params, cfg) -> None:
        """Checks that need more than one value's range (raise common.config.ConfigError); run before anything is
        written."""

    def qkv_layers(self) -> tuple[list[int], list[list[int]]]:
        """(student blocks, per teacher its blocks) whose queries, keys and values the term reads (needs.qkv)."""
        return [], []

    def parts(self) -> dict[str, nn.Module]:
        """The trainable modules this term owns, by name (registered on the wrapper under `group`)."""
        return {}

    def describe(self, teachers: list) -> str:
        """The term in the composite's formula, weight included."""
        return f"{self.weight:g}*{self.key}"

    def __call__(self, batch: Batch, parts: nn.ModuleDict) -> torch.Tensor:
        """The term's value, a scalar per valid token of the accumulated batch."""
        raise NotImplementedError


REGISTRY: dict[str, type[LossTerm]] = {}


def register(cls: type[LossTerm]) -> type[LossTerm]:
    """Class decorator: adds a term to REGISTRY (kept sorted by `order`)."""
    if cls.key in REGISTRY and REGISTRY[cls.key] is not cls:
        raise ValueError(
            f"two loss terms are registered as {cls.key!r}: {REGISTRY[cls.key].__module__} and {cls.__module__}"
        )
    if not dataclass_has_weight(cls.Params):
        raise TypeError(f"{cls.__name__}.Params must be a dataclass whose first field is `weight`")
    REGISTRY[cls.key] = cls
    ordered = sorted(REGISTRY.values(), key=lambda c: (c.order, c.key))
    REGISTRY.clear()
    REGISTRY.update((c.key, c) for c in ordered)
    return cls


def dataclass_has_weight(params: type) -> bool:
    return dataclasses.is_dataclass(params) and dataclasses.fields(params)[0].name == "weight"
