"""The strict typed config: defaults <- YAML <- overrides, errors that name file:line or key."""
from __future__ import annotations

import textwrap

import pytest

from common import config as cfglib
from common.errors import UserError
from conftest import ROOT, assert_user_error, run_cli
from train.config import RunConfig

DEMO = ROOT / "config" / "runs" / "demo-teacher.yaml"


def write(tmp_path, text: str):
    path = tmp_path / "run.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def load_error(*args, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        cfglib.load(RunConfig, *args, **kwargs)
    return str(info.value)


def test_layers_defaults_then_yaml_then_overrides():
    cfg = cfglib.load(RunConfig, DEMO, ["optim.lr=1e-3", "train.max_steps=7", "data.domains=aochildes,cbt"])
    assert cfg.optim.lr == 1e-3 and cfg.train.max_steps == 7  # overrides win
    assert cfg.model.arch == "gpt2-tiny" and cfg.data.block_size == 64  # from the YAML
    assert cfg.optim.beta2 == 0.95 and cfg.optim.weight_decay == 0.1  # defaults
    assert cfg.data.domains == ["aochildes", "cbt"]


def test_float_written_as_3e_4_is_a_float(tmp_path):
    # YAML 1.1 reads 3e-4 as a string; a float field accepts it.
    path = write(tmp_path, "data: {train_dir: x}\ntrain: {max_steps: 10}\noptim:\n  lr: 3e-4\n")
    assert cfglib.load(RunConfig, path).optim.lr == pytest.approx(3e-4)


def test_unknown_key_names_line_and_suggests(tmp_path):
    path = write(tmp_path, """\
        data:
          train_dir: x
        optim:
          lrr: 0.1
        """)
    msg = load_error(path)
    assert f"{path}:4" in msg and "optim.lrr" in msg and "did you mean 'optim.lr'" in msg


def test_unknown_override_suggests():
    msg = load_error(DEMO, ["train.max_step=3"])
    assert "command line" in msg and "did you mean 'train.max_steps'" in msg


def test_unknown_section_suggests(tmp_path):
    msg = load_error(write(tmp_path, "data: {train_dir: x}\ntokeniser: {vocab_size: 512}\n"))
    assert "did you mean 'tokenizer'" in msg


def test_wrong_type_names_key_and_type(tmp_path):
    msg = load_error(write(tmp_path, "data: {train_dir: x}\ntrain:\n  max_steps: many\n"))
    assert "train.max_steps" in msg and "expected int" in msg and ":3" in msg
    msg = load_error(DEMO, ["train.keep_best=3"])
    assert "train.keep_best" in msg and "expected bool" in msg
    msg = load_error(DEMO, ["train.precision=fp64"])
    assert "train.precision" in msg and "'bf16'" in msg


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "data:\n  train_dir: x\noptim:\n lr: 1\n  beta1: 2\n")  # bad indentation on line 5
    msg = load_error(path)
    assert msg.startswith(f"{path}:5: YAML syntax error")


def test_hidden_not_divisible_by_heads():
    msg = load_error(DEMO, ["model.overrides.n_head=3"])
    assert "model.overrides.n_head" in msg and "not divisible" in msg


def test_block_size_beyond_positions():
    msg = load_error(DEMO, ["data.block_size=4096"])
    assert "data.block_size" in msg and "128 positions" in msg


def test_tokenizer_vocab_differs_from_model():
    msg = load_error(DEMO, ["model.vocab_size=1000"])
    assert "model.vocab_size" in msg and "tokenizer.vocab_size is 512" in msg


def test_learning_rate_must_be_positive():
    assert "optim.lr: must be above 0" in load_error(DEMO, ["optim.lr=0", "optim.min_lr=0"])


def test_unknown_architecture_suggests():
    msg = load_error(DEMO, ["model.arch=lama-58m"])
    assert "model.arch" in msg and "did you mean 'llama-58m'" in msg


def test_resolved_config_round_trips(tmp_path):
    import yaml

    cfg = cfglib.load(RunConfig, DEMO, ["optim.lr=0.002"])
    path = tmp_path / "resolved.yaml"
    path.write_text(yaml.safe_dump(cfglib.to_dict(cfg)))
    assert cfglib.load(RunConfig, path) == cfg


def test_help_lists_every_field_with_its_doc():
    import dataclasses

    proc = run_cli("train", "--help")
    assert proc.returncode == 0
    for section in dataclasses.fields(RunConfig):
        for f in dataclasses.fields(section.default_factory()):
            assert f"{section.name}.{f.name} (" in proc.stdout, f"{section.name}.{f.name} missing from --help"
            assert f.metadata["doc"].split()[0] in proc.stdout


def test_cli_config_error_exits_2_with_one_line(tmp_path):
    path = write(tmp_path, "data: {train_dir: x}\nmodle: {arch: gpt2-tiny}\n")
    assert_user_error(run_cli("train", str(path)), f"{path}:2", "did you mean 'model'")


@pytest.mark.parametrize("recipe", sorted((ROOT / "config" / "runs").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_recipe_loads(recipe, tmp_path, monkeypatch):
    from launch.kinds import recipe_kind, schema as schema_of

    raw, _ = cfglib.read_yaml(recipe)
    schema = schema_of(recipe_kind(raw))
    monkeypatch.chdir(tmp_path)  # teacher folders (relative paths) exist here, as after their own runs
    for teacher in raw.get("distill", {}).get("teachers", []):
        (tmp_path / teacher["path"]).mkdir(parents=True, exist_ok=True)
    cfg = cfglib.load(schema, recipe, ["data.train_dir=/data/babylm/train_10M"])
    assert cfg.output.name and cfg.model.vocab_size == cfg.tokenizer.vocab_size
    if cfg.train.deepspeed:
        import json

        json.loads((ROOT / cfg.train.deepspeed).read_text())


def test_the_old_spelling_of_a_renamed_key_is_read_with_a_note(tmp_path, capsys):
    """wml.model_type: CLM | MLM (the seed's) is read as wml.objective: causal | masked, the word every config uses;
    both spellings together, or an old value that maps to nothing, are one error naming the key."""
    from distill.wml.config import WMLRunConfig

    text = (ROOT / "config" / "runs" / "demo-wml.yaml").read_text()
    assert "  objective: causal" in text
    old = tmp_path / "old.yaml"
    old.write_text(text.replace("  objective: causal", "  model_type: CLM"))
    cfg = cfglib.load(WMLRunConfig, old, check=False)
    assert cfg.wml.objective == "causal"
    assert "note: wml.model_type: 'CLM' is the old spelling; write wml.objective: 'causal'" in capsys.readouterr().err
    with pytest.raises(UserError, match="wml.model_type: is the old name of wml.objective, and both are set"):
        cfglib.load(WMLRunConfig, old, ["wml.objective=masked"], check=False)
    with pytest.raises(UserError, match="wml.objective: expected one of 'causal', 'masked', got 'XLM'"):
        cfglib.load(WMLRunConfig, old, ["wml.model_type=XLM"], check=False)
