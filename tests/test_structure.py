"""The dependency rule, read from the source: common is the ground; tokenizer, eval and results use only
common; train uses tokenizer; distill uses train (and eval's model loading); the launching side (launch,
grid, launch_grid.py) sits above all and nothing below imports it. Lazy imports inside functions count."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGES = ("common", "tokenizer", "eval", "results", "train", "distill", "launch", "grid")
ALLOWED = {
    "common": set(),
    "tokenizer": {"common"},
    "eval": {"common"},
    "results": {"common"},
    "train": {"common", "tokenizer"},
    "distill": {"common", "tokenizer", "train", "eval"},
    "launch": {"common", "tokenizer", "train", "distill", "eval", "results"},
    "grid": {"common", "tokenizer", "train", "distill", "eval", "results", "launch"},
}


def imported_packages(path: Path) -> dict[str, int]:
    """Our packages that a file imports (anywhere in it, functions included) -> the first line that does."""
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
        for name in names:
            top = name.split(".")[0]
            if top in PACKAGES:
                found.setdefault(top, node.lineno)
    return found


def violations(package: str) -> list[str]:
    out = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for other, line in imported_packages(path).items():
            if other != package and other not in ALLOWED[package]:
                out.append(f"{path.relative_to(ROOT)}:{line} imports {other}")
    return out


@pytest.mark.parametrize("package", PACKAGES)
def test_dependencies_point_one_way(package):
    assert violations(package) == []


def test_the_rule_catches_a_lazy_import(tmp_path):
    """The checker sees an import inside a function, the kind that made train and distill depend on each other."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from distill.config import DistillRunConfig\n    return DistillRunConfig\n")
    assert imported_packages(module) == {"distill": 2}
