"""Distillation from teachers and weighted mutual learning (losses, loss registry, distillation trainer)."""
