"""Deeply supervised hidden-state KD (DSKD, arXiv 2202.07846): mapped student blocks, projected to
each teacher's width, regress onto the teacher's blocks (PalenkaLlama's layer maps)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from common.config import field
from distill.losses.base import LossTerm, Needs, register

__all__ = ["hidden_mse"]


def hidden_mse(student_states: list[torch.Tensor], teacher_states: list[torch.Tensor], n_tokens: float,
               masks: list[torch.Tensor | None] | None = None) -> torch.Tensor:
    """Deeply supervised hidden-state KD (DSKD, arXiv 2202.07846, eq. 3): the squared error
    between each mapped pair of student state (already projected to the teacher's width) and
    teacher state, averaged over the feature dimension and over the pairs.

    student_states, teacher_states: P pairs of [N, H_teacher] each (H may differ per pair);
    masks: per pair None or [N] bool, the rows whose teacher state exists (a teacher with its own
    tokenizer: aligned positions; the others add 0); returns a scalar. The teacher states carry no gradient.
    """
    if len(student_states) != len(teacher_states) or not student_states:
        raise ValueError("hidden_mse needs the same positive number of student and teacher states")
    masks = masks or [None] * len(student_states)
    rows = [((s.float() - t.detach().float()) ** 2).mean(-1) for s, t in zip(student_states, teacher_states)]
    total = sum((r if m is None else r * m).sum() for r, m in zip(rows, masks))
    return total / len(student_states) / n_tokens


@dataclass
class HiddenMSEParams:
    weight: float = field(
        0.0,
        "weight of the deeply supervised hidden-state MSE (student blocks projected to teacher width); 0 = off",
        ge=0,
    )


@register
class HiddenMSE(LossTerm):
    """The pairs come from each teacher's layer map (distill.teachers[k].layer_map); one projection per pair."""

    key, title, Params, order = (
        "hidden_mse",
        "deeply supervised hidden-state KD (DSKD, arXiv 2202.07846)",
        HiddenMSEParams,
        20,
    )
    needs = Needs(teacher_hidden=True, student_hidden=True, any_tokenizer=True)

    def __init__(self, params, setup):
        super().__init__(params, setup)
        # (part name, teacher k, teacher block, student block, teacher width)
        self.pairs = [(f"hidden_t{k}_s{sb}_t{tb}", k, tb, sb, t.hidden_size)
                      for k, t in enumerate(setup.teachers) for tb, sb in t.layer_map]
        self.hidden_size = setup.hidden_size

    def parts(self):
        return {name: nn.Linear(self.hidden_size, width, bias=False) for name, _, _, _, width in self.pairs}

    def describe(self, teachers):
        maps = "; ".join(f"{t.name} {{" + ", ".join(f"{a}:{b}" for a, b in t.layer_map) + "}" for t in teachers)
        return f"{self.weight:g}*hidden_mse(map: {maps})"

    def __call__(self, batch, parts):
        s_states = [parts[name](batch.rows(batch.student_hidden[sb + 1])) for name, _, _, sb, _ in self.pairs]
        t_states = [batch.rows(batch.teacher_hidden[k][tb + 1]) for _, k, tb, _, _ in self.pairs]
        aligned = batch.teacher_aligned or [None] * len(batch.teacher_hidden)
        return hidden_mse(s_states, t_states, batch.n_tokens, [aligned[k] for _, k, _, _, _ in self.pairs])
