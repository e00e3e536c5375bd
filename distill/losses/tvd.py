"""Total variation distance between the teacher's and the student's next-token distributions
(as a distillation objective in, for example, Wen et al. 2023, "f-divergence minimization for
sequence-level knowledge distillation", the TVD variant)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from common.config import field
from distill.losses.base import register
from distill.losses.logit_family import LogitParams, LogitTerm, divergence_kd

__all__ = ["tvd"]


def tvd_rows(p_logp: torch.Tensor, q_logp: torch.Tensor) -> torch.Tensor:
    """TVD(p, q) = ½ Σ_v |p_v − q_v| per row, in [0, 1]; [N, C] -> [N]."""
    return 0.5 * (p_logp.exp() - q_logp.exp()).abs().sum(-1)


def tvd(student_logits: torch.Tensor, teacher_logits: list[torch.Tensor], temperature: float, n_tokens: float,
        ensemble: str = "mean_logits", weights: list[float] | None = None) -> torch.Tensor:
    """T² · TVD(p_T, q_T) per valid token.

    student_logits [N, V]; teacher_logits: one [N, V] per teacher; returns a scalar.
    """
    return divergence_kd(tvd_rows, student_logits, teacher_logits, temperature, n_tokens, ensemble, weights)


@dataclass
class TVDParams(LogitParams):
    weight: float = field(0.0, "weight of T²·TVD(teacher, student); 0 = off", ge=0)


@register
class TVD(LogitTerm):
    key, title, Params, order = "tvd", "total variation distance (Wen et al. 2023)", TVDParams, 13
    divergence = staticmethod(tvd_rows)
