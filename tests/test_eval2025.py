"""The BabyLM 2025 zero-shot tasks on the real files (entity tracking, WUG, reading; COMPS and WUG past tense in
their published formats): scores against naive one-item references, metrics, the suite, collate, bad inputs."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from eval import release
from conftest import GLUE_ROWS, assert_user_error, call, ok, run_here, shared
from test_eval import compare_2025, score_with_project

GPT2 = shared("hf_tiny_gpt2")


def test_glue_texts_are_built_as_the_pipeline_builds_them(glue):
    from eval.finetune import read_task

    texts = {task: read_task(task, glue)[1][0][0] for task in GLUE_ROWS}
    assert texts["multirc"] == ("Question: Who sat? Answer: the cat", "The cat sat on the mat.")
    assert texts["wsc"] == ('Does "he" refer to "Pete" in this passage?', "Mark told Pete he was late.")
    assert texts["boolq"] == ("is the sky blue", "The sky is blue on a clear day.")
    assert read_task("mnli", glue)[1][1][:3] == [0, 1, 2]


def test_the_classifier_head_is_the_pipelines():
    """finetune/classifier_model.ClassifierHead of the 2025 pipeline, written out here: LayerNorm without weights
    (eps 1e-5), a hidden-wide linear layer, GELU, LayerNorm, dropout 0.1, the output layer; --head linear is dropout and
    the output layer. (Until 2026-12-04 the head was linear only, and scores were not the pipeline's.)"""
    import torch.nn.functional as F
    from transformers import GPT2Config, GPT2Model

    from eval.finetune import Classifier

    torch.manual_seed(0)
    backbone = GPT2Model(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50, n_positions=32)).eval()
    ids, mask = torch.randint(0, 50, (3, 7)), torch.ones(3, 7, dtype=torch.long)
    hidden = backbone(input_ids=ids, attention_mask=mask)[0][:, 0]
    for head in ("pipeline", "linear"):
        model = Classifier(backbone, 3, "first", head).eval()
        got = model(ids, mask).logits
        layers = [m for m in model.head if isinstance(m, torch.nn.Linear)]
        if head == "pipeline":
            x = F.layer_norm(hidden, (16,), eps=1e-5)
            x = F.gelu(F.linear(x, layers[0].weight, layers[0].bias))
            x = F.layer_norm(x, (16,), eps=1e-5)
            expected = F.linear(x, layers[1].weight, layers[1].bias)
            assert [type(m).__name__ for m in model.head] == ["LayerNorm", "Linear", "GELU", "LayerNorm", "Dropout",
                                                              "Linear"]
            assert not any(p.requires_grad for m in model.head if isinstance(m, torch.nn.LayerNorm)
                           for p in m.parameters())  # elementwise_affine=False: no weights
            assert model.head[4].p == 0.1
        else:
            expected = F.linear(hidden, layers[0].weight, layers[0].bias)
            assert len(layers) == 1 and model.head[0].p == 0.1
        assert torch.allclose(got, expected, atol=1e-6), head


def test_the_optimizer_is_the_pipelines_weight_decay_everywhere_and_no_clipping(tmp_path):
    """The pipeline's AdamW(model.parameters(), weight_decay=0.01) decays biases and LayerNorm weights too, and its
    trainer clips no gradient; the HF Trainer's defaults leave those out and clip at norm 1. (Until 2026-12-04 they were
    ours.)"""
    from transformers import GPT2Config, GPT2Model

    from eval.finetune import Classifier, pipeline_trainer, training_arguments

    backbone = GPT2Model(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50, n_positions=32))
    model = Classifier(backbone, 2, "last")
    args = training_arguments(tmp_path, 3e-5, 32, 10, 42, True, False, 320)
    trainer = pipeline_trainer()(model=model, args=args, eval_dataset=[{"input_ids": [1], "labels": 0}])
    optimizer = trainer.create_optimizer()
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 0.01 for p in g["params"]}
    assert decayed == {id(p) for p in model.parameters()}
    assert any(n.endswith("bias") for n, _ in model.named_parameters()) and args.max_grad_norm == 0
    assert type(optimizer).__name__ == "AdamW" and optimizer.defaults["eps"] == 1e-8
    assert optimizer.defaults["betas"] == (0.9, 0.999)


def test_training_batches_and_learning_rates_are_the_pipelines(tmp_path):
    """The pipeline's trainer, written out here: its training DataLoader drops each epoch's incomplete batch
    (drop_last=True), it counts len(loader) * epochs steps, warms up for int(0.06 * steps) of them (rounded down) and
    decays on a cosine to 0.1x. 70 examples in batches of 8 for 4 epochs: 8 full batches an epoch, 32 steps, 1 warmup
    step. (Until 2026-12-04 the HF Trainer's defaults were ours: 9 batches an epoch, the last of 6, 36 steps and
    ceil(0.06 * 36) = 3 warmup steps.) Validation and prediction keep every item."""
    import math

    from transformers import GPT2Config, GPT2Model, TrainerCallback

    from eval.finetune import Classifier, pipeline_trainer, training_arguments

    def pipeline_factor(step: int, warmup: int, total: int, min_factor: float = 0.1) -> float:
        if step < warmup:
            return step / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return max(min_factor, min_factor + (1 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress)))

    class Seen(TrainerCallback):
        def __init__(self):
            self.lrs = []

        def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
            self.lrs.append(optimizer.param_groups[0]["lr"])

    torch.manual_seed(0)
    backbone = GPT2Model(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50, n_positions=32))
    rows = [{"input_ids": [1 + k % 40, 2, 3], "attention_mask": [1, 1, 1], "labels": k % 2} for k in range(70)]
    sizes = []

    def collate(batch):
        sizes.append(len(batch))
        return {key: torch.tensor([r[key] for r in batch]) for key in ("input_ids", "attention_mask", "labels")}

    lr, n, batch, epochs = 3e-5, len(rows), 8, 4
    args = training_arguments(tmp_path, lr, batch, epochs, 42, True, False, n)
    seen = Seen()
    trainer = pipeline_trainer()(model=Classifier(backbone, 2, "last"), args=args, train_dataset=rows,
                                 eval_dataset=rows, data_collator=collate, callbacks=[seen])
    args.eval_strategy = args.save_strategy = "no"
    trainer.train()
    steps, warmup = n // batch * epochs, int(0.06 * (n // batch * epochs))
    assert (steps, warmup) == (32, 1) and trainer.state.max_steps == steps and args.warmup_steps == warmup
    assert sizes == [batch] * steps
    assert seen.lrs == pytest.approx([lr * pipeline_factor(k, warmup, steps) for k in range(steps)], rel=1e-9)
    sizes.clear()
    assert trainer.predict(rows).predictions.shape[0] == n and sum(sizes) == n  # batches of 64: 64 and 6


def test_finetune_scores_count_a_non_finite_item_wrong_and_predict_nothing():
    """Fine-tuning's metrics against a naive loop: the first maximum is the prediction; an item with a NaN or
    infinite logit predicts nothing and is wrong (np.argmax took the NaN: a diverged epoch scored the share of
    class 0); class 1's F1 counts it a false negative when its label is 1; all items non-finite: no score."""
    import math

    from sklearn.metrics import matthews_corrcoef

    from eval.finetune import scores

    rng = np.random.default_rng(3)
    for classes in (2, 3):
        logits = rng.normal(size=(40, classes)).astype(np.float32)
        labels = rng.integers(0, classes, size=40)
        logits[[1, 7, 8]] = [np.nan] * classes
        logits[12, -1], logits[20, 0] = np.inf, -np.inf
        logits[30] = logits[30, 0]  # a tie: the first class
        pred = []
        for row in logits:  # one item at a time
            if not all(math.isfinite(float(v)) for v in row):
                pred.append(-1)
            else:
                pred.append(next(k for k, v in enumerate(row) if v == max(row)))
        pred = np.array(pred)
        got = scores(logits, labels)
        assert got["non_finite"] == 5 and got["ties"] == 1 and pred[30] == 0
        assert got["accuracy"] == pytest.approx(np.mean(pred == labels))
        assert got["mcc"] == pytest.approx(matthews_corrcoef(labels, pred))
        if classes == 2:
            tp, fp = np.sum((pred == 1) & (labels == 1)), np.sum((pred == 1) & (labels == 0))
            fn = np.sum((pred != 1) & (labels == 1))
            assert got["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
        else:
            assert "f1" not in got
        broken = scores(np.full((6, classes), np.nan, dtype=np.float32), labels[:6])
        assert math.isnan(broken["accuracy"]) and broken["non_finite"] == 6
        assert math.isnan(broken.get("f1", math.nan))


def test_a_fine_tuning_history_with_a_diverged_epoch_is_still_json(tmp_path):
    """The Trainer's log of an epoch that diverged after the best one holds NaN and inf: history.jsonl writes them as
    null (json.dumps wrote NaN and Infinity, which are not JSON, so jq or a strict reader stopped there)."""
    from types import SimpleNamespace

    from eval.finetune import spec_of, write_results

    out = SimpleNamespace(predictions=np.array([[2.0, 1.0], [0.0, 3.0]], dtype=np.float32), label_ids=np.array([0, 1]))
    history = [{"epoch": 1.0, "eval_loss": 0.3, "eval_accuracy": 1.0},
               {"epoch": 2.0, "loss": float("nan"), "eval_loss": float("inf"), "eval_accuracy": float("nan")}]
    write_results("rte", spec_of("rte"), out, 1.0, {}, history, tmp_path)
    strict = lambda c: pytest.fail(f"{c} in history.jsonl")  # noqa: E731
    file = tmp_path / "finetune" / "rte" / "history.jsonl"
    rows = [json.loads(line, parse_constant=strict) for line in file.open()]
    assert rows[0] == history[0] and rows[1] == {"epoch": 2.0, "loss": None, "eval_loss": None, "eval_accuracy": None}


def test_real_files_load_with_the_pipelines_uids():
    from eval.tasks import load_task

    raw = Path(shared("babylm2025_extra_tasks.tar.gz")).parent
    sizes = yaml.safe_load(release.SIZES.read_text())["full"]
    for name, folder, password in (
        ("blimp_filtered", raw, None),
        ("blimp_supplement", raw, None),
        ("ewok_filtered", raw, "ewok"),
    ):
        task = load_task(name, str(folder), password)
        counts = {}
        for it in task.items:
            counts[it.subtask.lower()] = counts.get(it.subtask.lower(), 0) + 1
        assert counts == sizes[name], name  # the official table matches the real files, UID by UID
        assert release.gap(task) is None, name  # so the release's files are scored without a partial_release


def test_a_folder_short_of_the_releases_items_is_scored_and_said_to_be_part_of_it(tmp_path):
    """`eval.release.gap` against the real files: BLiMP, the supplement and entity tracking whole, fast folders cut
    from them (200, 50 per subtask; entity tracking's `regular` alone), WUG and the reading CSV are the release's;
    each way a folder differs is named (subtasks missing, a subtask cut short, a line too many, a UID the release
    does not have, a CSV cut short), for the full and the fast variant; tasks the table does not hold (the demo's)
    are not compared. Until 2026-12-04 a folder of 5 of BLiMP's 67 files gave `blimp_filtered: accuracy 0.6134`
    with nothing said."""
    import tarfile

    from eval.tasks import load_task

    root, fast = tmp_path / "full", tmp_path / "fast"
    with tarfile.open(shared("babylm2025_extra_tasks.tar.gz")) as tf:
        tf.extractall(root, filter="data")
    for folder, cut, n in (("blimp_filtered", "blimp_fast", 200), ("blimp_supplement", "supplement_fast", 50),
                           ("entity_tracking", "entity_tracking_fast", None)):
        source = Path(shared(folder)) if folder.startswith("blimp") else root / folder
        if folder.startswith("blimp"):
            shutil.copytree(source, root / folder)
        (fast / cut).mkdir(parents=True)
        for file in sorted(source.glob("*.jsonl")):
            if n is not None or file.stem == "regular":
                lines = file.read_text(encoding="utf-8").splitlines(keepends=True)
                (fast / cut / file.name).write_text("".join(lines[:n] if n else lines), encoding="utf-8")

    def gap(name, folder=root, fast_variant=False):
        return release.gap(load_task(name, str(folder), fast=fast_variant))

    for name in ("blimp_filtered", "blimp_supplement", "entity_tracking"):
        assert gap(name) is None and gap(name, fast, True) is None, name
    assert gap("reading") is None and gap("wug_adj") is None
    csv = root / "reading" / "reading_data.csv"
    csv.write_text("".join(csv.read_text(encoding="utf-8").splitlines(keepends=True)[:1001]), encoding="utf-8")
    assert gap("reading") == "1,000 of the release's 1,726 items"  # the CSV's rows
    blimp = root / "blimp_filtered"
    for file in sorted(blimp.glob("*.jsonl"))[5:]:
        file.unlink()
    assert gap("blimp_filtered") == ("5 of the release's 67 subtasks (4,648 of its 59,875 items); missing "
                                     "causative and 61 more")
    lines = (blimp / "adjunct_island.jsonl").read_text().splitlines(keepends=True)
    (blimp / "adjunct_island.jsonl").write_text("".join(lines[:100]))  # a file cut short
    assert "adjunct_island has 100 items where the release has 928" in gap("blimp_filtered")
    supplement = root / "blimp_supplement" / "hypernym.jsonl"
    row = json.loads(supplement.read_text().splitlines()[0])
    (supplement.parent / "hypernym_v2.jsonl").write_text(json.dumps(row) + "\n")  # a file the release does not have
    assert gap("blimp_supplement") == ("5 of the release's 5 subtasks (5,219 of its 5,218 items); hypernym_v2 not "
                                       "among the release's subtasks")
    cut = fast / "supplement_fast" / "turn_taking.jsonl"
    with cut.open("a") as f:
        f.write(cut.read_text().splitlines(keepends=True)[0])  # a line twice: 51 where the fast release has 50
    assert gap("blimp_supplement", fast, True) == ("5 of the release's 5 subtasks (251 of its 250 items); "
                                                   "turn_taking has 51 items where the release has 50")
    (fast / "entity_tracking_fast" / "regular.jsonl").unlink()
    shutil.copy(root / "entity_tracking" / "ambiref.jsonl", fast / "entity_tracking_fast")
    assert gap("entity_tracking", fast, True).startswith("0 of the release's 6 subtasks (3,224 of its 3,152 items); "
                                                         "missing regular_0_ops and 5 more; ambiref_0_ops and 5 more "
                                                         "not among the release's subtasks")
    assert release.expected("demo_pairs", False) is None and release.expected("blimp", False) is None


def test_entity_tracking_wug_comps_match_reference(extras):
    from eval.report import p_first

    m, task, scores = score_with_project(GPT2, "causal", "entity_tracking", extras, 16)
    assert task.subtasks[0] == "ambiref_0_ops" and len(task.items[0].choices) >= 3
    compare_2025(m, task, scores, "causal", every=8, least=15)
    for name in ("wug_adj", "wug_past", "comps"):
        m, task, scores = score_with_project(GPT2, "causal", name, extras, 16)
        compare_2025(m, task, scores, "causal", every=1 if len(task.items) < 40 else 10, least=10)
    m, task, scores = score_with_project(GPT2, "causal", "ewok_filtered", extras, 16, convention="babylm2025")
    compare_2025(m, task, scores, "causal", least=10)
    assert sorted(it.subtask for it in task.items[:1])[0] in task.subtasks
    # WUG's model value is the softmax of the two scores; rho against a rank correlation computed by hand
    m, task, scores = score_with_project(GPT2, "causal", "wug_adj", extras, 16)
    probs = np.array([np.exp(s[0]) / np.exp(s).sum() for s in scores.astype(np.float64)])
    assert np.allclose(p_first(scores), probs, atol=1e-12)
    from eval.report import summarise, decide

    summary = summarise(task, scores, *decide(scores, np.zeros(len(task.items), dtype=int))[1:])
    def avg_ranks(v):  # ranks 0..n-1, equal values sharing their mean rank (Spearman's convention for ties)
        order = np.argsort(v, kind="mergesort")
        ranks = np.empty(len(v))
        ranks[order] = np.arange(len(v))
        _, group = np.unique(v, return_inverse=True)
        return (np.bincount(group, ranks) / np.bincount(group))[group]

    expected = np.corrcoef(avg_ranks(p_first(scores)), avg_ranks(np.array([it.target for it in task.items])))[0, 1]
    assert summary["metric"] == "spearman" and summary["score"] == pytest.approx(expected, abs=1e-6)
    assert "undefined" not in summary


def test_a_model_that_leaves_rho_undefined_gets_null_and_a_warning(extras, tmp_path):
    """Two identical sentences per item: P(first) is 0.5 everywhere, so no rank order, a null rho, and one warning
    line naming the reason; the result file records it."""
    from eval.__main__ import main

    lines = (extras / "wug_adj_nominalization" / "wug_adj_nominalization.jsonl").read_text().splitlines()[:6]
    root = tmp_path / "data"
    (root / "wug_adj_nominalization").mkdir(parents=True)
    same = [json.dumps({**json.loads(line), "sentences": "\t".join([json.loads(line)["sentences"].split("\t")[0]] * 2)})
            for line in lines]
    (root / "wug_adj_nominalization" / "wug.jsonl").write_text("\n".join(same) + "\n")
    proc = ok(call(main, str(GPT2), "--tasks", "wug_adj", "--data-dir", str(root), "--out", str(tmp_path / "out"),
                   "--no-progress"))
    assert "wug_adj: Spearman's rho null, 6 items" in proc.stdout
    assert "warning: wug_adj: the score is null: the model gives every item the same P(first)" in proc.stdout
    assert "Warning" not in proc.stderr  # scipy's own ConstantInputWarning is not shown beside ours
    result = json.loads((tmp_path / "out" / "wug_adj.json").read_text())
    assert result["score"] is None and result["non_finite"] == 0 and "same P(first)" in result["undefined"]


def tiny_roberta(extras: Path) -> Path:
    """A randomly initialised one-layer RoBERTa with GPT-2's vocabulary and a mask token, made once per session."""
    from transformers import AutoTokenizer, RobertaConfig, RobertaForMaskedLM

    folder = extras.parent / "roberta"
    if not folder.exists():
        tok = AutoTokenizer.from_pretrained(GPT2)
        tok.add_special_tokens({"mask_token": "<mask>", "pad_token": "<pad>", "cls_token": "<s>", "sep_token": "</s>"})
        torch.manual_seed(0)
        config = RobertaConfig(
            vocab_size=max([len(tok), *tok.all_special_ids]) + 1,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=520,
            pad_token_id=1,
        )
        RobertaForMaskedLM(config).save_pretrained(folder)
        tok.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("backend", ["mlm", "mntp"])
def test_masked_backends_2025_match_reference(backend, extras):
    folder = tiny_roberta(extras)
    m, task, scores = score_with_project(folder, backend, "comps", extras, 8)
    compare_2025(m, task, scores, backend, least=10)
    m, task, scores = score_with_project(folder, backend, "entity_tracking", extras, 8, every=40)
    compare_2025(m, task, scores, backend, least=3)


def naive_surprisal(model, tok, context, word):
    """get_p2, one forward pass per sub-token: the product of the sub-token probabilities."""
    from eval.reading import decode_piece

    target = tok(word, add_special_tokens=False)["input_ids"]
    total = 0.0
    for k, token in enumerate(target):
        ids = tok(context)["input_ids"]
        wanted = token if k == 0 else tok(decode_piece(tok, token), add_special_tokens=False)["input_ids"][0]
        with torch.no_grad():
            total += float(torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].double(), -1)[wanted])
        context = context + decode_piece(tok, token)
    return -total


def ols_r2(y, columns):
    """R² of an OLS with an intercept, by numpy least squares (independent of statsmodels)."""
    X = np.column_stack([np.ones(len(y))] + columns)
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ beta
    return 1 - resid @ resid / ((y - y.mean()) @ (y - y.mean()))


def test_reading_matches_naive_surprisal_and_least_squares(extras):
    from itertools import combinations

    from eval.evaluate import Options, score_requests
    from eval.model import load
    from eval.reading import EYE_TRACKING, delta_r2, read_table, score_table
    from eval.scorer import Scorer

    m = load(str(GPT2), "causal", "cpu")
    df = read_table(extras / "reading" / "reading_data.csv")
    scorer = Scorer(m, progress=False)
    pred, prev = score_table(
        df, m.tokenizer, "causal", lambda r: score_requests(scorer, m, r, Options(progress=False))[0]
    )
    multi = [i for i, w in enumerate(df["word"]) if len(m.tokenizer(w, add_special_tokens=False)["input_ids"]) > 1]
    assert len(multi) > 100
    for i in list(range(0, len(df), 97)) + multi[::40]:
        assert pred[i] == pytest.approx(naive_surprisal(m.model, m.tokenizer, df["item"][i], df["word"][i]), abs=1e-4)
        if isinstance(df["prev_item"][i], str):
            assert prev[i] == pytest.approx(
                naive_surprisal(m.model, m.tokenizer, df["prev_item"][i], df["prev_word"][i]), abs=1e-4
            )
        else:
            assert np.isnan(prev[i])
    scores = delta_r2(df, pred, prev)
    frame = df.assign(pred=pred, prev_pred=prev)
    gains = []
    for dv in EYE_TRACKING:
        terms = ["Subtlex_log10", "length", "context_length"]
        rows = frame[[dv, *terms, "pred"]].dropna()
        cols = [rows[t].to_numpy() for t in terms] + [
            rows[a].to_numpy() * rows[b].to_numpy() for a, b in combinations(terms, 2)
        ]
        base, full = ols_r2(rows[dv].to_numpy(), cols), ols_r2(rows[dv].to_numpy(), cols + [rows["pred"].to_numpy()])
        gains.append((full - base) / (1 - base) * 100)
        assert scores["measures"][dv]["delta_r2"] == pytest.approx(gains[-1], abs=1e-6)
    assert scores["eye_tracking"] == pytest.approx(np.mean(gains), abs=1e-6)
    terms = ["Subtlex_log10", "length", "context_length", "prev_length", "prev_pred"]
    rows = frame[["self_paced_reading_time", *terms, "pred"]].dropna()
    cols = [rows[t].to_numpy() for t in terms] + [
        rows[a].to_numpy() * rows[b].to_numpy() for a, b in combinations(terms, 2)
    ]
    y = rows["self_paced_reading_time"].to_numpy()
    base, full = ols_r2(y, cols), ols_r2(y, cols + [rows["pred"].to_numpy()])
    assert scores["self_paced_reading"] == pytest.approx((full - base) / (1 - base) * 100, abs=1e-6)
    assert "undefined" not in scores
    # a baseline that fits exactly (up to rounding) leaves nothing to explain: that measure is null and named
    exact = df.assign(RTfirstpass=100 + 3 * df["length"] + 2 * df["context_length"] * (1 + 1e-13))
    scores = delta_r2(exact, pred, prev)
    assert scores["measures"]["RTfirstpass"]["r2_base"] > 1 - 1e-9
    assert np.isnan(scores["measures"]["RTfirstpass"]["delta_r2"]) and np.isnan(scores["eye_tracking"])
    assert scores["undefined"].startswith("the RTfirstpass regression(s) fit exactly")
    assert np.isfinite(scores["measures"]["RTgopast"]["delta_r2"]) and np.isfinite(scores["self_paced_reading"])


def test_keep_scored_continues_a_stopped_evaluation(extras, tmp_path):
    """--keep-scored keeps a task whose results this model already has whole (same model files, task files,
    convention, backend, dtype and length options, and every file the scoring writes); a task that stopped before its
    per-item file or its predictions were written, or that other options ask for, is scored again."""
    model = tmp_path / "model"
    shutil.copytree(GPT2, model)
    results = model / "eval"
    args = ("eval", str(model), "--tasks", "comps,wug_adj,reading,blimp_filtered", "--data-dir", str(extras),
            "--no-progress")

    def stamps() -> dict[str, int]:
        return {t: (results / f"{t}.json").stat().st_mtime_ns for t in ("comps", "wug_adj", "reading",
                                                                          "blimp_filtered")}

    ok(run_here(*args))
    assert json.loads((results / "comps.json").read_text())["too_long"] == "truncate"
    (results / "pairs" / "reading.jsonl").unlink()  # stopped while writing reading's files
    predictions = json.loads((results / "predictions.json").read_text())
    del predictions["blimp_filtered"]  # ... and before the 2024 task's predictions were added
    (results / "predictions.json").write_text(json.dumps(predictions))
    before = stamps()
    proc = ok(run_here(*args, "--keep-scored"))
    assert "comps: kept" in proc.stdout and "wug_adj: kept" in proc.stdout, proc.stdout
    assert "reading: kept" not in proc.stdout and "blimp_filtered: kept" not in proc.stdout
    after = stamps()
    assert [t for t in before if before[t] != after[t]] == ["reading", "blimp_filtered"]
    assert (results / "pairs" / "reading.jsonl").is_file()
    assert "blimp_filtered" in json.loads((results / "predictions.json").read_text())
    table = proc.stdout.split("\n\n")[-1].splitlines()
    assert [line.split()[0] for line in table[2:-1]] == ["comps", "wug_adj", "reading", "blimp_filtered"]
    assert table[-1].startswith("† part of the release's items, not its score: comps, blimp_filtered (")  # kept too
    proc = ok(run_here(*args, "--keep-scored"))  # all kept: the model is not even loaded
    assert proc.stdout.count(": kept") == 4 and "parameters" not in proc.stdout and stamps() == after
    ok(run_here(*args, "--keep-scored", "--too-long", "error"))  # other options: scored again
    assert all(stamps()[t] != after[t] for t in after)


def one_model_per_folder(out: Path, folder: Path, table: Path, extras: Path, glue: Path, tmp_path: Path) -> None:
    """`folder` holds every task's results of the model `out`. Another model's evaluation or fine-tuning into it is
    refused before anything is written, and so is one into a folder where another model's evaluation is writing now;
    so is a model folder saved again after its evaluation; collate refuses a
    folder whose results come from two models, or from other files than the model it is given holds now."""
    from transformers import AutoModelForCausalLM

    from common.paths import model_hash
    from eval.one_model import writing_as

    def save_other(path: Path, shift: float) -> None:
        model = AutoModelForCausalLM.from_pretrained(path)
        with torch.no_grad():
            next(model.parameters()).add_(shift)
        model.save_pretrained(path)

    other = tmp_path / "other"
    shutil.copytree(GPT2, other)
    save_other(other, 0.01)
    snapshot = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    for argv in (("eval", str(other), "--tasks", "wug_adj", "--data-dir", str(extras)),
                 ("eval", "finetune", str(other), "--tasks", "rte", "--data-dir", str(glue), "--epochs", "1")):
        assert_user_error(run_here(*argv, "--out", str(folder), "--no-progress"),
                          f"{folder}: holds results of another model", f"{other}: {model_hash(other)[:12]}",
                          "pass --out DIR for this model")
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == snapshot
    ok(run_here("eval", str(other), "--tasks", "wug_adj", "--data-dir", str(extras), "--no-progress"))
    scored = json.loads((other / "eval" / "wug_adj.json").read_text())
    assert scored["model_hash"] == model_hash(other) != model_hash(out)
    save_other(other, 0.02)  # the folder saved again: its old results are another model's
    assert_user_error(run_here("eval", str(other), "--tasks", "comps", "--data-dir", str(extras), "--no-progress"),
                      f"{other / 'eval'}: holds results of another model")
    options = ("--backend", "causal", "--sizes", str(table), "--results")
    assert_user_error(run_here("eval", "collate", str(other), *options, str(folder)),
                      f"collate: {folder / 'blimp_filtered.json'} was scored on other model files",
                      f"than {other} holds now")
    busy = tmp_path / "busy"  # an evaluation of `other` is writing there now, nothing written yet
    busy.mkdir()
    with writing_as(busy, other, model_hash(other)):
        for argv in (("eval", str(out), "--tasks", "wug_adj", "--data-dir", str(extras)),
                     ("eval", "finetune", str(out), "--tasks", "rte", "--data-dir", str(glue), "--epochs", "1")):
            assert_user_error(run_here(*argv, "--out", str(busy), "--no-progress"),
                              f"{busy}: an evaluation of another model ({other}, model files "
                              f"{model_hash(other)[:16]}) is writing there now", f"pass --out DIR for {out}")
        assert not list(busy.glob("*.json")) and not (busy / "finetune").exists()
        ok(run_here("eval", str(other), "--tasks", "wug_adj", "--data-dir", str(extras), "--out", str(busy),
                    "--no-progress"))  # the same model's evaluations share the folder
    idle = tmp_path / "idle"
    idle.mkdir()
    with writing_as(idle, other, model_hash(other)):
        pass  # a writer that ended (or was killed) before it wrote anything leaves its lock file: no bar
    ok(run_here("eval", str(out), "--tasks", "wug_adj", "--data-dir", str(extras), "--out", str(idle),
                "--no-progress"))
    mixed = tmp_path / "mixed"  # a person copied one task's results over from another model's folder
    shutil.copytree(folder, mixed)
    shutil.copy(other / "eval" / "wug_adj.json", mixed / "wug_adj.json")
    assert_user_error(run_here("eval", "collate", str(out), *options, str(mixed)),
                      f"collate: {mixed / 'blimp_filtered.json'} and {mixed / 'wug_adj.json'} were scored on two "
                      "models")


def test_fast_suite_and_collate(extras, glue, tmp_path):
    from eval.collate import FAST, GLUE

    out = tmp_path / "model"
    shutil.copytree(GPT2, out)
    proc = ok(run_here("eval", str(out), "--suite", "babylm2025-fast", "--data-dir", str(extras), "--no-progress"))
    assert "comps" not in proc.stdout and "reading" in proc.stdout
    fast = out / "eval" / "fast"
    et = json.loads((fast / "entity_tracking.json").read_text())
    assert set(et["subtasks"]) <= {f"regular_{k}_ops" for k in range(6)} and et["fast"] is True
    wug = json.loads((fast / "babylm2025" / "wug_adj" / "predictions.json").read_text())
    assert list(wug) == ["wug"] and len(wug["wug"]["predictions"]) == 200 and "prob" in wug["wug"]["predictions"][0]
    reading = json.loads((fast / "babylm2025" / "reading" / "predictions.json").read_text())
    assert len(reading["reading"]["predictions"]) == 1726
    ok(run_here("eval", str(out), "--suite", "babylm2025", "--data-dir", str(extras), "--no-progress"))
    full = out / "eval"
    blimp = json.loads((full / "babylm2025" / "blimp_filtered" / "predictions.json").read_text())
    first = blimp["adjunct_island"]["predictions"][0]
    assert first["id"] == "adjunct_island_0" and first["pred"] in json.loads(
        (extras / "blimp_filtered" / "adjunct_island.jsonl").read_text().splitlines()[0]).values()

    # collate: missing fine-tuning is named; then the size table of this subset and the seven GLUE files in the
    # pipeline's layout (fine-tuning itself is not part of this test) give the one submission file
    sizes = {"full": {}}
    for task in (
        "blimp_filtered",
        "blimp_supplement",
        "ewok_filtered",
        "entity_tracking",
        "wug_adj",
        "wug_past",
        "comps",
        "reading",
    ):
        data = json.loads((full / "babylm2025" / task / "predictions.json").read_text())
        sizes["full"][task] = {k.lower(): len(v["predictions"]) for k, v in data.items()}
    sizes["full"].update({task: {task: 8} for task in GLUE})
    table = tmp_path / "sizes.yaml"
    table.write_text(yaml.safe_dump(sizes))
    assert_user_error(
        run_here("eval", "collate", str(out), "--backend", "causal", "--sizes", str(table)), "task boolq is missing"
    )
    proc = ok(
        run_here(
            "eval", "finetune", str(out), "--data-dir", str(glue), "--epochs", "1", "--batch-size", "8", "--no-progress"
        )
    )
    counts = yaml.safe_load(release.SIZES.read_text())["full"]
    for task in GLUE:
        summary = json.loads((full / f"{task}.json").read_text())
        assert summary["metric"] == ("f1" if task in ("mrpc", "qqp") else "accuracy") and summary["n_items"] == 8
        assert summary["epochs"] == (1) and summary["lr"] == 3e-5 and summary["pool"] == "last"
        # 8 validation items where the release has its own count: said before training, and recorded
        gap = f"8 of the release's {counts[task][task]:,} items"
        assert summary["partial_release"] == gap
        assert f"note: {task}: {glue / task}.valid.jsonl holds {gap}: scored as it is" in proc.stdout
    assert_user_error(
        run_here("eval", "collate", str(out), "--backend", "causal"), "blimp_filtered", "no predictions for subtask"
    )
    assert_user_error(
        run_here("eval", "collate", str(out), "--backend", "mlm", "--sizes", str(table)), "--backend causal"
    )
    proc = ok(run_here("eval", "collate", str(out), "--backend", "causal", "--sizes", str(table)))
    assert "warning: collate: no AoA surprisals" in proc.stdout and "python -m eval aoa" in proc.stdout
    sub = json.loads((full / "all_full_preds_and_fast_scores_causal.json").read_text())
    assert list(sub) == [
        "blimp",
        "blimp_supplement",
        "ewok",
        "entity_tracking",
        "wug_adj",
        "wug_past",
        "comps",
        "reading",
        "glue",
    ]
    assert sorted(sub["glue"]) == sorted(GLUE) and "fast_eval_results" not in sub
    # fast results of two milestone checkpoints (copies of this model's): one entry per checkpoint, in words order
    for name, words in (("chck_2M", 2_000_417), ("chck_1M", 1_000_311)):  # ordered by the words seen each records
        shutil.copytree(out / "eval" / "fast", out / "milestones" / name / "eval" / "fast")
        (out / "milestones" / name / "words_seen.json").write_text(
            json.dumps({"milestone": words // 10**6 * 10**6, "words_seen": words})
        )
    # as collate_preds.py checks each revision: the table's checkpoints exactly, each with the table's fast counts
    collate = ("eval", "collate", str(out), "--backend", "causal", "--sizes", str(table))
    assert_user_error(run_here(*collate), "the size table has no checkpoints section", "fast_eval_results")
    sizes["fast"] = {}
    for task in FAST:
        data = json.loads((out / "eval" / "fast" / "babylm2025" / task / "predictions.json").read_text())
        sizes["fast"][task] = {k.lower(): len(v["predictions"]) for k, v in data.items()}
    for checkpoints, needles in (
        ("chck_1M", ("the size table has no checkpoints section (track: [chck_1M, ...])",)),
        (["chck_1M", "chck_2M", "chck_3M"], ("fast_eval_results has nothing for checkpoint chck_3M",
                                            "the test submission needs 3 checkpoints, chck_1M .. chck_3M",
                                            f"python -m eval curve {out} --suite babylm2025-fast")),
        (["chck_1M"], ("fast_eval_results has a checkpoint chck_2M it does not take",)),
    ):
        table.write_text(yaml.safe_dump({**sizes, "checkpoints": {"test": checkpoints}}))
        assert_user_error(run_here(*collate), *needles)
    sizes["checkpoints"] = {"other": ["chck_1M"], "test": ["chck_1M", "chck_2M"]}
    fewer = json.loads(json.dumps(sizes))
    fewer["fast"]["entity_tracking"]["regular_0_ops"] += 1
    table.write_text(yaml.safe_dump(fewer))
    assert_user_error(run_here(*collate), "task entity_tracking (fast, chck_1M), subtask regular_0_ops has")
    shutil.rmtree(out / "milestones" / "chck_2M" / "eval" / "fast" / "babylm2025" / "reading")
    table.write_text(yaml.safe_dump(sizes))
    assert_user_error(run_here(*collate), "task reading (fast, chck_2M) is missing",
                      f"python -m eval curve {out} --suite babylm2025-fast")
    shutil.copytree(out / "eval" / "fast" / "babylm2025" / "reading",
                    out / "milestones" / "chck_2M" / "eval" / "fast" / "babylm2025" / "reading")
    ok(run_here(*collate))
    fast = json.loads((full / "all_full_preds_and_fast_scores_causal.json").read_text())["fast_eval_results"]
    assert sorted(fast) == ["blimp", "blimp_supplement", "entity_tracking", "ewok", "reading", "wug_adj", "wug_past"]
    assert all(len(v) == 2 for v in fast.values())
    et, rd = (json.loads((out / "eval" / "fast" / f"{t}.json").read_text()) for t in ("entity_tracking", "reading"))
    assert fast["entity_tracking"][1] == {k: v["accuracy"] for k, v in et["subtasks"].items()}
    assert fast["reading"][0] == {
        "spr": pytest.approx(rd["self_paced_reading"] / 100),
        "rt": pytest.approx(rd["eye_tracking"] / 100),
    }
    # a damaged result of ours is one line naming it (a traceback until 2026-12-03); the submission stays as it was
    submission = full / "all_full_preds_and_fast_scores_causal.json"
    written = submission.read_bytes()
    fast_et = out / "milestones" / "chck_2M" / "eval" / "fast" / "entity_tracking.json"
    for file, damage in ((fast_et, b'{"task": '), (fast_et, b"[1]"), (fast_et, b'{"subtasks": {"regular_0_ops": 1}}'),
                         (full / "comps.json", b'{"task": '), (full / "comps.json", b"\xff\xfe")):
        kept = file.read_bytes()
        file.write_bytes(damage)
        assert_user_error(run_here(*collate), f"{file}: ", "cannot be read")
        file.write_bytes(kept)
        assert submission.read_bytes() == written
    # the AoA surprisals of the two checkpoints (here copies of this model) are the "aoa" entry, checked against the
    # size table's checkpoints and entries per checkpoint
    from test_aoa import write_words

    (out / "run.json").write_text("{}\n")
    for name in ("chck_1M", "chck_2M"):
        for f in GPT2.iterdir():
            shutil.copy(f, out / "milestones" / name)
    ok(run_here("eval", "aoa", str(out), "--words", str(write_words(tmp_path / "cdi.json")), "--no-progress"))
    assert_user_error(run_here("eval", "collate", str(out), "--backend", "causal", "--sizes", str(table)),
                      "the size table has no aoa section")
    for checkpoints, entries, needles in (
        (["chck_1M", "chck_2M", "chck_3M"], 9, ("task aoa has nothing for checkpoint chck_3M", "3 checkpoints")),
        (["chck_1M"], 9, ("task aoa has a checkpoint chck_2M it does not take",)),
        (["chck_1M", "chck_2M"], 10, ("task aoa, checkpoint chck_1M has 9 entries, the submission needs 10",)),
        (["chck_1M", "chck_2M"], "nine", ("the size table has no aoa section (entries: N)",)),
    ):
        table.write_text(yaml.safe_dump({**sizes, "aoa": {"entries": entries}, "checkpoints": {"test": checkpoints}}))
        assert_user_error(run_here(*collate), *needles)
    sizes["aoa"] = {"entries": 9}
    table.write_text(yaml.safe_dump(sizes))
    proc = ok(run_here("eval", "collate", str(out), "--backend", "causal", "--sizes", str(table)))
    assert "warning" not in proc.stdout
    sub = json.loads((full / "all_full_preds_and_fast_scores_causal.json").read_text())
    assert list(sub)[-4:] == ["reading", "aoa", "glue", "fast_eval_results"]
    assert sub["aoa"] == json.loads((full / "babylm2025" / "aoa" / "surprisal.json").read_text())
    # results written to another folder (`python -m eval --out DIR`) are collated from there with --results DIR
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(full, elsewhere, ignore=shutil.ignore_patterns("all_full_*", "wug_adj*"))
    collate_there = ("eval", "collate", str(out), "--backend", "causal", "--sizes", str(table), "--results")
    assert_user_error(run_here(*collate_there, str(elsewhere)), "task wug_adj is missing",
                      f"--suite babylm2025 --out {elsewhere} (or --tasks wug_adj)")
    assert_user_error(run_here(*collate_there, str(tmp_path / "nowhere")), f"--results {tmp_path / 'nowhere'}",
                      "no such folder")
    ok(run_here("eval", str(out), "--tasks", "wug_adj", "--data-dir", str(extras), "--out", str(elsewhere),
                "--no-progress"))
    ok(run_here(*collate_there, str(elsewhere)))
    assert ((elsewhere / "all_full_preds_and_fast_scores_causal.json").read_bytes()
            == (full / "all_full_preds_and_fast_scores_causal.json").read_bytes())
    # --out replaces an earlier submission only: never another file (the model's config.json, a mistyped path)
    config = (out / "config.json").read_bytes()
    for target, needle in ((out / "config.json", "exists and is not a submission file written by python -m eval "
                            "collate"), (out, "is a folder"), (out / "config.json" / "x.json", "is under a file")):
        assert_user_error(run_here(*collate, "--out", str(target)), f"--out {target}: {needle}")
    assert (out / "config.json").read_bytes() == config
    for _ in range(2):  # a new file, then the same again: replaced
        ok(run_here(*collate, "--out", str(tmp_path / "submission.json")))
    assert (tmp_path / "submission.json").read_bytes() == (full / "all_full_preds_and_fast_scores_causal.json"
                                                           ).read_bytes()
    one_model_per_folder(out, elsewhere, table, extras, glue, tmp_path)
    sizes["full"]["comps"]["base"] += 1
    table.write_text(yaml.safe_dump(sizes))
    before = (full / "all_full_preds_and_fast_scores_causal.json").read_bytes()
    assert_user_error(run_here("eval", "collate", str(out), "--backend", "causal", "--sizes", str(table)),
                      "task comps, subtask base has 4 predictions, the submission needs 5")
    sizes["full"]["comps"]["base"] -= 1
    del sizes["full"]["reading"]
    table.write_text(yaml.safe_dump(sizes))
    assert_user_error(run_here(*collate), "the size table has no full counts for task reading")
    assert (full / "all_full_preds_and_fast_scores_causal.json").read_bytes() == before


def test_bad_inputs_2025(extras, tmp_path):
    out = tmp_path / "never"

    from eval.__main__ import main

    def bad(data: Path, tasks: str, *needles, model=GPT2, extra=()):  # in this process: one torch import for all cases
        assert_user_error(call(main, str(model), "--tasks", tasks, "--data-dir", str(data), "--out", str(out),
                               "--no-progress", *extra), *needles)
        assert not out.exists()

    made = []

    def broken(folder: str, file: str, line: int, text: str) -> Path:
        made.append(1)
        root = tmp_path / f"b-{folder}-{len(made)}"
        shutil.copytree(extras / folder, root / folder)
        target = root / folder / file
        lines = target.read_text().splitlines()
        lines[line - 1] = text
        target.write_text("\n".join(lines) + "\n")
        return root

    empty = tmp_path / "empty"
    empty.mkdir()
    for task in ("entity_tracking", "wug_adj", "comps", "reading"):
        bad(empty, task, "no files found")
    et = json.loads((extras / "entity_tracking" / "regular.jsonl").read_text().splitlines()[1])
    for field in ("options", "numops", "input_prefix"):
        row = {k: v for k, v in et.items() if k != field}
        bad(
            broken("entity_tracking", "regular.jsonl", 2, json.dumps(row)),
            "entity_tracking",
            "regular.jsonl:2",
            f"'{field}'",
        )
    bad(broken("entity_tracking", "regular.jsonl", 2, json.dumps({**et, "options": ["only one"]})), "entity_tracking",
        "regular.jsonl:2", "at least two")
    bad(
        broken("wug_adj_nominalization", "wug_adj_nominalization.jsonl", 3, json.dumps({"sentences": "a b"})),
        "wug_adj",
        "wug_adj_nominalization.jsonl:3",
        "'ratio'",
    )
    bad(
        broken(
            "wug_adj_nominalization",
            "wug_adj_nominalization.jsonl",
            3,
            json.dumps({"sentences": "no tab here", "ratio": 0.5}),
        ),
        "wug_adj",
        "wug_adj_nominalization.jsonl:3",
        "separated by",
    )
    bad(
        broken(
            "wug_adj_nominalization",
            "wug_adj_nominalization.jsonl",
            3,
            json.dumps({"sentences": "a\tb", "ratio": "high"}),
        ),
        "wug_adj",
        "wug_adj_nominalization.jsonl:3",
        "'ratio' must be a finite number",
    )
    bad(
        broken(
            "comps", "comps_base.jsonl", 1, json.dumps({"prefix_acceptable": "A cat", "prefix_unacceptable": "A rock"})
        ),
        "comps",
        "comps_base.jsonl:1",
        "'property_phrase'",
    )
    import pandas as pd

    frame = pd.read_csv(extras / "reading" / "reading_data.csv")
    for col in ("RTgopast", "Subtlex_log10", "word"):
        root = tmp_path / f"r-{col}"
        (root / "reading").mkdir(parents=True)
        frame.drop(columns=[col]).to_csv(root / "reading" / "reading_data.csv", index=False)
        bad(root, "reading", "reading_data.csv", f"no column '{col}'")
    root = tmp_path / "r-text"
    (root / "reading").mkdir(parents=True)
    frame.assign(RTfirstpass=frame["RTfirstpass"].astype(object).where(frame.index != 6, "slow")).to_csv(
        root / "reading" / "reading_data.csv", index=False)
    bad(root, "reading", "reading_data.csv:8", "'RTfirstpass'", "not a number")
    # data on which the score is undefined, refused before a model is loaded: a correlation over one item or a
    # constant target; a regression with no more complete rows than coefficients (each of the five: the eye-tracking
    # ones fit 8, self-paced reading 17 and needs a previous item), or a reading time that never varies
    wug = (extras / "wug_adj_nominalization" / "wug_adj_nominalization.jsonl").read_text().splitlines()
    for name, lines, needle in (
        ("one", wug[:1], "hold 1 item, and Spearman's rho needs at least 2"),
        ("same", [json.dumps({**json.loads(line), "ratio": 0.25}) for line in wug[:5]], "has ratio 0.25"),
    ):
        root = tmp_path / f"w-{name}"
        (root / "wug_adj_nominalization").mkdir(parents=True)
        (root / "wug_adj_nominalization" / "wug.jsonl").write_text("\n".join(lines) + "\n")
        bad(root, "wug_adj", f"{root / 'wug_adj_nominalization'}", needle)
    for name, table, needle in (
        ("eight", frame.head(8), "8 row(s) have every column the RTfirstfix regression uses, but it fits 8 "
                                 "coefficients, so it needs at least 9"),
        ("gopast", frame.assign(RTgopast=frame["RTgopast"].where(frame.index < 8)), "the RTgopast regression"),
        ("spillover", frame.assign(prev_item=frame["prev_item"].where(frame.index < 17)),
         "17 row(s) have every column the self_paced_reading_time regression uses, but it fits 17"),
        ("flat", frame.assign(RTrightbound=250.0), "column 'RTrightbound' is 250.0 on every row"),
    ):
        root = tmp_path / f"r-{name}"
        (root / "reading").mkdir(parents=True)
        table.to_csv(root / "reading" / "reading_data.csv", index=False)
        bad(root, "reading", "reading_data.csv: ", needle)
    # a 2025-only task under the 2024 convention; mntp under 2024; a masked backend on a causal model
    bad(extras, "entity_tracking", "exists only in the babylm2025 convention", extra=("--convention", "babylm2024"))
    bad(extras, "blimp_filtered", "mntp", extra=("--backend", "mntp"))
    bad(extras, "comps", "cannot be loaded as a masked LM", extra=("--backend", "mlm"))
    # the reverse: a masked LM as causal
    bad(extras, "comps", "cannot be loaded as a causal LM", model=tiny_roberta(extras))
    # a slow tokenizer: the 2025 convention needs offsets. transformers 5 loads GPT-2's vocab.json as a fast
    # tokenizer, so the case is ByT5's, which exists only in Python (no offsets)
    from transformers import AutoTokenizer, ByT5Tokenizer

    slow = tmp_path / "slow"
    shutil.copytree(GPT2, slow)
    for f in slow.glob("*"):
        if f.name.startswith(("tokenizer", "vocab", "merges", "special_tokens")):
            f.unlink()
    ByT5Tokenizer().save_pretrained(slow)
    assert not AutoTokenizer.from_pretrained(slow).is_fast
    bad(extras, "comps", "not a fast tokenizer", model=slow)
    assert_user_error(call(main, "collate", str(tmp_path / "none"), "--backend", "causal"), "is not a folder")
    for name, text, needle in (("list.yaml", "- 1\n- 2\n", "holds no table"),
                               ("broken.yaml", "full: [1, 2\n", "not readable YAML")):
        (tmp_path / name).write_text(text)
        assert_user_error(call(main, "collate", str(tmp_path), "--backend", "causal", "--sizes", str(tmp_path / name)),
                          f"--sizes {tmp_path / name}", needle)


def test_finetune_bad_inputs(glue, tmp_path):
    from transformers import AutoTokenizer

    out = tmp_path / "never"

    from eval.__main__ import main

    def bad(data: Path, tasks: str, *needles, extra=()):
        assert_user_error(
            call(
                main,
                "finetune",
                str(GPT2),
                "--tasks",
                tasks,
                "--data-dir",
                str(data),
                "--out",
                str(out),
                "--no-progress",
                *extra,
            ),
            *needles,
        )
        assert not out.exists()

    def edited(task: str, split: str, line: int, row) -> Path:
        root = tmp_path / f"g-{task}-{split}-{line}"
        shutil.copytree(glue, root)
        file = root / f"{task}.{split}.jsonl"
        lines = file.read_text().splitlines()
        lines[line - 1] = row if isinstance(row, str) else json.dumps(row)
        file.write_text("\n".join(lines) + "\n")
        return root

    bad(
        edited("rte", "train", 3, {**GLUE_ROWS["rte"], "label": 2}),
        "rte",
        "rte.train.jsonl:3",
        "label 2",
        "classes 0..1",
    )
    bad(edited("mnli", "valid", 2, {**GLUE_ROWS["mnli"], "label": -1}), "mnli", "mnli.valid.jsonl:2", "label -1")
    bad(edited("boolq", "train", 1, {**GLUE_ROWS["boolq"], "label": "yes"}), "boolq", "boolq.train.jsonl:1", "'yes'")
    bad(
        edited("wsc", "train", 4, {k: v for k, v in GLUE_ROWS["wsc"].items() if k != "span1_text"}),
        "wsc",
        "wsc.train.jsonl:4",
        "no field 'span1_text'",
    )
    bad(edited("qqp", "valid", 5, "{not json"), "qqp", "qqp.valid.jsonl:5", "not valid JSON")
    # a split of one class: nothing to learn, or an F1 and MCC that are undefined (sklearn warned three times per
    # epoch and wrote F1 0.0 as the result)
    for task, split in (("mrpc", "valid"), ("mnli", "train")):
        root = tmp_path / f"one-class-{task}-{split}"
        shutil.copytree(glue, root)
        file = root / f"{task}.{split}.jsonl"
        file.write_text("".join(json.dumps({**json.loads(line), "label": 1}) + "\n"
                                for line in file.read_text().splitlines()))
        bad(root, task, f"{task}.{split}.jsonl: every example has label 1", "at least two of its classes")
    # a later task's broken file stops the run before the first task trains
    bad(edited("wsc", "valid", 1, {**GLUE_ROWS["wsc"], "label": 7}), "rte,wsc", "wsc.valid.jsonl:1")
    missing = tmp_path / "partial"
    missing.mkdir()
    shutil.copy(glue / "rte.train.jsonl", missing)
    bad(missing, "rte", "rte.valid.jsonl does not exist")
    bad(glue, "rtee", "unknown fine-tuning task 'rtee'", "did you mean 'rte'")
    for lr in ("0", "-1", "nan", "inf"):
        bad(glue, "rte", f"--lr {lr}: give a number above 0", extra=("--lr", lr))
    bad(glue, "rte", "--epochs", extra=("--epochs", "-1"))
    # fewer training examples than one batch: the incomplete batch is dropped, as the pipeline drops it, and nothing
    # would train (the pipeline scores the untrained head)
    bad(glue, "rte", "rte.train.jsonl: 32 training example(s), fewer than --batch-size 33", "nothing would be trained",
        "give --batch-size 32 or less", extra=("--batch-size", "33"))
    few = tmp_path / "few"
    few.mkdir()
    (few / "boolq.train.jsonl").write_text("".join((glue / "boolq.train.jsonl").read_text().splitlines(True)[:15]))
    shutil.copy(glue / "boolq.valid.jsonl", few)
    bad(few, "boolq", "boolq.train.jsonl: 15 training example(s), fewer than the task's batch of 16",
        "give it 16 or more examples, or run python -m eval finetune with --batch-size 15 or less")
    # more positions than the model has was silently cut to the model's (tiny GPT-2 has 1024); zero-shot refuses too
    bad(glue, "rte", f"--max-length 1025: the model {GPT2} has 1024 positions; give 1 to 1024",
        extra=("--max-length", "1025"))
    for minutes in ("-1", "nan", "inf"):
        bad(glue, "rte", f"--checkpoint-minutes {minutes}: give a number at least 0",
            extra=("--checkpoint-minutes", minutes))
    # a model whose logits are all NaN: every epoch scores nothing, and nothing is written (np.argmax once made
    # it predict class 0 everywhere: accuracy 0.5 here, written as its result)
    from transformers import AutoModelForCausalLM

    broken = tmp_path / "nan-model"
    model = AutoModelForCausalLM.from_pretrained(GPT2)
    with torch.no_grad():
        model.transformer.ln_f.weight.fill_(float("nan"))
    model.save_pretrained(broken)
    AutoTokenizer.from_pretrained(GPT2).save_pretrained(broken)
    assert_user_error(call(main, "finetune", str(broken), "--tasks", "rte", "--data-dir", str(glue), "--out",
                           str(out), "--no-progress", "--epochs", "2"),
                      "task rte: no epoch gave a finite accuracy: every validation logit was NaN or infinite")
    assert not list(out.rglob("*.json")) and not list(out.rglob("*.jsonl"))


@pytest.mark.slow
def test_curve_on_the_fast_suite_writes_the_submissions_fast_eval_results(extras, demo_args, tmp_path):
    """A demo run's two milestones on the fast suite: `fast_eval_results` has one entry per milestone, in words order,
    each what collate reads from that milestone's fast results; a PNG per task."""
    from eval.collate import fast_eval_results

    ok(run_here("train", *demo_args, "train.max_steps=10", "train.word_checkpoints=1k,5k"))
    run = tmp_path / "runs" / "demo" / "teacher"
    ok(run_here("eval", "curve", str(run), "--suite", "babylm2025-fast", "--data-dir", str(extras), "--no-progress"))
    fast = json.loads((run / "eval" / "fast_eval_results.json").read_text())
    assert sorted(fast) == ["blimp", "blimp_supplement", "entity_tracking", "ewok", "reading", "wug_adj", "wug_past"]
    assert fast == fast_eval_results([run / "milestones" / "chck_1k", run / "milestones" / "chck_5k"])
    assert all(len(v) == 2 for v in fast.values())
    curve = json.loads((run / "eval" / "curve.json").read_text())["tasks"]
    assert [p["milestone"] for p in curve["reading"]] == ["chck_1k", "chck_5k"] and curve["reading"][0][
        "metric"
    ] == "delta_r2"
    assert curve["wug_adj"][0]["metric"] == "spearman"
    assert all((run / "eval" / "curves" / f"{task}.png").is_file() for task in curve)
