"""python -m train CONFIG [key=value ...] [--resume | --overwrite]: train a teacher or baseline.

Reads top to bottom: config -> train.session.run (run directory decision -> data and
tokenizer -> model -> Trainer -> export -> DONE). `--help` lists every config key with its doc.
"""
from __future__ import annotations

import sys

from common import config as cfglib
from common.errors import exit_on_user_error, leave
from train.config import RunConfig


def build_parser():
    from train.session import run_parser

    return run_parser(
        "python -m train",
        "Train a teacher or baseline LM into runs/<experiment>/<name>/ (see DESIGN.md, 'The run directory').",
        RunConfig,
        "config/runs/demo-teacher.yaml",
        "optim.lr=3e-4 data.train_dir=/data/babylm/train_10M",
    )


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    cfg = cfglib.load(RunConfig, args.config, args.overrides)
    from train.session import run

    return run(cfg, argv, args.resume, args.overwrite, build_plain_model)


def build_plain_model(cfg, tokenizer, prepared, device):
    """A freshly initialised model of `model.arch`, trained with its own loss."""
    from train import models
    from train.session import Built

    objective, model = models.build_model(cfg.model, tokenizer)
    return Built(trained=model, objective=objective,
                 banner=f"{cfg.model.arch}: {sum(p.numel() for p in model.parameters()):,} parameters, {objective} LM",
                 all_parameters_used=True)  # every architecture of config/models (tests/test_models.py checks)


if __name__ == "__main__":
    leave(main())
