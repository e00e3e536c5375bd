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
    (distill.wrapper.scored_positions); full [B, T, H] tensors go through `rows` first."""

    logits: torch.Tensor                          # [N, V] the student's
    targets: torch.Tensor                         # [N] next-token labels
    n_tokens: float                               # valid tokens of the whole accumulated batch
    rows: Callable[[torch.Tensor], torch.Tensor]  # [B, T, ...] -> [N, ...]
    student_hidden: tuple | None = None           # L + 1 tensors [B, T, H] (embeddings first), when needed
    teacher_logits: list | None = None            # one [N, V] per teacher, online
    teacher_hidden: list | None = None            # one tuple of [B, T, H_k] per teacher, when needed
    cached: tuple | None = None                   # (top_logp [N, k], top_ids [N, k], rest [N]) from the teacher cache
    teacher_weights: tuple = ()                   # distill.teachers[k].weight
    attention_mask: torch.Tensor | None = None    # [B, T] 1 = a real token (None: every token is)
    student_qkv: dict | None = None               # block -> {"q", "k", "v": [B, T, W]}, when needed
    teacher_qkv: list | None = None  # one such dict per teacher, when needed
    teacher_aligned: list | None = None  # one [N] bool per teacher: rows with an aligned teacher position (None: all)


class LossTerm:
    """One term of the composite loss. Subclasses set the class attributes and `__call__`.

    key      the YAML key (distill.losses.<key>) and the name in metrics.jsonl (loss/<key>)
    title    the one-line doc of its config section
    Params   a config dataclass whose first field is `weight` (0 = off)
    needs    what it reads (`Needs`)
    order    its place in the formula and in metrics (lower first)
    group    the wrapper attribute (an nn.ModuleDict) its trainable parts live in, so checkpoints name them
             `<group>.<name>`; each part's name starts with the key's own prefix
    """

    key: ClassVar[str]
    title: ClassVar[str]
    Params: ClassVar[type]
    needs: ClassVar[Needs] = Needs()
    order: ClassVar[int]
    group: ClassVar[str] = "projections"

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
