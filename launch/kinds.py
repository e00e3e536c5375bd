"""The three kinds of run YAML (a model trained alone, a distilled student, WML peers): which schema
reads each and which entry point runs it. A recipe's kind follows from its sections.

One table, `KINDS`, holds every kind; its schema and entry point are `"module:attribute"` strings
imported only when asked for, so planning a grid never imports a trainer it does not run.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class Kind:
    schema: str                 # "module:class" of the run config
    main: str                   # "module:function" of the entry point, main(argv) -> exit code
    module: tuple[str, ...]     # `python -m <module...>` runs it as its own process
    command: tuple[str, ...] = field(default=())  # the entry point's subcommand, before the recipe


KINDS = {
    "train": Kind("train.config:RunConfig", "train.__main__:main", ("train",)),
    "distill": Kind("distill.config:DistillRunConfig", "distill.__main__:main", ("distill",)),
    "wml": Kind("distill.wml.config:WMLRunConfig", "distill.wml.__main__:main", ("distill.wml",), ("train",)),
}


def resolve(ref: str):
    """The object a "module:attribute" string names (imported now)."""
    module, _, attribute = ref.partition(":")
    return getattr(importlib.import_module(module), attribute)


def recipe_and_overrides(argv: list[str]) -> tuple[str, list[str]]:
    """The run YAML and its key=value overrides in an entry point's argv (its flags, --resume and --overwrite, take
    no value)."""
    return argv[0], [a for a in argv[1:] if not a.startswith("--")]


def recipe_kind(raw: dict) -> str:
    """'distill' (a `distill:` section), 'wml' (a `wml:` section) or 'train'."""
    return "distill" if "distill" in raw else "wml" if "wml" in raw else "train"


def schema(kind: str) -> type:
    return resolve(KINDS[kind].schema)


def entry_point(kind: str) -> Callable[[list[str]], int]:
    """The entry point's main(argv), for running a recipe in this process; argv starts with the recipe."""
    main, sub = resolve(KINDS[kind].main), list(KINDS[kind].command)
    return lambda argv: main([*sub, *argv])


def module_argv(kind: str) -> list[str]:
    """`-m <module> [command]`: the arguments before the recipe that run this kind as its own process."""
    return ["-m", *KINDS[kind].module, *KINDS[kind].command]
