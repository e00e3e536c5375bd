"""Hard-label cross-entropy: the student's own next-token loss."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from common.config import field
from distill.losses.base import LossTerm, Needs, register

__all__ = ["ce"]


def ce(student_logits: torch.Tensor, labels: torch.Tensor, n_tokens: float) -> torch.Tensor:
    """Hard-label cross-entropy.

    student_logits [N, V], labels [N] (token ids); returns a scalar.
    """
    return F.cross_entropy(student_logits.float(), labels, reduction="sum") / n_tokens


@dataclass
class CEParams:
    weight: float = field(0.0, "weight of the hard-label cross-entropy; 0 = off", ge=0)


@register
class CE(LossTerm):
    key, title, Params, order = "ce", "hard-label cross-entropy", CEParams, 0
    needs = Needs(teacher=False)
    rowwise = True

    def __call__(self, batch, parts):
        return ce(batch.logits, batch.targets, batch.n_tokens)
