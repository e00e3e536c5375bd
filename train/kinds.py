"""The three kinds of run YAML (a model trained alone, a distilled student, WML peers): which
schema reads each and which entry point runs it. A recipe's kind follows from its sections."""
from __future__ import annotations

from typing import Callable

MODULES = {"train": ["train"], "distill": ["distill"], "wml": ["distill.wml", "train"]}


def recipe_kind(raw: dict) -> str:
    """'distill' (a `distill:` section), 'wml' (a `wml:` section) or 'train'."""
    return "distill" if "distill" in raw else "wml" if "wml" in raw else "train"


def schema(kind: str) -> type:
    if kind == "distill":
        from distill.config import DistillRunConfig

        return DistillRunConfig
    if kind == "wml":
        from distill.wml.config import WMLRunConfig

        return WMLRunConfig
    from train.config import RunConfig

    return RunConfig


def entry_point(kind: str) -> Callable[[list[str]], int]:
    """The entry point's main(argv), for running a recipe in this process; argv starts with the recipe."""
    if kind == "distill":
        from distill.__main__ import main

        return main
    if kind == "wml":
        from distill.wml.__main__ import main as wml_main

        return lambda argv: wml_main(["train", *argv])
    from train.__main__ import main

    return main
