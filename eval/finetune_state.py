"""What a fine-tuning keeps between attempts, so that a stopped one (SIGUSR2 before a SLURM time limit, a
preemption, Ctrl-C, a lost node) continues where it stopped instead of starting over.

In `<results>/finetune/<task>/`, while the task trains:
- `trainer/checkpoint-N/`: the Trainer's checkpoint of every epoch's end (model, optimizer, schedule, RNG, data
  position), with `COMPLETE` once whole; the older one is removed only then;
- `best.pt`: the best epoch so far (its weights, epoch and metric), written before that epoch's checkpoint;
- `attempt.json`: what the checkpoints were trained from: the model's and the task files' hashes and every
  setting. Only the same attempt is continued; another one's state is removed, and the task starts over.
All three are removed once the task's results are written. One process at a time fine-tunes a task into a
folder: it holds `LOCK` there meanwhile.
"""
from __future__ import annotations

import contextlib
import json
import math
import shutil
from pathlib import Path

import torch
from transformers import TrainerCallback

from common.errors import UserError
from common.paths import FolderLock, Locked, write_atomic

ATTEMPT = "attempt.json"
BEST = "best.pt"
TRAINER = "trainer"
COMPLETE = "COMPLETE"


@contextlib.contextmanager
def locked(work: Path, task: str):
    """Hold `work`'s LOCK for the block; a live holder is refused in one line naming it."""
    lock = FolderLock(work)
    work.mkdir(parents=True, exist_ok=True)
    try:
        lock.acquire()
    except Locked as exc:
        raise UserError(f"{work}: another fine-tuning of {task} is running there ({exc.holder}); let it end, or "
                        "pass --out DIR") from None
    try:
        yield
    finally:
        lock.release()


def _step(checkpoint: Path) -> int:
    return int(checkpoint.name.rsplit("-", 1)[-1])


def checkpoints(work: Path) -> list[Path]:
    """The task's whole checkpoints, oldest first."""
    found = [c for c in (work / TRAINER).glob("checkpoint-*") if c.name.rsplit("-", 1)[-1].isdigit()]
    return sorted((c for c in found if (c / COMPLETE).is_file()), key=_step)


def resume(work: Path, attempt: dict) -> tuple[Path | None, dict]:
    """(the newest checkpoint, the best epoch so far) of an earlier attempt of this same fine-tuning; (None, {}) when
    there is none, after removing another attempt's state. Then records `attempt` as this one's."""
    try:
        same = json.loads((work / ATTEMPT).read_text(encoding="utf-8")) == attempt
    except (OSError, ValueError):
        same = False
    found = checkpoints(work) if same else []
    if not found:
        forget(work)
        work.mkdir(parents=True, exist_ok=True)
        write_atomic(work / ATTEMPT, json.dumps(attempt, indent=2) + "\n")
        return None, {}
    _remove_checkpoints(work, but=found[-1])  # a half-written newer one, cut off by the stop
    best = torch.load(work / BEST, weights_only=True) if (work / BEST).is_file() else {}
    return found[-1], best


def _remove_checkpoints(work: Path, but: Path) -> None:
    for checkpoint in (work / TRAINER).glob("checkpoint-*"):
        if checkpoint != but:
            shutil.rmtree(checkpoint)


def forget(work: Path) -> None:
    """Remove what an attempt keeps (the checkpoints, the best epoch, the attempt's record): nothing else in `work`."""
    shutil.rmtree(work / TRAINER, ignore_errors=True)
    for name in (BEST, ATTEMPT):
        (work / name).unlink(missing_ok=True)


class KeepBest(TrainerCallback):
    """The best epoch's weights by `metric` (a finite value only), in memory and in `best.pt`; and each epoch's
    checkpoint marked whole, the older ones removed after it. The Trainer evaluates an epoch before it saves it,
    so a checkpoint never predates the best epoch it has seen."""

    def __init__(self, model, metric: str, work: Path, best: dict):
        self.model, self.metric, self.work, self.best = model, metric, work, best

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        value = (metrics or {}).get(f"eval_{self.metric}")
        if value is not None and math.isfinite(value) and value > self.best.get("value", -math.inf):
            self.best.update(value=value, epoch=state.epoch,
                             state={k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()})
            tmp = self.work / f".{BEST}.tmp"
            torch.save(self.best, tmp)
            tmp.replace(self.work / BEST)

    def on_save(self, args, state, control, **kwargs):
        saved = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        (saved / COMPLETE).write_text("")
        _remove_checkpoints(self.work, but=saved)
