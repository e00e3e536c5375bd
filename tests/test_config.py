"""The strict typed config: defaults <- YAML <- overrides, errors that name file:line or key."""
from __future__ import annotations

import dataclasses
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
    # a key put in the wrong section: the key of that name in another section, not the section it was put in
    for key, meant in (("train.lr", "optim.lr"), ("optim.seed", "train.seed")):
        msg = load_error(DEMO, [f"{key}=1"])
        assert f"unknown key '{key}' (did you mean '{meant}'?)" in msg, msg


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


# --------------------------------------------------------------------------- what --resume may change

# The keys a resumed run may change (field(..., resume=True)): how the run is carried out or recorded, and gradient
# clipping (the remedy a non-finite loss names). README "Resume and failures" lists the same.
MAY_CHANGE = {"model.attn_implementation", "optim.max_grad_norm", "train.word_checkpoints", "train.eval_steps",
              "train.save_steps", "train.logging_steps", "train.save_total_limit", "train.keep_best",
              "train.report_to", "train.num_workers", "train.compile", "train.logits_chunk", "data.num_proc",
              "data.cache_dir"}
RECIPES = {"train": "demo-teacher.yaml", "distill": "demo-kd.yaml", "wml": "demo-wml.yaml"}


def schema_and_recipe(kind: str):
    from distill.config import DistillRunConfig
    from distill.wml.config import WMLRunConfig

    schema = {"train": RunConfig, "distill": DistillRunConfig, "wml": WMLRunConfig}[kind]
    return schema, ROOT / "config" / "runs" / RECIPES[kind]


def every_field(cfg, prefix: str = ""):
    """(dotted key, the section holding it, its name, its type) for every field below a config."""
    from typing import get_type_hints

    hints = get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            yield from every_field(value, f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, cfg, f.name, hints[f.name]


def another_value(value, tp):
    from typing import Literal, get_args, get_origin

    if get_origin(tp) is Literal:
        return next(option for option in get_args(tp) if option != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, list):
        return value[:-1] if value else ["1"]
    if isinstance(value, dict):
        return {**value, "changed": 1}
    raise AssertionError(f"no other value for {value!r} ({tp})")


def unfinished_run(tmp_path, cfg):
    """A run directory as a run of `cfg` leaves it when killed after a checkpoint: config.yaml, run.json,
    checkpoints/."""
    import json

    import yaml

    from train.rundir import RunDir

    run = RunDir(tmp_path / "run")
    (run.path / "checkpoints" / "checkpoint-10").mkdir(parents=True)
    run.config_file.write_text(yaml.safe_dump(cfglib.to_dict(cfg), sort_keys=False))
    run.info_file.write_text(json.dumps({"babydistill": 1, "status": "running", "attempts": []}))
    return run


@pytest.mark.parametrize("kind", sorted(RECIPES))
def test_resume_refuses_every_change_but_those_declared_safe(kind, tmp_path):
    """Every field of every kind of run, changed on its own: --resume refuses it, naming the key and both values, or
    (for the keys declared field(..., resume=True)) resumes and records the change. A checkpoint brings back the
    optimizer, schedule, data position and RNG, so any other change would apply partly or not at all: before
    2026-12-03 `optim.lr=1e-3` on a run begun at 3e-3 was accepted with a warning, config.yaml said 1e-3, and the
    restored schedule went on at 3e-3."""
    import copy

    schema, recipe = schema_and_recipe(kind)
    cfg = cfglib.load(schema, recipe, check=False)
    expected = {key.replace("model.", "student.") if kind == "distill" else key for key in MAY_CHANGE}
    assert cfglib.may_change_on_resume(cfg) == expected | ({"wml.eval_tasks", "wml.eval_data_dir"}
                                                           if kind == "wml" else set())
    run = unfinished_run(tmp_path, cfg)
    assert run.decide(cfg, resume=True, overwrite=False) == "resume" and run.config_changes == []
    tried = 0
    for key, _, name, tp in every_field(cfg):
        if key.startswith("output."):  # the run directory's own address
            continue
        changed = copy.deepcopy(cfg)
        section = changed
        for part in key.split(".")[:-1]:
            section = getattr(section, part)
        old = getattr(section, name)
        setattr(section, name, another_value(old, tp))
        run.config_changes = []
        if key in cfglib.may_change_on_resume(cfg):
            assert run.decide(changed, resume=True, overwrite=False) == "resume", key
            assert run.config_changes == [f"{key}: {old!r} -> {getattr(section, name)!r}"]
        else:
            with pytest.raises(UserError, match="--resume continues a run with the config it started with") as info:
                run.decide(changed, resume=True, overwrite=False)
            if isinstance(old, dict):  # the key inside it that changed
                said = f"({key}.changed: None -> 1)"
            elif isinstance(old, list) and old and dataclasses.is_dataclass(old[0]):  # sections: how many
                said = f"({key}: {len(old)} items -> {len(old) - 1} item"
            else:
                said = f"({key}: {old!r} -> "
            assert said in str(info.value), str(info.value)
        tried += 1
    assert tried > 40


def test_resume_reads_an_older_config_yaml_as_todays_schema_reads_it(tmp_path, capsys):
    """A config.yaml written before a key existed (it takes its default) or with a key's old spelling is the same
    config: the run resumes without a change to report. A key the code no longer reads is a change."""
    import yaml

    from distill.wml.config import WMLRunConfig

    cfg = cfglib.load(RunConfig, DEMO, check=False)
    run = unfinished_run(tmp_path, cfg)
    written = yaml.safe_load(run.config_file.read_text())
    del written["train"]["logits_chunk"]  # added in a later version, at its default
    run.config_file.write_text(yaml.safe_dump(written))
    assert run.decide(cfg, resume=True, overwrite=False) == "resume" and run.config_changes == []
    written["train"]["retired_key"] = 3
    run.config_file.write_text(yaml.safe_dump(written))
    with pytest.raises(UserError, match=r"train.retired_key: 3 -> None"):
        run.decide(cfg, resume=True, overwrite=False)

    wml = cfglib.load(WMLRunConfig, ROOT / "config" / "runs" / "demo-wml.yaml", check=False)
    run = unfinished_run(tmp_path / "wml", wml)
    written = yaml.safe_load(run.config_file.read_text())
    written["wml"]["model_type"] = {"causal": "CLM", "masked": "MLM"}[written["wml"].pop("objective")]
    run.config_file.write_text(yaml.safe_dump(written))
    capsys.readouterr()
    assert run.decide(wml, resume=True, overwrite=False) == "resume" and run.config_changes == []
    assert capsys.readouterr().err == ""  # no note about the run's own file's old spelling
