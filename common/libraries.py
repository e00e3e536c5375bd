"""What the libraries we drive must be told before they start, so that they print nothing a user has to wonder about."""
from __future__ import annotations

import logging
import os


def no_accelerator_probe() -> None:
    """accelerate imports DeepSpeed whenever the Trainer unwraps a model, DeepSpeed in use or not, and DeepSpeed then
    looks for an accelerator and, on a machine without a GPU, prints "Setting accelerator to CPU. If you have GPU or
    other accelerator, we were unable to detect it." on every run. Where torch sees no GPU, name the CPU first: the
    same choice, without the line. A DS_ACCELERATOR already set is kept."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


class _DropResumeArgumentTable(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "do not match the ones in the `trainer_state.json`" not in str(record.msg)


def no_resume_argument_table() -> None:
    """On a resume whose logging, evaluation or save interval changed, the Trainer logs a table of them. A resume
    changes only such keys, and says which in its own `note:` line (train.rundir.RunDir.decide): drop the table."""
    logger = logging.getLogger("transformers.trainer_utils")
    if not any(isinstance(f, _DropResumeArgumentTable) for f in logger.filters):
        logger.addFilter(_DropResumeArgumentTable())
