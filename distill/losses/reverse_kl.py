"""Reverse KL: KL(student ‖ teacher), mode-seeking (Gu et al. 2024, MiniLLM, eq. 1; here its
single-step, token-level form on the training text, without MiniLLM's policy-gradient sampling)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from common.config import field
from distill.losses.base import register
from distill.losses.logit_family import LogitParams, LogitTerm, divergence_kd

__all__ = ["reverse_kl", "kl_rows"]


def kl_rows(a_logp: torch.Tensor, b_logp: torch.Tensor) -> torch.Tensor:
    """KL(a ‖ b) per row: a_logp, b_logp [N, C] log-probabilities; returns [N]."""
    return (a_logp.exp() * (a_logp - b_logp)).sum(-1)


def reverse_rows(p_logp: torch.Tensor, q_logp: torch.Tensor) -> torch.Tensor:
    """KL(q ‖ p) per row, p the teacher and q the student: Σ_v q_v (log q_v − log p_v); [N, C] -> [N]."""
    return kl_rows(q_logp, p_logp)


def reverse_kl(student_logits: torch.Tensor, teacher_logits: list[torch.Tensor], temperature: float, n_tokens: float,
               ensemble: str = "mean_logits", weights: list[float] | None = None) -> torch.Tensor:
    """T² · KL(q_T ‖ p_T) per valid token (MiniLLM, Gu et al. 2024, eq. 1, single step).

    student_logits [N, V]; teacher_logits: one [N, V] per teacher; returns a scalar.
    """
    return divergence_kd(reverse_rows, student_logits, teacher_logits, temperature, n_tokens, ensemble, weights)


@dataclass
class ReverseKLParams(LogitParams):
    weight: float = field(0.0, "weight of T²·KL(student ‖ teacher); 0 = off", ge=0)


@register
class ReverseKL(LogitTerm):
    key, title, Params, order = (
        "reverse_kl",
        "reverse KL, KL(student ‖ teacher) (MiniLLM, Gu et al. 2024)",
        ReverseKLParams,
        11,
    )
    divergence = staticmethod(reverse_rows)
