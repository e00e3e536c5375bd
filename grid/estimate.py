"""The GPU hours a grid's points are expected to take, for `launch_grid.py --dry-run` on a grid with GPUs.

Training FLOPs per token come from the architecture: 6 N + 12 L d T for the trained model (N its linear weights,
L layers, d width, T block; as bench/gpu_check.py counts them), plus 2 N + 4 L d T for each teacher's forward pass;
a WML point trains its peers, whose search targets N/2, N/3, ... of the reference. Tokens come from the budget:
train.max_steps x batch x grad_accum x block x processes, or words (train.max_words, or train.epochs x the corpus's
words, counted when train_dir is here, else the 10M or 100M of its track) x tokens per word. The rate is the model
FLOP utilisation that `bash bench/gpu_check.sh` measured (bench/gpu_check.json) for that architecture, or their mean
for another one; where nothing was measured, ASSUMED_MFU of the dense bf16 peak, and the plan says so. Early
stopping can only shorten a run: these are upper figures for the budgets as written.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from common.paths import REPO, read_json
from grid.plan import Point

PEAK_FLOPS = 989e12  # dense bf16, H100/H200 SXM (bench/gpu_check.py)
ASSUMED_MFU = 0.35  # where bench/gpu_check.sh has not measured one
TOKENS_PER_WORD = 1.4  # BPE tokens per raw word (bench/gpu_check.py's figure for a 16k vocabulary)
MEASURED = REPO / "bench" / "gpu_check.json"


@dataclass
class Estimate:
    tokens: float
    flops: float
    gpu_hours: float
    note: str = ""  # what the figure assumed beyond the recipe


def _model_flops(model_cfg, block: int, trained: bool) -> float:
    """FLOPs per token of a run config's model section (its architecture with the overrides)."""
    from train.models import hf_config, on_meta

    objective, config = hf_config(model_cfg)
    return flops_per_token(on_meta(config, objective), block, trained)


def flops_per_token(model, block: int, trained: bool = True) -> float:
    """A built model's FLOPs per token (bench/gpu_check.py's MFU uses the same count): 6 N + 12 L d T to train it,
    2 N + 4 L d T for a forward pass, N its linear weights (nn.Linear and GPT-2's Conv1D), L layers, d width."""
    import torch
    from transformers.pytorch_utils import Conv1D

    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, (torch.nn.Linear, Conv1D)))
    cfg = model.config
    layers = getattr(cfg, "num_hidden_layers", None) or cfg.n_layer
    width = getattr(cfg, "hidden_size", None) or cfg.n_embd
    return (6 * linear + 12 * layers * width * block) if trained else (2 * linear + 4 * layers * width * block)


@functools.lru_cache(maxsize=None)
def _words_in(folder: Path) -> int:
    """Whitespace-separated words of every file under `folder` (raw text: before cleaning), counted once per plan."""
    words = 0
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        with open(f, encoding="utf-8", errors="replace") as handle:
            words += sum(len(line.split()) for line in handle)
    return words


def _corpus_words(cfg) -> tuple[float, str]:
    """Words of the training text: counted when the folder is here, else its track's size."""
    folder = Path(cfg.data.train_dir)
    if folder.is_dir():
        return _words_in(folder.resolve()) * cfg.data.train_fraction, ""
    track = 100e6 if "100M" in str(folder) else 10e6
    return track * cfg.data.train_fraction, f"{folder} not here: {track / 1e6:.0f}M words assumed"


def _tokens(cfg, processes: int) -> tuple[float, str]:
    from train.words import parse_words

    t = cfg.train
    if t.max_steps:
        return t.max_steps * t.batch_size * t.grad_accum * cfg.data.block_size * processes, ""
    if t.max_words:
        return parse_words(t.max_words, "train.max_words") * TOKENS_PER_WORD, ""
    words, note = _corpus_words(cfg)
    return t.epochs * words * TOKENS_PER_WORD, note


def _mfu(arch: str, measured: dict[str, float]) -> tuple[float, str]:
    if arch in measured:
        return measured[arch], ""
    if measured:
        return sum(measured.values()) / len(measured), f"MFU of {arch} not measured: the mean of the measured ones"
    return ASSUMED_MFU, ""


def measured_mfu(path: Path = MEASURED) -> dict[str, float]:
    """{architecture: model FLOP utilisation} from bench/gpu_check.json (written on a GPU), else empty."""
    if not path.is_file():
        return {}
    rows = read_json(path, "the GPU check's figures", "run bench/gpu_check.sh on a GPU again, or move it away",
                     {"training": list})["training"]
    out: dict[str, float] = {}
    for r in rows:
        if isinstance(r, dict) and isinstance(r.get("arch"), str) and isinstance(r.get("mfu"), (int, float)) \
                and r["mfu"] > 0:
            out[r["arch"]] = max(out.get(r["arch"], 0.0), float(r["mfu"]))
    return out


def estimate(point: Point, points: list[Point], processes: int, measured: dict[str, float]) -> Estimate:
    """The expected tokens, FLOPs and GPU hours of one point's training (evaluation not included)."""
    cfg = point.config
    tokens, note = _tokens(cfg, processes)
    block = cfg.data.block_size
    notes = [note] if note else []
    if point.kind == "wml":
        reference = _model_flops(cfg.model, block, trained=True)
        peers = range(cfg.wml.num_peers) if cfg.wml.solo_peer < 0 else [cfg.wml.solo_peer]
        per_token = sum(reference / (i + 2) for i in peers)  # each peer's search targets N/(i + 2)
        arch = cfg.model.arch
    else:
        model = cfg.student if point.kind == "distill" else cfg.model
        per_token = _model_flops(model, block, trained=True)
        arch = model.arch
        if point.kind == "distill":
            runs = {str(Path(p.run) / "model"): p for p in points}
            for teacher in cfg.distill.teachers:
                source = runs.get(str(Path(teacher.path)))
                if source is not None:
                    per_token += _model_flops(source.config.model, block, trained=False)
                elif (Path(teacher.path) / "config.json").is_file():
                    from eval.model import load_config
                    from train.models import on_meta

                    config = load_config(Path(teacher.path), "the teacher", "fix distill.teachers[].path")
                    per_token += flops_per_token(on_meta(config), block, trained=False)
                else:
                    notes.append(f"teacher {teacher.path} unknown: left out")
    mfu, mfu_note = _mfu(arch, measured)
    notes += [mfu_note] if mfu_note else []
    flops = tokens * per_token
    return Estimate(tokens, flops, flops / (PEAK_FLOPS * mfu) / 3600, "; ".join(notes))
