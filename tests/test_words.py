"""Words seen (the BabyLM rules' unit): the raw words each packed block holds, recounted naively from
real BabyLM text; budgets in epochs and in words; milestone exports; the bad inputs of budgets."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from conftest import ROOT, assert_user_error, call, ok, run_cli, run_here, shared, slice_corpus
from tokenizer.config import DataConfig, TokenizerConfig
from tokenizer.corpus import CLEANERS
from tokenizer.prepare import block_words, load_blocks, prepare


@pytest.fixture(scope="module")
def babylm(tmp_path_factory):
    """150 lines of each real BabyLM 2023 training file; those of cbt.train around its first `_BOOK_TITLE_` line
    (line 1421), which cleaning drops, and children_stories' include blank lines."""
    root = tmp_path_factory.mktemp("words")
    slice_corpus(shared("babylm_2023_partial", "train_10M"), root / "train", 150)
    lines = shared("babylm_2023_partial", "train_10M", "cbt.train").read_bytes().split(b"\n")
    (root / "train" / "cbt.train").write_bytes(b"\n".join(lines[1350:1500]) + b"\n")
    return root


def raw_lines(path):
    """The file's lines as bytes split at newlines only (a last line without one is still a line)."""
    chunks = path.read_bytes().split(b"\n")
    return chunks[:-1] if chunks[-1] == b"" else chunks


def reference_token_words(folder, tokenizer) -> tuple[list[list[int]], int]:
    """A naive recount, one line at a time: each raw line cleaned by its domain's cleaner and tokenised on its
    own, its raw words (whitespace tokens) handed to its tokens one by one so that its first j tokens hold
    ceil(j * words / tokens). Returns the words held by each token of each kept line, and the words of the
    raw files (dropped lines included)."""
    from tokenizer.bpe import prefix_id

    lines, corpus_words = [], 0
    for path in sorted(folder.iterdir()):
        for raw in raw_lines(path):
            text = raw.decode("utf-8")
            words = len(text.split())
            corpus_words += words
            clean = CLEANERS[path.stem](text)
            if clean is None:
                continue
            ids = tokenizer(clean)["input_ids"]
            n = len(ids) + (ids[:1] != [prefix_id(tokenizer)])
            lines.append([math.ceil(j * words / n) - math.ceil((j - 1) * words / n) for j in range(1, n + 1)])
    return lines, corpus_words


def test_every_block_holds_the_words_of_its_text(babylm, tmp_path):
    """Packed and padded blocks, against the naive recount of the real files."""
    from transformers import AutoTokenizer

    data = DataConfig(train_dir=str(babylm / "train"), cache_dir=str(tmp_path), block_size=64)
    prepared = prepare(data, TokenizerConfig(vocab_size=1000))
    tokenizer = AutoTokenizer.from_pretrained(prepared.tokenizer_dir)
    per_token, corpus_words = reference_token_words(babylm / "train", tokenizer)
    flat = np.concatenate([np.asarray(t) for t in per_token])
    n_blocks = len(flat) // 64
    expected = flat[: n_blocks * 64].reshape(n_blocks, 64).sum(1)
    blocks = block_words(load_blocks(prepared.train_blocks, with_words=True))
    assert np.array_equal(blocks, expected)
    stats = json.loads((prepared.train_blocks / "stats.json").read_text())
    assert (
        stats["words"] == expected.sum() and stats["kept_words"] == flat.sum() and stats["corpus_words"] == corpus_words
    )
    assert stats["corpus_words"] > stats["kept_words"]  # the _BOOK_TITLE_ line's words are in the file, not in training
    assert "words" not in load_blocks(prepared.train_blocks).column_names  # only training counts them

    padded = prepare(DataConfig(**{**data.__dict__, "packing": False}), TokenizerConfig(vocab_size=1000))
    kept = [t for t in per_token if len(t) >= 2]
    expected = [sum(t[:64]) for t in kept]
    assert load_blocks(padded.train_blocks, with_words=True)[:]["words"].tolist() == expected


def demo_cli(demo_root, cache_dir, out, *extra):
    return [
        "config/runs/demo-teacher.yaml",
        f"data.train_dir={demo_root / 'train'}",
        f"data.dev_dir={demo_root / 'dev'}",
        f"data.cache_dir={cache_dir}",
        f"output.dir={out}",
        "train.save_steps=10",
        "train.eval_steps=10",
        "train.logging_steps=1",
        "optim.warmup_steps=5",
        *extra,
    ]


def data_order(blocks, batch_size: int, epochs: int) -> list[list[int]]:
    """The blocks of every optimizer step as the Trainer draws them (its own dataloader, epoch by epoch)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, TrainingArguments

    from train.trainer import BabyTrainer

    ds = blocks.remove_columns(["words"]).add_column("block_index", np.arange(len(blocks)))
    args = TrainingArguments(output_dir="/nonexistent", per_device_train_batch_size=batch_size, seed=42, use_cpu=True,
                             report_to="none", remove_unused_columns=False)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=4, n_head=1, vocab_size=8))
    trainer = BabyTrainer(model=model, args=args, train_dataset=ds.with_format("torch"),
                          data_collator=lambda rows: {"block_index": torch.stack([r["block_index"] for r in rows])})
    loader, steps = trainer.get_train_dataloader(), []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        steps.extend(batch["block_index"].tolist() for batch in loader)
    return steps


@pytest.mark.slow
def test_two_epochs_count_twice_the_corpus_and_milestones_fall_on_the_data_order(babylm, cache_dir, tmp_path):
    """train.epochs=2 on real text: words seen, step by step, equal the naive recount of the blocks the Trainer
    drew, in its order; the run ends at exactly twice the corpus' words; each milestone is exported at the first
    step at or past it, as a model that loads, with its tokenizer and the exact count."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "runs"
    ok(
        run_here(
            "train",
            "config/runs/demo-teacher.yaml",
            f"data.train_dir={babylm / 'train'}",
            "data.dev_dir=",
            f"data.cache_dir={cache_dir}",
            f"output.dir={out}",
            "train.epochs=2",
            "train.logging_steps=1",  # replaces the recipe's max_steps
            "train.save_steps=100",
            "train.word_checkpoints=5k,20k,30k",
            "optim.warmup_steps=2",
            "train.keep_best=false",
        )
    )
    run = out / "demo" / "teacher"
    info = json.loads((run / "run.json").read_text())["words"]
    tokenizer = AutoTokenizer.from_pretrained(run / "model")
    per_token, corpus_words = reference_token_words(babylm / "train", tokenizer)
    flat = np.concatenate([np.asarray(t) for t in per_token])
    n_blocks = len(flat) // 64
    block_words = flat[: n_blocks * 64].reshape(n_blocks, 64).sum(1)
    assert info["epoch_words"] == block_words.sum() and info["corpus_words"] == corpus_words

    from common.paths import read_jsonl

    cumulative = np.cumsum(
        [
            block_words[step].sum()
            for step in data_order(load_blocks(_train_blocks(cache_dir, run), with_words=True), 16, 2)
        ]
    )
    rows = [r for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, len(cumulative) + 1))
    assert [r["words_seen"] for r in rows] == cumulative.tolist()
    assert cumulative[-1] == 2 * block_words.sum() == json.loads((run / "DONE").read_text())["words_seen"]
    for milestone in (5000, 20000, 30000):
        folder = run / "milestones" / f"chck_{milestone // 1000}k"
        record = json.loads((folder / "words_seen.json").read_text())
        step = int(np.argmax(cumulative >= milestone)) + 1
        assert record == {
            "milestone": milestone,
            "words_seen": int(cumulative[step - 1]),
            "step": step,
            "epoch": record["epoch"],
        }
        assert (
            AutoModelForCausalLM.from_pretrained(folder).config.model_type == "gpt2"
            and (folder / "tokenizer.json").exists()
        )
    assert sorted(p.name for p in (run / "milestones").iterdir()) == [
        "chck_20k",
        "chck_30k",
        "chck_5k",
    ]  # no temporary left


def _train_blocks(cache_dir, run):
    """The packed training blocks a run used (the cache entry its tokenizer's blocks live in)."""
    from common import config as cfglib
    from train.config import RunConfig

    cfg = cfglib.load(RunConfig, run / "config.yaml")
    return prepare(cfg.data, cfg.tokenizer).train_blocks


@pytest.mark.slow
def test_a_words_budget_stops_at_the_first_step_past_it(demo_root, cache_dir, tmp_path):
    """train.max_words: the last step is the first at or past the budget, the milestone at the budget is that
    step's model, and the learning rate has decayed to about its minimum there (the schedule spans the budget)."""
    from common.paths import read_jsonl

    ok(run_here("train", *demo_cli(demo_root, cache_dir, tmp_path, "train.max_words=12k",
                                  "train.word_checkpoints=4k,12k")))
    run = tmp_path / "demo" / "teacher"
    rows = [r for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]
    assert rows[-2]["words_seen"] < 12000 <= rows[-1]["words_seen"]
    done = json.loads((run / "DONE").read_text())
    assert done["step"] == rows[-1]["step"] and done["words_seen"] == rows[-1]["words_seen"]
    assert json.loads((run / "milestones" / "chck_12k" / "words_seen.json").read_text())["step"] == done["step"]
    assert rows[-1]["learning_rate"] <= 3e-4 + 0.1 * (3e-3 - 3e-4)  # demo-teacher: lr 3e-3, min_lr 3e-4
    assert json.loads((run / "run.json").read_text())["words"]["budget_words"] == 12000


@pytest.mark.slow
def test_a_words_budget_evaluates_its_last_step_so_keep_best_can_export_it(demo_root, cache_dir, tmp_path):
    """The step that meets train.max_words is saved and evaluated, as the Trainer does at its own last step: the
    final weights compete for keep_best, and model/ is the evaluated checkpoint with the lowest dev loss. (Before,
    the budget's last step was saved but never evaluated, so model/ was the last evaluated checkpoint: the study's
    students lost their last 47 of 247 steps.)"""
    from common.paths import read_jsonl
    from conftest import assert_bitwise_equal, weights

    ok(run_here("train", *demo_cli(demo_root, cache_dir, tmp_path, "train.max_words=12k", "train.eval_steps=4",
                                  "train.save_steps=4", "train.word_checkpoints=12k")))
    run = tmp_path / "demo" / "teacher"
    done = json.loads((run / "DONE").read_text())
    assert done["step"] % 4, f"the budget's last step ({done['step']}) must not be a multiple of eval_steps here"
    evals = {r["step"]: r["eval_loss"] for r in read_jsonl(run / "metrics.jsonl") if "eval_loss" in r
             and not r.get("final")}
    assert done["step"] in evals and sorted(evals) == [*range(4, done["step"], 4), done["step"]]
    best = min(evals, key=evals.get)
    assert done["best_checkpoint"].endswith(f"checkpoint-{best}") and done["dev_loss"] == evals[best]
    assert_bitwise_equal(weights(run / "model"), weights(run / "checkpoints" / f"checkpoint-{best}"))
    if best == done["step"]:  # the final weights are the milestone at the budget
        assert_bitwise_equal(weights(run / "model"), weights(run / "milestones" / "chck_12k"))


@pytest.mark.parametrize("extra, needles", [
    (["train.epochs=2"], ["train.max_steps and train.epochs are both set"]),
    (["train.max_words=1M"], ["train.max_steps and train.max_words are both set"]),
    (["train.max_steps=0", "train.epochs=2", "train.max_words=1M"], ["train.epochs and train.max_words are both set"]),
    (["train.max_steps=0", "train.max_words=100"], ["train.max_words", "less than one optimizer step", "words"]),
    (["train.max_steps=0", "train.epochs=0.001"], ["train.epochs", "less than one optimizer step"]),
    (["train.max_steps=0", "train.max_words=ten"], ["train.max_words", "'ten' is not a number of words"]),
    (["train.max_steps=0", "train.max_words=2.5"], ["train.max_words", "not a whole"]),
    (["train.word_checkpoints=5k,2k"], ["train.word_checkpoints[1]", "increasing order"]),
    (["train.word_checkpoints=5k,5k"], ["train.word_checkpoints[1]", "increasing order"]),
    (["train.word_checkpoints=babylm,5k"], ["train.word_checkpoints", "stands alone"]),
    (["train.word_checkpoints=5q"], ["train.word_checkpoints[0]", "not a number of words"]),
])
def test_budget_and_milestone_mistakes_are_refused_before_anything_is_written(
    extra, needles, demo_root, cache_dir, tmp_path
):
    from train.__main__ import main

    args = demo_cli(demo_root, cache_dir, tmp_path / "runs", "train.max_steps=30", *extra)
    assert_user_error(call(main, str(ROOT / args[0]), *args[1:]), *needles)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("budget, milestones, note", [
    ("train.max_steps=2", "babylm", "19 milestone(s) from 1M on lie beyond this run's budget of about 1,3"),
    ("train.epochs=0.2", "1k,2k,1M", "1 milestone(s) from 1M on lie beyond this run's budget of "),
])
def test_milestones_beyond_the_budget_are_named_and_left_out(budget, milestones, note, demo_root, cache_dir, tmp_path):
    """A preset, or a recipe's list under a shorter budget from the command line: one note, the rest exported."""
    from train.__main__ import main

    args = demo_cli(demo_root, cache_dir, tmp_path / "runs", budget, f"train.word_checkpoints={milestones}")
    proc = ok(call(main, str(ROOT / args[0]), *args[1:]))
    assert f"note: train.word_checkpoints: {note}" in proc.stdout and f"({budget}); not exported" in proc.stdout
    run = tmp_path / "runs" / "demo" / "teacher"
    kept = [m for m in json.loads((run / "run.json").read_text())["words"]["milestones"]]
    assert kept == ([] if milestones == "babylm" else [1000, 2000]) and (run / "DONE").exists()
    assert sorted(p.name for p in (run / "milestones").glob("*")) == sorted(f"chck_{m // 1000}k" for m in kept)


@pytest.mark.parametrize("budget, preset, over", [
    ({"max_words": "150M"}, "babylm", "150,000,000 words, more than the 100,000,000 that BabyLM 2025 lets a "
                                      "strict-small submission see"),
    ({"epochs": 11.0}, "babylm", "110,000,000 words, more than the 100,000,000"),
    ({"max_steps": 25_000}, "babylm", "about 102,375,102 words, more than the 100,000,000"),
    ({"max_words": "1.5B"}, "babylm-100m", "1,500,000,000 words, more than the 1,000,000,000 that BabyLM 2025 lets "
                                           "a strict submission see"),
    ({"max_words": "100M"}, "babylm", None),  # at the limit
    ({"epochs": 10.0}, "babylm", None),  # BabyLM's ten epochs of 10M words
    ({"max_words": "150M"}, "babylm-100m", None),
    ({"max_words": "150M"}, "1M,2M", None),  # a list of one's own names no track
])
def test_a_budget_beyond_the_tracks_limit_is_noted(budget, preset, over, capsys):
    """The BabyLM 2025 call for papers lets a strict-small model see at most 100M words in training (ten epochs of
    10M), a strict one 1B; a run whose milestones are a track's preset and whose budget goes beyond that track's limit
    says so in one note (a study may, a submission may not), and nothing else changes."""
    from types import SimpleNamespace

    from train.words import plan

    t = SimpleNamespace(**{"batch_size": 64, "grad_accum": 1, "max_steps": 0, "epochs": 0.0, "max_words": None,
                           "word_checkpoints": preset.split(","), **budget})
    got = plan(t, np.full(156_250, 64.0), world=1)  # 10M words in 156,250 blocks: 2,442 steps an epoch
    said = capsys.readouterr().out
    notes = [line for line in said.splitlines() if "that BabyLM 2025 lets" in line]
    if over is None:
        assert notes == []
    else:
        key = next(iter(budget))
        assert len(notes) == 1 and notes[0].startswith(f"note: train.{key}=") and over in notes[0], said
        assert f"(train.word_checkpoints={preset} lists that track's checkpoints)" in notes[0]
    assert got.milestones == [m for m in got.milestones if m <= got.budget_words]


def test_two_budgets_in_one_yaml_are_refused_naming_the_file(demo_root, cache_dir, tmp_path):
    """On the command line one budget replaces the recipe's (the tests above); in one YAML two are a mistake."""
    import yaml

    from train.__main__ import main

    recipe = yaml.safe_load((ROOT / "config" / "runs" / "demo-teacher.yaml").read_text())
    recipe["train"]["epochs"] = 3
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(recipe))
    args = demo_cli(demo_root, cache_dir, tmp_path / "runs")[1:]
    assert_user_error(call(main, str(path), *args), str(path), "train.max_steps and train.epochs are both set")
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_eval_curve_scores_every_milestone_once_and_plots_it(demo_root, cache_dir, tmp_path):
    """`python -m eval curve` on a demo run: one point per milestone at its exact words seen, a PNG per task;
    a second call evaluates nothing again; a run without milestones is refused in one line."""
    from eval.__main__ import main as eval_main

    out = tmp_path / "runs"
    ok(run_here("train", *demo_cli(demo_root, cache_dir, out, "train.max_steps=20",
                                   "train.word_checkpoints=2k,5k,10k")))
    run = out / "demo" / "teacher"
    proc = ok(
        run_cli("eval", "curve", str(run), "--tasks", "demo_pairs", "--data-dir", str(demo_root), "--no-progress")
    )
    assert "Loading weights" not in proc.stderr  # no bar per milestone model
    curve = json.loads((run / "eval" / "curve.json").read_text())["tasks"]
    for task in ("demo_pairs",):
        points = curve[task]
        assert [p["milestone"] for p in points] == ["chck_2k", "chck_5k", "chck_10k"]
        for p in points:
            record = json.loads((run / "milestones" / p["milestone"] / "words_seen.json").read_text())
            result = json.loads((run / "milestones" / p["milestone"] / "eval" / f"{task}.json").read_text())
            assert p["words_seen"] == record["words_seen"] and p["score"] == result["score"] and 0 <= p["score"] <= 1
        assert (run / "eval" / "curves" / f"{task}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stamps = {p: p.stat().st_mtime_ns for p in run.glob("milestones/*/eval/*.json")}
    proc = ok(
        call(eval_main, "curve", str(run), "--tasks", "demo_pairs", "--data-dir", str(demo_root), "--no-progress")
    )
    assert "task(s) at" not in proc.stdout and {p: p.stat().st_mtime_ns for p in stamps} == stamps
    # Asked to score otherwise (other task files, another convention): a kept result would mix into the curve, so
    # the call is refused before anything is scored, naming the result file and the flag.
    import shutil

    elsewhere = tmp_path / "other-data"
    shutil.copytree(demo_root / "pairs", elsewhere / "pairs")
    first = run / "milestones" / "chck_2k" / "eval" / "demo_pairs.json"
    for flags, needles in ((["--data-dir", str(elsewhere)], (f"scored with data {demo_root}/pairs/*.jsonl, and this "
                                                             f"curve asks {elsewhere}/pairs/*.jsonl", "--data-dir")),
                           (["--data-dir", str(demo_root), "--convention", "babylm2025"],
                            ("scored with convention babylm2024, and this curve asks babylm2025", "--convention"))):
        assert_user_error(call(eval_main, "curve", str(run), "--tasks", "demo_pairs", *flags, "--no-progress"),
                          f"{first}: holds demo_pairs", *needles, f"or move {first.parent} aside")
        assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    ok(run_here("train", *demo_cli(demo_root, cache_dir, out, "train.max_steps=2", "output.name=plain")))
    assert_user_error(
        call(
            eval_main,
            "curve",
            str(run),
            str(out / "demo" / "plain"),
            "--tasks",
            "demo_pairs",
            "--data-dir",
            str(demo_root),
        ),
        str(out / "demo" / "plain"),
        "no milestones",
        "train.word_checkpoints",
    )
    assert_user_error(call(eval_main, "curve", str(tmp_path), "--tasks", "demo_pairs"), "not a run directory")
    assert_user_error(call(eval_main, "curve", str(run)), "give --suite or --tasks")


@pytest.mark.slow
def test_a_checkpoint_from_before_word_counting_resumes_with_an_estimate(demo_root, cache_dir, tmp_path):
    from conftest import start_and_kill
    from common.checkpoints import write_manifest

    args = demo_cli(demo_root, cache_dir, tmp_path, "train.max_steps=14")
    run = tmp_path / "demo" / "teacher"
    start_and_kill("train", args, run, 12)
    ckpt = run / "checkpoints" / "checkpoint-10"
    (ckpt / "words_seen.json").unlink()
    write_manifest(ckpt)  # as a checkpoint written by an earlier version lists its files
    proc = ok(run_cli("train", *args, "--resume"))
    step_words = json.loads((run / "run.json").read_text())["words"]["step_words"]
    assert f"note: {ckpt} predates word counting" in proc.stdout and f"= {round(10 * step_words):,}" in proc.stdout
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert (
        round(10 * step_words)
        < [r for r in rows if r.get("step") == 11 and "loss" in r][0]["words_seen"]
        < round(12 * step_words)
    )
