"""A checkpoint and a stop on SIGUSR2 (SLURM's warning before a time limit or a preemption: sbatch
--signal=USR2@<seconds>, which submitit also uses), on SIGTERM (what SLURM sends at a preemption, at a time limit
without --signal and on scancel, then SIGKILL after its grace time; also `kill`, `timeout`, a container stopped) or on
SIGHUP (its terminal closed: an ssh connection lost). Training (`train/`) and fine-tuning (`eval finetune`) both stop
so: after SIGUSR2 they exit with EXIT_PREEMPTED, after SIGTERM or SIGHUP they end by that signal, and the same command
continues from the checkpoint."""
from __future__ import annotations

import signal

import torch
from transformers import TrainerCallback

from common.errors import (EXIT_PREEMPTED, EXIT_STOPPED, STOPPING, hang_up, how, is_ours, note_stop,
                           stop_if_swallowed)
from common.ranks import all_reduce, collective


CODES = (None, signal.SIGUSR2, signal.SIGTERM, signal.SIGHUP)  # what a rank asks for, all-reduced by MAX


class Preemption(TrainerCallback):
    """On SIGUSR2, SIGTERM or SIGHUP, finish the current step, save a checkpoint and stop; `stopped_at` is then the
    step and `signal` the signal that asked (the first, where several came).

    SIGTERM and SIGHUP are taken only where they stop this process through the entry point's boundary (common.errors),
    not where another program set its own handler first (submitit's, which waits for SIGUSR2 to requeue) or ignores
    them (nohup). A second one changes nothing: the stop is already on its way (Ctrl-C still stops at once; SIGKILL
    ends what takes too long). After SIGHUP the terminal is gone and what is written to it goes nowhere (hang_up).
    A Ctrl-C whose KeyboardInterrupt a finalizer swallowed is raised again at the step's end (`stop_if_swallowed`).
    With several ranks the decision is all-reduced at every step end, so every rank stops at the same step and takes
    part in the same (collective) save.
    """

    def __init__(self):
        self.signal: int | None = None
        self.stopped_at: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    @property
    def how(self) -> str:
        """How the stop is said: `stopped by SIGTERM` (or SIGHUP) or `stopped on SIGUSR2`."""
        return "stopped on SIGUSR2" if self.signal == signal.SIGUSR2 else how(self.signal)

    @property
    def exit_code(self) -> int:
        """The stopped command's exit code: 143 after SIGTERM, 129 after SIGHUP (`leave` then ends by that signal), 75
        after SIGUSR2."""
        return EXIT_STOPPED.get(self.signal, EXIT_PREEMPTED)

    def _handler(self, signum, frame):
        if signum == signal.SIGHUP:
            hang_up()
        if self.signal is None:
            self.signal = signum
        if signum in STOPPING:
            note_stop(signum)

    def on_train_begin(self, args, state, control, **kwargs):
        for signum in (signal.SIGUSR2, *(s for s in STOPPING if is_ours(s))):
            self._previous[signum] = signal.signal(signum, self._handler)

    def on_step_end(self, args, state, control, **kwargs):
        stop_if_swallowed()
        asked = CODES.index(self.signal)
        if collective(args):  # a rank that got no signal stops for another's reason (SIGHUP over SIGTERM over SIGUSR2)
            asked = int(all_reduce(torch.tensor([float(asked)]), args, torch.distributed.ReduceOp.MAX).item())
        if asked:
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step
            self.signal = self.signal or CODES[asked]
            if self.signal in STOPPING:
                note_stop(self.signal)

    def on_epoch_end(self, args, state, control, **kwargs):
        # The Trainer ends the epoch it stops in: a stop inside an epoch is not that epoch's end, so an epoch
        # strategy (fine-tuning's) must not evaluate, log or save it again. A stop at an epoch's last step is its end.
        if self.stopped_at is not None and state.epoch % 1:
            control.should_evaluate = control.should_log = control.should_save = False

    def on_train_end(self, args, state, control, **kwargs):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}
        if self.signal in STOPPING and self.stopped_at is None:
            raise KeyboardInterrupt  # SIGTERM or SIGHUP after the last step's end: stop before the work after training
