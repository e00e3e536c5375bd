"""Zero-shot evaluation: task loading from the real data, scoring against a naive reference, outputs, bad inputs."""
from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, assert_user_error, call, ok, run_cli, run_here, shared

PARADIGMS = [
    "adjunct_island",
    "anaphor_gender_agreement",
    "determiner_noun_agreement_1",
    "irregular_plural_subject_verb_agreement_1",
    "principle_A_c_command",
    "wh_questions_object_gap",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_root, cache_dir):
    """A tiny causal and a tiny masked LM trained on the demo corpus (real runs of `python -m train`)."""
    out = tmp_path_factory.mktemp("eval-runs")
    base = [
        "config/runs/demo-teacher.yaml",
        f"data.train_dir={demo_root / 'train'}",
        f"data.dev_dir={demo_root / 'dev'}",
        f"data.cache_dir={cache_dir}",
        f"output.dir={out}",
        "train.save_steps=1000",
        "train.eval_steps=1000",
        "optim.warmup_steps=5",
    ]
    ok(run_here("train", *base, "train.max_steps=40", "output.name=causal"))
    ok(run_here("train", *base, "train.max_steps=20", "model.arch=roberta-tiny", "output.name=masked"))
    return {"causal": out / "demo" / "causal" / "model", "mlm": out / "demo" / "masked" / "model"}


@pytest.fixture(scope="module")
def data_slice(tmp_path_factory) -> Path:
    """A small evaluation_data folder cut from the real files: 6 BLiMP paradigms x 30 pairs, the supplement x 20."""
    root = tmp_path_factory.mktemp("evaluation_data")
    for folder, names, n in (("blimp_filtered", PARADIGMS, 30),
                             ("blimp_supplement", [p.stem for p in shared("blimp_supplement").glob("*.jsonl")], 20)):
        (root / folder).mkdir()
        for name in names:
            lines = shared(folder, f"{name}.jsonl").read_text(encoding="utf-8").splitlines()[:n]
            (root / folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


# ---------------------------------------------------------------- a deliberately naive reference scorer
def ref_causal(model, tok, prefix_id, context, choice, convention="babylm2024"):
    """One sentence at a time, full softmax over the vocabulary, in float64."""
    if convention == "babylm2025" and context == "":
        ids = tok(choice)["input_ids"]
        plain = tok(choice, add_special_tokens=False)["input_ids"]
        ctx = ids[:len(ids) - len(plain)] or [prefix_id]
        cont = plain
    elif context == "":
        ctx, cont = [prefix_id], tok(" " + choice, add_special_tokens=False)["input_ids"]
    else:
        stripped = context.rstrip()
        ctx = tok(stripped, add_special_tokens=False)["input_ids"]
        cont = tok(stripped + context[len(stripped):] + " " + choice, add_special_tokens=False)["input_ids"][len(ctx):]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ctx + cont])).logits[0].double(), dim=-1)
    return float(sum(logp[len(ctx) - 1 + k, t] for k, t in enumerate(cont)))


def ref_pll(model, tok, context, choice):
    """minicons' conditional_score at its defaults: prefix + ' ' + (' ' + choice), one masked copy per scored token,
    the mean of their log-probabilities."""
    prefix = context or tok.eos_token
    skip = {tok.pad_token_id, tok.cls_token_id, tok.sep_token_id}
    start = sum(1 for t in tok(prefix)["input_ids"] if t not in (tok.pad_token_id, tok.sep_token_id))
    ids = tok(prefix + "  " + choice)["input_ids"]
    values = []
    for k in range(start, len(ids)):
        if ids[k] in skip:
            continue
        masked = list(ids)
        masked[k] = tok.mask_token_id
        with torch.no_grad():
            values.append(float(torch.log_softmax(model(torch.tensor([masked])).logits[0, k].double(), dim=-1)[ids[k]]))
    return sum(values) / len(values)


def ref_2025(model, tok, sentence, completion, backend):
    """The 2025 pipeline's procedure, one text at a time: encode with special tokens and offsets, pick the completion's
    tokens by their spans, sum log-probabilities (causal: position 0 never scored; mlm: a masked copy per token;
    mntp: a masked copy per token read one position earlier)."""
    enc = tok(sentence, return_offsets_mapping=True)
    ids, offs = enc["input_ids"], enc["offset_mapping"]
    if backend == "causal":
        start = len(sentence) - len(completion) + offs[0][0]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
        return float(sum(logp[i - 1, ids[i]] for i in range(1, len(ids)) if offs[i][1] > start))
    start = len(sentence) - len(completion)
    prepend = tok.cls_token_id is not None or tok.bos_token_id is not None
    total = 0.0
    for i in range(len(ids)):
        if offs[i][1] <= start or (backend == "mntp" and i == 0 and not prepend):
            continue
        masked = list(ids)
        masked[i] = tok.mask_token_id
        at = i - 1 if backend == "mntp" else i
        with torch.no_grad():
            total += float(torch.log_softmax(model(torch.tensor([masked])).logits[0, at].double(), dim=-1)[ids[i]])
    return total


def score_with_project(model_dir, backend, task_name, data_dir, batch_size, convention=None, password=None, every=1,
                       trust=False, trees=True):
    """Scores of `task_name` by this project's scorer. `trust`: the model's own code may run; `trees`: whether a causal
    model reads each item as one tree (GPT-2 and Llama do; a model whose forward takes no position ids cannot)."""
    from eval.evaluate import Options, convention_for, reduce_masked, requests_for
    from eval.model import load
    from eval.scorer import Scorer
    from eval.tasks import load_task

    opts = Options(backend=backend, convention=convention, data_dir=str(data_dir), progress=False)
    m = load(str(model_dir), "causal" if backend == "causal" else "mlm", "cpu", trust=trust)
    task = load_task(task_name, str(data_dir), password)
    task.items = task.items[::every]
    m.backend = backend
    reqs, _ = requests_for(task, m, opts)
    scorer = Scorer(m, progress=False)
    choices = [len(it.choices) for it in task.items]
    flat = scorer.causal_items(reqs, choices, batch_size) if backend == "causal" else scorer.masked(reqs, batch_size)
    assert backend != "causal" or bool(scorer.trees) == trees
    return m, task, reduce_masked(flat, reqs, m, convention_for(task, opts)).reshape(len(task.items), -1)


def compare_to_reference(m, task, scores, ref, every=1):
    from eval.report import decide

    checked = 0
    for i in range(0, len(task.items), every):
        item = task.items[i]
        expected = [ref(item.context, c) for c in item.choices]
        assert np.allclose(scores[i], expected, atol=1e-4, rtol=0), (item.where, scores[i], expected)
        assert int(np.argmax(expected)) == int(decide(scores[i:i + 1], np.array([0]))[0][0]), item.where
        checked += 1
    assert checked >= 20


# ---------------------------------------------------------------- tasks from the real files
def test_families_load_from_real_data():
    from eval.tasks import load_task

    expected = {
        "blimp_filtered": (67, 59875),
        "blimp_supplement": (5, 5218),
        "blimp": (67, 67000),
        "ewok_filtered": (11, 7618),
    }
    for name, (subtasks, items) in expected.items():
        task = load_task(name, str(shared()), "ewok")
        assert (len(task.subtasks), len(task.items)) == (subtasks, items), name
        assert all(it.correct == 0 and len(it.choices) == 2 for it in task.items)
    ewok = load_task("ewok_filtered", str(shared()), "ewok")
    assert all(it.context for it in ewok.items) and ewok.spec.share_text is False


def test_user_task_yaml_and_suggestions(tmp_path):
    from common.errors import UserError
    from eval.tasks import load_task

    data = tmp_path / "mine"
    data.mkdir()
    (data / "p.jsonl").write_text(json.dumps({"a": "The cat sleeps.", "b": "The cat sleep."}) + "\n", encoding="utf-8")
    spec = tmp_path / "mine.yaml"
    spec.write_text("sources:\n  - files: '*.jsonl'\nchoices: [a, b]\n", encoding="utf-8")
    task = load_task(str(spec), str(data))
    assert task.name == "mine" and task.items[0].choices == ["The cat sleeps.", "The cat sleep."]
    with pytest.raises(UserError, match="did you mean 'blimp_filtered'"):
        load_task("blimp_filterd", str(data))


# ---------------------------------------------------------------- scoring = the naive reference
def test_causal_blimp_matches_reference(trained, data_slice):
    m, task, scores = score_with_project(trained["causal"], "causal", "blimp_filtered", data_slice, 64)
    compare_to_reference(m, task, scores, lambda c, s: ref_causal(m.model, m.tokenizer, m.prefix_id, c, s), every=3)


def test_hf_gpt2_blimp_and_ewok_match_reference(data_slice):
    model = shared("hf_tiny_gpt2")
    m, task, scores = score_with_project(model, "causal", "blimp_supplement", data_slice, 64)
    assert m.prefix_id == m.tokenizer.bos_token_id == 50256
    compare_to_reference(m, task, scores, lambda c, s: ref_causal(m.model, m.tokenizer, m.prefix_id, c, s), every=3)
    m, task, scores = score_with_project(model, "causal", "ewok_filtered", shared(), 64, password="ewok", every=150)
    assert len(task.subtasks) == 11
    compare_to_reference(m, task, scores, lambda c, s: ref_causal(m.model, m.tokenizer, m.prefix_id, c, s))


def compare_2025(m, task, scores, backend, every=1, least=20):
    """Identical decisions and scores within 1e-4 of the naive 2025 reference, item by item."""
    from eval.report import decide

    checked = 0
    for i in range(0, len(task.items), every):
        item = task.items[i]
        expected = [ref_2025(m.model, m.tokenizer, s, c, backend) for s, c in zip(item.sentences, item.completions)]
        assert np.allclose(scores[i], expected, atol=1e-4, rtol=0), (item.where, scores[i], expected)
        assert int(np.argmax(expected)) == int(decide(scores[i:i + 1], np.array([0]))[0][0]), item.where
        checked += 1
    assert checked >= least


def test_babylm2025_convention_matches_reference(data_slice):
    m, task, scores = score_with_project(
        shared("hf_tiny_gpt2"), "causal", "blimp_filtered", data_slice, 64, convention="babylm2025"
    )
    compare_2025(m, task, scores, "causal", every=5)
    _, _, s2024 = score_with_project(shared("hf_tiny_gpt2"), "causal", "blimp_filtered", data_slice, 64)
    assert not np.allclose(scores, s2024)  # GPT-2's BPE sees "The" and " The" differently: the option changes something


def test_masked_pll_matches_reference(trained, data_slice):
    m, task, scores = score_with_project(trained["mlm"], "mlm", "blimp_supplement", data_slice, 64)
    compare_to_reference(m, task, scores, lambda c, s: ref_pll(m.model, m.tokenizer, c, s), every=4)


@pytest.mark.parametrize("backend", ["causal", "mlm"])
def test_batch_size_does_not_change_results(trained, data_slice, backend):
    every = 1 if backend == "causal" else 6  # masked: one forward per token at batch 1
    _, _, one = score_with_project(trained[backend], backend, "blimp_filtered", data_slice, 1, every=every)
    _, _, many = score_with_project(trained[backend], backend, "blimp_filtered", data_slice, 64, every=every)
    assert np.abs(one - many).max() < 1e-5
    assert (one.argmax(1) == many.argmax(1)).all()


def test_shared_prefixes_and_truncated_windows_match_reference(trained):
    """The scorer normalises each distinct prefix once; with left-truncated windows the prefixes differ per request."""
    from eval.encode import CausalRequest
    from eval.model import load
    from eval.scorer import Scorer

    m = load(str(trained["causal"]), "causal", "cpu", max_length=8)
    rng = np.random.default_rng(0)
    shared_ctx = [m.prefix_id] + rng.integers(5, 500, 4).tolist()
    reqs = [CausalRequest(shared_ctx, rng.integers(5, 500, n).tolist()) for n in (1, 2, 3, 5, 8)]
    reqs += [CausalRequest(shared_ctx + reqs[3].cont[:2], reqs[3].cont[2:]),   # the same tokens split elsewhere
             CausalRequest(shared_ctx, reqs[2].cont[:2] + [7]),                 # shares two scored tokens with reqs[2]
             CausalRequest([m.prefix_id], rng.integers(5, 500, 6).tolist()), reqs[0]]
    with torch.no_grad():
        expected = []
        for r in reqs:
            window = (r.ctx + r.cont)[-9:]
            logp = torch.log_softmax(m.model(torch.tensor([window[:-1]])).logits[0].double(), dim=-1)
            first = len(window) - len(r.cont)
            expected.append(float(sum(logp[first - 1 + k, t] for k, t in enumerate(r.cont))))
    for batch in (1, 3, 64):
        got = Scorer(m, progress=False).causal(reqs, batch)
        assert np.abs(got - np.array(expected)).max() < 1e-4, (batch, got, expected)
        for items in ([3, 3, 3], [9], [1] * 9):  # the same requests read as trees of three, one tree, or nine
            got = Scorer(m, progress=False).causal_items(reqs, items, batch)
            assert np.abs(got - np.array(expected)).max() < 1e-4, (batch, items, got, expected)


def test_a_wide_head_takes_its_rows_in_larger_chunks_with_the_same_scores(trained, data_slice, tmp_path, monkeypatch):
    """From a hidden width of WIDE_HIDDEN on, the head multiplies at least HEAD_ROWS rows at a time (a 65-row product
    of a 16k head runs at about 2/3 speed); the scores stay those of the naive reference, item by item."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    import eval.scorer as S

    tok = AutoTokenizer.from_pretrained(trained["causal"])
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=S.WIDE_HIDDEN, intermediate_size=2 * S.WIDE_HIDDEN, num_hidden_layers=1,
                         num_attention_heads=4, vocab_size=16_000, max_position_embeddings=128,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "wide")
    tok.save_pretrained(tmp_path / "wide")
    assert S.CHUNK_LOGITS // config.vocab_size < S.HEAD_ROWS  # without the row minimum the chunks would be smaller
    rows: list[int] = []
    real_linear = torch.nn.functional.linear

    def counting(x, weight, bias=None):
        if weight.shape[0] == config.vocab_size:
            rows.append(x.shape[0])
        return real_linear(x, weight, bias)

    monkeypatch.setattr(torch.nn.functional, "linear", counting)
    m, task, scores = score_with_project(tmp_path / "wide", "causal", "blimp_filtered", data_slice, 64, every=2)
    monkeypatch.undo()
    assert max(rows) == S.HEAD_ROWS, rows
    compare_to_reference(m, task, scores, lambda c, s: ref_causal(m.model, m.tokenizer, m.prefix_id, c, s), every=4)


def test_head_split_matches_full_forward(trained):
    from eval.model import load, split_head

    for backend in ("causal", "mlm"):
        m = load(str(trained[backend]), backend, "cpu")
        assert split_head(m.model, backend, torch.tensor([[1, 5, 6, 7]])) is not None, backend


def test_ties_go_to_first_choice_and_stderr():
    from eval.report import decide, mean_stderr

    pred, right, tied, bad = decide(np.array([[-3.0, -3.0], [-5.0, -2.0], [-1.0, -4.0]]), np.array([0, 0, 0]))
    assert (
        pred.tolist() == [0, 1, 0] and right.tolist() == [True, False, True] and tied.tolist() == [True, False, False]
    )
    assert not bad.any()
    acc, se = mean_stderr(np.array([1, 0, 1, 1]))
    assert acc == 0.75 and se == pytest.approx(np.sqrt(0.25 / 4))  # sample variance 1/4, over n=4


def test_a_non_finite_score_is_never_right():
    """np.argmax of [nan, nan] is 0, which the harness counts as right: a broken model would score 100%."""
    from eval.report import decide

    nan, inf = float("nan"), float("inf")
    scores = np.array([[nan, nan], [nan, -1.0], [-1.0, nan], [inf, -1.0], [-inf, -inf], [-1.0, -2.0], [-2.0, -2.0]])
    pred, right, tied, bad = decide(scores, np.zeros(len(scores), int))
    assert bad.tolist() == [True] * 5 + [False, False]
    assert right.tolist() == [False] * 5 + [True, True] and pred.tolist() == [-1] * 5 + [0, 0]
    assert tied.tolist() == [False] * 6 + [True]  # a non-finite item is not a tie either


# ---------------------------------------------------------------- the command line and its outputs
def test_cli_writes_run_eval_folder(trained, demo_root):
    proc = ok(
        run_cli("eval", str(trained["causal"]), "--tasks", "demo_pairs", "--data-dir", str(demo_root), "--no-progress")
    )
    run = trained["causal"].parent
    result = json.loads((run / "eval" / "demo_pairs.json").read_text())
    assert result["n_subtasks"] == 5 and result["n_items"] == 1000 and 0.0 <= result["accuracy"] <= 1.0
    accs = [s["accuracy"] for s in result["subtasks"].values()]
    assert result["accuracy"] == pytest.approx(np.mean(accs))
    assert result["stderr"] == pytest.approx(np.sqrt(sum(s["stderr"] ** 2 for s in result["subtasks"].values())) / 5)
    rows = [json.loads(line) for line in (run / "eval" / "pairs" / "demo_pairs.jsonl").read_text().splitlines()]
    assert len(rows) == 1000 and all(len(r["scores"]) == 2 and "choices" in r for r in rows)
    assert sum(r["correct"] for r in rows) / 1000 == pytest.approx(np.mean([r["correct"] for r in rows]))
    preds = json.loads((run / "eval" / "predictions.json").read_text())
    assert sum(len(v["predictions"]) for v in preds["demo_pairs"].values()) == 1000
    assert "demo_pairs" in proc.stdout and "accuracy" in proc.stdout  # the summary table


def test_cli_ewok_from_zip_writes_no_plain_text(trained, tmp_path):
    out = tmp_path / "out"
    proc = ok(
        run_cli(
            "eval",
            str(trained["causal"]),
            "--tasks",
            "ewok_filtered",
            "--ewok-zip",
            str(shared("ewok_filtered.zip")),
            "--ewok-password",
            "ewok",
            "--data-dir",
            str(tmp_path),
            "--out",
            str(out),
            "--no-progress",
        )
    )
    assert "ewok_filtered" in proc.stdout
    with zipfile.ZipFile(shared("ewok_filtered.zip")) as zf:
        first = json.loads(zf.read("ewok_filtered/social-interactions.jsonl", pwd=b"ewok").decode().splitlines()[0])
    for path in out.rglob("*"):
        if path.is_file():
            assert first["Target1"] not in path.read_text(encoding="utf-8"), path
    assert len(json.loads((out / "ewok_filtered.json").read_text())["subtasks"]) == 11


def test_mlm_cli(trained, data_slice, tmp_path):
    ok(
        run_cli(
            "eval",
            str(trained["mlm"]),
            "--backend",
            "mlm",
            "--tasks",
            "blimp_filtered",
            "--data-dir",
            str(data_slice),
            "--out",
            str(tmp_path / "o"),
            "--no-progress",
        )
    )
    result = json.loads((tmp_path / "o" / "blimp_filtered.json").read_text())
    assert result["backend"] == "mlm" and result["n_subtasks"] == len(PARADIGMS)


def test_shell_wrappers_run_from_any_folder(trained, data_slice, tmp_path):
    import subprocess

    out = tmp_path / "blimp"
    ok(
        subprocess.run(
            [
                "bash",
                str(ROOT / "eval" / "eval-blimp.sh"),
                str(trained["causal"]),
                "--data-dir",
                str(data_slice),
                "--out",
                str(out),
                "--no-progress",
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )
    )
    assert {p.stem for p in out.glob("*.json")} == {"blimp_filtered", "blimp_supplement", "predictions"}
    out = tmp_path / "all"
    ok(
        subprocess.run(
            [
                "bash",
                str(ROOT / "eval" / "eval-all.sh"),
                str(trained["causal"]),
                "--data-dir",
                str(data_slice),
                "--ewok-zip",
                str(shared("ewok_filtered.zip")),
                "--out",
                str(out),
                "--no-progress",
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "EWOK_PASSWORD": "ewok"},
        )
    )
    assert {p.stem for p in out.glob("*.json")} == {
        "blimp_filtered",
        "blimp_supplement",
        "ewok_filtered",
        "predictions",
    }
    out = tmp_path / "ewok"
    ok(
        subprocess.run(
            [
                "bash",
                str(ROOT / "eval" / "eval-ewok.sh"),
                str(trained["causal"]),
                "--ewok-zip",
                str(shared("ewok_filtered.zip")),
                "--ewok-password",
                "ewok",
                "--out",
                str(out),
                "--no-progress",
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )
    )
    assert (out / "ewok_filtered.json").is_file()
    usage = subprocess.run(["bash", str(ROOT / "eval" / "eval-blimp.sh")], cwd=tmp_path, capture_output=True, text=True)
    assert usage.returncode == 2 and "usage" in usage.stderr


def test_download_unpacks_local_archives(tmp_path, data_slice):
    bundle = tmp_path / "evaluation_data.zip"
    with zipfile.ZipFile(bundle, "w") as zf:
        for f in sorted((data_slice / "blimp_filtered").glob("*.jsonl")):
            zf.write(f, f"evaluation_data/blimp_filtered/{f.name}")
        zf.write(shared("ewok_filtered.zip"), "evaluation_data/ewok_filtered.zip")
        zf.writestr("evaluation_data/ewok_filtered/plain.jsonl", "{}\n")  # plain EWoK is never written out
    dest = tmp_path / "dest"
    ok(
        run_cli(
            "eval",
            "download",
            "--dest",
            str(dest),
            "--from",
            str(bundle),
            "--from",
            shared("blimp_full.tar.gz").as_uri(),
        )
    )
    assert len(list((dest / "blimp_filtered").glob("*.jsonl"))) == len(PARADIGMS)
    assert len(list((dest / "blimp").glob("*.jsonl"))) == 67
    assert (dest / "ewok_filtered.zip").is_file() and not (dest / "ewok_filtered").exists()
    from eval.tasks import load_task

    assert len(load_task("blimp", str(dest)).items) == 67000
    assert len(load_task("ewok_filtered", str(dest), "ewok").items) == 7618
    assert_user_error(
        run_cli("eval", "download", "--dest", str(dest), "--from", str(tmp_path / "missing.zip")), "missing.zip"
    )


def test_download_assembles_the_2025_folder_from_a_local_folder(tmp_path, data_slice):
    """A folder as --from (e.g. ../shared/data): its task folders copied, the archives in it unpacked (the 2025
    extras, BLiMP), EWoK's password-protected zip copied whole; every 2025 task then loads from the result."""
    source = tmp_path / "shared"
    shutil.copytree(data_slice / "blimp_filtered", source / "blimp_filtered")
    shutil.copy(shared("babylm2025_extra_tasks.tar.gz"), source / "babylm2025_extra_tasks.tar.gz")
    shutil.copy(shared("ewok_filtered.zip"), source / "ewok_filtered.zip")
    (source / "corpus").mkdir()
    (source / "corpus" / "train.txt").write_text("not a task file\n")
    dest = tmp_path / "evaluation_data"
    proc = ok(run_cli("eval", "download", "--dest", str(dest), "--from", str(source)))
    assert "entity_tracking: 3 file(s)" in proc.stdout and "reading: 1 file(s)" in proc.stdout
    assert sorted(p.name for p in dest.iterdir()) == [
        "blimp_filtered", "entity_tracking", "ewok_filtered.zip", "reading", "wug_adj_nominalization"]
    assert (dest / "ewok_filtered.zip").read_bytes() == shared("ewok_filtered.zip").read_bytes()
    from eval.tasks import load_task

    assert len(load_task("ewok_filtered", str(dest), "ewok").items) == 7618
    assert len(load_task("wug_adj", str(dest)).items) == 200
    assert len(load_task("reading", str(dest)).table) == 1726 and load_task("entity_tracking", str(dest)).items
    assert_user_error(
        run_cli("eval", "download", "--dest", str(dest), "--from", str(tmp_path / "nowhere")), "nowhere",
        "no such file or folder"
    )
    # again: the same bytes are left as they are; a file edited since is kept, and nothing is written, unless
    # --overwrite (it used to be replaced without a word)
    from eval.__main__ import main

    stamps = {p: p.stat().st_mtime_ns for p in dest.rglob("*") if p.is_file()}
    assert call(main, "download", "--dest", str(dest), "--from", str(source)).returncode == 0
    assert {p: p.stat().st_mtime_ns for p in dest.rglob("*") if p.is_file()} == stamps
    edited = dest / "reading" / "reading_data.csv"
    mine = edited.read_text() + "my own row\n"
    edited.write_text(mine)
    new = dest / "blimp_filtered" / f"{PARADIGMS[0]}.jsonl"
    new.unlink()  # a file the folder lacks is not written either
    assert_user_error(call(main, "download", "--dest", str(dest), "--from", str(source)),
                      f"--dest {dest}: 1 file(s) there differ from the download's ({edited})", "--overwrite")
    assert edited.read_text() == mine and not new.exists()
    ok(call(main, "download", "--dest", str(dest), "--from", str(source), "--overwrite"))
    assert "my own row" not in edited.read_text() and new.is_file()


def test_finetune_learns_the_demo_task_and_position_zero_does_not(trained, demo_root, tmp_path, monkeypatch):
    """`python -m eval finetune` on the demo's phenomenon task (five classes): the last token's state learns it;
    position 0 of a causal model has seen one token (the 2025 script's choice), so it stays at chance. The task
    folder is recorded absolute, however it was given."""
    model = trained["causal"]
    monkeypatch.chdir(demo_root)
    for pool, out, data in (("last", tmp_path / "last", demo_root / "finetune"), ("first", tmp_path / "first",
                                                                               "finetune")):
        ok(
            run_here(
                "eval",
                "finetune",
                str(model),
                "--tasks",
                "demo_phenomenon",
                "--data-dir",
                str(data),
                "--epochs",
                "2",
                "--pool",
                pool,
                "--out",
                str(out),
                "--no-progress",
            )
        )
    last, first = (json.loads((tmp_path / d / "demo_phenomenon.json").read_text()) for d in ("last", "first"))
    assert last["accuracy"] > 0.6 and last["pool"] == "last" and last["n_items"] == 200
    assert last["head"] == first["head"] == "pipeline"
    # no --max-length: the pipeline's 512, or the model's positions where it has fewer (the demo model's are fewer)
    config = json.loads((model / "config.json").read_text())
    positions = config.get("max_position_embeddings") or config["n_positions"]
    assert last["max_length"] == min(512, positions) and positions < 512
    assert first["accuracy"] < 0.35  # chance is 0.2
    assert last["data"] == first["data"] == str(demo_root / "finetune")
    pred = json.loads((tmp_path / "last" / "finetune" / "demo_phenomenon" / "predictions.json").read_text())
    pairs = [
        json.loads(line) for line in (tmp_path / "last" / "pairs" / "demo_phenomenon.jsonl").read_text().splitlines()
    ]
    assert [r["pred"] for r in pred["demo_phenomenon"]["predictions"]] == [r["pred"] for r in pairs]
    assert last["accuracy"] == pytest.approx(np.mean([r["correct"] for r in pairs]))


# ---------------------------------------------------------------- bad input: one line, exit 2, nothing written
def test_bad_inputs(trained, data_slice, tmp_path):
    model = str(trained["causal"])
    out = tmp_path / "never"

    def bad(*args, needles):
        assert_user_error(run_here("eval", *args, "--out", str(out), "--no-progress"), *needles)
        assert not out.exists()

    bad(
        str(tmp_path / "nope"),
        "--tasks",
        "blimp_filtered",
        "--data-dir",
        str(data_slice),
        needles=("nope", "does not exist"),
    )
    bad(
        model,
        "--tasks",
        "demo_pairs",
        "--data-dir",
        str(tmp_path / "no-demo"),
        needles=("--data-dir", "no-demo", "no such folder"),
    )
    no_tok = tmp_path / "no-tokenizer"
    no_tok.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(Path(model) / f, no_tok / f)
    bad(str(no_tok), "--tasks", "blimp_filtered", "--data-dir", str(data_slice), needles=("no tokenizer",))
    from transformers import AutoTokenizer

    no_bos = tmp_path / "no-bos"
    shutil.copytree(model, no_bos)
    tok = AutoTokenizer.from_pretrained(no_bos)
    tok.bos_token = tok.eos_token = None
    tok.save_pretrained(no_bos)
    bad(str(no_bos), "--tasks", "blimp_filtered", "--data-dir", str(data_slice), needles=("neither a BOS nor an EOS",))
    bad(model, "--tasks", "blimp_filterd", needles=("unknown task", "did you mean 'blimp_filtered'"))

    broken = tmp_path / "broken"
    shutil.copytree(data_slice, broken)
    target = broken / "blimp_filtered" / "adjunct_island.jsonl"
    lines = target.read_text().splitlines()
    target.write_text("\n".join(lines[:4] + ['{"sentence_good": "A cat.", '] + lines[4:]) + "\n")
    bad(
        model,
        "--tasks",
        "blimp_filtered",
        "--data-dir",
        str(broken),
        needles=("adjunct_island.jsonl:5", "not valid JSON"),
    )
    target.write_text("\n".join(lines[:2] + ['{"sentence_good": "A cat sleeps."}'] + lines[2:]) + "\n")
    bad(
        model,
        "--tasks",
        "blimp_filtered",
        "--data-dir",
        str(broken),
        needles=("adjunct_island.jsonl:3", "no field 'sentence_bad'"),
    )

    spec = tmp_path / "nochoices.yaml"
    spec.write_text("sources:\n  - files: blimp_filtered/*.jsonl\n")
    bad(model, "--tasks", str(spec), "--data-dir", str(data_slice), needles=("nochoices.yaml", "choices", "missing"))
    for text, needles in (  # a field named twice makes every item a tie, which counts as correct: accuracy 1.0
            ("choices: [sentence_good, sentence_good]", ("twice.yaml:3", "choices: names field 'sentence_good' twice")),
            ("choices: [sentence_good, sentence_bad]\nsources: [{files: /etc/*.conf}]",  # pathlib's glob: a traceback
             ("twice.yaml:2", "sources[0].files: must be a glob inside the data folder", "/etc/*.conf"))):
        spec = tmp_path / "twice.yaml"
        spec.write_text(f"sources:\n  - files: blimp_filtered/*.jsonl\n{text}\n" if "sources:" not in text
                        else text + "\n")
        bad(model, "--tasks", str(spec), "--data-dir", str(data_slice), needles=needles)
    empty = tmp_path / "empty"
    (empty / "blimp_filtered").mkdir(parents=True)
    (empty / "blimp_filtered" / "x.jsonl").write_text("\n\n")
    bad(model, "--tasks", "blimp_filtered", "--data-dir", str(empty), needles=("no items",))
    bad(model, "--tasks", "ewok_filtered", "--ewok-zip", str(shared("ewok_filtered.zip")), "--ewok-password", "wrong",
        needles=("ewok_filtered.zip", "password"))
    long_spec, long_data = long_context_task(tmp_path)
    bad(model, "--tasks", str(long_spec), "--data-dir", str(long_data), "--max-length", "16", "--too-long", "error",
        needles=("longer than the model's 16 positions", "long.jsonl:2"))


def test_two_evaluations_into_one_folder_keep_both_tasks_predictions(trained, data_slice, tmp_path):
    """eval/predictions.json holds every task's predictions, each evaluation adding its own. It adds them while it
    holds the file's lock: one that finishes scoring while another writer (here the test) holds it waits, then adds
    its task to what that writer wrote. (It used to read and write the file without a lock: of two evaluations of
    other tasks into one folder, the later writer dropped the other's task.)"""
    import subprocess
    import sys
    import time

    from common.locks import file_lock
    from eval.report import PREDICTIONS_LOCK

    out = tmp_path / "out"
    out.mkdir()
    other = {"other_task": {"sub": {"predictions": [{"id": "sub_0", "pred": " x"}]}}}
    with file_lock(out / PREDICTIONS_LOCK):
        proc = subprocess.Popen([sys.executable, "-m", "eval", str(trained["causal"]), "--tasks", "blimp_supplement",
                                 "--data-dir", str(data_slice), "--out", str(out), "--no-progress"],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline and not (out / "blimp_supplement.json").exists():
            time.sleep(0.05)
        time.sleep(1)
        assert proc.poll() is None and not (out / "predictions.json").exists(), proc.communicate()
        (out / "predictions.json").write_text(json.dumps(other) + "\n")  # the other writer's task
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-3000:]
    merged = json.loads((out / "predictions.json").read_text())
    assert list(merged) == ["other_task", "blimp_supplement"] and merged["other_task"] == other["other_task"]
    assert len(merged["blimp_supplement"]) == 5


def test_one_evaluation_at_a_time_writes_a_task_into_a_folder(trained, data_slice, tmp_path, monkeypatch):
    """An evaluation holds each of its tasks' locks in the results folder while it scores and writes them. A second
    evaluation of one of those tasks into that folder is refused in one line naming the holder, before it writes any
    task (two at once mixed their files: one's result beside the other's pairs). The check that scores made another
    way are kept is made again once the locks are held: scores written while the model loaded are kept too."""
    import eval.evaluate as evaluate
    from eval.__main__ import main

    out = tmp_path / "out"
    common = [trained["causal"], "--tasks", "blimp_filtered,blimp_supplement", "--data-dir", data_slice, "--out", out,
              "--no-progress"]
    ok(call(main, *common))
    assert not list(out.glob(".blimp*.lock")), "the tasks' locks are released and their files removed"
    ok(call(main, trained["causal"], "--tasks", "blimp_filtered,blimp_filtered", "--data-dir", data_slice, "--out",
            tmp_path / "twice", "--no-progress"))  # a task named twice takes its lock once (not refused by itself)
    files = lambda: {f: f.read_bytes() for f in out.rglob("*") if f.is_file() and not f.name.endswith(".lock")}  # noqa: E731
    before = files()
    with evaluate.task_lock(out, "blimp_supplement"):
        assert_user_error(call(main, *common), str(out), "another evaluation of blimp_supplement is writing there",
                          f"pid {os.getpid()}", "--out DIR")
        assert files() == before

    # Another way's scores, written by an evaluation that ended while this one loaded its model (after the first
    # check): still refused, and kept.
    late = tmp_path / "late"
    real_load = evaluate.load

    def load_while_another_ends(*args, **kwargs):
        monkeypatch.setattr(evaluate, "load", real_load)  # the other evaluation loads as usual
        ok(call(main, trained["causal"], "--tasks", "blimp_filtered", "--data-dir", data_slice, "--out", late,
                "--no-progress", "--convention", "babylm2025"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(evaluate, "load", load_while_another_ends)
    assert_user_error(call(main, trained["causal"], "--tasks", "blimp_filtered", "--data-dir", data_slice, "--out",
                           late, "--no-progress", "--convention", "babylm2024"),
                      str(late / "blimp_filtered.json"), "scored with convention babylm2025; scoring it with",
                      "babylm2024")
    assert json.loads((late / "blimp_filtered.json").read_text())["convention"] == "babylm2025"


def test_scores_made_another_way_are_never_replaced(trained, data_slice, tmp_path):
    """Another convention, another backend or other task files into a folder that holds a task's scores is refused
    before the model loads (one line, exit 2, every file as it was); the same evaluation again replaces its own
    files."""
    from eval.__main__ import main

    cases = (
        ("convention", trained["causal"], ["--convention", "babylm2024"], ["--convention", "babylm2025"]),
        ("backend", trained["mlm"], ["--backend", "mlm", "--convention", "babylm2025"],
         ["--backend", "mntp", "--convention", "babylm2025"]),
    )
    for key, model, first, second in cases:
        out = tmp_path / key
        common = [model, "--tasks", "blimp_filtered", "--data-dir", data_slice, "--out", out, "--no-progress"]
        ok(call(main, *common, *first))
        before = {f: f.read_bytes() for f in out.rglob("*") if f.is_file()}
        was = json.loads((out / "blimp_filtered.json").read_text())[key]
        now = second[second.index(f"--{key}") + 1]
        assert_user_error(call(main, *common, *second), str(out / "blimp_filtered.json"),
                          f"scored with {key} {was}; scoring it with {now} would replace it", "--out DIR")
        assert {f: f.read_bytes() for f in out.rglob("*") if f.is_file()} == before
    ok(call(main, trained["causal"], "--tasks", "blimp_filtered", "--data-dir", data_slice, "--out",
            tmp_path / "convention", "--no-progress", "--convention", "babylm2024"))  # as it was: replaced
    # A masked model scored the 2024 way records minicons' convention: the same call again is the same evaluation
    # (it used to be refused, as "minicons-pll-mean" against "babylm2024").
    masked = [trained["mlm"], "--tasks", "blimp_filtered", "--data-dir", data_slice, "--out", tmp_path / "mlm2024",
              "--no-progress", "--backend", "mlm", "--convention", "babylm2024"]
    ok(call(main, *masked))
    assert json.loads((tmp_path / "mlm2024" / "blimp_filtered.json").read_text())["convention"] == "minicons-pll-mean"
    ok(call(main, *masked))
    # Other task files: refused the same way, naming both.
    import shutil

    copy = shutil.copytree(data_slice, tmp_path / "other-data")
    out = tmp_path / "convention"
    before = {f: f.read_bytes() for f in out.rglob("*") if f.is_file()}
    was = json.loads((out / "blimp_filtered.json").read_text())["data"]
    assert_user_error(call(main, trained["causal"], "--tasks", "blimp_filtered", "--data-dir", copy, "--out", out,
                           "--no-progress", "--convention", "babylm2024"),
                      f"scored with data {was}; scoring it with {copy}", "would replace it", "--out DIR")
    assert {f: f.read_bytes() for f in out.rglob("*") if f.is_file()} == before


def test_the_same_task_files_written_another_way_are_the_same(trained, data_slice, tmp_path, monkeypatch):
    """A result file records its task files as an absolute path, and a folder is compared as the folder it is: given
    relative to the working folder, with `..` or through a symlink, it is the same files (they were compared as
    written, so a relative --data-dir was refused against its absolute spelling, and the same relative words from
    another working folder were taken for the same files)."""
    from eval.__main__ import main

    out = tmp_path / "out"
    common = [trained["causal"], "--tasks", "blimp_filtered", "--out", out, "--no-progress"]
    monkeypatch.chdir(data_slice.parent)
    ok(call(main, *common, "--data-dir", data_slice.name))
    recorded = json.loads((out / "blimp_filtered.json").read_text())["data"]
    assert recorded == f"{data_slice.resolve()}/blimp_filtered/*.jsonl"
    (tmp_path / "link").symlink_to(data_slice)
    for spelling in (tmp_path / "link", f"../{data_slice.parent.name}/{data_slice.name}", data_slice):
        ok(call(main, *common, "--data-dir", spelling))
    recorded = json.loads((out / "blimp_filtered.json").read_text())["data"]
    # Other files under the same relative words, from another working folder: refused, naming both.
    import shutil

    other = tmp_path / "elsewhere"
    shutil.copytree(data_slice, other / data_slice.name)
    monkeypatch.chdir(other)
    before = {f: f.read_bytes() for f in out.rglob("*") if f.is_file()}
    assert_user_error(call(main, *common, "--data-dir", data_slice.name),
                      f"scored with data {recorded}; scoring it with {other / data_slice.name}/blimp_filtered/*.jsonl")
    assert {f: f.read_bytes() for f in out.rglob("*") if f.is_file()} == before


def test_a_stopped_finetuning_continues_where_it_stopped(trained, demo_root, tmp_path):
    """SIGUSR2 (SLURM's warning before a time limit) inside the second epoch: the task saves a checkpoint, says so,
    exits 75 and writes no result; the same command continues from that checkpoint and ends as an uninterrupted
    fine-tuning does (every epoch's evaluation, the best epoch, the predictions), and removes what it kept. A lost
    node (SIGKILL) keeps the last checkpoint; a stopped attempt of another model, tokenizer, task files or settings is
    not continued. A second fine-tuning of the task into the same folder while one runs is refused."""
    import signal

    from common.errors import EXIT_PREEMPTED
    from conftest import freeze_when

    def command(out, *extra):
        return ["finetune", str(trained["causal"]), "--tasks", "demo_phenomenon", "--data-dir",
                str(demo_root / "finetune"), "--epochs", "3", "--out", str(out), "--no-progress", *extra]

    def evaluations(out):
        rows = (json.loads(line) for line in (out / "finetune" / "demo_phenomenon" / "history.jsonl").open())
        return [{k: v for k, v in r.items() if k.startswith("eval_") and "runtime" not in k and "per_second" not in k}
                | {"step": r["step"]} for r in rows if "eval_loss" in r]

    def kept(out):
        return sorted(p.name for p in (out / "finetune" / "demo_phenomenon").iterdir())

    ok(run_here("eval", *command(tmp_path / "reference")))
    reference = json.loads((tmp_path / "reference" / "demo_phenomenon.json").read_text())
    assert len(evaluations(tmp_path / "reference")) == 3

    out = tmp_path / "stopped"
    trainer = out / "finetune" / "demo_phenomenon" / "trainer"
    proc = freeze_when("eval", command(out), lambda: any(trainer.glob("checkpoint-*/COMPLETE")))
    proc.send_signal(signal.SIGUSR2)
    proc.send_signal(signal.SIGCONT)
    stderr = proc.communicate(timeout=300)[1]
    assert proc.returncode == EXIT_PREEMPTED, stderr[-3000:]
    stopped = [c.name for c in trainer.glob("checkpoint-*")]
    assert len(stopped) == 1 and (trainer / stopped[0] / "COMPLETE").is_file()
    from common.checkpoints import checkpoint_problem

    assert checkpoint_problem(trainer / stopped[0]) is None  # whole by the manifest training's checkpoints keep
    assert f"demo_phenomenon: stopped on SIGUSR2 after saving {trainer / stopped[0]}; run the same command" in stderr
    assert not (out / "demo_phenomenon.json").exists() and kept(out) == ["attempt.json", "best.pt", "trainer"]
    proc = ok(run_here("eval", *command(out)))
    assert f"demo_phenomenon: continuing from {trainer / stopped[0]}" in proc.stdout
    assert evaluations(out) == evaluations(tmp_path / "reference")
    result = json.loads((out / "demo_phenomenon.json").read_text())
    assert {k: result[k] for k in ("accuracy", "mcc", "best_epoch")} == {
        k: reference[k] for k in ("accuracy", "mcc", "best_epoch")}
    assert ((out / "finetune" / "demo_phenomenon" / "predictions.json").read_bytes()
            == (tmp_path / "reference" / "finetune" / "demo_phenomenon" / "predictions.json").read_bytes())
    assert kept(out) == ["history.jsonl", "predictions.json"]

    out = tmp_path / "killed"
    trainer = out / "finetune" / "demo_phenomenon" / "trainer"
    proc = freeze_when("eval", command(out), lambda: any(trainer.glob("checkpoint-*/COMPLETE")))
    before = {f: f.read_bytes() for f in out.rglob("*") if f.is_file()}
    assert_user_error(run_here("eval", *command(out)), f"{out / 'finetune' / 'demo_phenomenon'}: another fine-tuning "
                      f"of demo_phenomenon is running there (", f"pid {proc.pid}", "pass --out DIR")
    assert {f: f.read_bytes() for f in out.rglob("*") if f.is_file()} == before
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert any(trainer.glob("checkpoint-*/COMPLETE"))
    # the same model files elsewhere would be continued (the attempt is what they hold, not where); with another
    # tokenizer they are another attempt, which starts over
    copy = shutil.copytree(trained["causal"], tmp_path / "copy")
    config = json.loads((copy / "tokenizer_config.json").read_text())
    (copy / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 64}))
    proc = ok(run_here("eval", *command(out)[:1], str(copy), *command(out)[2:]))
    assert "continuing from" not in proc.stdout and kept(out) == ["history.jsonl", "predictions.json"]
    assert len(evaluations(out)) == 3


def test_finetuning_checkpoints_the_first_epoch_then_at_most_every_interval(tmp_path):
    """Which epoch ends the fine-tuning checkpoints (the Trainer's own state and control objects, a clock the test
    sets): the first; then one at least --checkpoint-minutes after the last (0: every one); a stop at an epoch's end
    always; the last epoch's never (its results are written at once)."""
    from types import SimpleNamespace

    from transformers import TrainerControl, TrainerState

    from eval.finetune_state import Keeper

    for minutes, expected in ((10, [True, False, True, True, False]), (0, [True, True, True, True, False])):
        now = [0.0]
        keeper = Keeper(None, "accuracy", tmp_path, {}, minutes, clock=lambda: now[0])
        args = SimpleNamespace(output_dir=str(tmp_path / "trainer"))
        saved = []
        for step, at, stop in ((10, 0, False), (20, 300, False), (30, 601, False), (40, 700, True), (100, 2000, True)):
            now[0] = at
            state, control = TrainerState(global_step=step, max_steps=100), TrainerControl(should_save=True)
            control.should_training_stop = stop
            keeper.on_epoch_end(args, state, control)
            saved.append(control.should_save)
            if control.should_save:
                (tmp_path / "trainer" / f"checkpoint-{step}").mkdir(parents=True)
                keeper.on_save(args, state, control)
        assert saved == expected, minutes
        assert [c.name for c in (tmp_path / "trainer").iterdir()] == ["checkpoint-40"]
        assert (tmp_path / "trainer" / "checkpoint-40" / "COMPLETE").is_file()
        shutil.rmtree(tmp_path / "trainer")


def long_context_task(tmp_path):
    """A task whose second item has a context longer than 16 tokens and short choices."""
    data = tmp_path / "long-data"
    data.mkdir(exist_ok=True)
    rows = [{"c": "The cat", "a": "sleeps.", "b": "sleep."},
            {"c": "The " + "very " * 30 + "old cat", "a": "sleeps.", "b": "sleep."}]
    (data / "long.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = tmp_path / "long.yaml"
    spec.write_text("sources:\n  - files: '*.jsonl'\ncontext: c\nchoices: [a, b]\n")
    return spec, data


def test_too_long_is_truncated_with_a_warning(trained, tmp_path):
    spec, data = long_context_task(tmp_path)
    proc = ok(run_here("eval", str(trained["causal"]), "--tasks", str(spec), "--data-dir", str(data),
                       "--max-length", "16", "--out", str(tmp_path / "o"), "--no-progress"))
    assert (
        "left-truncated" in proc.stdout
        and "longer than the model's 16 positions" in proc.stdout
        and "long.jsonl:2" in proc.stdout
    )
    assert json.loads((tmp_path / "o" / "long.json").read_text())["n_items"] == 2
