"""The run config: every section of a `config/runs/*.yaml`, with defaults and one-line docs.

Filled by `common.config.load`: defaults <- YAML <- dotted CLI overrides, then `check()`
runs the cross-field checks (heads divide the hidden size, the block fits the model's
positions, tokenizer and model vocabularies agree).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from common.config import ConfigError, field, planned_elsewhere
from tokenizer.config import DataConfig, TokenizerConfig


@dataclass
class ModelConfig:
    arch: str = field(
        "gpt2-tiny", "architecture: a name in config/models/ or a path to a YAML of Hugging Face config fields"
    )
    vocab_size: int = field(16000, "embedding rows; must equal the tokenizer's vocabulary", ge=1)
    overrides: dict[str, Any] = field(
        {}, "Hugging Face config fields that replace the architecture file's (model.overrides.n_layer=4)"
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = field(
        "sdpa", "attention kernel: sdpa (PyTorch's fused attention), eager (plain matmuls), flash_attention_2 (the "
        "flash-attn package, on a CUDA GPU)",
        resume=True,
    )


@dataclass
class OptimConfig:
    lr: float = field(3e-4, "peak learning rate (AdamW)", gt=0)
    min_lr: float = field(3e-5, "learning rate the cosine schedule decays to", ge=0)
    warmup_steps: int = field(100, "linear warmup steps before the cosine decay", ge=0)
    weight_decay: float = field(0.1, "AdamW weight decay", ge=0)
    beta1: float = field(0.9, "AdamW beta1", ge=0, lt=1)
    beta2: float = field(0.95, "AdamW beta2", ge=0, lt=1)
    eps: float = field(1e-8, "AdamW epsilon", gt=0)
    max_grad_norm: float = field(1.0, "gradient clipping norm; 0 disables clipping", ge=0, resume=True)


@dataclass
class TrainConfig:
    max_steps: int = field(0, "budget in optimizer steps (one budget per run: this, train.epochs or train.max_words; "
                              "0 = not this one; none set: 1000 steps)", ge=0)
    epochs: float = field(0.0, "budget in passes over the training blocks (BabyLlama: 6); 0 = not this one", ge=0)
    max_words: str = field(
        "",
        "budget in raw words seen, repeats counted (100M, 500k, 2000000); the run stops at the first step at or past "
        "it",
    )
    word_checkpoints: list[str] = field(
        [],
        "export the model at these words seen: babylm (1M..10M by 1M, 20M..100M by 10M), "
        "babylm-100m (then 200M..1000M by 100M), a list (1M,5M), or none",
        resume=True,
    )
    batch_size: int = field(32, "blocks per device per micro-batch", ge=1)
    grad_accum: int = field(1, "micro-batches accumulated per optimizer step", ge=1)
    eval_steps: int = field(200, "evaluate the dev loss every this many steps (needs data.dev_dir)", ge=1, resume=True)
    save_steps: int = field(200, "write a resumable checkpoint every this many steps", ge=1, resume=True)
    logging_steps: int = field(10, "append a line to metrics.jsonl every this many steps", ge=1, resume=True)
    save_total_limit: int = field(
        3, "checkpoints kept (at least 2, so a corrupt newest one has a fallback)", ge=2, resume=True
    )
    keep_best: bool = field(
        True, "export the checkpoint with the lowest dev loss as model/ (needs data.dev_dir)", resume=True
    )
    early_stopping_patience: int = field(
        0, "stop after this many evaluations without a lower dev loss; 0 = never", ge=0
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = field(
        "auto", "auto = bf16 on a GPU that supports it, else fp32"
    )
    report_to: str = field(
        "none",
        "experiment trackers, comma-separated: none, tensorboard, wandb, mlflow (the Trainer's "
        "integrations; files under <run>/tracking/)",
        resume=True,
    )
    deepspeed: str = field("", "DeepSpeed JSON (config/deepspeed/*.json) used when launched by torchrun or deepspeed")
    seed: int = field(42, "seed for initialisation, data order and dropout", ge=0, le=2**32 - 1)
    num_workers: int = field(0, "DataLoader worker processes", ge=0, resume=True)
    compile: bool = field(False, "torch.compile the trained model (the Trainer's torch_compile) and, in distillation, "
                                 "the teachers; the first steps are slow while it compiles", resume=True)
    logits_chunk: int = field(1024, "positions whose logits exist at once in a causal LM's loss and in logit "
                                    "distillation (train.chunked); 0 = all of a micro-batch's at once", ge=0,
                              resume=True)


@dataclass
class OutputConfig:
    dir: str = field("runs", "root of all run directories")
    experiment: str = field("default", "experiment folder: runs/<experiment>/<name>")
    name: str = field("run", "run folder inside the experiment")

    @property
    def run_path(self) -> Path:
        """<dir>/<experiment>/<name>: the run directory."""
        return Path(self.dir) / self.experiment / self.name


@dataclass
class RunSections:
    """The sections every kind of training run has; each kind adds its model section and its own."""

    ALTERNATIVES = (
        ("train.max_steps", "train.epochs", "train.max_words"),
    )  # one budget: an override replaces the YAML's

    data: DataConfig = field(DataConfig(), "corpus location, cleaning, packing")
    tokenizer: TokenizerConfig = field(TokenizerConfig(), "tokenizer trained from scratch or loaded")
    optim: OptimConfig = field(OptimConfig(), "optimizer and schedule")
    train: TrainConfig = field(TrainConfig(), "loop, evaluation, checkpoints, precision")
    output: OutputConfig = field(OutputConfig(), "where the run directory goes")


@dataclass
class RunConfig(RunSections):
    model: ModelConfig = field(ModelConfig(), "architecture")

    def check(self) -> None:
        check_run(self)


def compile_problem() -> str | None:
    """Why torch.compile's default backend (inductor) cannot compile here, or None: on a CPU it writes C++ and needs a
    compiler (g++, or $CXX); on a GPU it needs triton."""
    import importlib.util
    import os
    import shutil

    import torch

    if torch.cuda.is_available():
        if importlib.util.find_spec("triton") is None:
            return ("is true, but torch.compile needs the triton package on a GPU and it is not installed; "
                    "pip install triton")
        return None
    compiler = os.environ.get("CXX") or "g++"
    if shutil.which(compiler) is None:
        return (f"is true, but torch.compile on a CPU needs a C++ compiler ({compiler}) and none is on the PATH; "
                f"install one (apt-get install g++) or set train.compile=false")
    return None


def bf16_missing() -> str | None:
    """Why bf16 cannot run here, or None: a CUDA GPU without it (a CPU computes bf16 in software; training
    precision asks for a GPU anyway, `precision_problem`)."""
    import torch

    if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        return f"this GPU ({torch.cuda.get_device_name(0)}) lacks"
    return None


def precision_problem(precision: str) -> str | None:
    """Why this machine cannot train at `precision`, or None."""
    if precision not in ("bf16", "fp16"):
        return None
    import torch

    if not torch.cuda.is_available():
        return f"is {precision}, which needs a GPU, and none is visible here; use auto or fp32"
    missing = bf16_missing() if precision == "bf16" else None
    return f"is bf16, which {missing}; use fp16 or auto" if missing else None


def check_run(cfg) -> None:
    """The cross-field checks of a training run; `cfg` has data, tokenizer, model, optim and train sections."""
    from train import models, words

    from common.paths import name_problem

    cfg.data.check()
    cfg.tokenizer.check()
    for key in ("experiment", "name"):  # each is one folder: '', '.', '..' or a/b would put the run somewhere else
        problem = name_problem(getattr(cfg.output, key))
        if problem:
            raise ConfigError(f"output.{key}", f"{problem}; give one folder name such as 'teacher'")
    t = cfg.train
    words.check_budget(t)
    from train.tracking import problem as tracking_problem

    if tracking_problem(t.report_to):
        raise ConfigError("train.report_to", tracking_problem(t.report_to))
    if not planned_elsewhere() and precision_problem(t.precision):
        raise ConfigError("train.precision", precision_problem(t.precision))
    if t.compile and not planned_elsewhere() and compile_problem():
        raise ConfigError("train.compile", compile_problem())
    if cfg.data.dev_dir and t.keep_best and t.save_steps % t.eval_steps:
        raise ConfigError(
            "train.save_steps",
            f"is {t.save_steps}; with train.keep_best it must be a multiple of train.eval_steps ({t.eval_steps})",
        )
    if t.early_stopping_patience and not cfg.data.dev_dir:
        raise ConfigError(
            "train.early_stopping_patience", "needs a dev set; set data.dev_dir or train.early_stopping_patience=0"
        )
    if t.early_stopping_patience and not t.keep_best:
        raise ConfigError(
            "train.early_stopping_patience",
            "needs train.keep_best=true (it stops at, and exports, the best checkpoint)",
        )
    if cfg.optim.min_lr > cfg.optim.lr:
        raise ConfigError("optim.min_lr", f"is {cfg.optim.min_lr}, above optim.lr={cfg.optim.lr}")
    if cfg.tokenizer.type == "from_scratch" and cfg.tokenizer.vocab_size != cfg.model.vocab_size:
        raise ConfigError(
            "model.vocab_size",
            f"is {cfg.model.vocab_size} but tokenizer.vocab_size is {cfg.tokenizer.vocab_size}; set both to the same "
            "size",
        )
    models.check_architecture(cfg.model, cfg.data.block_size)
