"""Model architectures: YAML files of Hugging Face config fields in config/models/, built with Auto classes.

An architecture file holds `model_type` and the Hugging Face fields of that type, plus
one field of ours, `objective: causal | masked`, which picks AutoModelForCausalLM or
AutoModelForMaskedLM. The vocabulary size comes from the run config, so one file
serves any tokenizer.
"""
from __future__ import annotations

from pathlib import Path

from common.config import ConfigError, suggest
from common.errors import UserError
from common.paths import REPO

MODELS_DIR = REPO / "config" / "models"
NO_SPECIAL_IDS = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}  # until a tokenizer is known
POSITION_OFFSET = {"roberta": 2, "xlm-roberta": 2, "camembert": 2}  # RoBERTa reserves padding_idx + 1 positions


def known_architectures() -> list[str]:
    return sorted(p.stem for p in MODELS_DIR.glob("*.yaml"))


def arch_file(arch: str) -> Path:
    if arch.endswith((".yaml", ".yml")) or "/" in arch:
        path = Path(arch)
    else:
        path = MODELS_DIR / f"{arch}.yaml"
    if not path.is_file():
        raise ConfigError("model.arch", f"unknown architecture '{arch}'{suggest(arch, known_architectures())}; "
                                        f"choose one of config/models/*.yaml or give a YAML path")
    return path


def read_architecture(model_cfg) -> tuple[str, dict]:
    """(objective, Hugging Face config fields) of the architecture with the run's overrides applied."""
    from common.config import read_yaml

    path = arch_file(model_cfg.arch)
    fields, _ = read_yaml(path)
    fields = {**fields, **model_cfg.overrides}
    objective = fields.pop("objective", "causal")
    if objective not in ("causal", "masked"):
        raise ConfigError("model.arch", f"{path}: objective must be causal or masked, got {objective!r}")
    if "model_type" not in fields:
        raise ConfigError("model.arch", f"{path}: has no model_type (gpt2, llama, roberta, ...)")
    return objective, fields


def hf_config(model_cfg, special_ids: dict | None = None):
    """The Hugging Face config object for `model_cfg` (vocab from the run config)."""
    from transformers import AutoConfig

    objective, fields = read_architecture(model_cfg)
    model_type = fields.pop("model_type")
    try:
        return objective, AutoConfig.for_model(
            model_type, **fields, vocab_size=model_cfg.vocab_size, **(special_ids or NO_SPECIAL_IDS)
        )
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            "model.arch", f"{arch_file(model_cfg.arch)}: not a valid {model_type} config: {str(exc).splitlines()[0]}"
        ) from None


def max_positions(config) -> int:
    """Usable sequence length (RoBERTa-style models lose two positions to the padding offset)."""
    n = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return n - POSITION_OFFSET.get(config.model_type, 0)


def check_architecture(model_cfg, block_size: int) -> None:
    """Cross-field checks: heads divide the hidden size; the block fits the positions."""
    _, config = hf_config(model_cfg)
    hidden, heads = config.hidden_size, config.num_attention_heads
    touched = [k for k in ("hidden_size", "n_embd", "num_attention_heads", "n_head") if k in model_cfg.overrides]
    for name, value, keys in (
        ("hidden size", hidden, ("hidden_size", "n_embd")),
        ("attention heads", heads, ("num_attention_heads", "n_head")),
        ("layers", getattr(config, "num_hidden_layers", 1), ("num_hidden_layers", "n_layer")),
    ):
        if not isinstance(value, int) or value < 1:
            key = next((f"model.overrides.{k}" for k in keys if k in model_cfg.overrides), "model.arch")
            raise ConfigError(key, f"{name} must be a positive integer, got {value!r} ({model_cfg.arch})")
    if hidden % heads:
        key = f"model.overrides.{touched[0]}" if touched else "model.arch"
        raise ConfigError(
            key,
            f"hidden size {hidden} is not divisible by {heads} attention heads ({model_cfg.arch}); choose sizes that "
            "divide",
        )
    if model_cfg.attn_implementation == "flash_attention_2":
        import importlib.util

        import torch

        if importlib.util.find_spec("flash_attn") is None:
            raise ConfigError("model.attn_implementation", "is flash_attention_2, but the flash-attn package is not "
                              "installed; pip install flash-attn --no-build-isolation on a CUDA node, or use sdpa")
        if not torch.cuda.is_available():
            raise ConfigError("model.attn_implementation", "is flash_attention_2, which runs on a CUDA GPU and none "
                              "is visible here; use sdpa")
    if block_size > max_positions(config):
        raise ConfigError(
            "data.block_size",
            f"is {block_size} but {model_cfg.arch} has {max_positions(config)} positions; "
            f"lower data.block_size or raise the model's positions",
        )


def check_vocab(model_cfg, tokenizer, tokenizer_name: str) -> None:
    if len(tokenizer) != model_cfg.vocab_size:
        raise UserError(
            f"model.vocab_size: is {model_cfg.vocab_size} but the tokenizer {tokenizer_name} has {len(tokenizer)} "
            "tokens; "
            f"set model.vocab_size={len(tokenizer)}"
        )


def build_model(model_cfg, tokenizer):
    """A freshly initialised model whose special-token ids match `tokenizer`."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": pad}
    objective, config = hf_config(model_cfg, ids)
    auto = AutoModelForMaskedLM if objective == "masked" else AutoModelForCausalLM
    model = auto.from_config(config, attn_implementation=model_cfg.attn_implementation)
    if objective == "causal" and getattr(model, "loss_type", None) is None:
        # GPT-2's class name maps to no loss type, so the Trainer would count num_items_in_batch over all
        # labels instead of labels[..., 1:] and report the loss (T - 1)/T too low (1.6% at 64-token blocks).
        # The model already falls back to the causal loss; naming it makes the Trainer count what it predicts.
        model.loss_type = "ForCausalLM"
    return objective, model


def on_meta(config, objective: str = "causal"):
    """The model of a Hugging Face config built on the meta device: shapes only, no memory used."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    auto = AutoModelForMaskedLM if objective == "masked" else AutoModelForCausalLM
    with torch.device("meta"):
        return auto.from_config(config)


def count_parameters(model_cfg) -> int:
    """Parameters of the architecture, counted on the meta device (no memory used); tied weights once."""
    objective, config = hf_config(model_cfg)
    return sum(p.numel() for p in on_meta(config, objective).parameters())
