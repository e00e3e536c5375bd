"""What the libraries we drive must be told before they start, so that they print nothing a user has to wonder about."""
from __future__ import annotations

import os


def no_accelerator_probe() -> None:
    """accelerate imports DeepSpeed whenever the Trainer unwraps a model, DeepSpeed in use or not, and DeepSpeed then
    looks for an accelerator and, on a machine without a GPU, prints "Setting accelerator to CPU. If you have GPU or
    other accelerator, we were unable to detect it." on every run. Where torch sees no GPU, name the CPU first: the
    same choice, without the line. A DS_ACCELERATOR already set is kept."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
