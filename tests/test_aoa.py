"""The 2025 pipeline's age-of-acquisition task (`python -m eval aoa`): surprisals against a naive one-word reference
that follows the pipeline's procedure, the surprisal.json layout, the curve fitness on curves of known shape, bad
inputs. (The submission's "aoa" entry is tested with collate in test_eval2025.)"""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import assert_user_error, call, ok, run_here, shared

GPT2 = shared("hf_tiny_gpt2")
WORDS = {"dog": 3, "a": 2, "mommy": 1, " juice ": 2, "hippopotamus": 2, "I": 1, "ball": 0, "choo-choo": 1}


def write_words(path: Path, words: dict[str, int] = WORDS) -> Path:
    """cdi_childes.json in its published layout: {word: [{"context": ..., ...}, ...]}."""
    data = {w: [{"context": f"look at the {w.strip()} {k}", "source": "childes"} for k in range(n)]
            for w, n in words.items()}
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return path


def naive_surprisal(folder: Path, word: str) -> float:
    """The pipeline's compute_surprisal_causal with use_bos_only, one word at a time: the BOS text + the stripped
    word, encoded with special tokens; tokens whose span ends after the BOS text, each read at the position before
    it (position 0 never); minus the sum of their log-probabilities."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder).eval()
    word = word.strip()
    text = tok.bos_token + word
    enc = tok(text, return_offsets_mapping=True)
    start = len(text) - len(word)
    mask = torch.tensor([1.0 if end > start else 0.0 for _, end in enc["offset_mapping"]])[1:]
    ids = torch.tensor([enc["input_ids"]])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids[:, :-1]).logits[0].double(), -1)
    return -float((logp.gather(-1, ids[0, 1:, None])[:, 0] * mask).sum())


def naive_masked_surprisal(folder: Path, word: str, backend: str) -> float:
    """The pipeline's compute_surprisal_mlm / _mntp, one word at a time: each token whose span ends after the BOS
    text masked in its own copy, read where it is (mlm) or one position earlier (mntp, which skips position 0 when
    the tokenizer has neither CLS nor BOS)."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(folder), AutoModelForMaskedLM.from_pretrained(folder).eval()
    word = word.strip()
    text = tok.bos_token + word
    enc = tok(text, return_offsets_mapping=True)
    start = len(text) - len(word)
    prepend = tok.cls_token_id is not None or tok.bos_token_id is not None
    total = 0.0
    for i, (_, end) in enumerate(enc["offset_mapping"]):
        if end > start and (backend == "mlm" or i != 0 or prepend):
            ids = torch.tensor([enc["input_ids"]])
            ids[0, i] = tok.mask_token_id
            with torch.no_grad():
                logits = model(ids).logits[0, i - (backend == "mntp")].double()
            total += float(torch.log_softmax(logits, -1)[enc["input_ids"][i]])
    return -total


@pytest.fixture
def run(demo_args, tmp_path) -> Path:
    """A demo run with two milestones (its tokenizer puts BOS before every text itself: the BOS text then gives a
    second one, as in the pipeline)."""
    ok(run_here("train", *demo_args, "train.max_steps=10", "train.word_checkpoints=1k,5k"))
    return tmp_path / "runs" / "demo" / "teacher"


def test_surprisals_follow_the_pipeline_word_by_word(tmp_path):
    """GPT-2's tokenizer (no BOS of its own: the BOS text is the only one) and the demo-style double BOS, on words of
    one and several tokens, with spaces around: the project's batched surprisals equal the naive reference."""
    from eval.aoa import Word, read_words, surprisals

    words = read_words(write_words(tmp_path / "cdi.json"))
    assert [w.text for w in words] == ["dog", "mommy", " juice ", "hippopotamus", "ball", "choo-choo"]
    assert [w.contexts for w in words] == [3, 1, 2, 2, 0, 1]
    got = surprisals(GPT2, words, "causal", "4", "cpu", progress=False)
    want = [naive_surprisal(GPT2, w.text) for w in words]
    assert np.allclose(got, want, atol=1e-4) and min(want) > 0
    assert read_words(tmp_path / "cdi.json", min_contexts=2) == [Word("dog", 3), Word(" juice ", 2),
                                                                 Word("hippopotamus", 2)]
    from transformers import AutoTokenizer, RobertaConfig, RobertaForMaskedLM

    masked = tmp_path / "roberta"  # a masked LM with GPT-2's tokenizer, as test_eval2025 builds one
    tok = AutoTokenizer.from_pretrained(GPT2)
    tok.add_special_tokens({"mask_token": "<mask>", "pad_token": "<pad>", "cls_token": "<s>", "sep_token": "</s>"})
    torch.manual_seed(0)
    RobertaForMaskedLM(RobertaConfig(vocab_size=max([len(tok), *tok.all_special_ids]) + 1, hidden_size=32,
                                     num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                     max_position_embeddings=520, pad_token_id=1)).save_pretrained(masked)
    tok.save_pretrained(masked)
    for backend in ("mlm", "mntp"):
        got = surprisals(masked, words, backend, "4", "cpu", progress=False)
        assert np.allclose(got, [naive_masked_surprisal(masked, w.text, backend) for w in words], atol=1e-4), backend


def test_aoa_writes_the_pipelines_surprisal_file_and_fitness(run, tmp_path, monkeypatch):
    from eval.aoa import read_words

    words_file = write_words(tmp_path / "cdi_childes.json")
    cdi = tmp_path / "cdi.csv"
    months = list(range(16, 31))
    lines = ["word," + ",".join(map(str, months))]
    for k, w in enumerate(["dog", "mommy", "juice", "hippopotamus", "ball", "choo-choo"]):
        lines.append(w + "," + ",".join(f"{1 / (1 + math.exp(-(m - 18 - k))):.4f}" for m in months))
    cdi.write_text("\n".join(lines) + "\n")
    proc = ok(run_here("eval", "aoa", str(run), "--words", str(words_file), "--cdi", str(cdi), "--no-progress"))
    target = run / "eval" / "babylm2025" / "aoa" / "surprisal.json"
    assert f"6 words, 9 entries at each of 2 checkpoints (chck_1k .. chck_5k) -> {target}" in proc.stdout
    data = json.loads(target.read_text())
    assert data["metadata"]["backend"] == "causal" and data["metadata"]["use_bos_only"] is True
    assert data["metadata"]["words"] == str(words_file.resolve()) and data["metadata"]["total_steps"] == 2
    rows = data["results"]
    words = read_words(words_file)
    expected = [(step, count, w.text, k) for step, count in (("chck_1k", 1000), ("chck_5k", 5000)) for w in words
                for k in range(w.contexts)]
    assert [(r["step"], r["word_count"], r["target_word"], r["context_id"]) for r in rows] == expected
    assert {r["context"] for r in rows} == {"BOS_ONLY"}
    for step in ("chck_1k", "chck_5k"):
        model = run / "milestones" / step
        for w in words:
            mine = {r["surprisal"] for r in rows if r["step"] == step and r["target_word"] == w.text}
            assert len(mine) == (1 if w.contexts else 0)  # every context records the same surprisal
            if mine:
                assert mine.pop() == pytest.approx(naive_surprisal(model, w.text), abs=1e-4)
    fitness = json.loads(target.with_name("curve_fitness.json").read_text())  # its values: the next test
    assert f"aoa: curve fitness {fitness['curve_fitness']:.4f} over {fitness['n_words']} words" in proc.stdout

    assert fitness["cdi"] == str(cdi.resolve())
    # the same command again replaces its own file (and the fitness of the surprisals it replaced, without --cdi);
    # another backend or words file is refused, the file kept
    proc = ok(run_here("eval", "aoa", str(run), "--words", str(words_file), "--no-progress"))
    assert "removed" in proc.stdout and not target.with_name("curve_fitness.json").exists()
    before = target.read_bytes()
    other = write_words(tmp_path / "other.json", {"dog": 1, "ball": 1})
    assert_user_error(run_here("eval", "aoa", str(run), "--words", str(other), "--no-progress"),
                      str(target), f"made with words {words_file.resolve()}", "--out DIR")
    assert target.read_bytes() == before
    ok(run_here("eval", "aoa", str(run), "--words", str(other), "--out", str(tmp_path / "elsewhere"),
                "--no-progress"))
    assert len(json.loads((tmp_path / "elsewhere" / "babylm2025" / "aoa" / "surprisal.json").read_text())
               ["results"]) == 4
    from eval.evaluate import task_lock

    with task_lock(run / "eval", "aoa"):
        assert_user_error(run_here("eval", "aoa", str(run), "--words", str(words_file), "--no-progress"),
                          "another evaluation of aoa is writing there", f"pid {os.getpid()}")
    assert target.read_bytes() == before

    # Ctrl-C right after the surprisals are replaced: the curve fitness of those replaced is gone already (it was
    # removed after them, and a stop between the two left it beside surprisals it did not score)
    ok(run_here("eval", "aoa", str(run), "--words", str(words_file), "--cdi", str(cdi), "--no-progress"))
    assert target.with_name("curve_fitness.json").is_file()
    import eval.aoa

    def write_then_stop(path, text, real=eval.aoa.write_atomic):
        real(path, text)
        raise KeyboardInterrupt

    monkeypatch.setattr(eval.aoa, "write_atomic", write_then_stop)
    proc = run_here("eval", "aoa", str(run), "--words", str(words_file), "--no-progress")
    assert proc.returncode == 130
    assert proc.stderr.strip() == "interrupted; nothing half-written is kept; run the same command again"
    assert target.is_file() and not target.with_name("curve_fitness.json").exists()


def test_curve_fitness_on_curves_of_known_shape():
    """Noise-free sigmoids: the children's AoA is the proportions' midpoint, the model's the log10(words) where the
    fitted curve crosses halfway from log2(300,000) to the word's lowest surprisal (the pipeline's mixed units);
    model AoAs that rise with the children's give r = 1; fewer than 3 fitted words give the pipeline's 0.0, flagged."""
    import pandas as pd

    from eval.aoa_fit import CHANCE_VOCAB, child_aoa, curve_fitness, model_aoa, sigmoid

    ages = np.arange(16, 31)
    assert child_aoa(ages, sigmoid(ages, 1.0, 0.8, 22.0, 0.0)) == pytest.approx(22.0, abs=1e-3)
    assert child_aoa(ages, np.full(15, np.nan)) is None and child_aoa(ages[:2], np.array([0.1, 0.9])) is None

    names = [f"chck_{i}M" for i in range(1, 10)] + [f"chck_{i * 10}M" for i in range(1, 11)]
    steps = np.array([float(n[5:-1]) * 1e6 for n in names])
    x = np.log10(steps + 1)
    chance = math.log2(CHANCE_VOCAB)

    def curve(mid: float) -> np.ndarray:  # surprisal falling from 20 to 4 nats around log10(words) = mid
        return -sigmoid(x, 16.0, 3.0, mid, -20.0)

    s = curve(7.0)
    level = -(chance - 0.5 * (chance - s.min()))
    expected = 7.0 - math.log(16.0 / (level + 20.0) - 1) / 3.0
    assert model_aoa(list(s), list(steps)) == pytest.approx(expected, abs=1e-3)
    assert model_aoa([5.0, 4.0], [1e6, 2e6]) is None

    mids = {"dog": 6.6, "ball": 6.8, "milk": 7.0, "shoe": 7.2, "bird": 7.4}
    rows = [{"step": n, "target_word": w, "surprisal": float(v)} for w, mid in mids.items()
            for _ in range(2) for n, v in zip(names, curve(mid))]
    rows.append({"step": "chck_1M", "target_word": "zebra", "surprisal": None})  # not in the CDI: ignored
    cdi = pd.DataFrame([{"word": w, **{str(a): float(sigmoid(a, 1.0, 0.8, 19.0 + k * 2, 0.0)) for a in ages}}
                        for k, w in enumerate(mids)])
    fit = curve_fitness(rows, cdi)
    assert fit["n_words"] == 5 and fit["valid_words"] == list(mids)
    assert fit["curve_fitness"] == pytest.approx(1, abs=1e-3)
    assert fit["child_aoas"] == pytest.approx([19, 21, 23, 25, 27], abs=1e-3)
    few = curve_fitness([r for r in rows if r["target_word"] in ("dog", "ball")], cdi)
    assert few == {"curve_fitness": 0.0, "n_words": 2, "too_few_words": True}
    # every word with the children's same curve: no correlation, a null and the reason (pearsonr's NaN was written
    # into the file as NaN, which is not JSON)
    flat = cdi.assign(**{str(a): float(sigmoid(a, 1.0, 0.8, 23.0, 0.0)) for a in ages})
    fit = curve_fitness(rows, flat)
    assert fit["curve_fitness"] is None and fit["n_words"] == 5 and "same children's AoA" in fit["undefined"]
    json.loads(json.dumps(fit), parse_constant=lambda c: pytest.fail(f"{c} in the fitness file"))


def test_aoa_bad_inputs(run, tmp_path):
    """One line, exit 2, nothing written: the words file (missing, not JSON, not an object, a word without a list or
    a context without text, no usable word), the run (not a run, no milestones, WML peers), --min-contexts, the
    tokenizer (no BOS), the backend, the CDI file (missing, no word column, a month that is not a proportion)."""
    from eval.__main__ import main

    words = write_words(tmp_path / "cdi.json")
    out = tmp_path / "never"

    def bad(*args, needles, target=run):
        assert_user_error(call(main, "aoa", str(target), *args, "--out", str(out), "--no-progress"), *needles)
        assert not out.exists()

    def words_file(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    bad("--words", str(tmp_path / "none.json"), needles=("no such file", "cdi_childes.json"))
    bad("--words", str(words_file("broken.json", '{"dog": [\n  {"context": "x"},\n')), needles=("broken.json:3",
                                                                                              "not valid JSON"))
    bad("--words", str(words_file("list.json", '["dog"]')), needles=("list.json", "holds a list"))
    bad("--words", str(words_file("nolist.json", '{"dog": "the dog"}')), needles=("'dog'", "not a list"))
    bad("--words", str(words_file("nocontext.json", '{"dog": [{"context": "x"}, {"text": "y"}]}')),
        needles=("nocontext.json", "'dog', context 1", "\"context\""))
    bad("--words", str(words_file("short.json", '{"a": [{"context": "x"}], "I": []}')),
        needles=("no word of more than one character",))
    bad("--words", str(words), "--min-contexts", "-1", needles=("--min-contexts -1",))
    bad("--words", str(words), needles=("not a run directory",), target=tmp_path)
    bare = tmp_path / "bare"
    shutil.copytree(run, bare, ignore=shutil.ignore_patterns("milestones"))
    bad("--words", str(words), needles=("no milestones",), target=bare)
    peers = tmp_path / "peers"
    shutil.copytree(run, peers)
    for name in ("chck_1k", "chck_5k"):
        milestone = peers / "milestones" / name
        shutil.copytree(milestone, tmp_path / "peer-0")
        for f in list(milestone.iterdir()):
            if f.name != "words_seen.json":
                shutil.rmtree(f) if f.is_dir() else f.unlink()
        shutil.move(tmp_path / "peer-0", milestone / "peer-0")
    bad("--words", str(words), needles=("holds WML peers", "peer-0"), target=peers)
    nobos = tmp_path / "nobos"
    shutil.copytree(run, nobos)
    from transformers import AutoTokenizer

    for name in ("chck_1k", "chck_5k"):
        tok = AutoTokenizer.from_pretrained(nobos / "milestones" / name)
        tok.bos_token = None
        tok.save_pretrained(nobos / "milestones" / name)
    bad("--words", str(words), needles=("no BOS token",), target=nobos)
    slow = tmp_path / "slow"  # ByT5's tokenizer exists only in Python: no character offsets
    shutil.copytree(run, slow)
    from transformers import ByT5Tokenizer

    for name in ("chck_1k", "chck_5k"):
        for f in (slow / "milestones" / name).glob("*"):
            if f.name.startswith(("tokenizer", "special_tokens")):
                f.unlink()
        ByT5Tokenizer(extra_ids=0, bos_token="<s>").save_pretrained(slow / "milestones" / name)
    bad("--words", str(words), needles=("not a fast tokenizer", "chck_1k"), target=slow)
    bad("--words", str(words), "--backend", "mlm", needles=("cannot be loaded as a masked LM",))
    bad("--words", str(words), "--cdi", str(tmp_path / "none.csv"), needles=("--cdi", "no such file"))
    bad("--words", str(words), "--cdi", str(words_file("noword.csv", "item,16,17\ndog,0.1,0.2\n")),
        needles=("noword.csv", "has no word column"))
    bad("--words", str(words), "--cdi", str(words_file("text.csv", "word,16,17\ndog,0.1,0.2\nball,0.3,many\n")),
        needles=("text.csv:3", "month 17", "'many'"))
    for value in ("1.5", "-0.2", "inf"):  # numbers that are no proportion were taken into the fitness
        cdi = words_file("range.csv", f"word,16,17\ndog,0.1,0.2\nball,{value},0.4\n")
        bad("--words", str(words), "--cdi", str(cdi), needles=("range.csv:3", "month 16", "not a proportion (0 to 1)"))
    assert not (run / "eval" / "babylm2025" / "aoa").exists()
