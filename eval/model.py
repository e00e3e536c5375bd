"""Load a Hugging Face model folder for scoring, with one-line errors for the usual mistakes.

`split_head` finds the model's backbone and its output head so that the scorer can run the
head only on the positions it needs (a few per sequence for masked LMs). It is checked once
against the model's own forward pass; models whose head does more than that (logit
soft-capping, scaling) fall back to the full forward, which gives the same numbers.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from common.errors import UserError

BACKENDS = ("causal", "mlm")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "tokenizer.model", "spiece.model")


@dataclass
class Loaded:
    model: torch.nn.Module
    tokenizer: object
    backend: str
    device: torch.device
    max_length: int  # positions the model can attend to
    prefix_id: int | None  # causal: the token every sentence is scored after
    prefix_note: str  # which token that is, for the log


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _max_length(model, tokenizer, override: int | None) -> int:
    if override:
        return override
    cfg = model.config
    limit = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or 2048
    if getattr(cfg, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        limit -= (cfg.pad_token_id or 0) + 1  # RoBERTa's positions start after padding_idx
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and 0 < tok_limit < 1_000_000:
        limit = min(limit, tok_limit)
    return int(limit)


def check_folder(path: str) -> Path:
    """The model folder, or a one-line error; cheap, so it runs before any data is read."""
    folder = Path(path)
    if not folder.is_dir():
        raise UserError(f"{path}: model folder does not exist; give a folder written by save_pretrained (e.g. runs/demo/teacher/model)")
    if not (folder / "config.json").is_file():
        raise UserError(f"{path}: not a Hugging Face model folder (no config.json); give the folder save_pretrained wrote")
    return folder


def load(path: str, backend: str, device: str = "auto", dtype: str = "float32", max_length: int | None = None) -> Loaded:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    folder = check_folder(path)
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise UserError(f"{path}: no tokenizer in the model folder (none of {', '.join(TOKENIZER_FILES)}); "
                        f"save it there with tokenizer.save_pretrained")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise UserError(f"{path}: the tokenizer in the model folder cannot be loaded ({first}); save it again with tokenizer.save_pretrained") from None
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    auto = AutoModelForCausalLM if backend == "causal" else AutoModelForMaskedLM
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}[dtype]
    try:
        model = auto.from_pretrained(folder, local_files_only=True, dtype=torch_dtype)
    except ValueError as exc:
        other = "mlm" if backend == "causal" else "causal"
        raise UserError(f"{path}: a {config.model_type} model cannot be loaded as a {'causal' if backend == 'causal' else 'masked'} LM "
                        f"({str(exc).splitlines()[0][:120]}); try --backend {other}") from None
    dev = pick_device(device)
    model.to(dev).eval()
    prefix_id, note = None, ""
    if backend == "causal":
        if tokenizer.bos_token_id is not None:
            prefix_id, note = tokenizer.bos_token_id, f"BOS {tokenizer.bos_token!r} (id {tokenizer.bos_token_id})"
        elif tokenizer.eos_token_id is not None:
            prefix_id, note = tokenizer.eos_token_id, f"EOS {tokenizer.eos_token!r} (id {tokenizer.eos_token_id}), as the tokenizer has no BOS"
        else:
            raise UserError(f"{path}: the tokenizer has neither a BOS nor an EOS token, so there is no prefix to score a sentence's "
                            f"first token after; set bos_token in {folder / 'tokenizer_config.json'}")
    else:
        if tokenizer.mask_token_id is None:
            raise UserError(f"{path}: the tokenizer has no mask token, which pseudo-log-likelihood scoring needs; set mask_token in "
                            f"{folder / 'tokenizer_config.json'} or use --backend causal")
        if tokenizer.eos_token is not None:
            note = f"empty contexts become the EOS text {tokenizer.eos_token!r}"
        elif tokenizer.sep_token is not None:
            note = f"empty contexts become the SEP text {tokenizer.sep_token!r}, as the tokenizer has no EOS"
        else:
            raise UserError(f"{path}: the tokenizer has neither an EOS nor a SEP token to stand for an empty context; "
                            f"set eos_token in {folder / 'tokenizer_config.json'}")
    return Loaded(model, tokenizer, backend, dev, _max_length(model, tokenizer, max_length), prefix_id, note)


def split_head(model: torch.nn.Module, backend: str, probe_ids: torch.Tensor):
    """(backbone, head) such that head(backbone(ids)[0]) == model(ids).logits, or None if no such split holds."""
    backbone = getattr(model, "base_model", None)
    if backbone is None or backbone is model:
        return None
    others = [m for m in model.children() if m is not backbone and any(True for _ in m.parameters())]
    if len(others) != 1:
        return None
    head = others[0]
    mask = torch.ones_like(probe_ids)
    try:
        with torch.inference_mode():
            full = model(input_ids=probe_ids, attention_mask=mask).logits
            split = head(backbone(input_ids=probe_ids, attention_mask=mask)[0])
    except Exception:  # noqa: BLE001 - any failure means: use the full forward
        return None
    if split.shape != full.shape or not torch.allclose(split.float(), full.float(), rtol=1e-4, atol=1e-4):
        return None
    return backbone, head
