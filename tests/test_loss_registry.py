"""The loss registry: every term is one registered class, and the config, the checks, --help and the
wrapper's forward follow from the registry alone (a new term is one new file)."""
from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import tiny_llama
from distill import losses as L
from distill.losses import REGISTRY

ROOT = Path(__file__).resolve().parents[1]


def test_every_registered_term_declares_what_the_registry_needs():
    first = ["ce", "logit_kd", "hidden_mse", "contrastive", "aux_kd"]
    assert [k for k in REGISTRY if k in first] == first  # formula order
    assert len({cls.order for cls in REGISTRY.values()}) == len(REGISTRY)
    for key, cls in REGISTRY.items():
        assert cls.key == key and cls.title and cls.__call__ is not L.LossTerm.__call__, key
        fields = dataclasses.fields(cls.Params)
        assert fields[0].name == "weight" and fields[0].default == 0.0, key  # off unless asked for
        assert all(f.metadata.get("doc") for f in fields), f"{key}: every parameter has a one-line doc"
        assert not (cls.needs.teacher_hidden and cls.needs.cache), f"{key}: the cache holds no hidden states"
        assert cls.needs.teacher or not (cls.needs.teacher_logits or cls.needs.teacher_hidden), key


def test_the_config_sections_and_help_come_from_the_registry():
    from common.config import describe
    from distill.config import DistillRunConfig, LossesConfig

    assert [f.name for f in dataclasses.fields(LossesConfig)] == list(REGISTRY)
    text = "\n".join(describe(DistillRunConfig))
    for key, cls in REGISTRY.items():
        assert f"distill.losses.{key}:  {cls.title}" in text
        for f in dataclasses.fields(cls.Params):
            assert f"distill.losses.{key}.{f.name} (" in text


def recipe(tmp_path: Path, losses: dict, teachers: int = 2, weight: float = 1.0, **distill) -> Path:
    (tmp_path / "t").mkdir(exist_ok=True)
    path = tmp_path / "kd.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "data": {"train_dir": "x"},
                "student": {"arch": "llama-tiny", "vocab_size": 512},
                "tokenizer": {"vocab_size": 512},
                "distill": {
                    "teachers": [{"path": str(tmp_path / "t"), "weight": weight}] * teachers,
                    "losses": losses,
                    **distill,
                },
            }
        )
    )
    return path


@pytest.mark.parametrize("key", [k for k, cls in REGISTRY.items() if cls.needs.teacher])
def test_each_teacher_term_refuses_a_run_without_teachers_and_the_cache_when_it_cannot_use_it(tmp_path, key):
    from common.config import load
    from common.errors import UserError
    from distill.config import DistillRunConfig

    with pytest.raises(UserError, match=rf"distill.teachers: is empty but {key} need a teacher"):
        load(DistillRunConfig, recipe(tmp_path, {key: {"weight": 0.5}}, teachers=0))
    cached = recipe(tmp_path, {"ce": {"weight": 0.5}, key: {"weight": 0.5}}, teacher_cache=str(tmp_path / "cache"))
    if REGISTRY[key].needs.cache:
        load(DistillRunConfig, cached)
    else:
        with pytest.raises(UserError, match=rf"distill.teacher_cache: .*; {key} need the teachers run online"):
            load(DistillRunConfig, cached)


@pytest.mark.parametrize(
    "key", [k for k, cls in REGISTRY.items() if "ensemble" in {f.name for f in dataclasses.fields(cls.Params)}]
)
def test_each_ensemble_term_refuses_per_teacher_with_every_weight_zero(tmp_path, key):
    from common.config import load
    from common.errors import UserError
    from distill.config import DistillRunConfig

    with pytest.raises(UserError, match=rf"every teacher's weight is 0, so {key} \(ensemble per_teacher\)"):
        load(DistillRunConfig, recipe(tmp_path, {key: {"weight": 0.5, "ensemble": "per_teacher"}}, weight=0.0))
    load(DistillRunConfig, recipe(tmp_path, {key: {"weight": 0.5, "ensemble": "per_teacher"}}, weight=0.5))


def test_aux_kd_honours_the_per_teacher_weights_and_its_own_ensemble():
    """With ensemble per_teacher and weights 0.7/0.3, aux_kd is the weighted sum of the per-teacher KLs
    (it used to ignore the weights), whatever logit_kd's ensemble is."""
    from distill.config import LossesConfig
    from distill.teachers import Teacher, run_teachers
    from distill.wrapper import DistillationWrapper

    t_models = [
        tiny_llama(24, 2, seed=1).eval().requires_grad_(False),
        tiny_llama(24, 2, seed=2).eval().requires_grad_(False),
    ]
    teachers = [Teacher(f"t{k}", m, w, [], 24, 2) for k, (m, w) in enumerate(zip(t_models, (0.7, 0.3)))]
    losses = LossesConfig()
    losses.logit_kd.weight, losses.logit_kd.ensemble = 0.5, "mean_logits"
    losses.aux_kd.weight, losses.aux_kd.layers, losses.aux_kd.ensemble = 0.3, [0], "per_teacher"
    wrapper = DistillationWrapper(tiny_llama(16, 2), teachers, losses)
    ids = torch.randint(0, 48, (2, 9), generator=torch.Generator().manual_seed(0))
    out = wrapper(ids, labels=ids, teacher_outputs=run_teachers(teachers, ids, None, hidden=False), n_tokens=16)

    hidden = wrapper.student(input_ids=ids, output_hidden_states=True).hidden_states[1][:, :-1].reshape(-1, 16)
    head = wrapper.aux_heads["block0"](hidden)
    t_logits = [m(input_ids=ids).logits[:, :-1].reshape(-1, 48) for m in t_models]
    per = [L.logit_kd(head, [t], 2.0, 16) for t in t_logits]
    assert torch.allclose(out["terms"]["aux_kd"], 0.7 * per[0] + 0.3 * per[1], atol=1e-5)
    assert not torch.allclose(out["terms"]["aux_kd"], per[0] + per[1], atol=1e-3)
    assert torch.allclose(
        out["terms"]["logit_kd"],
        L.logit_kd(wrapper.student(input_ids=ids).logits[:, :-1].reshape(-1, 48), t_logits, 2.0, 16, "mean_logits"),
        atol=1e-5,
    )
    assert "aux_kd(layers=[0], T=2, per_teacher" in wrapper.formula(teachers)


NEW_TERM = '''
"""A test-only term: the squared mean of the student's logits (it needs nothing from a teacher)."""
from dataclasses import dataclass

from torch import nn

from common.config import field
from distill.losses.base import LossTerm, Needs, register

__all__ = ["logit_square"]


def logit_square(logits, scale, n_tokens):
    """logits [N, V]; returns scalar: Σ_rows (scale · mean_v logits)² / n_tokens."""
    return ((scale(logits).mean(-1)) ** 2).sum() / n_tokens


@dataclass
class LogitSquareParams:
    weight: float = field(0.0, "weight of the logit square; 0 = off", ge=0)
    power: int = field(2, "unused; shows a parameter in --help", ge=1)


@register
class LogitSquare(LossTerm):
    key, title, Params, order = "logit_square", "a test-only term", LogitSquareParams, 99
    needs = Needs(teacher=False)
    group = "scales"
    rowwise = True  # a sum over rows of what it reads there: called on chunks of rows, logits included

    def __init__(self, params, setup):
        super().__init__(params, setup)
        self.vocab = setup.vocab_size

    def parts(self):
        return {"logit_square": nn.Linear(self.vocab, self.vocab, bias=False)}

    def describe(self, teachers):
        return f"{self.weight:g}*logit_square(power={self.params.power})"

    def __call__(self, batch, parts):
        return logit_square(batch.logits, parts["logit_square"], batch.n_tokens)
'''


def test_a_new_term_is_one_new_file(tmp_path):
    """A copy of the distill package plus one module: --help, the config, the formula, the wrapper's
    forward, the trainable parts and the package's functions all pick it up, with no other edit."""
    shutil.copytree(ROOT / "distill", tmp_path / "distill", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "distill" / "losses" / "logit_square.py").write_text(NEW_TERM)
    script = """
import torch
from common.config import describe
from distill import losses as L
from distill.config import DistillRunConfig, LossesConfig
from distill.wrapper import DistillationWrapper
from transformers import AutoConfig, AutoModelForCausalLM
assert L.__file__.startswith(%r), L.__file__
text = " | ".join(describe(DistillRunConfig))
assert "distill.losses.logit_square.power (int, default 2, at least 1): unused" in text
losses = LossesConfig()
losses.ce.weight, losses.logit_square.weight = 1.0, 0.25
cfg = AutoConfig.for_model("llama", vocab_size=32, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=16)
w = DistillationWrapper(AutoModelForCausalLM.from_config(cfg), [], losses)
assert w.formula([]) == "1*ce + 0.25*logit_square(power=2)", w.formula([])
ids = torch.randint(0, 32, (2, 8))
out = w(ids, labels=ids, teacher_outputs=[], n_tokens=14)
assert set(out["terms"]) == {"ce", "logit_square"}
assert torch.allclose(out["loss"], out["terms"]["ce"] + 0.25 * out["terms"]["logit_square"])
out["loss"].backward()
assert w.scales["logit_square"].weight.grad.abs().sum() > 0
assert "scales.logit_square.weight" in w.state_dict()
assert L.logit_square is not None
print("ok")
""" % str(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
    proc = subprocess.run(
        [sys.executable, "-m", "distill", "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert "distill.losses.logit_square:  a test-only term" in proc.stdout, proc.stderr[-2000:]
