"""Hard-label cross-entropy: the student's own next-token loss."""
from __future__ import annotations

from dataclasses import dataclass

from common.config import field
from distill.losses.base import LossTerm, Needs, register
from train.chunked import ce  # the pure function, shared with python -m train's causal loss (one convention)

__all__ = ["ce"]


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
