"""The student: built from its model YAML (causal only: masked LMs learn from peers), and warm-started from a
pretrained checkpoint (`student.init_from`) when one is given."""
from __future__ import annotations

from pathlib import Path

from common.errors import UserError


def build_student(cfg, tokenizer):
    from train import models

    objective, student = models.build_model(cfg.student, tokenizer)
    if objective != "causal":
        raise UserError(
            f"student.arch={cfg.student.arch} is a masked LM; distillation from teachers trains causal students "
            f"(masked LMs learn from peers with python -m distill.wml)"
        )
    if cfg.student.init_from:
        warm_start(student, cfg.student.init_from)
    return student


def warm_start(student, folder: str) -> None:
    """Copy a pretrained checkpoint's weights into the freshly built student; every tensor must fit."""
    from transformers import AutoModelForCausalLM

    from eval.model import check_finite_weights, check_folder, load_model_folder

    try:
        check_folder(folder)
    except UserError as exc:
        raise UserError(f"student.init_from: {exc}") from None
    source = load_model_folder(Path(folder), AutoModelForCausalLM, "the warm-start model (student.init_from)",
                               "save it again with save_pretrained, or fix student.init_from").state_dict()
    check_finite_weights(source, f"student.init_from={folder}")
    target = student.state_dict()
    missing = [k for k in target if k not in source]
    wrong = [k for k in target if k in source and source[k].shape != target[k].shape]
    if missing or wrong:
        key = (wrong or missing)[0]
        detail = (f"{key} is {tuple(source[key].shape)} there but {tuple(target[key].shape)} in the student" if wrong
                  else f"it has no {key}")
        raise UserError(
            f"student.init_from={folder}: its architecture cannot load into "
            f"student.arch={getattr(student.config, 'model_type', '?')} "
            f"({detail}); pick a checkpoint of the same architecture or change student.arch"
        )
    student.load_state_dict({k: source[k] for k in target}, strict=True)
