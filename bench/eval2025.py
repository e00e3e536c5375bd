"""The BabyLM 2025 side of bench/eval_speed.py: this project against the official procedure, task by task.

The official procedure, one item at a time as the 2025 pipeline runs it at batch 1: each
choice's sentence encoded with offsets and one forward pass each, the completion's tokens
summed (sentence_zero_shot); for reading one forward pass per sub-token step of the word and
of the previous word (reading/evaluation_functions.get_p2). This project: the task's whole
path (requests, one tree per item, batched forward passes, decisions). Both run on the same
items; the decisions (argmax; reading: the surprisals) are compared item by item.
"""
from __future__ import annotations

import json
import math
import shutil
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

from eval.evaluate import Options, item_scores, requests_for, score_requests
from eval.model import load
from eval.reading import decode_piece, score_table
from eval.report import decide
from eval.scorer import Scorer
from eval.tasks import load_task

CACHE = Path(__file__).resolve().parent / ".cache"


def data_folder(shared: Path, per_subtask: dict[str, int] | None = None) -> Path:
    """An evaluation_data folder from ../shared/data: BLiMP, supplement, EWoK (extracted here, git-ignored),
    entity tracking, WUG adjectives, reading; `per_subtask` keeps the first n lines of each file of a task."""
    root = CACHE / (
        "eval2025" if not per_subtask else "eval2025-" + "-".join(f"{k}{v}" for k, v in sorted(per_subtask.items()))
    )
    if (root / "DONE").is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)  # our own cache folder
    root.mkdir(parents=True)
    with tarfile.open(shared / "babylm2025_extra_tasks.tar.gz") as tf:
        tf.extractall(root, filter="data")
    for name in ("blimp_filtered", "blimp_supplement"):
        shutil.copytree(shared / name, root / name)
    with zipfile.ZipFile(shared / "ewok_filtered.zip") as zf:
        zf.extractall(root, pwd=b"ewok")
    for folder, n in (per_subtask or {}).items():
        for f in (root / folder).glob("*.jsonl"):
            lines = f.read_text(encoding="utf-8").splitlines()
            f.write_text("\n".join(lines[:n]) + "\n", encoding="utf-8")
    (root / "DONE").write_text("")
    return root


def naive_choice(model, tok, sentence: str, completion: str) -> float:
    enc = tok(sentence, return_offsets_mapping=True)
    ids, offs = enc["input_ids"], enc["offset_mapping"]
    start = len(sentence) - len(completion) + offs[0][0]
    logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    return float(sum(logp[i - 1, ids[i]].item() for i in range(1, len(ids)) if offs[i][1] > start))


def naive_surprisal(model, tok, context: str, word: str) -> float:
    target = tok(word, add_special_tokens=False)["input_ids"]
    total = 0.0
    for k, token in enumerate(target):
        ids = tok(context)["input_ids"]
        wanted = token if k == 0 else tok(decode_piece(tok, token), add_special_tokens=False)["input_ids"][0]
        total += float(torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), -1)[wanted])
        context = context + decode_piece(tok, token)
    return -total


def pick(task, n: int) -> list[int]:
    """n items spread over the task's subtasks (every k-th item)."""
    step = max(1, len(task.items) // n)
    return list(range(0, len(task.items), step))[:n]


def run_task(m, name: str, data: Path, n_ours: int, n_naive: int, batch: int) -> dict:
    opts = Options(convention="babylm2025", data_dir=str(data), progress=False, batch_size=str(batch))
    scorer = Scorer(m, progress=False)
    task = load_task(name, str(data))
    if task.spec.kind == "reading":
        df = task.table.iloc[:n_ours].reset_index(drop=True)
        score_table(
            df.iloc[:20], m.tokenizer, "causal", lambda r: score_requests(scorer, m, r, opts)[0]
        )  # warm-up, untimed
        t0 = time.perf_counter()
        pred, prev = score_table(df, m.tokenizer, "causal", lambda r: score_requests(scorer, m, r, opts)[0])
        t_ours = time.perf_counter() - t0
        rows = list(range(min(n_naive, len(df))))
        with torch.inference_mode():  # warm-up, untimed
            naive_surprisal(m.model, m.tokenizer, df["item"][0], df["word"][0])
        t0 = time.perf_counter()
        with torch.inference_mode():
            ref = [(naive_surprisal(m.model, m.tokenizer, df["item"][i], df["word"][i]),
                    naive_surprisal(m.model, m.tokenizer, df["prev_item"][i], df["prev_word"][i])
                    if isinstance(df["prev_item"][i], str) else math.nan) for i in rows]
        t_naive = time.perf_counter() - t0
        diff = max(max(abs(pred[i] - a), 0 if math.isnan(b) else abs(prev[i] - b)) for i, (a, b) in zip(rows, ref))
        return {"task": name, "ours_items": len(df), "ours_s": t_ours, "naive_items": len(rows), "naive_s": t_naive,
                "agree": f"surprisal max difference {diff:.1e}"}
    # n items as the whole task holds them: a block of the items in the order of their text, so that items which
    # open alike (entity tracking: about 16 items per scene) are as dense as in the full task
    task.items = sorted(task.items, key=lambda it: it.sentences[0])[:n_ours]
    items, task.items = task.items, task.items[:10]
    score_requests(
        scorer, m, requests_for(task, m, opts)[0], opts, [len(it.choices) for it in task.items]
    )  # warm-up, untimed
    task.items = items
    t0 = time.perf_counter()
    reqs, _ = requests_for(task, m, opts)
    flat, _ = score_requests(scorer, m, reqs, opts, [len(it.choices) for it in task.items])
    scores = item_scores(flat, task)
    decide(scores, np.zeros(len(task.items), dtype=int))
    t_ours = time.perf_counter() - t0
    sample = pick(task, n_naive)
    with torch.inference_mode():  # warm-up, untimed
        naive_choice(m.model, m.tokenizer, task.items[0].sentences[0], task.items[0].completions[0])
    t0 = time.perf_counter()
    with torch.inference_mode():
        ref = np.array(
            [
                [
                    naive_choice(m.model, m.tokenizer, s, c)
                    for s, c in zip(task.items[i].sentences, task.items[i].completions)
                ]
                for i in sample
            ]
        )
    t_naive = time.perf_counter() - t0
    same = int((ref.argmax(1) == scores[sample].argmax(1)).sum())
    return {
        "task": name,
        "ours_items": len(task.items),
        "ours_s": t_ours,
        "naive_items": len(sample),
        "naive_s": t_naive,
        "agree": f"{same}/{len(sample)} decisions identical, max score difference "
                 f"{np.abs(ref - scores[sample]).max():.1e}",
    }


def suite(model: str, shared: Path, tasks: list[str], n_ours: int, n_naive: int, batch: int) -> list[dict]:
    m = load(model, "causal", "cpu")
    data = data_folder(shared)
    out = []
    for name in tasks:
        r = run_task(m, name, data, n_ours, n_naive, batch)
        ours, naive = r["ours_items"] / r["ours_s"], r["naive_items"] / r["naive_s"]
        print(
            f"{name:<16} this project {ours:9.1f} items/s ({r['ours_items']} items) | official procedure {naive:8.1f} "
            f"items/s ({r['naive_items']} items) | {ours / naive:6.1f}x | {r['agree']}",
            flush=True,
        )
        out.append({**r, "ratio": ours / naive})
    return out


def fast_suite_wall_time(model: str, shared: Path, batch: int) -> float:
    """The fast suite's tasks at the fast sizes (BLiMP 200 per paradigm, supplement 50, EWoK 100, entity tracking
    `regular`, WUG adjectives, reading) through `python -m eval`'s own evaluate(), timed end to end."""
    from eval.evaluate import evaluate

    data = data_folder(shared, {"blimp_filtered": 200, "blimp_supplement": 50, "ewok_filtered": 100})
    fast = CACHE / "fast_eval"
    if not (fast / "DONE").is_file():
        shutil.rmtree(fast, ignore_errors=True)
        fast.mkdir(parents=True)
        for src, dst in (
            ("blimp_filtered", "blimp_fast"),
            ("blimp_supplement", "supplement_fast"),
            ("ewok_filtered", "ewok_fast"),
            ("wug_adj_nominalization", "wug_adj_nominalization"),
            ("reading", "reading"),
        ):
            shutil.copytree(data / src, fast / dst)
        (fast / "entity_tracking_fast").mkdir()
        shutil.copy(data / "entity_tracking" / "regular.jsonl", fast / "entity_tracking_fast")
        (fast / "DONE").write_text("")
    out = CACHE / "fast_out"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    evaluate(
        model,
        ["blimp_filtered", "blimp_supplement", "ewok_filtered", "entity_tracking", "wug_adj", "reading"],
        Options(
            convention="babylm2025", fast=True, data_dir=str(fast), out=str(out), progress=False, batch_size=str(batch)
        ),
    )
    seconds = time.perf_counter() - t0
    print(json.dumps({"fast_suite_seconds": round(seconds, 1)}))
    return seconds


def llama58m(shared: Path) -> Path:
    """A randomly initialised llama-58m (config/models/llama-58m.yaml) with a 16k byte-level BPE trained on the
    shared corpus, saved once under bench/.cache (the shape of BabyLlama's student; the weights do not matter for
    speed)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from tokenizer.bpe import train_bpe
    from train.models import read_architecture

    folder = CACHE / "llama-58m-16k"
    if (folder / "config.json").is_file():
        return folder
    CACHE.mkdir(parents=True, exist_ok=True)
    files = sorted((shared / "babylm_2023_partial" / "train_10M").glob("*"))
    tok = train_bpe(files, 16000, 2, CACHE / "bpe16k")

    class Arch:
        arch, overrides = "llama-58m", {}

    _, fields = read_architecture(Arch)
    config = AutoConfig.for_model(fields.pop("model_type"), **fields, vocab_size=16000, bos_token_id=tok.bos_token_id,
                                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
