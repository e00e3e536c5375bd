"""Generalised Jensen–Shannon divergence with skew β (Agarwal et al. 2024, "On-policy distillation
of language models: learning from self-generated mistakes" (GKD), eq. 1)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from common.config import field
from distill.losses.base import register
from distill.losses.logit_family import TINY, LogitParams, LogitTerm, divergence_kd, with_gradient
from distill.losses.reverse_kl import kl_rows

__all__ = ["jsd"]


def jsd_rows(p_logp: torch.Tensor, q_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """JSD(β)(p ‖ q) = β·KL(p ‖ m) + (1 − β)·KL(q ‖ m), m = β·p + (1 − β)·q, per row; [N, C] -> [N].

    Near β = 0 it is β·KL(p ‖ q) + O(β²), near β = 1 it is (1 − β)·KL(q ‖ p) + O((1 − β)²); at the
    ends it is defined as those KLs themselves (forward at 0, reverse at 1), as TRL's GKD trainer does.
    """
    if beta == 0.0:
        return kl_rows(p_logp, q_logp)
    if beta == 1.0:
        return kl_rows(q_logp, p_logp)
    return _mixed_rows(p_logp, q_logp, beta)


@with_gradient
def _mixed_rows(p_logp: torch.Tensor, q_logp: torch.Tensor, beta: float):
    """0 < β < 1. Gradient: ∂/∂q_v = (1 − β)(log q_v − log m_v), so with respect to log q_v it is
    g_v = (1 − β) q_v (log q_v − log m_v). Value: β·Σ p (log p − log m) + (1 − β)·Σ q (log q − log m)
    = β·Σ p (log p − log m) + Σ g, with m = β·p + (1 − β)·q formed in probability space. In place where it
    can be: each elementwise operation is one pass over the [N, C] chunk, so fewer operations are faster."""
    p, q = p_logp.exp(), q_logp.exp()
    log_m = torch.lerp(q, p, beta).clamp_min_(TINY).log_()
    grad = q.mul_(torch.sub(q_logp, log_m)).mul_(1.0 - beta)
    value = torch.linalg.vecdot(p, torch.sub(p_logp, log_m, out=log_m)).mul_(beta) + grad.sum(-1)
    return value, grad


def jsd(
    student_logits: torch.Tensor,
    teacher_logits: list[torch.Tensor],
    temperature: float,
    n_tokens: float,
    beta: float,
    ensemble: str = "mean_logits",
    weights: list[float] | None = None,
) -> torch.Tensor:
    """T² · JSD(β)(p_T ‖ q_T) per valid token (GKD, eq. 1), p the teacher and q the student.

    student_logits [N, V]; teacher_logits: one [N, V] per teacher; beta in [0, 1]; returns a scalar.
    """
    return divergence_kd(
        lambda p, q: jsd_rows(p, q, beta), student_logits, teacher_logits, temperature, n_tokens, ensemble, weights
    )


@dataclass
class JSDParams(LogitParams):
    weight: float = field(0.0, "weight of T²·JSD(β)(teacher ‖ student); 0 = off", ge=0)
    beta: float = field(0.5, "β: the mixture's teacher share; 0 = forward KL, 1 = reverse KL", ge=0, le=1)


@register
class JSD(LogitTerm):
    key, title, Params, order = (
        "jsd",
        "generalised Jensen-Shannon divergence with skew β (GKD, Agarwal et al. 2024)",
        JSDParams,
        12,
    )
    divergence, knob = staticmethod(jsd_rows), "beta"
