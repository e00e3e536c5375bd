"""The distillation run config: a training run whose model is the `student`, plus a `distill` section.

    data, tokenizer, optim, train, output   as in `python -m train` (train/config.py)
    student                                 the architecture (as `model` there) and `init_from`
    distill.teachers                        local Hugging Face folders, frozen
    distill.losses.<key>                    one section per registered loss; weight 0 = off

`python -m distill --help` lists every key with its doc.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from common.config import ConfigError, field, planned_elsewhere, planning
from distill.cache_format import Format
from distill.losses import REGISTRY
from train.config import ModelConfig, RunSections, bf16_missing, check_run


@dataclass
class StudentConfig(ModelConfig):
    init_from: str = field(
        "",
        "warm start: a local Hugging Face folder whose weights initialise the student (same architecture); empty = "
        "random",
    )


@dataclass
class TeacherConfig:
    path: str = field("", "a local Hugging Face folder (a teacher run's model/), causal LM")
    tokenizer: Literal["shared", "own"] = field(
        "shared",
        "shared: the teacher uses the student's tokenizer; own: it reads the text re-tokenised with its own "
        "(positions aligned; terms uld, hidden_mse, contrastive)",
    )
    weight: float = field(1.0, "this teacher's weight where a term's ensemble is per_teacher (logit_kd, aux_kd)", ge=0)
    layer_map: dict[int, int] | str = field(
        "uniform",
        "hidden_mse: {teacher block: student block, ...} (0-based), or 'uniform' to spread the student's blocks over "
        "the teacher's",
    )


def _active_terms(self) -> dict[str, object]:
    """The terms with a positive weight, in registry order."""
    return {key: getattr(self, key) for key in REGISTRY if getattr(self, key).weight > 0}


LossesConfig = dataclasses.make_dataclass(
    "LossesConfig",
    [(key, term.Params, field(term.Params(), term.title)) for key, term in REGISTRY.items()],
    namespace={
        "active": _active_terms,
        "__doc__": "One section per registered loss term (distill.losses.REGISTRY); weight 0 = off.",
        "__module__": __name__,
    },
)


@dataclass
class DistillConfig:
    teachers: list[TeacherConfig] = field([], "the teachers, each a local Hugging Face folder")
    teacher_dtype: Literal["auto", "float32", "bfloat16"] = field(
        "auto", "teachers' precision: auto = bf16 on a GPU that supports it, else float32"
    )
    losses: LossesConfig = field(LossesConfig(), "the loss terms and their weights (weight 0 = off)")
    teacher_cache: str = field(
        "",
        "a folder written by `python -m distill cache-teachers`: read KD targets from it instead of running teachers",
    )
    cache_top_k: int = field(64, "cache-teachers: log-probabilities kept per token", ge=1)
    cache_format: Format = field(
        "q8",
        "cache-teachers: how the top-k is stored: q8 or q4 (quantised, by probability), s8 or s7 (quantised, ids as "
        "a set: smaller), fp16 (float16, as before)",
    )


@dataclass
class DistillRunConfig(RunSections):
    student: StudentConfig = field(StudentConfig(), "the student's architecture and optional warm start")
    distill: DistillConfig = field(DistillConfig(), "teachers (sharing the run's tokenizer) and loss terms")

    @property
    def model(self) -> StudentConfig:
        """The student, under the name the training code uses."""
        return self.student

    def check(self) -> None:
        try:
            check_run(self)
        except ConfigError as exc:
            if exc.key.startswith("model."):
                raise ConfigError(
                    "student." + exc.key[len("model.") :], exc.message.replace("model.", "student.")
                ) from None
            raise
        d = self.distill
        missing = bf16_missing() if d.teacher_dtype == "bfloat16" and not planned_elsewhere() else None
        if missing:
            raise ConfigError("distill.teacher_dtype", f"is bfloat16, which {missing}; use auto or float32")
        active = d.losses.active()
        if not active:
            raise ConfigError(
                "distill.losses",
                "no term has a positive weight; set e.g. distill.losses.ce.weight=0.5 "
                "distill.losses.logit_kd.weight=0.5",
            )
        needs_teacher = [k for k in active if REGISTRY[k].needs.teacher]
        if needs_teacher and not d.teachers:
            raise ConfigError(
                "distill.teachers",
                f"is empty but {', '.join(needs_teacher)} need a teacher; add - path: runs/<exp>/<teacher>/model",
            )
        for i, t in enumerate(d.teachers):
            if not t.path:
                raise ConfigError(f"distill.teachers[{i}].path", "is empty; give the teacher's model folder")
            if not planning() and not Path(t.path).is_dir():  # in a grid, maybe an earlier stage's model
                raise ConfigError(
                    f"distill.teachers[{i}].path",
                    f"{t.path} does not exist; train the teacher first "
                    f"(python -m train config/runs/<teacher>.yaml) or fix the path",
                )
            if isinstance(t.layer_map, str) and t.layer_map != "uniform":
                raise ConfigError(
                    f"distill.teachers[{i}].layer_map",
                    f"is {t.layer_map!r}; give a mapping {{teacher block: student block}} or 'uniform'",
                )
        own = [i for i, t in enumerate(d.teachers) if t.tokenizer == "own"]
        same_vocab = [k for k in needs_teacher if not REGISTRY[k].needs.any_tokenizer]
        if own and same_vocab:
            raise ConfigError(
                f"distill.teachers[{own[0]}].tokenizer",
                f"is own, but {', '.join(same_vocab)} compare teacher and student "
                f"token by token over one vocabulary; use distill.losses.uld (and hidden_mse, contrastive) "
                f"with this teacher, or give it the student's tokenizer",
            )
        if own and d.teacher_cache:
            raise ConfigError(
                "distill.teacher_cache",
                f"holds top-k ids of the student's vocabulary; distill.teachers[{own[0]}] has its own "
                f"tokenizer: run it online (drop distill.teacher_cache)",
            )
        for key, params in active.items():
            REGISTRY[key].check(params, self)
        if d.cache_top_k > self.student.vocab_size:
            raise ConfigError(
                "distill.cache_top_k",
                f"is {d.cache_top_k}, more than the vocabulary ({self.student.vocab_size} tokens); "
                f"keep at most that many",
            )
        online = [k for k in needs_teacher if not REGISTRY[k].needs.cache]
        if d.teacher_cache and online:
            raise ConfigError(
                "distill.teacher_cache",
                f"holds only the teachers' top-k log-probabilities; {' and '.join(online)} "
                f"need the teachers run online (drop distill.teacher_cache or set their weights to 0)",
            )
        if d.teacher_cache:
            from distill.cache import cached_distribution

            cached_distribution(self)  # the cached terms agree on one teacher distribution
