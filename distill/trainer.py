"""Trainers for models wrapped with the trainable parts of their loss: teacher distillation and mutual learning.

Wiring only. `WrapperTrainer` holds what both need: the loss normalised by the tokens of
the whole accumulated batch (`num_items_in_batch`), running means of the loss terms in
the Trainer's logs (so metrics.jsonl has `loss/<term>` next to `loss`; summed on the device and read
once per logging step, never a sync per micro-batch). Checkpoints are the Trainer's own: the wrappers'
state dicts hold tied weights once (distill.wrapper.store_ties_once). `DistillTrainer` runs the teachers (eval
mode, no gradients, distill.teachers) or reads the teacher cache, and lets the wrapper
(distill.wrapper) compute the composite loss. Evaluation reports the student's dev
cross-entropy, never the weighted training loss, so the best checkpoint is chosen by dev CE.
"""
from __future__ import annotations

import contextlib

import torch

from distill.attention import capture_qkv
from distill.teachers import run_teachers
from train.trainer import BabyTrainer


class WrapperTrainer(BabyTrainer):
    # compute_loss divides by num_items_in_batch, which spans the accumulated batch.
    loss_is_scaled_for_ga = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._term_sums: dict[str, float] = {}
        self._term_count = 0

    def token_count(self, num_items_in_batch) -> tuple[object, int]:
        """(the normaliser to give the wrapper, the factor its loss needs): the count is global across
        ranks, and DDP averages gradients over ranks, so the loss is multiplied by the world size."""
        if num_items_in_batch is None:  # no count from the Trainer: the wrapper counts this micro-batch
            return None, 1
        scale = (
            self.accelerator.num_processes
            if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1
            else 1
        )
        return num_items_in_batch, scale

    def finish_loss(self, outputs: dict, scale: int, num_items_in_batch, training: bool) -> torch.Tensor:
        loss = outputs["loss"] * scale
        if training and num_items_in_batch is None:
            loss = loss / self.current_gradient_accumulation_steps
        if training:
            for key, value in outputs.get("terms", {}).items():  # summed on the device: no sync until a logging step
                value = value.detach() if torch.is_tensor(value) else torch.tensor(float(value))
                self._term_sums[key] = self._term_sums.get(key, 0.0) + value * scale
            self._term_count += 1
        return loss

    def log(self, logs: dict, *args, **kwargs) -> None:
        """Adds each term's mean over the micro-batches since the last log, scaled like `loss`
        (a term value per micro-batch is its share of the accumulated step)."""
        if "loss" in logs and self._term_count:
            steps = self._term_count / self.current_gradient_accumulation_steps
            keys = sorted(self._term_sums)
            values = torch.stack(
                [torch.as_tensor(self._term_sums[k]).float().to(self.args.device) / steps for k in keys]
            )
            if self.accelerator.num_processes > 1:  # every rank logs; average them as the Trainer does `loss`
                values = self.accelerator.reduce(values, reduction="mean")
            for key, value in zip(keys, values.tolist()):
                logs[f"loss/{key}"] = round(value, 6)
            self._term_sums, self._term_count = {}, 0
        logs.update(self.extra_logs())
        super().log(logs, *args, **kwargs)

    def extra_logs(self) -> dict:
        return {}


class DistillTrainer(WrapperTrainer):
    def __init__(self, *args, teachers=None, cache=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.teachers = teachers or []
        self.cache = cache

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        wrapper = self.accelerator.unwrap_model(model)
        n_tokens, scale = self.token_count(num_items_in_batch)
        training = model.training
        extra = {}
        block_index = inputs.pop("block_index", None)
        if training and self.cache is not None:
            device = inputs["input_ids"].device
            extra["cached_targets"] = tuple(x.to(device) for x in self.cache.lookup(block_index))
        elif training:
            self._move_teachers(inputs["input_ids"].device)
            needs = wrapper.needs
            with (
                contextlib.ExitStack() as stack
            ):  # hooks on the teachers' blocks whose queries, keys and values are read
                qkv = [
                    stack.enter_context(capture_qkv(t.model, blocks))
                    for t, blocks in zip(self.teachers, wrapper.teacher_qkv)
                ]
                extra["teacher_outputs"] = (
                    run_teachers(self.teachers, inputs["input_ids"], inputs.get("attention_mask"),
                                 hidden=needs.teacher_hidden, inference=not needs.qkv)
                    if needs.teacher_logits or needs.teacher_hidden or needs.qkv
                    else []
                )
            if needs.qkv:
                extra["teacher_qkv"] = qkv
        outputs = model(**inputs, **extra, n_tokens=n_tokens)
        loss = self.finish_loss(outputs, scale, num_items_in_batch, training)
        return (loss, outputs) if return_outputs else loss

    def _move_teachers(self, device: torch.device) -> None:
        for t in self.teachers:
            if next(t.model.parameters()).device != device:
                t.model.to(device)
