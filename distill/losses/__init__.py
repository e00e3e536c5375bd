"""Distillation losses: one registered class per term, each in its own module of this package.

Conventions shared by every term (DESIGN.md, "Losses"):
- The inputs are already restricted to the valid positions of the batch, flattened to N
  rows: row n is one position whose next-token label is not -100 (the caller shifts).
- Each term returns (sum over those N rows) / `n_tokens`, where `n_tokens` counts the valid
  positions of the whole accumulated (and, across ranks, gathered) batch. So a weight means
  the same at any sequence length, batch size or accumulation, and never scales with T or V
  as `KLDivLoss(reduction="batchmean")` on [B, T, V] does.
- Temperatures are applied here, not by the caller.

Every module here except `base` is imported on first use, so a new term is one new file
(base.LossTerm says what it defines). `REGISTRY` maps each YAML key to its class, in formula
order; the pure functions each module lists in `__all__` are available from this package
(`from distill import losses as L; L.logit_kd(...)`).
"""
from __future__ import annotations

import importlib
import pkgutil

from distill.losses.base import REGISTRY, Batch, LossTerm, Needs, Setup, register

__all__ = ["REGISTRY", "Batch", "LossTerm", "Needs", "Setup", "register"]

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name != "base" and not _info.name.startswith("_"):
        _module = importlib.import_module(f"{__name__}.{_info.name}")
        for _name in getattr(_module, "__all__", ()):
            globals()[_name] = getattr(_module, _name)
            __all__.append(_name)
