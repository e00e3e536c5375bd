"""What the logit terms beyond logit_kd share: a divergence D(p ‖ q) between a teacher target p and
the student q, both tempered at T, scaled by T² and summed over the teachers' targets; from the
teachers online, or from the teacher cache on the (k + 1)-way partition of the vocabulary.

Each such term (reverse_kl.py, jsd.py, tvd.py, skew_kl.py) gives a row function
`rows(p_logp [N, C], q_logp [N, C]) -> [N]` over log-probabilities, and inherits the rest.

The cache knows the teacher only on its top k tokens plus the mass of the rest, so a cached term
is the same divergence between the two coarsened (k + 1)-way distributions: equal to the dense
value when the rest is 0, and never above it otherwise (every term here is an f-divergence, and
coarsening a partition cannot raise one).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses.base import LossTerm, Needs
from distill.losses.logit_kd import check_ensemble, teacher_logprobs

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


def divergence_kd(rows, student_logits: torch.Tensor, teacher_logits: list[torch.Tensor], temperature: float, n_tokens: float,
                  ensemble: str = "mean_logits", weights: list[float] | None = None) -> torch.Tensor:
    """T² · Σ_targets w · Σ_rows D(p ‖ q) / n_tokens, with the teachers' targets from `teacher_logprobs`.

    rows: the divergence, (p_logp [N, V], q_logp [N, V]) -> [N]; student_logits [N, V];
    teacher_logits: one [N, V] per teacher (no gradient needed); returns a scalar.
    """
    q = F.log_softmax(student_logits.float() / temperature, dim=-1)
    total = sum(w * rows(p.detach(), q).sum() for w, p in teacher_logprobs(teacher_logits, temperature, ensemble, weights))
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


def cached_divergence_kd(rows, student_logits: torch.Tensor, top_logp: torch.Tensor, top_ids: torch.Tensor, rest: torch.Tensor,
                         temperature: float, n_tokens: float) -> torch.Tensor:
    """T² · Σ_rows D(p ‖ q) / n_tokens on the cache's (k + 1)-way partition (`coarsen`); returns a scalar."""
    p, q = coarsen(student_logits, top_logp, top_ids, rest, temperature)
    return temperature ** 2 * rows(p, q).sum() / n_tokens


class LogitTerm(LossTerm):
    """A registered subclass sets `rows` (a staticmethod over log-probabilities, or a method using its
    parameters) and `symbol` (how the formula names the divergence). Its Params have `weight`,
    `temperature` and `ensemble` (and any parameter of the divergence)."""

    needs = Needs(teacher_logits=True, cache=True)

    def rows(self, p_logp: torch.Tensor, q_logp: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @classmethod
    def check(cls, params, cfg) -> None:
        check_ensemble(cls.key, params.ensemble, cfg)

    def settings(self) -> str:
        """The divergence's own parameters in the formula (`beta=0.5`), if any."""
        return ""

    def describe(self, teachers):
        extra = self.settings()
        return f"{self.weight:g}*{self.key}(T={self.params.temperature:g}, {self.params.ensemble}{', ' + extra if extra else ''})"

    def __call__(self, batch, parts):
        p = self.params
        if batch.cached is not None:
            top_logp, top_ids, rest = batch.cached
            return cached_divergence_kd(self.rows, batch.logits, top_logp, top_ids, rest, p.temperature, batch.n_tokens)
        return divergence_kd(self.rows, batch.logits, batch.teacher_logits, p.temperature, batch.n_tokens, p.ensemble,
                             list(batch.teacher_weights))
