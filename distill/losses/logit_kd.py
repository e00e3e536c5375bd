"""Logit distillation: T² · KL(teacher ‖ student) (Hinton et al. 2015), from teachers run online
or from the teacher cache's top-k; and the teacher-ensemble targets other logit terms share."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from common.config import ConfigError, field
from distill.losses.base import LossTerm, Needs, register

__all__ = ["logit_kd", "cached_logit_kd", "teacher_logprobs"]

Ensemble = Literal["mean_logits", "mean_probs", "per_teacher"]


def _kl_rows(target_logp: torch.Tensor, student_logp: torch.Tensor) -> torch.Tensor:
    """Σ_rows KL(p ‖ q) with p, q given as log-probabilities [N, V]."""
    return (target_logp.exp() * (target_logp - student_logp)).sum()


def teacher_logprobs(teacher_logits: list[torch.Tensor], temperature: float, ensemble: str,
                     weights: list[float] | None = None) -> list[tuple[float, torch.Tensor]]:
    """The target distributions (weight, log p [N, V]) for an ensemble of teachers.

    mean_logits: one target, softmax of the mean of the teachers' logits / T (BabyLlama,
    Timiryasov & Tastet 2023). mean_probs: one target, the mean of the teachers'
    tempered softmaxes. per_teacher: one target per teacher with its own weight.
    """
    if ensemble == "mean_logits":
        mean = torch.stack([t.float() for t in teacher_logits]).mean(0)
        return [(1.0, F.log_softmax(mean / temperature, dim=-1))]
    if ensemble == "mean_probs":
        logps = torch.stack([F.log_softmax(t.float() / temperature, dim=-1) for t in teacher_logits])
        return [(1.0, torch.logsumexp(logps, dim=0) - torch.log(torch.tensor(float(len(teacher_logits)))))]
    if ensemble == "per_teacher":
        weights = weights or [1.0] * len(teacher_logits)
        return [(w, F.log_softmax(t.float() / temperature, dim=-1)) for w, t in zip(weights, teacher_logits)]
    raise ValueError(f"unknown ensemble {ensemble!r}")


def logit_kd(student_logits: torch.Tensor, teacher_logits: list[torch.Tensor], temperature: float, n_tokens: float,
             ensemble: str = "mean_logits", weights: list[float] | None = None) -> torch.Tensor:
    """T² · KL(teacher ‖ student) at temperature T (Hinton et al. 2015, "Distilling the
    knowledge in a neural network", sec. 2: the T² keeps gradient magnitudes comparable
    across temperatures).

    student_logits [N, V]; teacher_logits: one [N, V] per teacher (no gradient needed);
    returns a scalar. The teachers' targets come from `teacher_logprobs` (`ensemble`).
    """
    q = F.log_softmax(student_logits.float() / temperature, dim=-1)
    total = sum(
        w * _kl_rows(p.detach(), q) for w, p in teacher_logprobs(teacher_logits, temperature, ensemble, weights)
    )
    return temperature ** 2 * total / n_tokens


def cached_logit_kd(student_logits: torch.Tensor, top_logp: torch.Tensor, top_ids: torch.Tensor, rest: torch.Tensor,
                    temperature: float, n_tokens: float) -> torch.Tensor:
    """T² · KL(teacher ‖ student) with the teacher known only on its top-k support plus the rest.

    student_logits [N, V]; top_logp [N, k]: the teacher ensemble's tempered log-probabilities
    of its k most likely tokens; top_ids [N, k]; rest [N]: the teacher's mass outside them.
    The rest is matched against the student's mass outside the same k tokens, so the term is
    the KL between the two (k + 1)-way distributions: equal to the dense KL when the rest is
    0, and never above it otherwise (coarsening a partition cannot raise a KL).
    """
    z = student_logits.float() * (1.0 / temperature)
    q_top = F.log_softmax(z, dim=-1).gather(1, top_ids.long())  # one fused pass each way (a logsumexp takes several)
    rest_q = torch.log1p(-q_top.exp().sum(-1).clamp_max(1.0 - 1e-6))
    rest_p = rest.float().clamp_min(0.0)
    kl = (top_logp.float().exp() * (top_logp.float() - q_top)).sum(-1) + rest_p * (
        torch.log(rest_p.clamp_min(1e-12)) - rest_q
    )
    return temperature ** 2 * kl.sum() / n_tokens


def check_ensemble(key: str, ensemble: str, cfg) -> None:
    """per_teacher weights every teacher by distill.teachers[k].weight: at least one must be positive."""
    teachers = cfg.distill.teachers
    if ensemble == "per_teacher" and teachers and not any(t.weight > 0 for t in teachers):
        raise ConfigError(
            "distill.teachers",
            f"every teacher's weight is 0, so {key} (ensemble per_teacher) would distil nothing; "
            f"give the teachers positive weights",
        )


@dataclass
class LogitKDParams:
    weight: float = field(0.0, "weight of T²·KL(teacher ‖ student); 0 = off", ge=0)
    temperature: float = field(2.0, "softmax temperature T of teachers and student", gt=0)
    ensemble: Ensemble = field(
        "mean_logits",
        "how teachers combine: mean of logits (BabyLlama), mean of probabilities, or one KL per teacher with its "
        "weight",
    )


@register
class LogitKD(LossTerm):
    key, title, Params, order = "logit_kd", "logit distillation (Hinton et al. 2015)", LogitKDParams, 10
    needs = Needs(teacher_logits=True, cache=True)
    rowwise = True

    @classmethod
    def check(cls, params, cfg) -> None:
        check_ensemble(cls.key, params.ensemble, cfg)

    def describe(self, teachers):
        return f"{self.weight:g}*logit_kd(T={self.params.temperature:g}, {self.params.ensemble})"

    def __call__(self, batch, parts):
        p = self.params
        if batch.cached is not None:
            top_logp, top_ids, rest = batch.cached
            return cached_logit_kd(batch.logits, top_logp, top_ids, rest, p.temperature, batch.n_tokens)
        return logit_kd(
            batch.logits, batch.teacher_logits, p.temperature, batch.n_tokens, p.ensemble, list(batch.teacher_weights)
        )
