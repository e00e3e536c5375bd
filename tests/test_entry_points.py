"""Every package has a `python -m <package>` entry with --help."""
from __future__ import annotations

import pytest

from conftest import assert_user_error, run_cli


@pytest.mark.parametrize("package", ["tokenizer", "train", "distill", "eval", "results"])
def test_help(package):
    proc = run_cli(package, "--help")
    assert proc.returncode == 0 and f"python -m {package}" in proc.stdout


def test_results_needs_a_command():
    proc = run_cli("results", "anything")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_distill_help_lists_the_loss_keys():
    out = run_cli("distill", "--help").stdout
    for key in (
        "distill.losses.ce.weight",
        "distill.losses.logit_kd.ensemble",
        "distill.losses.hidden_mse.weight",
        "distill.losses.contrastive.max_negatives",
        "distill.losses.aux_kd.layers",
        "student.init_from",
        "data.packing",
    ):
        assert key in out, key


def test_tokenizer_demo_command(tmp_path):
    proc = run_cli("tokenizer", "demo", str(tmp_path / "d"), "--sentences", "200")
    assert proc.returncode == 0 and (tmp_path / "d" / "pairs" / "demo_reflexive_agreement.jsonl").exists()


def test_tokenizer_prepare_reports_missing_folder(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(f"data:\n  train_dir: {tmp_path / 'none'}\nmodel: {{arch: ignored-by-prepare}}\n")
    assert_user_error(run_cli("tokenizer", "prepare", str(config)), "corpus folder not found (data.train_dir)")


def test_wml_commands():
    assert "python -m distill.wml train" in run_cli("distill.wml", "--help").stdout
    assert "wml.search.hidden" in run_cli("distill.wml", "train", "--help").stdout
    assert_user_error(run_cli("distill.wml", "fit", "x.yaml"), "give a command, one of search, train")
