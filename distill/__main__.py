"""python -m distill CONFIG [key=value ...] [--resume | --overwrite]: train a student from teachers.
python -m distill cache-teachers CONFIG [key=value ...]: store the teachers' top-k once.

Reads top to bottom: config -> train.session.run with the distillation builder (student,
optional warm start, teachers checked and frozen, the training wrapper with its composite
loss, the distillation trainer) -> model/ holds the plain student. `--help` lists every key.
"""
from __future__ import annotations

import sys
from pathlib import Path

from common import config as cfglib
from common.errors import exit_on_user_error, leave
from common.ranks import say

# distill.config (its loss registry imports torch) is imported inside the functions: under main's boundary, so that
# Ctrl-C or SIGTERM while torch loads is one line too (tests/test_interrupts.py)


def build_parser():
    from distill.config import DistillRunConfig
    from train.session import run_parser

    return run_parser(
        "python -m distill",
        "Distil teachers into a student in runs/<experiment>/<name>/ (python -m distill "
        "cache-teachers CONFIG stores the teachers' top-k log-probabilities first).",
        DistillRunConfig,
        "config/runs/demo-kd.yaml",
        "distill.losses.hidden_mse.weight=0.3",
    )


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "cache-teachers":
        from distill.cache import main as cache_main

        return cache_main(argv[1:])
    from distill.config import DistillRunConfig

    args = build_parser().parse_args(argv)
    cfg = cfglib.load(DistillRunConfig, args.config, args.overrides)
    from train.session import run

    return run(cfg, argv, args.resume, args.overwrite, build_distillation)


def build_distillation(cfg, tokenizer, prepared, device):
    """The student (random or warm-started), the frozen teachers, and the wrapper that trains both projections and
    heads."""
    from distill.student import build_student
    from distill.teachers import load_teachers, num_layers
    from distill.trainer import DistillTrainer
    from distill.wrapper import DistillationWrapper
    from train.session import Built

    student = build_student(cfg, tokenizer)
    # With a teacher cache the teachers are checked (and their files fingerprinted) but never loaded.
    teachers = load_teachers(cfg, Path(prepared.tokenizer_dir), num_layers(student.config), device,
                             weights=not cfg.distill.teacher_cache)
    from common.paths import model_hash
    from distill.cache import TeacherCache, fingerprint

    cache = None
    if cfg.distill.teacher_cache:
        expected = fingerprint(cfg, Path(prepared.tokenizer_dir), prepared.fingerprint)
        cache = TeacherCache(cfg.distill.teacher_cache, expected)
        hashes = expected["teachers"]
    else:
        hashes = [model_hash(Path(t.path)) for t in cfg.distill.teachers]
    wrapper = DistillationWrapper(student, teachers, cfg.distill.losses, cfg.train.logits_chunk)
    n_student = sum(p.numel() for p in student.parameters())
    n_extra = sum(p.numel() for p in wrapper.parameters()) - n_student
    who = (
        ", ".join(
            f"{t.name} ({sum(p.numel() for p in t.model.parameters()):,})"
            if t.model is not None
            else f"{t.name} (cached)"
            for t in teachers
        )
        or "none"
    )
    say(
        f"loss = {wrapper.formula(teachers)}"
        + (f" (teacher targets from the cache {cfg.distill.teacher_cache})" if cache else "")
    )
    return Built(
        trained=wrapper,
        objective="causal",
        export=lambda model_dir: student.save_pretrained(str(model_dir)),
        trainer_cls=DistillTrainer,
        trainer_kwargs={"teachers": teachers, "cache": cache},
        block_index=cache is not None,
        all_parameters_used=wrapper.every_parameter_used,
        inputs={f"distill.teachers[{i}].path": h for i, h in enumerate(hashes)},
        banner=f"student {cfg.student.arch}: {n_student:,} parameters (+{n_extra:,} in projections/heads, not "
               "exported); "
        f"teachers: {who}" + (f"; warm start from {cfg.student.init_from}" if cfg.student.init_from else ""),
    )


if __name__ == "__main__":
    leave(main())
