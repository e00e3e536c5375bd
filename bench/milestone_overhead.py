"""The cost of milestone exports, and the words per token of the shared BabyLM files.

    python bench/milestone_overhead.py                 # demo teacher, 300 steps, 3 runs per side
    python bench/milestone_overhead.py --steps 150 --repeats 3

1. The same demo-size run (config/runs/demo-teacher.yaml as it is: dev loss and a checkpoint every 100 steps;
   same steps and seed) with no milestones
   and with the density of train.word_checkpoints=babylm scaled to the run: 19 milestones at the
   same fractions of its budget as 1M..10M, 20M..100M are of 100M. Sides alternate; each figure is
   the median of the repeats: the training time run.json records (inside trainer.train, where the
   exports happen) and the wall time of the whole `python -m train`. Target: at most 5% slower.
2. The words per token of ../shared/data/babylm_2023_partial/train_10M with the 16k byte-level BPE
   the BabyLM recipes train: raw words (as the rules count them) over tokens (BOS included).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
BABYLM_FRACTIONS = [m / 100 for m in (*range(1, 11), *range(20, 101, 10))]


def run_once(work: Path, name: str, steps: int, milestones: list[str]) -> tuple[float, float]:
    args = [
        sys.executable,
        "-m",
        "train",
        "config/runs/demo-teacher.yaml",
        f"data.train_dir={work}/demo/train",
        f"data.dev_dir={work}/demo/dev",
        f"data.cache_dir={work}/cache",
        f"output.dir={work}/runs",
        f"output.name={name}",
        f"train.max_steps={steps}",
        f"train.word_checkpoints={','.join(milestones) or 'none'}",
    ]  # the recipe's evaluation and saving
    start = time.perf_counter()
    subprocess.run(args, cwd=REPO, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    info = json.loads((work / "runs" / "demo" / name / "run.json").read_text())
    return info["attempts"][-1]["train_seconds"], wall


def milestone_overhead(work: Path, steps: int, repeats: int) -> None:
    run_once(work, "warmup", 2, [])  # the demo corpus, tokenizer and blocks, built once outside the timing
    budget = json.loads((work / "runs" / "demo" / "warmup" / "run.json").read_text())["words"]["step_words"] * steps
    milestones = [
        str(int(budget * f * 0.999)) for f in BABYLM_FRACTIONS
    ]  # just inside the budget, as 100M is in 10 x 10M
    times: dict[str, list] = {"none": [], "babylm": []}
    for i in range(repeats):
        for side, ms in (("none", []), ("babylm", milestones)):
            times[side].append(run_once(work, f"{side}-{i}", steps, ms))
    exported = len(list((work / "runs" / "demo" / f"babylm-{repeats - 1}" / "milestones").glob("chck_*")))
    train = {side: statistics.median(t for t, _ in v) for side, v in times.items()}
    wall = {side: statistics.median(w for _, w in v) for side, v in times.items()}
    print(f"demo teacher, {steps} steps (~{budget:,.0f} words), {exported} milestones exported, median of {repeats}")
    print(f"  training time: none {train['none']:.1f} s, babylm density {train['babylm']:.1f} s -> "
          f"{train['babylm'] / train['none']:.3f}x  (target <= 1.05x)")
    print(
        f"  wall time    : none {wall['none']:.1f} s, babylm density {wall['babylm']:.1f} s -> "
        f"{wall['babylm'] / wall['none']:.3f}x"
    )


def words_per_token(work: Path) -> None:
    from tokenizer.config import DataConfig, TokenizerConfig
    from tokenizer.prepare import prepare

    train = SHARED / "babylm_2023_partial" / "train_10M"
    prepared = prepare(DataConfig(train_dir=str(train), cache_dir=str(work / "wpt"), block_size=128, num_proc=2),
                       TokenizerConfig(vocab_size=16000))
    stats = json.loads((prepared.train_blocks / "stats.json").read_text())
    print(
        f"{train}: {stats['corpus_words']:,} raw words ({stats['kept_words']:,} in lines kept by cleaning), "
        f"{stats['tokens']:,} tokens of the 16k BPE (BOS included) -> {stats['kept_words'] / stats['tokens']:.3f} "
        "words per token, "
        f"{stats['tokens'] / stats['kept_words']:.3f} tokens per word; {stats['words']:,} words in "
        f"{stats['blocks']:,} blocks of 128"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-words", action="store_true", help="only the milestone overhead")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        milestone_overhead(work, args.steps, args.repeats)
        if not args.skip_words:
            words_per_token(work)


if __name__ == "__main__":
    main()
