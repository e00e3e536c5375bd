"""Architectures in config/models/: named sizes match their names, tiny ones build and run."""
from __future__ import annotations

import re

import pytest
import torch

from train.config import ModelConfig
from train.models import count_parameters, known_architectures, read_architecture

NAMED = [a for a in known_architectures() if re.search(r"-\d+m$", a)]


def test_expected_architectures_exist():
    for name in ("gpt2-44m", "gpt2-97m", "gpt2-705m", "llama-16m", "llama-58m", "llama-60m", "llama-360m",
                 "roberta-base", "roberta-small", "gpt2-tiny", "llama-tiny", "roberta-tiny"):
        assert name in known_architectures()


@pytest.mark.parametrize("arch", NAMED)
def test_named_size_within_5_percent(arch):
    millions = int(re.search(r"-(\d+)m$", arch).group(1))
    n = count_parameters(ModelConfig(arch=arch, vocab_size=16000))
    assert abs(n / 1e6 - millions) / millions < 0.05, f"{arch}: {n / 1e6:.1f}M parameters"


def test_reference_shapes_kept():
    def fields(arch):
        return read_architecture(ModelConfig(arch=arch))[1].items()

    assert {("hidden_size", 512), ("num_hidden_layers", 16), ("intermediate_size", 1024)} <= set(fields("llama-58m"))
    assert {("n_embd", 1536), ("n_layer", 24), ("n_head", 16)} <= set(fields("gpt2-705m"))
    assert {("n_embd", 768), ("n_layer", 2), ("n_head", 8)} <= set(fields("gpt2-44m"))
    assert {("hidden_size", 1024), ("num_hidden_layers", 24), ("intermediate_size", 3072)} <= set(fields("llama-360m"))
    assert read_architecture(ModelConfig(arch="roberta-base"))[0] == "masked"


@pytest.mark.parametrize("arch", ["gpt2-tiny", "llama-tiny", "roberta-tiny"])
def test_tiny_models_are_tiny_and_run(arch):
    from tokenizer.bpe import SPECIAL_TOKENS  # noqa: F401 - the ids below follow its order
    from train.models import build_model

    class Tok:  # the special-token ids a from-scratch tokenizer has
        pad_token_id, bos_token_id, eos_token_id = 0, 1, 2

    objective, model = build_model(ModelConfig(arch=arch, vocab_size=512), Tok())
    n = sum(p.numel() for p in model.parameters())
    assert 50_000 < n < 1_000_000
    ids = torch.randint(3, 512, (2, 16))
    out = model(input_ids=ids, labels=ids)
    assert out.logits.shape == (2, 16, 512) and torch.isfinite(out.loss)
    assert objective == ("masked" if arch.startswith("roberta") else "causal")


# the widths that fix a model's size, set small: which modules exist does not depend on them
SMALL = {"n_embd": 32, "n_layer": 2, "n_head": 2, "n_inner": 64, "hidden_size": 32, "num_hidden_layers": 2,
         "intermediate_size": 64, "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 16}


@pytest.mark.parametrize("arch", known_architectures())
def test_every_parameter_gets_a_gradient(arch):
    """`python -m train` tells DDP that no parameter goes unused (find_unused_parameters=False, train/__main__.py):
    true of every architecture here, at its own config with the widths made small. An architecture with a module the
    loss does not reach (a pooler) would stop a multi-GPU run at its second step."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    from train.models import hf_config

    objective, config = hf_config(ModelConfig(arch=arch, vocab_size=512), {"pad_token_id": 0, "bos_token_id": 1,
                                                                             "eos_token_id": 2})
    for key, value in SMALL.items():
        if getattr(config, key, None) is not None:
            setattr(config, key, value)
    model = (AutoModelForMaskedLM if objective == "masked" else AutoModelForCausalLM).from_config(config).train()
    ids = torch.randint(3, 512, (2, 16))
    labels = ids.clone()
    if objective == "masked":
        labels[:, ::2] = -100  # as the collator leaves the unmasked positions out of the loss
    model(input_ids=ids, labels=labels).loss.backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
