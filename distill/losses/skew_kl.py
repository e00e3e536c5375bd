"""Skew KL and skew reverse KL with skew α (Ko et al. 2024, "DistiLLM: towards streamlined
distillation for large language models", eq. 2 and 3): the student's side is mixed with the
teacher's, which bounds the gradient where the student gives a token almost no mass."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from common.config import field
from distill.losses.base import register
from distill.losses.logit_family import TINY, LogitParams, LogitTerm, divergence_kd, with_gradient
from distill.losses.reverse_kl import kl_rows

__all__ = ["skew_kl", "skew_reverse_kl"]


@with_gradient
def _skewed_p_side(p_logp: torch.Tensor, q_logp: torch.Tensor, alpha: float):
    """0 < α < 1. KL(p ‖ m), m = α·p + (1 − α)·q, per row, m formed in probability space. Gradient:
    ∂/∂q_v = −(1 − α) p_v / m_v, so with respect to log q_v it is −(1 − α) p_v q_v / m_v. In place where it can be."""
    p, q = p_logp.exp(), q_logp.exp()
    m = torch.lerp(q, p, alpha).clamp_min_(TINY)
    value = torch.linalg.vecdot(p, torch.sub(p_logp, torch.log(m)))
    return value, p.mul_(q).div_(m).mul_(alpha - 1.0)


@with_gradient
def _skewed_q_side(p_logp: torch.Tensor, q_logp: torch.Tensor, alpha: float):
    """0 < α < 1. KL(q ‖ m), m = (1 − α)·p + α·q, per row. Gradient: ∂/∂q_v = log q_v + 1 − log m_v − α q_v / m_v,
    so with respect to log q_v it is q_v times that. In place where it can be."""
    p, q = p_logp.exp(), q_logp.exp()
    m = torch.lerp(p, q, alpha).clamp_min_(TINY)
    log_ratio = torch.sub(q_logp, torch.log(m))
    value = torch.linalg.vecdot(q, log_ratio)
    return value, torch.div(q, m, out=m).mul_(-alpha).add_(log_ratio).add_(1.0).mul_(q)


def skew_kl_rows(p_logp: torch.Tensor, q_logp: torch.Tensor, alpha: float) -> torch.Tensor:
    """SKL(α) = KL(p ‖ α·p + (1 − α)·q) per row (DistiLLM, eq. 2); α = 0 is forward KL, α = 1 is 0."""
    if alpha == 0.0:
        return kl_rows(p_logp, q_logp)
    if alpha == 1.0:
        return p_logp.new_zeros(p_logp.shape[:-1]) + 0.0 * q_logp.sum(-1)  # 0, still connected to the student
    return _skewed_p_side(p_logp, q_logp, alpha)


def skew_reverse_kl_rows(p_logp: torch.Tensor, q_logp: torch.Tensor, alpha: float) -> torch.Tensor:
    """SRKL(α) = KL(q ‖ (1 − α)·p + α·q) per row (DistiLLM, eq. 3); α = 0 is reverse KL, α = 1 is 0."""
    if alpha == 0.0:
        return kl_rows(q_logp, p_logp)
    if alpha == 1.0:
        return p_logp.new_zeros(p_logp.shape[:-1]) + 0.0 * q_logp.sum(-1)  # 0, still connected to the student
    return _skewed_q_side(p_logp, q_logp, alpha)


def skew_kl(
    student_logits: torch.Tensor,
    teacher_logits: list[torch.Tensor],
    temperature: float,
    n_tokens: float,
    alpha: float,
    ensemble: str = "mean_logits",
    weights: list[float] | None = None,
) -> torch.Tensor:
    """T² · SKL(α)(p_T, q_T) per valid token. student_logits [N, V]; teacher_logits: one [N, V] per teacher; returns a
    scalar."""
    return divergence_kd(
        lambda p, q: skew_kl_rows(p, q, alpha), student_logits, teacher_logits, temperature, n_tokens, ensemble, weights
    )


def skew_reverse_kl(
    student_logits: torch.Tensor,
    teacher_logits: list[torch.Tensor],
    temperature: float,
    n_tokens: float,
    alpha: float,
    ensemble: str = "mean_logits",
    weights: list[float] | None = None,
) -> torch.Tensor:
    """T² · SRKL(α)(p_T, q_T) per valid token. student_logits [N, V]; teacher_logits: one [N, V] per teacher; returns a
    scalar."""
    return divergence_kd(
        lambda p, q: skew_reverse_kl_rows(p, q, alpha),
        student_logits,
        teacher_logits,
        temperature,
        n_tokens,
        ensemble,
        weights,
    )


@dataclass
class SkewKLParams(LogitParams):
    weight: float = field(0.0, "weight of T²·KL(teacher ‖ α·teacher + (1 − α)·student); 0 = off", ge=0)
    alpha: float = field(
        0.1, "α: the teacher's share in the student's side (DistiLLM's default 0.1); 0 = forward KL", ge=0, le=1
    )


@dataclass
class SkewReverseKLParams(LogitParams):
    weight: float = field(0.0, "weight of T²·KL(student ‖ (1 − α)·teacher + α·student); 0 = off", ge=0)
    alpha: float = field(
        0.1, "α: the student's share in the teacher's side (DistiLLM's default 0.1); 0 = reverse KL", ge=0, le=1
    )


@register
class SkewKL(LogitTerm):
    key, title, Params, order = "skew_kl", "α-skew KL (DistiLLM, Ko et al. 2024)", SkewKLParams, 14
    divergence, knob = staticmethod(skew_kl_rows), "alpha"


@register
class SkewReverseKL(LogitTerm):
    key, title, Params, order = (
        "skew_reverse_kl",
        "α-skew reverse KL (DistiLLM, Ko et al. 2024)",
        SkewReverseKLParams,
        15,
    )
    divergence, knob = staticmethod(skew_reverse_kl_rows), "alpha"
