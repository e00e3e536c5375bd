"""Auxiliary-classifier KD (DSKD, arXiv 2202.07846, sec. 3.3): heads on shallow student blocks
distil from the teachers, with adaptive per-layer weights."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from common.config import field
from common.errors import UserError
from distill.losses.base import LossTerm, Needs, register
from distill.losses.logit_kd import Ensemble, check_ensemble, logit_kd

__all__ = ["aux_kd"]


def aux_kd(aux_logits: list[torch.Tensor], teacher_logits: list[torch.Tensor], temperature: float, n_tokens: float,
           ensemble: str = "mean_logits", weights: list[float] | None = None) -> torch.Tensor:
    """Auxiliary-classifier KD: each auxiliary head on a shallow student layer has its own
    T² · KL to the teachers, and the per-layer losses are combined with adaptive weights
    softmax(L_1 … L_A) (DSKD, arXiv 2202.07846, sec. 3.3), so the layer that is furthest
    from the teachers gets the most weight. The weights are computed from detached losses:
    they rescale the terms, and the heads cannot lower the loss by moving weight around.

    aux_logits: A heads' [N, V]; teacher_logits: one [N, V] per teacher; `ensemble` and the
    per-teacher `weights` as in logit_kd; returns a scalar (the overall weight γ is the
    term's weight in the composite).
    """
    return adaptive_sum([logit_kd(a, teacher_logits, temperature, n_tokens, ensemble, weights) for a in aux_logits])


def adaptive_sum(losses: list[torch.Tensor]) -> torch.Tensor:
    """Σ_l softmax(L_1 … L_A)_l · L_l, the weights from the detached losses (DSKD, sec. 3.3)."""
    losses = torch.stack(losses)
    return (torch.softmax(losses.detach(), dim=0) * losses).sum()


def default_aux_layers(student_layers: int) -> list[int]:
    """Every other block of the first half (at least block 0)."""
    return list(range(0, max(1, student_layers // 2), 2))


@dataclass
class AuxKDParams:
    weight: float = field(0.0, "γ: weight of the auxiliary classifiers' adaptively weighted KL; 0 = off", ge=0)
    layers: list[int] = field(
        [], "student blocks (0-based) that get an auxiliary classifier; empty = the first half, every other block", ge=0
    )
    temperature: float = field(2.0, "softmax temperature of the auxiliary KL", gt=0)
    ensemble: Ensemble = field(
        "mean_logits",
        "how teachers combine for the heads (as logit_kd.ensemble; per_teacher uses the teachers' weights)",
    )


@register
class AuxKD(LossTerm):
    """One head (LayerNorm + a linear map to the vocabulary) per chosen student block; heads are trained, never
    exported."""

    key, title, Params, order = "aux_kd", "auxiliary-classifier KD with adaptive layer weights", AuxKDParams, 40
    needs = Needs(teacher_logits=True, student_hidden=True)
    group = "aux_heads"

    def __init__(self, params, setup):
        super().__init__(params, setup)
        self.layers = list(params.layers) or default_aux_layers(setup.num_layers)
        for b in self.layers:
            if not 0 <= b < setup.num_layers:
                raise UserError(f"distill.losses.aux_kd.layers: student block {b} is out of range: the student has "
                                f"{setup.num_layers} blocks (0..{setup.num_layers - 1})")
        self.hidden_size, self.vocab_size = setup.hidden_size, setup.vocab_size

    @classmethod
    def check(cls, params, cfg) -> None:
        check_ensemble(cls.key, params.ensemble, cfg)

    def parts(self):
        return {
            f"block{b}": nn.Sequential(
                nn.LayerNorm(self.hidden_size), nn.Linear(self.hidden_size, self.vocab_size, bias=False)
            )
            for b in self.layers
        }

    def describe(self, teachers):
        p = self.params
        return f"{self.weight:g}*aux_kd(layers={self.layers}, T={p.temperature:g}, {p.ensemble}, softmax-weighted)"

    def __call__(self, batch, parts):
        """`aux_kd` of the heads' logits, each head's KL taken over chunks of rows (Batch.over_chunks)."""
        p, weights = self.params, list(batch.teacher_weights)

        def kl(logits, chunk):
            return logit_kd(logits, chunk.teacher_logits, p.temperature, batch.n_tokens, p.ensemble, weights)

        return adaptive_sum(
            [batch.over_chunks(batch.rows(batch.student_hidden[b + 1]), parts[f"block{b}"], kl) for b in self.layers]
        )
