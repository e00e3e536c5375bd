"""Contrastive (InfoNCE) KD between the student's and each teacher's last hidden states."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from common.config import field
from distill.losses.base import LossTerm, Needs, register

__all__ = ["contrastive"]


def contrastive(
    student: torch.Tensor, teacher: torch.Tensor, tau: float, max_negatives: int, n_tokens: float
) -> torch.Tensor:
    """InfoNCE between student and teacher states of the same token (van den Oord et al.
    2018, eq. 4; as contrastive representation distillation, Tian et al. 2020):
    −log( exp(cos(s_n, t_n)/τ) / Σ_m exp(cos(s_n, t_m)/τ) ), where the t_m are the teacher
    states of the other tokens in the same group.

    student [N, H] (projected to the teacher's width), teacher [N, H]; returns a scalar.
    Negatives are bounded: row n is grouped with the rows n' ≡ n (mod G), G = ⌈N / (M + 1)⌉,
    so each group holds at most M + 1 rows from different sequences and positions, and the
    similarity matrices hold at most N · (M + 1) entries whatever the batch size.
    """
    n = student.shape[0]
    s = F.normalize(student.float(), dim=-1)
    t = F.normalize(teacher.detach().float(), dim=-1)
    groups = max(1, -(-n // (max_negatives + 1)))
    total = student.new_zeros((), dtype=torch.float32)
    for g in range(groups):
        rows = torch.arange(g, n, groups, device=student.device)
        sim = s[rows] @ t[rows].T / tau  # [m, m]: diagonal = positives
        total = total + F.cross_entropy(sim, torch.arange(len(rows), device=student.device), reduction="sum")
    return total / n_tokens


@dataclass
class ContrastiveParams:
    weight: float = field(
        0.0, "weight of InfoNCE between projected student and teacher last hidden states; 0 = off", ge=0
    )
    tau: float = field(0.1, "temperature τ of the cosine similarities", gt=0)
    max_negatives: int = field(255, "negatives per token at most (tokens are grouped so memory stays flat)", ge=1)


@register
class Contrastive(LossTerm):
    """One projection per teacher (student width -> its width); the teachers' terms are averaged. With a
    teacher that has its own tokenizer, only the aligned rows take part (distill/align.py): positives
    and negatives alike; the others add 0."""

    key, title, Params, order = "contrastive", "contrastive (InfoNCE) KD", ContrastiveParams, 30
    needs = Needs(teacher_hidden=True, student_hidden=True, any_tokenizer=True)

    def __init__(self, params, setup):
        super().__init__(params, setup)
        self.widths = [t.hidden_size for t in setup.teachers]
        self.hidden_size = setup.hidden_size

    def parts(self):
        return {
            f"contrastive_t{k}": nn.Linear(self.hidden_size, width, bias=False) for k, width in enumerate(self.widths)
        }

    def describe(self, teachers):
        return f"{self.weight:g}*contrastive(tau={self.params.tau:g}, negatives<={self.params.max_negatives})"

    def __call__(self, batch, parts):
        p, last = self.params, batch.rows(batch.student_hidden[-1])
        aligned = batch.teacher_aligned or [None] * len(batch.teacher_hidden)
        total = last.new_zeros((), dtype=torch.float32)
        for k, t_hidden in enumerate(batch.teacher_hidden):
            s, t = parts[f"contrastive_t{k}"](last), batch.rows(t_hidden[-1])
            if aligned[k] is not None:
                keep = aligned[k].nonzero().squeeze(1)
                s, t = s[keep], t[keep]
            if s.shape[0]:
                total = total + contrastive(s, t, p.tau, p.max_negatives, batch.n_tokens)
            else:  # no aligned row in this batch: 0, its projection still in the graph (DDP expects its gradient)
                total = total + 0.0 * s.sum()
        return total / len(batch.teacher_hidden)
