"""Models with their own code (auto_map in config.json, as GPT-BERT and LTG-BERT are published): refused in one line
unless --trust-remote-code is given, then scored item by item like a naive reference, fine-tuned on their AutoModel
backbone, and hashed with their code."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import assert_user_error, call, ok, run_cli, shared
from test_eval import compare_2025, ref_causal, score_with_project

CODE = Path(__file__).parent / "own_code" / "modeling_tinycustom.py"
AUTO_MAP = {
    "AutoConfig": "modeling_tinycustom.TinyCustomConfig",
    "AutoModel": "modeling_tinycustom.TinyCustomModel",
    "AutoModelForCausalLM": "modeling_tinycustom.TinyCustomForCausalLM",
    "AutoModelForMaskedLM": "modeling_tinycustom.TinyCustomForMaskedLM",
}


def own_code_model(folder: Path, auto_map: dict = AUTO_MAP, architecture: str = "TinyCustomForCausalLM") -> Path:
    """A randomly initialised model folder whose classes are the Python file beside config.json (seeded), with
    GPT-2's tokenizer and a mask token, so that it serves the causal, mlm and mntp backends."""
    from transformers import AutoTokenizer

    sys.path.insert(0, str(CODE.parent))
    try:
        from modeling_tinycustom import TinyCustomConfig, TinyCustomForCausalLM
    finally:
        sys.path.remove(str(CODE.parent))
    tok = AutoTokenizer.from_pretrained(shared("hf_tiny_gpt2"))
    tok.add_special_tokens({"mask_token": "<mask>", "pad_token": "<pad>"})
    torch.manual_seed(0)
    config = TinyCustomConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                              max_sequence_length=256)
    TinyCustomForCausalLM(config).save_pretrained(folder)
    saved = json.loads((folder / "config.json").read_text())
    saved.update(auto_map=auto_map, architectures=[architecture])
    (folder / "config.json").write_text(json.dumps(saved, indent=2))
    shutil.copy(CODE, folder / CODE.name)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def custom(tmp_path_factory) -> Path:
    return own_code_model(tmp_path_factory.mktemp("own") / "model")


def score(folder: Path, backend: str, task_name: str, data_dir: Path):
    """This project's scores; its forward takes no position ids, so a causal model reads one sequence per request."""
    return score_with_project(folder, backend, task_name, data_dir, 8, trust=True, trees=False)


def test_without_the_flag_a_model_with_its_own_code_is_one_line_and_nothing_is_written(custom, glue, tmp_path):
    """Transformers would ask on the terminal whether to run the code, then fail; the line says what to do. The class:
    every command that loads the folder (zero-shot, fine-tuning) and every place a model is only used (a teacher)."""
    out = tmp_path / "out"
    proc = run_cli("eval", str(custom), "--tasks", "blimp_filtered", "--data-dir", str(shared()),
                   "--out", str(out))
    line = assert_user_error(proc, f"{custom / 'config.json'}: model type 'tinycustom' is defined by the Python code "
                                   "in its folder (modeling_tinycustom.py)", "pass --trust-remote-code")
    assert "Do you wish to run the custom code" not in proc.stdout + proc.stderr, line
    assert not out.exists()
    from eval.__main__ import main

    proc = call(main, "finetune", str(custom), "--tasks", "rte", "--data-dir", str(glue), "--out", str(out))
    assert_user_error(proc, "model type 'tinycustom' is defined by the Python code", "pass --trust-remote-code")
    assert not out.exists()
    from eval.model import load_config

    from common.errors import UserError

    with pytest.raises(UserError, match="runs a model's own code only to evaluate it .* not as teacher 0"):
        load_config(custom, "teacher 0", "fix distill.teachers[0].path")


def test_a_tokenizer_with_its_own_code_needs_the_flag_too(tmp_path):
    from common.errors import UserError
    from eval.model import load_tokenizer

    folder = tmp_path / "tok"
    shutil.copytree(shared("hf_tiny_gpt2"), folder)
    (folder / "tokenization_tinycustom.py").write_text(
        "from transformers import GPT2Tokenizer\n\n\nclass TinyCustomTokenizer(GPT2Tokenizer):\n    pass\n")
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    settings.update(tokenizer_class="TinyCustomTokenizer",
                    auto_map={"AutoTokenizer": ["tokenization_tinycustom.TinyCustomTokenizer", None]})
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    with pytest.raises(UserError, match=r"tokenizer_config.json: tokenizer class 'TinyCustomTokenizer' is defined by "
                                        r"the Python code in the folder \(tokenization_tinycustom.py\).*pass "
                                        r"--trust-remote-code"):
        load_tokenizer(folder)
    assert type(load_tokenizer(folder, trust=True)).__name__ == "TinyCustomTokenizer"


def test_causal_scores_match_a_naive_reference_item_by_item(custom, extras):
    from eval.report import decide

    m, task, scores = score(custom, "causal", "blimp_filtered", extras)
    assert type(m.model).__name__ == "TinyCustomForCausalLM" and m.max_length == 256  # its max_sequence_length
    for i, item in enumerate(task.items):
        expected = [ref_causal(m.model, m.tokenizer, m.prefix_id, item.context, c) for c in item.choices]
        assert np.allclose(scores[i], expected, atol=1e-4, rtol=0), (item.where, scores[i], expected)
        assert int(np.argmax(expected)) == int(decide(scores[i:i + 1], np.array([0]))[0][0]), item.where
    assert len(task.items) >= 40
    for name in ("entity_tracking", "wug_adj"):
        m, task, scores = score(custom, "causal", name, extras)
        compare_2025(m, task, scores, "causal", every=4, least=8)


def test_reading_surprisals_match_the_naive_one_pass_per_sub_token_reference(custom, extras):
    from eval.evaluate import Options, score_requests
    from eval.model import load
    from eval.reading import read_table, score_table
    from eval.scorer import Scorer
    from test_eval2025 import naive_surprisal

    m = load(str(custom), "causal", "cpu", trust=True)
    df = read_table(extras / "reading" / "reading_data.csv")
    scorer = Scorer(m, progress=False)
    pred, prev = score_table(df, m.tokenizer, "causal",
                             lambda r: score_requests(scorer, m, r, Options(progress=False))[0])
    assert not scorer.trees
    for i in range(0, len(df), 150):
        assert pred[i] == pytest.approx(naive_surprisal(m.model, m.tokenizer, df["item"][i], df["word"][i]), abs=1e-4)
        if isinstance(df["prev_item"][i], str):
            assert prev[i] == pytest.approx(
                naive_surprisal(m.model, m.tokenizer, df["prev_item"][i], df["prev_word"][i]), abs=1e-4)


@pytest.mark.parametrize("backend", ["mlm", "mntp"])
def test_masked_backends_match_a_naive_reference(custom, extras, backend):
    m, task, scores = score(custom, backend, "comps", extras)
    assert type(m.model).__name__ == "TinyCustomForMaskedLM"
    compare_2025(m, task, scores, backend, least=10)


def test_the_command_scores_it_with_the_flag_and_its_code_is_part_of_the_model_hash(custom, extras, tmp_path):
    from common.paths import model_hash
    from eval.__main__ import main

    out = tmp_path / "out"
    proc = ok(call(main, str(custom), "--tasks", "blimp_filtered", "--data-dir", str(extras), "--out", str(out),
                   "--trust-remote-code", "--no-progress"))
    assert "model " + str(custom) + ": causal" in proc.stdout
    result = json.loads((out / "blimp_filtered.json").read_text())
    assert result["n_items"] >= 40 and 0 <= result["score"] <= 1
    copy = tmp_path / "copy"
    shutil.copytree(custom, copy, ignore=shutil.ignore_patterns("eval"))
    before = model_hash(copy)
    code = copy / CODE.name
    code.write_text(code.read_text().replace("dropout=0.0", "dropout=0.0 "))  # other code, same weights
    assert model_hash(copy) != before
    plain = tmp_path / "plain"  # a folder without code hashes as before code counted: config.json and weights only
    shutil.copytree(shared("hf_tiny_gpt2"), plain)
    from common.paths import hash_files

    assert model_hash(plain) == hash_files(plain, ("config.json", "*.safetensors", "*.bin"))


def test_fine_tuning_puts_its_head_on_the_automodel_backbone(custom, glue, tmp_path):
    """As the 2025 pipeline's classifier: the AutoModel class of its auto_map, the LM head's tensors left unread."""
    from eval.__main__ import main
    from eval.finetune import Settings, prepare, spec_of

    prepared = prepare(str(custom), spec_of("rte"), Settings(device="cpu", trust_remote_code=True, progress=False))
    assert type(prepared.model.backbone).__name__ == "TinyCustomModel" and prepared.causal and prepared.pool == "last"
    out = tmp_path / "out"
    ok(call(main, "finetune", str(custom), "--tasks", "rte", "--data-dir", str(glue), "--epochs", "2",
            "--out", str(out), "--trust-remote-code", "--no-progress", "--device", "cpu"))
    result = json.loads((out / "rte.json").read_text())
    assert result["n_items"] == 8 and result["backend"] == "causal" and result["pool"] == "last"
    masked = own_code_model(tmp_path / "masked", architecture="TinyCustomForMaskedLM")  # saved as a masked LM
    prepared = prepare(str(masked), spec_of("rte"), Settings(device="cpu", trust_remote_code=True, progress=False))
    assert type(prepared.model.backbone).__name__ == "TinyCustomModel"
    assert not prepared.causal and prepared.pool == "first"


def test_fine_tuning_refuses_a_model_whose_code_gives_no_backbone(tmp_path, glue):
    """Its LM class is its own backbone (no base model), and its auto_map names no AutoModel: one line."""
    from eval.__main__ import main

    folder = own_code_model(tmp_path / "model", {k: v for k, v in AUTO_MAP.items() if k != "AutoModel"})
    proc = call(main, "finetune", str(folder), "--tasks", "rte", "--data-dir", str(glue), "--out",
                str(tmp_path / "out"), "--trust-remote-code", "--device", "cpu")
    assert_user_error(proc, f"{folder / 'config.json'}: the model's code gives no backbone apart from its LM head",
                      "add an AutoModel class to the model's auto_map")
    assert not (tmp_path / "out").exists()


def test_a_code_file_the_auto_map_names_but_the_folder_lacks_is_one_line(tmp_path, extras):
    from eval.__main__ import main

    folder = own_code_model(tmp_path / "model")
    (folder / CODE.name).unlink()
    proc = call(main, str(folder), "--tasks", "comps", "--data-dir", str(extras), "--out", str(tmp_path / "out"),
                "--trust-remote-code")
    assert_user_error(proc, str(folder), "modeling_tinycustom.py")
    assert not (tmp_path / "out").exists()


def test_the_masked_lm_saved_as_such_is_still_scored_causal_where_its_code_names_a_causal_class(tmp_path, extras):
    """GPT-BERT is saved as a masked LM and evaluated with --backend causal too: its own auto_map says it can."""
    folder = own_code_model(tmp_path / "model", architecture="TinyCustomForMaskedLM")
    m, task, scores = score(folder, "causal", "comps", extras)
    assert type(m.model).__name__ == "TinyCustomForCausalLM"
    compare_2025(m, task, scores, "causal", least=10)


def test_own_code_that_imports_a_missing_package_says_to_install_it(tmp_path, extras):
    """transformers checks the code's imports before running it; the line says to install, not to save again."""
    folder = own_code_model(tmp_path / "model")
    code = folder / CODE.name
    code.write_text("import babydistill_no_such_package  # noqa: F401\n" + code.read_text())
    proc = run_cli("eval", str(folder), "--tasks", "comps", "--data-dir", str(extras), "--out", str(tmp_path / "out"),
                   "--trust-remote-code")
    line = assert_user_error(proc, f"{folder}: the model's own code needs what this environment lacks",
                             "babydistill_no_such_package", "install it into this project's .venv")
    assert "save the model again" not in line
    assert "Encountered exception" not in proc.stderr  # transformers' own log line for it is not shown besides
    assert not (tmp_path / "out").exists()


def test_a_hub_model_id_is_one_line_that_says_to_download_it_first(tmp_path, monkeypatch):
    """`MODEL` is a folder; a Hub id (org/name, no such folder here) names the command that downloads it. A relative
    path whose parent folder exists is a folder that is missing, as before."""
    from eval.__main__ import main

    monkeypatch.chdir(tmp_path)
    proc = call(main, "BabyLM-community/babylm-baseline-10m-gpt-bert-causal-focus", "--out", str(tmp_path / "out"))
    assert_user_error(proc, "BabyLM-community/babylm-baseline-10m-gpt-bert-causal-focus: no such folder",
                      "hf download BabyLM-community/babylm-baseline-10m-gpt-bert-causal-focus [--revision R] "
                      "--local-dir DIR")
    (tmp_path / "runs").mkdir()
    proc = call(main, "finetune", "runs/model", "--out", str(tmp_path / "out"))
    assert_user_error(proc, "runs/model: model folder does not exist")
    assert not (tmp_path / "out").exists()
