"""Every package has a `python -m <package>` entry with --help."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT, assert_user_error, run_cli


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


@pytest.mark.parametrize(("recipe", "bad", "key"), [
    ("demo-teacher", "optim.lr=-1", "optim.lr: must be above 0"),
    ("demo-kd", "distill.losses.logit_kd.weight=-1", "distill.losses.logit_kd.weight: must be at least 0"),
    ("demo-wml", "wml.num_peers=0", "wml.num_peers"),
], ids=["train", "distill", "wml"])
def test_a_bad_recipe_under_several_processes_is_one_line(recipe, bad, key):
    """`python -m launch` (the SLURM templates and grid points start every training with it) checks the recipe
    before torchrun starts its ranks: one line, not one per rank (until 2026-12-04, each of them said it)."""
    proc = subprocess.run([sys.executable, "-m", "launch", f"config/runs/{recipe}.yaml", bad], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "BABYDISTILL_PROCS_PER_NODE": "2"})
    assert_user_error(proc, key)
    assert "torch/distributed/run.py" not in proc.stderr  # torchrun never started
