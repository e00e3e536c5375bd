"""Words seen, the BabyLM rules' unit of training: budgets, milestones, and counting them.

A word is a whitespace-separated token of the raw training text (`tokenizer.corpus.clean_file`),
and every packed block carries the words it holds (`tokenizer.prepare.words_before`), so the
words of an optimizer step are the sum over the blocks it trained on, over every rank and
micro-batch, repeats included. A run's budget is one of train.max_steps, train.epochs or
train.max_words; train.word_checkpoints exports the model at the first optimizer step at or
past each milestone, as `milestones/chck_<N>/` (the revision names of the 2025 pipeline).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from transformers import TrainerCallback

from common.config import ConfigError
from common.errors import UserError
from common.paths import read_json, replacing_folder, write_atomic
from common.ranks import say

SUFFIXES = {"k": 10**3, "K": 10**3, "M": 10**6, "B": 10**9}
BABYLM = [m * 10**6 for m in range(1, 11)] + [m * 10**6 for m in range(20, 101, 10)]
PRESETS = {"babylm": BABYLM, "babylm-100m": BABYLM + [m * 10**6 for m in range(200, 1001, 100)]}
WORDS_FILE = "words_seen.json"  # in each checkpoint and each milestone folder
# The most words a BabyLM 2025 submission may see in training, for the track whose checkpoints a preset lists (the
# 2025 call for papers: 100M for strict-small, ten epochs of its 10M words; 1B for the 100M-word tracks).
TRACK_LIMITS = {"babylm": (100 * 10**6, "strict-small"), "babylm-100m": (10**9, "strict")}


def parse_words(text: str, key: str) -> int:
    """`100M`, `2.5M`, `500k`, `1B` or `2000000` as a whole number of words."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKMB]?)\s*", str(text))
    if not match:
        raise ConfigError(key, f"'{text}' is not a number of words; write e.g. 100M, 500k or 2000000")
    value = float(match.group(1)) * SUFFIXES.get(match.group(2), 1)
    if value < 1 or value != int(value):
        raise ConfigError(key, f"'{text}' is not a whole, positive number of words")
    return int(value)


def milestone_list(spec: list[str], key: str = "train.word_checkpoints") -> list[int]:
    """A preset name (babylm, babylm-100m), none (or an empty list), or words counts in increasing order."""
    if not spec or spec == ["none"]:
        return []
    if len(spec) == 1 and spec[0] in PRESETS:
        return list(PRESETS[spec[0]])
    if any(item in PRESETS or item == "none" for item in spec):
        raise ConfigError(key, f"{spec}: a preset ({', '.join(PRESETS)}) or none stands alone, not in a list")
    values = [parse_words(item, f"{key}[{i}]") for i, item in enumerate(spec)]
    for i in range(1, len(values)):
        if values[i] <= values[i - 1]:
            raise ConfigError(
                f"{key}[{i}]", f"{spec[i]} does not come after {spec[i - 1]}; list milestones in increasing order"
            )
    return values


def milestone_name(words: int) -> str:
    """chck_1M, chck_20M, chck_1000M (the 2025 pipeline's names); chck_500k, chck_1234 below a million."""
    for size, suffix in ((10**6, "M"), (10**3, "k")):
        if words % size == 0:
            return f"chck_{words // size}{suffix}"
    return f"chck_{words}"


DEFAULT_STEPS = 1000  # the budget of a config that names none


def check_budget(t) -> None:
    """At most one of train.max_steps, train.epochs, train.max_words (none: DEFAULT_STEPS steps); milestones that
    parse."""
    chosen = [
        key
        for key, value in (
            ("train.max_steps", t.max_steps),
            ("train.epochs", t.epochs),
            ("train.max_words", t.max_words),
        )
        if value
    ]
    if not chosen:
        t.max_steps = DEFAULT_STEPS
    if len(chosen) > 1:
        a, b = chosen[:2]
        raise ConfigError(
            b, f"{a} and {b} are both set; a run has one budget: keep one (the other 0, or '' for train.max_words)"
        )
    if t.max_words:
        parse_words(t.max_words, "train.max_words")
    milestone_list(t.word_checkpoints)


@dataclass
class Budget:
    """A run's budget made concrete for its training blocks and global batch."""

    max_steps: int               # TrainingArguments.max_steps (-1: the epochs decide)
    epochs: float                # TrainingArguments.num_train_epochs when the epochs decide
    max_words: int | None        # stop at the first optimizer step at or past this many words
    schedule_steps: int | None   # the learning-rate schedule's length when the words decide
    epoch_words: int             # words in the training blocks: one pass
    step_words: float            # words of an average optimizer step
    budget_words: float          # words the run will see (exact for epochs, about for steps)
    milestones: list[int] = field(default_factory=list)

    def summary(self, stats: dict) -> dict:
        """What run.json records about words."""
        return {
            "corpus_words": stats.get("corpus_words"),
            "kept_words": stats.get("kept_words"),
            "epoch_words": self.epoch_words,
            "budget_words": round(self.budget_words),
            "step_words": round(self.step_words, 1),
            "milestones": self.milestones,
        }


def plan(t, block_words, world: int) -> Budget:
    """The budget of `t` (TrainConfig) over training blocks holding `block_words` words each, trained
    by `world` ranks. Refuses a budget below one optimizer step; milestones beyond the budget are
    named in a note and left out."""
    global_batch = t.batch_size * t.grad_accum * world
    epoch_words = int(block_words.sum())
    step_words = epoch_words / math.ceil(len(block_words) / global_batch)  # an epoch's last step is smaller
    if t.max_steps:
        budget = Budget(t.max_steps, 0.0, None, None, epoch_words, step_words, t.max_steps * step_words)
        key, given = "train.max_steps", str(t.max_steps)
    elif t.epochs:
        budget = Budget(-1, t.epochs, None, None, epoch_words, step_words, t.epochs * epoch_words)
        key, given = "train.epochs", f"{t.epochs:g}"
    else:
        words = parse_words(t.max_words, "train.max_words")
        steps = math.ceil(words / step_words)
        # The schedule spans the expected steps; the run stops at the first step at or past the budget,
        # which the block-to-block spread of words puts a step or two either side (a margin allows for it).
        budget = Budget(steps + max(10, steps // 50), 0.0, words, steps, epoch_words, step_words, words)
        key, given = "train.max_words", t.max_words
    if budget.budget_words < step_words:
        raise UserError(
            f"{key}={given} is less than one optimizer step, which takes about {step_words:,.0f} words "
            f"({global_batch} blocks of {block_words.mean():,.1f} words on average, fewer at an epoch's end); "
            f"raise it, or lower train.batch_size or train.grad_accum"
        )
    seen = f"{'about ' if t.max_steps else ''}{budget.budget_words:,.0f} words"  # the budget, as the notes say it
    milestones = milestone_list(t.word_checkpoints)
    beyond = [m for m in milestones if m > budget.budget_words]
    if beyond:  # a recipe's list outlives a shorter budget given on the command line: name what is left out, go on
        say(
            f"note: train.word_checkpoints: {len(beyond)} milestone(s) from {milestone_name(beyond[0])[5:]} on lie "
            f"beyond this run's budget of {seen} ({key}={given}); not exported"
        )
    preset = t.word_checkpoints[0] if t.word_checkpoints and len(t.word_checkpoints) == 1 else None
    if preset in TRACK_LIMITS and budget.budget_words > TRACK_LIMITS[preset][0]:
        limit, track = TRACK_LIMITS[preset]
        say(f"note: {key}={given}: this run sees {seen}, more than the {limit:,} that BabyLM 2025 lets a {track} "
            f"submission see in training (train.word_checkpoints={preset} lists that track's checkpoints): fine for a "
            "study, not for a submission")
    budget.milestones = [m for m in milestones if m <= budget.budget_words]
    return budget


class WordsSeen(TrainerCallback):
    """Counts the words of every optimizer step (the trainer adds each step's, summed over ranks),
    exports the model at each milestone, stops a words budget at the first step at or past it (saving and
    evaluating that step, as the Trainer does at its own last step), and keeps the count in every checkpoint so
    that a resumed run counts on from there.

    A milestone folder is written under a temporary name and renamed when whole; one that exists
    was written by an earlier attempt of this run at the same step, so it is not written again."""

    def __init__(self, run_path: Path, budget: Budget):
        self.folder = run_path / "milestones"
        self.budget = budget
        self.total = 0
        self.pending = 0
        self.upcoming = list(budget.milestones)  # not yet reached (in this attempt)
        self.export: Callable[[Path], None] | None = (
            None  # (folder) -> the model and tokenizer written there; set by the session
        )

    @property
    def finished(self) -> bool:
        return self.budget.max_words is not None and self.total >= self.budget.max_words

    def add(self, words: int) -> None:
        self.pending += words

    def restore(self, checkpoint: Path) -> None:
        """The words seen up to `checkpoint`, as it recorded them; a checkpoint written before words were
        counted gives its step times the average step's words, said in a note."""
        record = checkpoint / WORDS_FILE
        if record.is_file():
            self.total = read_json(record, "the checkpoint's words-seen record", "move the checkpoint away (the one "
                                   "before it is then resumed from)", {"words_seen": int})["words_seen"]
            return
        step = int(checkpoint.name.rsplit("-", 1)[-1])
        self.total = round(step * self.budget.step_words)
        say(f"note: {checkpoint} predates word counting (no {WORDS_FILE}); words seen before it are estimated "
              f"as {step} steps x {self.budget.step_words:,.0f} words = {self.total:,}")

    def on_step_end(self, args, state, control, **kwargs):
        self.total += self.pending
        self.pending = 0
        while self.upcoming and self.upcoming[0] <= self.total:  # reached now (or before the checkpoint resumed from)
            milestone = self.upcoming.pop(0)
            if not (self.folder / milestone_name(milestone)).exists():
                self._export(milestone, state)
        if self.finished:  # saved and, where there is a dev set, evaluated: the final weights compete for keep_best
            control.should_training_stop = True
            control.should_save = True
            control.should_evaluate = args.eval_strategy != "no"

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if ckpt.is_dir():
                write_atomic(ckpt / WORDS_FILE, json.dumps({"step": state.global_step, "words_seen": self.total}))

    def _export(self, milestone: int, state) -> None:
        name = milestone_name(milestone)
        if self.export is None:
            raise RuntimeError(f"{self.folder}: milestone {name} reached before the session set an exporter")
        with replacing_folder(self.folder / name, state.is_world_process_zero) as tmp:  # rank 0 writes the folder
            self.export(tmp)
            if state.is_world_process_zero:
                words = {"milestone": milestone, "words_seen": self.total, "step": state.global_step,
                         "epoch": round(state.epoch or 0.0, 4)}
                write_atomic(tmp / WORDS_FILE, json.dumps(words, indent=2))
