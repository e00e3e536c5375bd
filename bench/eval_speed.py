"""Evaluation speed, both sides in one run: the 2024 scorer against lm-evaluation-harness, the 2025 tasks against
the official procedure.

    python bench/eval_speed.py [MODEL] [--paradigms a,b,c] [--batch-size 64] [--harness-batch 64]   # 2024, BLiMP
    python bench/eval_speed.py [MODEL] --suite babylm2025 [--tasks entity_tracking,reading,wug_adj,blimp_filtered]
    python bench/eval_speed.py --llama58m ...        # MODEL = a random llama-58m with a 16k BPE (built once)
    python bench/eval_speed.py --llama58m --fast-suite   # wall time of the whole fast suite

The harness (lm-eval 0.4.13, the line the BabyLM 2024 pipeline forked) runs in its own
environment, bench/.venv-harness (created on first use from PyPI), on the same local files,
through bench/harness_driver.py, with add_bos_token=False as the 2024 fork has it (upstream's
default puts the tokenizer's BOS before EWoK contexts: 368 of 7,618 EWoK decisions differ from
the fork's); only its loglikelihood phase is timed. This project's time
covers tokenization, scoring and decisions. The per-sentence loop (one sentence per forward
pass, full softmax) runs on the first --loop-sample pairs of each paradigm. Prints both
sides' accuracies, the largest per-paradigm difference, an item-by-item comparison of the
two sides' scores and decisions, and the speed ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from eval.evaluate import Options, requests_for  # noqa: E402
from eval.model import load  # noqa: E402
from eval.report import decide, summarise  # noqa: E402
from eval.scorer import Scorer  # noqa: E402
from eval.tasks import load_task  # noqa: E402

SHARED = REPO.parent / "shared" / "data"

HARNESS_ENV = REPO / "bench" / ".venv-harness"


def harness_python() -> Path:
    py = HARNESS_ENV / "bin" / "python"
    if not py.exists():
        print(f"creating {HARNESS_ENV} with lm-eval 0.4.13 (once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(HARNESS_ENV)], check=True)
        subprocess.run(
            [str(py), "-m", "pip", "install", "-q", "lm-eval[hf]==0.4.13", "torch==2.13.0", "transformers==5.23.0"],
            check=True,
            env={**os.environ, "PIP_CONSTRAINT": str(REPO / "constraints.txt")},
        )
    return py


def ours(model: str, data_dir: str, batch: int, dtype: str = "float32"):
    m = load(model, "causal", "cpu", dtype)
    task = load_task("blimp_filtered", data_dir)
    t0 = time.perf_counter()
    reqs, _ = requests_for(task, m, Options(data_dir=data_dir, progress=False))
    scorer = Scorer(m, progress=False)
    scores = scorer.causal_items(reqs, [2] * len(task.items), batch).reshape(len(task.items), -1)
    _, right, tied, bad = decide(scores, np.zeros(len(task.items), dtype=int))
    seconds = time.perf_counter() - t0
    harness_positions = sum(len(r.ctx) + len(r.cont) - 1 for r in reqs)  # every window, each position normalised
    work = {
        "ours": linear_work(m.model, scorer.work["positions"], scorer.work["head_rows"]),
        "harness": linear_work(m.model, harness_positions, harness_positions),
        "positions": scorer.work["positions"],
        "head_rows": scorer.work["head_rows"],
        "harness_positions": harness_positions,
    }
    return (
        m,
        task,
        {k: v["accuracy"] for k, v in summarise(task, scores, right, tied, bad)["subtasks"].items()},
        seconds,
        scores,
        work,
    )


def linear_work(model, positions: int, head_rows: int) -> float:
    """Multiply-adds of the linear layers: every backbone matrix once per position read, the output head once per row
    normalised (attention scores and element-wise work left out: a few percent at these lengths)."""
    head = model.get_output_embeddings().weight.numel()
    body = sum(mod.weight.numel() for mod in model.modules() if isinstance(mod, torch.nn.Linear)) - head
    return float(body) * positions + float(head) * head_rows


def loop(m, task, sample: int):
    """One sentence at a time: encode, forward, full log-softmax, sum."""
    picked = [i for i, it in enumerate(task.items) if it.index < sample]
    t0 = time.perf_counter()
    out = []
    with torch.inference_mode():
        for i in picked:
            row = []
            for sentence in task.items[i].choices:
                cont = m.tokenizer(" " + sentence, add_special_tokens=False)["input_ids"]
                ids = torch.tensor([[m.prefix_id] + cont])
                logp = torch.log_softmax(m.model(ids).logits[0, :-1].float(), dim=-1)
                row.append(float(logp[torch.arange(len(cont)), torch.tensor(cont)].double().sum()))
            out.append(row)
    return picked, np.array(out), time.perf_counter() - t0


def paradigm_folder(data_dir: str, paradigms: str | None) -> str:
    """The data folder, or one holding only the named blimp_filtered paradigms (links to the real files)."""
    if not paradigms:
        return data_dir
    folder = REPO / "bench" / ".cache" / ("blimp-" + paradigms.replace(",", "+"))
    (folder / "blimp_filtered").mkdir(parents=True, exist_ok=True)
    for name in paradigms.split(","):
        src = Path(data_dir) / "blimp_filtered" / f"{name}.jsonl"
        if not src.is_file():
            sys.exit(f"error: --paradigms: {src} does not exist")
        link = folder / "blimp_filtered" / src.name
        if not link.exists():
            link.symlink_to(src.resolve())
    return str(folder)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", default=str(SHARED / "hf_tiny_gpt2"))
    p.add_argument("--data-dir", default=str(SHARED))
    p.add_argument("--paradigms", help="comma-separated blimp_filtered paradigms (default: all 67)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--harness-batch", type=int, default=64)
    p.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16"),
        help="this project's weights (the harness stays in float32): bfloat16 trades identical decisions for speed",
    )
    p.add_argument("--loop-sample", type=int, default=20, help="pairs per paradigm for the per-sentence loop")
    p.add_argument("--suite", choices=("babylm2025",), help="the 2025 tasks against the official procedure instead")
    p.add_argument("--tasks", default="entity_tracking,reading,wug_adj,blimp_filtered", help="--suite: the tasks")
    p.add_argument("--items", type=int, default=1000, help="--suite: items this project scores per task")
    p.add_argument("--naive-items", type=int, default=100, help="--suite: items the official procedure scores per task")
    p.add_argument("--llama58m", action="store_true", help="MODEL: a random llama-58m with a 16k BPE (bench/.cache)")
    p.add_argument(
        "--fast-suite", action="store_true", help="time the whole fast suite through python -m eval's evaluate()"
    )
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    if args.llama58m:
        from bench.eval2025 import llama58m

        args.model = str(llama58m(SHARED))
    if args.fast_suite or args.suite:
        from bench import eval2025

        if args.fast_suite:
            eval2025.fast_suite_wall_time(args.model, SHARED, args.batch_size)
        else:
            eval2025.suite(args.model, SHARED, args.tasks.split(","), args.items, args.naive_items, args.batch_size)
        return
    args.data_dir = paradigm_folder(args.data_dir, args.paradigms)

    m, task, acc, t_ours, scores, work = ours(args.model, args.data_dir, args.batch_size, args.dtype)
    n = len(task.items)
    print(
        f"this project : {n} pairs in {t_ours:7.1f} s = {n / t_ours:8.1f} pairs/s (batch {args.batch_size}, "
        f"{args.dtype})",
        flush=True,
    )
    print(
        f"work: this project reads {work['positions']} positions and normalises {work['head_rows']}; the harness "
        "reads and "
        f"normalises {work['harness_positions']} (its padding not counted): it does "
        f"{work['harness'] / work['ours']:.2f}x "
        "this project's linear-layer multiply-adds, the most sharing prefixes can gain at equal speed per "
        "multiply-add",
        flush=True,
    )

    picked, loop_scores, t_loop = loop(m, task, args.loop_sample)
    same = (loop_scores.argmax(1) == scores[picked].argmax(1)).mean()
    diff = np.abs(loop_scores - scores[picked]).max()
    print(f"per-sentence : {len(picked)} pairs in {t_loop:7.1f} s = {len(picked) / t_loop:8.1f} pairs/s "
          f"(same decisions on {same:.2%}, max score difference {diff:.1e})", flush=True)

    glob = str(Path(args.data_dir) / "blimp_filtered" / "*.jsonl")
    proc = subprocess.run(
        [str(harness_python()), str(REPO / "bench" / "harness_driver.py"), args.model, glob, str(args.harness_batch)],
        capture_output=True,
        text=True,
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("HARNESS_JSON ")), None)
    if line is None:
        sys.exit(f"the harness failed:\n{proc.stderr[-3000:]}")
    h = json.loads(line.split(" ", 1)[1])
    t_h = h["loglikelihood_seconds"]
    print(f"lm-eval 0.4.13: {n} pairs in {t_h:7.1f} s = {n / t_h:8.1f} pairs/s (batch {args.harness_batch}; "
          f"loglikelihood phase only, {h['total_seconds']:.1f} s with its dataset building)")
    worst = max(abs(acc[k] - h["acc"][k]) for k in acc)
    print(f"accuracy: this project {np.mean(list(acc.values())):.4f}, harness {np.mean(list(h['acc'].values())):.4f}; "
          f"largest per-paradigm difference {worst:.1e} over {len(acc)} paradigms")
    theirs = np.array([h["scores"][it.subtask][it.index] for it in task.items], dtype=np.float64)
    gap = np.abs(scores[:, 0] - scores[:, 1])
    flipped = (theirs[:, 0] >= theirs[:, 1]) != (scores[:, 0] >= scores[:, 1])
    clear = (gap > 1e-4) & (np.abs(theirs[:, 0] - theirs[:, 1]) > 1e-4)  # pairs a float32 sum can order
    subtasks = np.array([it.subtask for it in task.items])
    right_ours, right_theirs = scores[:, 0] >= scores[:, 1], theirs[:, 0] >= theirs[:, 1]
    worst_clear = max(abs(right_ours[clear & (subtasks == k)].mean() - right_theirs[clear & (subtasks == k)].mean())
                      for k in acc)
    print(f"accuracy over the {int(clear.sum())} pairs whose two scores differ by more than 1e-4 on both sides: "
          f"largest per-paradigm difference {worst_clear:.1e}")
    print(f"item by item: largest score difference {np.abs(theirs - scores).max():.1e}; "
          f"{int(flipped.sum())} of {n} decisions differ"
          + (f", all with |good - bad| <= {gap[flipped].max():.1e} (near-ties: "
             f"{int((gap <= gap[flipped].max()).sum())} pairs are that close)" if flipped.any() else ""))
    print(
        f"speed ratio: {t_h / t_ours:.2f}x the harness, {(n / t_ours) / (len(picked) / t_loop):.2f}x the per-sentence "
        "loop; "
        f"multiply-adds per second: this project {work['ours'] / t_ours / 1e9:.1f} G, the harness "
        f"{work['harness'] / t_h / 1e9:.1f} G"
    )


if __name__ == "__main__":
    main()
