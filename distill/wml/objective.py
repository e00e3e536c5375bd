"""Weighted mutual learning: the inner loss, the validation ensemble loss, the hypergradient of
the peer weights and their mirror-descent step. Pure functions over tensors.

Zhang et al., "Weighted mutual learning with diversity-driven model compression", NeurIPS 2022:
  inner (eq. 3)  L(θ, ω) = (1 − α) Σ_i ω_i CE_i + α Σ_i Σ_{j≠i} ω_j KL(P_j ‖ P_i)
  outer (eq. 5)  ω ← argmin_ω L_val(θ − γ ∇_θ L(θ, ω), ω) on the probability simplex,
taken as one mirror-descent (exponentiated-gradient) step ω_i ← ω_i exp(−η g_i) / Z.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F


def _full(z: torch.Tensor) -> torch.Tensor:
    """Half-precision logits in float32; float32 and float64 as they are (the tests run in float64)."""
    return z.float() if z.dtype in (torch.float16, torch.bfloat16) else z


class _MutualKL(torch.autograd.Function):
    """kl_j = Σ_{i≠j} KL(P_j ‖ P_i) for K peers, with the target side P_j carrying no gradient.

    Inputs: K log-probs L_i [N, V] (differentiable), then the same peers' probabilities P_i = exp(L_i)
    [N, V] (constants, computed by the caller with softmax); output [K]. With S = Σ_i L_i,
        kl_j = Σ_{i≠j} Σ P_j (L_j − L_i) = K ⟨P_j, L_j⟩ − ⟨P_j, S⟩,
    two dot products per peer. The derivative is that of the formula with P_j and the first L_j
    detached (∂kl_j/∂L_i = −P_j for i ≠ j, 0 for i = j), written out so that a step costs a few
    passes over the K·N·V values instead of the dozen an autograd graph of the elementwise formula
    keeps: backward, for output gradient g, is ∂/∂L_i = −(Σ_j g_j P_j − g_i P_i); the forward-mode
    derivative (for the hypergradient's JVP) is d kl_j = −⟨P_j, dS − dL_j⟩.
    """

    @staticmethod
    def forward(*tensors):
        k = len(tensors) // 2
        logp, probs = tensors[:k], tensors[k:]
        total = logp[0].clone()
        for lp in logp[1:]:
            total.add_(lp)
        return torch.stack([k * _dot(p, lp) - _dot(p, total) for p, lp in zip(probs, logp)])

    @staticmethod
    def setup_context(ctx, inputs, output):
        probs = inputs[len(inputs) // 2:]
        ctx.save_for_backward(*probs)
        ctx.save_for_forward(*probs)

    @staticmethod
    def backward(ctx, g):
        probs = ctx.saved_tensors
        mix = probs[0] * g[0]  # Σ_j g_j P_j
        for gj, p in zip(g[1:], probs[1:]):
            mix.add_(p * gj)
        # −(mix − g_i P_i), with g_i P_i rounded as in mix: exactly 0 when only g_i is nonzero
        return (*((p * gi).sub_(mix) for gi, p in zip(g, probs)), *(None for _ in probs))

    @staticmethod
    def jvp(ctx, *tangents):
        k = len(tangents) // 2
        probs = ctx.saved_tensors
        d = [t if t is not None else torch.zeros_like(p) for t, p in zip(tangents[:k], probs)]
        total = d[0].clone()
        for t in d[1:]:
            total.add_(t)
        return torch.stack([_dot(p, t) - _dot(p, total) for p, t in zip(probs, d)])


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ a ⊙ b over all elements, in one pass (a BLAS dot product)."""
    return torch.dot(a.reshape(-1), b.reshape(-1))


def wml_parts(logits: list[torch.Tensor], labels: torch.Tensor, alpha: float, n_tokens: float) -> torch.Tensor:
    """ℓ_j = ∂L/∂ω_j for every peer j, so that the inner loss is L = Σ_j ω_j ℓ_j.

    logits: K peers' [N, V] at the N valid positions; labels [N]; returns [K].
    ℓ_j = (1 − α) CE_j + α Σ_{i≠j} KL(P_j ‖ P_i): peer j's own cross-entropy, plus how far
    every other peer i is from peer j's distribution. In KL(P_j ‖ P_i) the target P_j is
    detached: the term teaches peer i to match peer j (weighted by j's standing ω_j) and
    must not pull peer j towards i at the same time, or a strong peer would be dragged to
    the weak ones in proportion to its own weight. Peer j moves only through its own CE_j
    and through the terms where the others are its targets (_MutualKL computes the KL sums).
    With one peer, ℓ = [CE]: ordinary training, unscaled by 1 − α.
    Each term is summed over valid tokens and divided by `n_tokens`.
    """
    if len(logits) == 1:
        return F.cross_entropy(_full(logits[0]), labels, reduction="sum")[None] / n_tokens
    logp = [F.log_softmax(_full(z), dim=-1) for z in logits]
    probs = [F.softmax(_full(z).detach(), dim=-1) for z in logits]
    kl = _MutualKL.apply(*logp, *probs)
    ce = torch.stack([F.nll_loss(lp, labels, reduction="sum") for lp in logp])
    return ((1 - alpha) * ce + alpha * kl) / n_tokens


def vanilla_parts(logits: list[torch.Tensor], teacher_logits: torch.Tensor, labels: torch.Tensor, alpha: float,
                  n_tokens: float) -> torch.Tensor:
    """ℓ_j = (1 − α) CE_j + α KL(P_teacher ‖ P_j): every peer distils from one frozen teacher
    instead of from the others (the teacher side carries no gradient). logits: K × [N, V];
    teacher_logits [N, V]; returns [K]."""
    target = F.log_softmax(_full(teacher_logits).detach(), dim=-1)
    parts = []
    for z in logits:
        lp = F.log_softmax(_full(z), dim=-1)
        parts.append(
            ((1 - alpha) * F.nll_loss(lp, labels, reduction="sum") + alpha * (target.exp() * (target - lp)).sum())
            / n_tokens
        )
    return torch.stack(parts)


def ensemble_loss(
    logits: list[torch.Tensor], labels: torch.Tensor, omega: torch.Tensor, n_tokens: float
) -> torch.Tensor:
    """Validation loss of the ω-weighted ensemble: −Σ log Σ_i ω_i p_i(y) / n_tokens. logits: K × [N, V]; omega [K]."""
    logp = torch.stack([F.log_softmax(_full(z), dim=-1).gather(1, labels[:, None])[:, 0] for z in logits])  # [K, N]
    return -torch.logsumexp(logp + torch.log(omega.to(logp.dtype))[:, None], dim=0).sum() / n_tokens


def hypergradient(params: list[torch.Tensor], inner_parts: Callable[[list[torch.Tensor]], torch.Tensor],
                  val_loss: Callable[[list[torch.Tensor], torch.Tensor], torch.Tensor], omega: torch.Tensor,
                  gamma: float) -> torch.Tensor:
    """dL_val(θ', ω)/dω through one inner step θ' = θ − γ ∇_θ L(θ, ω), L = Σ_j ω_j ℓ_j(θ):

        g_i = ∂L_val/∂ω_i (θ', ω) − γ ⟨∇_θ' L_val(θ', ω), ∇_θ ℓ_i(θ)⟩

    (DARTS-style one-step unrolling, Liu et al. 2019, eq. 7, with the exact second term:
    L is linear in ω, so ∂θ'/∂ω_i = −γ ∇_θ ℓ_i). Both terms are computed with autograd from
    live tensors; nothing is detached on the way (the reference implementation's second term
    came from a detached tensor and was always zero). The second term for all K peers at once
    is the Jacobian-vector product (∂ℓ/∂θ) · ∇_θ' L_val: one forward-mode pass over the inner
    parts (torch.func.jvp), not one backward pass per peer. Every operation in `inner_parts`
    needs a forward-mode derivative (CPU SDPA attention has none: use eager attention).

    params: the trainable tensors θ (leaves with requires_grad); inner_parts(θ) -> ℓ [K] on a
    training batch; val_loss(θ, ω) -> scalar on a validation batch; returns g [K] (detached).
    """
    parts = inner_parts(params)
    grads = torch.autograd.grad((omega.detach() * parts).sum(), params, allow_unused=True)
    stepped = [(p - gamma * g if g is not None else p).detach().requires_grad_(True) for p, g in zip(params, grads)]
    w = omega.detach().clone().requires_grad_(True)
    lv = val_loss(stepped, w)
    d_omega, *d_theta = torch.autograd.grad(lv, [w, *stepped], allow_unused=True)
    d_omega = d_omega if d_omega is not None else torch.zeros_like(w)
    tangents = tuple(d if d is not None else torch.zeros_like(p) for p, d in zip(params, d_theta))
    _, second = torch.func.jvp(lambda *ps: inner_parts(list(ps)), tuple(p.detach() for p in params), tangents)
    return (d_omega - gamma * second).detach()


def mirror_step(omega: torch.Tensor, g: torch.Tensor, eta: float) -> torch.Tensor:
    """Exponentiated gradient on the simplex: ω_i exp(−η g_i) / Σ_j ω_j exp(−η g_j) (in log space, so it cannot
    overflow)."""
    logits = torch.log(omega) - eta * g
    return torch.softmax(logits, dim=0)


def eta_at(step: int, peak: float, final: float, warmup: int, total: int) -> float:
    """The peer-weight step size: linear warmup to `peak` over `warmup` outer steps, then cosine to `final` at
    `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return final + 0.5 * (peak - final) * (1 + math.cos(math.pi * progress))
