"""Self-attention relation distillation (MiniLMv2, Wang et al. 2021, "MiniLMv2: multi-head
self-attention relation distillation for compressing pretrained transformers", eq. 5-7): the
student's query-query, key-key and value-value relations of one block match the teacher's."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from common.config import field
from common.errors import UserError
from distill.losses.base import LossTerm, Needs, register

__all__ = ["attention_relation", "relation_logprobs"]

MASKED = -1e9  # a finite "minus infinity": masked keys get probability 0 on both sides, and 0 · (difference) stays 0


def relation_logprobs(x: torch.Tensor, heads: int, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Relation of x with itself per relation head: log softmax(X_r X_rᵀ / √d_r) over the keys a causal
    query sees (key j ≤ query i, and real tokens only).

    x [B, T, W] (W divisible by `heads`, d_r = W / heads); attention_mask [B, T] or None;
    returns [B, heads, T, T] (head, query, key).
    """
    B, T, W = x.shape
    d = W // heads
    xr = x.float().reshape(B, T, heads, d).transpose(1, 2)  # [B, R, T, d]
    scores = (xr * (1.0 / math.sqrt(d))) @ xr.transpose(-1, -2)  # scaled on the narrower side: [B, R, T, T]
    allowed = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
    if attention_mask is not None:
        allowed = allowed & attention_mask.bool()[:, None, None, :]
    return F.log_softmax(scores.masked_fill(~allowed, MASKED), dim=-1)


def attention_relation(student: dict, teachers: list[dict], heads: int, relations: list[str], rows, n_tokens: float,
                       attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Σ over the relation types of the KL from each teacher's relation to the student's, averaged over the
    relation heads and the teachers and summed over the scored queries, per valid token (MiniLMv2, eq. 5-7).

    student: {"q", "k", "v": [B, T, W]} of one block; teachers: one such dict per teacher (widths may differ;
    each divisible by `heads`); relations: a subset of qq, kk, vv; rows: [B, T] -> [N] (the scored
    positions); returns a scalar. The teachers carry no gradient.
    """
    per_query = 0.0
    for rel in relations:
        x = rel[0]
        s = relation_logprobs(student[x], heads, attention_mask)  # [B, R, T, T], once for every teacher
        for teacher in teachers:
            t = relation_logprobs(teacher[x].detach(), heads, attention_mask)
            per_query = per_query + (t.exp() * (t - s)).sum(-1).mean(1)  # [B, T]: KL per query, mean over heads
    return rows(per_query).sum() / len(teachers) / n_tokens


@dataclass
class AttentionRelationParams:
    weight: float = field(0.0, "weight of the self-attention relation KL (MiniLMv2); 0 = off", ge=0)
    student_layer: int = field(
        -1,
        "the student block whose relations are trained (0-based; negative counts from the end, -1 = last; "
        "checked against the student's depth when it is built)",
        ge=-1024,
        lt=1024,
    )
    teacher_layer: int = field(
        -1,
        "each teacher's block whose relations are the target (0-based; negative from the end; "
        "checked against each teacher's depth)",
        ge=-1024,
        lt=1024,
    )
    heads: int = field(
        0,
        "relation heads R: queries, keys and values are split into R parts of both models; 0 = the student's "
        "attention heads",
        ge=0,
    )
    relations: list[Literal["qq", "kk", "vv"]] = field(
        ["qq", "kk", "vv"], "which relations: query-query, key-key, value-value"
    )


def resolve_block(index: int, depth: int, key: str, who: str) -> int:
    if not -depth <= index < depth:
        raise UserError(
            f"distill.losses.attention_relation.{key}: block {index} is out of range: {who} has {depth} blocks "
            f"(0..{depth - 1}, or -{depth}..-1 from the end)"
        )
    return index % depth


@register
class AttentionRelation(LossTerm):
    """Reads queries, keys and values through hooks on the blocks' projections (distill/attention.py), so the
    attention kernel (SDPA, flash) is kept; the teachers' relations are averaged over the teachers."""

    key, title, Params, order = (
        "attention_relation",
        "self-attention relation KD (MiniLMv2, Wang et al. 2021)",
        AttentionRelationParams,
        50,
    )
    needs = Needs(qkv=True)

    def __init__(self, params, setup):
        from distill.attention import widths

        super().__init__(params, setup)
        self.student_block = resolve_block(params.student_layer, setup.num_layers, "student_layer", "the student")
        self.teacher_blocks = [resolve_block(params.teacher_layer, t.num_layers, "teacher_layer", f"teacher {t.name}")
                               for t in setup.teachers]
        self.heads = params.heads or setup.student.config.num_attention_heads
        models = [("the student", setup.student, self.student_block)]
        models += [(f"teacher {t.name}", t.model, b) for t, b in zip(setup.teachers, self.teacher_blocks)]
        for who, model, block in models:
            for x, w in widths(model, block).items():
                if w % self.heads:
                    raise UserError(
                        f"distill.losses.attention_relation.heads: {self.heads} relation heads do not divide the "
                        f"{w}-wide {x} of {who} (block {block}); choose heads that divide every width"
                    )

    def qkv_layers(self):
        return [self.student_block], [[b] for b in self.teacher_blocks]

    def describe(self, teachers):
        return (
            f"{self.weight:g}*attention_relation({'+'.join(self.params.relations)}, student block "
            f"{self.student_block} <- "
            f"teacher blocks {self.teacher_blocks}, {self.heads} heads)"
        )

    def __call__(self, batch, parts):
        teachers = [qkv[b] for qkv, b in zip(batch.teacher_qkv, self.teacher_blocks)]
        return attention_relation(batch.student_qkv[self.student_block], teachers, self.heads, self.params.relations,
                                  batch.rows, batch.n_tokens, batch.attention_mask)
