"""What the logit terms beyond logit_kd share: a divergence D(p ‖ q) between a teacher target p and
the student q, both tempered at T, scaled by T² and summed over the teachers' targets; from the
teachers online, or from the teacher cache on the (k + 1)-way partition of the vocabulary.

Each such term (reverse_kl.py, jsd.py, tvd.py, skew_kl.py) gives a row function
`divergence(p_logp [N, C], q_logp [N, C][, its parameter]) -> [N]` over log-probabilities and
its Params (a `LogitParams`), and inherits the rest.

The cache knows the teacher only on its top k tokens plus the mass of the rest, so a cached term
is the same divergence between the two coarsened (k + 1)-way distributions: equal to the dense
value when the rest is 0, and never above it otherwise (every term here is an f-divergence, and
coarsening a partition cannot raise one).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from common.config import field
from distill.losses.base import LossTerm, Needs
from distill.losses.logit_kd import Ensemble, check_ensemble, teacher_logprobs

__all__ = ["divergence_kd", "cached_divergence_kd", "coarsen", "with_gradient"]

LOG_FLOOR = -27.6  # log(1e-12): a probability the cache rounded to 0 still has a finite logarithm
TINY = torch.finfo(torch.float32).tiny  # a mixture whose parts both underflowed to 0 still has a finite logarithm


class _RowsWithGradient(torch.autograd.Function):
    """Rows of a divergence whose gradient with respect to the student's log-probabilities is computed
    in the same pass as its value (fewer [N, C] passes and saved tensors than autograd's graph)."""

    @staticmethod
    def forward(ctx, p_logp, q_logp, value_and_grad):
        value, grad = value_and_grad(p_logp, q_logp)
        ctx.save_for_backward(grad)
        return value

    @staticmethod
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        return None, grad_out[:, None] * grad, None


def with_gradient(value_and_grad):
    """Rows (p_logp, q_logp, *params) -> [N] from `value_and_grad(p_logp, q_logp, *params) -> (rows [N],
    ∂rows/∂q_logp [N, C])`; the teacher's side p gets no gradient."""
    def rows(p_logp, q_logp, *params):
        return _RowsWithGradient.apply(p_logp, q_logp, lambda p, q: value_and_grad(p, q, *params))

    rows.__doc__ = value_and_grad.__doc__
    return rows


def divergence_kd(
    rows,
    student_logits: torch.Tensor,
    teacher_logits: list[torch.Tensor],
    temperature: float,
    n_tokens: float,
    ensemble: str = "mean_logits",
    weights: list[float] | None = None,
) -> torch.Tensor:
    """T² · Σ_targets w · Σ_rows D(p ‖ q) / n_tokens, with the teachers' targets from `teacher_logprobs`.

    rows: the divergence, (p_logp [N, V], q_logp [N, V]) -> [N]; student_logits [N, V];
    teacher_logits: one [N, V] per teacher (no gradient needed); returns a scalar.
    """
    q = F.log_softmax(student_logits.float() / temperature, dim=-1)
    total = sum(
        w * rows(p.detach(), q).sum() for w, p in teacher_logprobs(teacher_logits, temperature, ensemble, weights)
    )
    return temperature ** 2 * total / n_tokens


def coarsen(student_logits: torch.Tensor, top_logp: torch.Tensor, top_ids: torch.Tensor, rest: torch.Tensor,
            temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher and the student on the cache's partition: (p_logp, q_logp), each [N, k + 1],
    the k cached tokens then the rest.

    student_logits [N, V]; top_logp [N, k] the teacher's tempered log-probabilities of its top k;
    top_ids [N, k]; rest [N] the teacher's mass outside them.
    """
    q_top = F.log_softmax(student_logits.float() / temperature, dim=-1).gather(1, top_ids.long())
    q_rest = torch.log1p(-q_top.exp().sum(-1).clamp_max(1.0 - 1e-6))
    p_rest = torch.log(rest.float().clamp_min(1e-12))
    return (torch.cat([top_logp.float().clamp_min(LOG_FLOOR), p_rest[:, None]], dim=1),
            torch.cat([q_top, q_rest[:, None]], dim=1))


def cached_divergence_kd(
    rows,
    student_logits: torch.Tensor,
    top_logp: torch.Tensor,
    top_ids: torch.Tensor,
    rest: torch.Tensor,
    temperature: float,
    n_tokens: float,
) -> torch.Tensor:
    """T² · Σ_rows D(p ‖ q) / n_tokens on the cache's (k + 1)-way partition (`coarsen`); returns a scalar."""
    p, q = coarsen(student_logits, top_logp, top_ids, rest, temperature)
    return temperature ** 2 * rows(p, q).sum() / n_tokens


@dataclass
class LogitParams:
    """The fields every logit term's section has. A term's Params subclass this, restating `weight` with
    its own doc (it stays the first field) and adding its divergence's parameter, if any."""

    weight: float = field(0.0, "weight of the term; 0 = off", ge=0)
    temperature: float = field(1.0, "softmax temperature T of teachers and student", gt=0)
    ensemble: Ensemble = field("mean_logits", "how teachers combine (as logit_kd.ensemble)")


class LogitTerm(LossTerm):
    """A registered subclass sets `divergence` (a staticmethod over log-probabilities) and, when the
    divergence takes a parameter, `knob`: the name of that parameter in its Params (`beta`, `alpha`)."""

    needs = Needs(teacher_logits=True, cache=True)
    rowwise = True
    divergence: ClassVar
    knob: ClassVar[str | None] = None

    def rows(self, p_logp: torch.Tensor, q_logp: torch.Tensor) -> torch.Tensor:
        if self.knob is None:
            return self.divergence(p_logp, q_logp)
        return self.divergence(p_logp, q_logp, getattr(self.params, self.knob))

    @classmethod
    def check(cls, params, cfg) -> None:
        check_ensemble(cls.key, params.ensemble, cfg)

    def describe(self, teachers):
        extra = f", {self.knob}={getattr(self.params, self.knob):g}" if self.knob else ""
        return f"{self.weight:g}*{self.key}(T={self.params.temperature:g}, {self.params.ensemble}{extra})"

    def __call__(self, batch, parts):
        p = self.params
        if batch.cached is not None:
            top_logp, top_ids, rest = batch.cached
            return cached_divergence_kd(self.rows, batch.logits, top_logp, top_ids, rest, p.temperature, batch.n_tokens)
        return divergence_kd(self.rows, batch.logits, batch.teacher_logits, p.temperature, batch.n_tokens, p.ensemble,
                             list(batch.teacher_weights))
