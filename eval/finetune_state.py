"""What a fine-tuning keeps between attempts, so that a stopped one (SIGUSR2 before a SLURM time limit, a
preemption, Ctrl-C, a lost node) continues where it stopped instead of starting over.

In `<results>/finetune/<task>/`, while the task trains:
- `trainer/checkpoint-N/`: the Trainer's checkpoint (model, optimizer, schedule, RNG, data position) of an epoch's
  end (see `Keeper` for which) or of a stop, with its COMPLETE manifest once whole (common.checkpoints, as training
  keeps them: a checkpoint with a missing, cut or unreadable file is not continued); the older one is removed only
  then;
- `best.pt`: the best epoch up to that checkpoint (its weights, epoch and metric);
- `attempt.json`: what the checkpoints were trained from: the model's, its tokenizer's and the task files' hashes
  and every setting. Only the same attempt is continued; another one's state is removed, and the task starts over.
All three are removed once the task's results are written. One process at a time fine-tunes a task into a
folder: it holds `LOCK` there meanwhile.
"""
from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from common.checkpoints import CHECKPOINT, checkpoint_problem, write_manifest
from common.locks import FolderLock, holding
from common.paths import replacing, write_atomic

ATTEMPT = "attempt.json"
BEST = "best.pt"
TRAINER = "trainer"


@contextlib.contextmanager
def locked(work: Path, task: str):
    """Hold `work`'s LOCK for the block; a live holder is refused in one line naming it."""
    with holding(FolderLock(work), work, f"fine-tuning of {task} is running there", "let it end, or pass --out DIR"):
        yield


def newest_good_checkpoint(work: Path) -> Path | None:
    """The task's newest checkpoint that `checkpoint_problem` passes, or None."""
    found = [(int(m.group(1)), c) for c in (work / TRAINER).glob("checkpoint-*") if (m := CHECKPOINT.match(c.name))]
    return next((c for _, c in sorted(found, reverse=True) if checkpoint_problem(c) is None), None)


def resume(work: Path, attempt: dict) -> tuple[Path | None, dict]:
    """(the newest checkpoint, the best epoch so far) of an earlier attempt of this same fine-tuning; (None, {}) when
    there is none, after removing another attempt's state. Then records `attempt` as this one's."""
    try:
        same = json.loads((work / ATTEMPT).read_text(encoding="utf-8")) == attempt
    except (OSError, ValueError):
        same = False
    found = newest_good_checkpoint(work) if same else None
    if found is None:
        forget(work)
        work.mkdir(parents=True, exist_ok=True)
        write_atomic(work / ATTEMPT, json.dumps(attempt, indent=2) + "\n")
        return None, {}
    _remove_checkpoints(work, but=found)  # a half-written newer one, cut off by the stop
    best = torch.load(work / BEST, weights_only=True) if (work / BEST).is_file() else {}
    return found, best


def _remove_checkpoints(work: Path, but: Path) -> None:
    for checkpoint in (work / TRAINER).glob("checkpoint-*"):
        if checkpoint != but:
            shutil.rmtree(checkpoint)


def forget(work: Path) -> None:
    """Remove what an attempt keeps (the checkpoints, the best epoch, the attempt's record): nothing else in `work`."""
    shutil.rmtree(work / TRAINER, ignore_errors=True)
    for name in (BEST, ATTEMPT):
        (work / name).unlink(missing_ok=True)


class Keeper(TrainerCallback):
    """Keeps the best epoch by `metric` (a finite value only) in memory, and checkpoints: at the end of the first
    epoch, then of any epoch that ends `minutes` or more after the last checkpoint (0: every epoch), and wherever a
    stop (SIGUSR2) asks, never at the last epoch's end (the results are written at once). Short tasks (WSC, RTE,
    MRPC) so write one or two checkpoints of a 100M model, not one per epoch. `best.pt` is written with each
    checkpoint, before its COMPLETE: a checkpoint never predates the best epoch it has seen. `clock` gives seconds."""

    def __init__(self, model, metric: str, work: Path, best: dict, minutes: float, clock=time.monotonic):
        self.model, self.metric, self.work, self.best = model, metric, work, best
        self.interval, self.clock = minutes * 60, clock
        self.saved_at: float | None = None  # when the last checkpoint was written (None: none in this attempt)
        self.best_unsaved = False

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        value = (metrics or {}).get(f"eval_{self.metric}")
        if value is not None and math.isfinite(value) and value > self.best.get("value", -math.inf):
            self.best.update(value=value, epoch=state.epoch,
                             state={k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()})
            self.best_unsaved = True

    def on_epoch_end(self, args, state, control, **kwargs):
        if control.should_training_stop and state.global_step < state.max_steps:
            return  # stopped at this epoch's end (SIGUSR2): the checkpoint after its evaluation is the one to keep
        due = self.saved_at is None or self.clock() - self.saved_at >= self.interval
        if state.global_step >= state.max_steps or not due:
            control.should_save = False

    def on_save(self, args, state, control, **kwargs):
        saved = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if self.best_unsaved:
            with replacing(self.work / BEST) as tmp:
                torch.save(self.best, tmp)
            self.best_unsaved = False
        write_manifest(saved)
        _remove_checkpoints(self.work, but=saved)
        self.saved_at = self.clock()
