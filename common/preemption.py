"""A checkpoint and a stop on SIGUSR2: SLURM's warning before a time limit or a preemption (sbatch
--signal=USR2@<seconds>, which submitit also uses). Training (`train/`) and fine-tuning (`eval finetune`) both stop so,
then exit with EXIT_PREEMPTED, and the same command continues from the checkpoint."""
from __future__ import annotations

import signal

import torch
from transformers import TrainerCallback

from common.ranks import all_reduce, collective


class Preemption(TrainerCallback):
    """On SIGUSR2, finish the current step, save a checkpoint and stop; `stopped_at` is then the step.

    With several ranks the decision is all-reduced at every step end, so every rank stops
    at the same step and takes part in the same (collective) save.
    """

    def __init__(self):
        self.requested = False
        self.stopped_at: int | None = None
        self._previous = None

    def _handler(self, signum, frame):
        self.requested = True

    def on_train_begin(self, args, state, control, **kwargs):
        self._previous = signal.signal(signal.SIGUSR2, self._handler)

    def on_step_end(self, args, state, control, **kwargs):
        stop = self.requested
        if collective(args):
            stop = bool(all_reduce(torch.tensor([float(stop)]), args, torch.distributed.ReduceOp.MAX).item())
        if stop:
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step

    def on_epoch_end(self, args, state, control, **kwargs):
        # The Trainer ends the epoch it stops in: a stop inside an epoch is not that epoch's end, so an epoch
        # strategy (fine-tuning's) must not evaluate, log or save it again. A stop at an epoch's last step is its end.
        if self.stopped_at is not None and state.epoch % 1:
            control.should_evaluate = control.should_log = control.should_save = False

    def on_train_end(self, args, state, control, **kwargs):
        if self._previous is not None:
            signal.signal(signal.SIGUSR2, self._previous)
