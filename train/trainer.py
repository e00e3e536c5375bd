"""Wiring the HF Trainer: arguments from the run config, collators, and the callbacks that keep the run directory.

The Trainer does the loop, mixed precision, accumulation, checkpointing (model, optimizer,
scheduler, RNG, data position) and DeepSpeed. What we add: a COMPLETE marker per
checkpoint, metrics.jsonl with tokens/s, a stop at the first non-finite loss, and a
checkpoint-and-stop on SIGUSR2 (SLURM's warning before a time limit or preemption).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import (
    DataCollatorForLanguageModeling,
    EarlyStoppingCallback,
    ProgressCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from common.checkpoints import now, write_manifest
from common.errors import UserError
from common.paths import REPO, parse_jsonl, read_jsonl, write_atomic
from common.libraries import no_accelerator_probe, no_resume_argument_table
from common.preemption import Preemption
from common.ranks import all_reduce, collective
from train import chunked, tracking
from train.rundir import RunDir
from train.words import Budget, WordsSeen


class NonFiniteLoss(Exception):
    def __init__(self, step: int, value: float):
        super().__init__(f"loss became {value} at step {step}")
        self.step, self.value = step, value


def budget_reached(state, callbacks) -> bool:
    """The run has taken its last step: max_steps or max_words reached, or early stopping's patience used up."""
    if state.max_steps and state.global_step >= state.max_steps:
        return True
    if any(isinstance(c, WordsSeen) and c.finished for c in callbacks):
        return True
    stopper = next((c for c in callbacks if isinstance(c, EarlyStoppingCallback)), None)
    return stopper is not None and stopper.early_stopping_patience_counter >= stopper.early_stopping_patience


class BabyTrainer(Trainer):
    """The HF Trainer, stopping at the first non-finite loss before it reaches the weights, taking
    no step when resumed from a checkpoint that already ends the run, and counting the words of
    every optimizer step (each block's `words`, summed over micro-batches and ranks)."""

    schedule_steps: int | None = None  # the learning-rate schedule's length, when the budget is in words
    words_seen: WordsSeen | None = None  # the counter (build_trainer sets it)
    logit_head: torch.nn.Module | None = None  # a causal LM's output layer: its loss is then taken over chunks
    logits_chunk: int = 0  # positions per chunk (train.logits_chunk)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """A causal LM's cross-entropy from its last hidden state, `logits_chunk` positions at a time
        (train.chunked), the same value as the model's own loss; other models: the Trainer's own."""
        if self.logit_head is None or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        count = num_items_in_batch if self.model_accepts_loss_kwargs else None
        _, final = chunked.final_states(model, self.accelerator.unwrap_model(model), self.logit_head, **inputs)
        loss = chunked.causal_ce(final, self.logit_head, labels, count, self.logits_chunk)
        if self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs and count is not None:
            loss = loss * self.accelerator.num_processes  # as the Trainer's own compute_loss
        return (loss, {"loss": loss}) if return_outputs else loss

    def log(self, logs: dict, *args, **kwargs) -> None:
        """Training logs carry the words seen too, so trackers (train.report_to) get BabyLM's unit."""
        if "loss" in logs and self.words_seen is not None:
            logs["words_seen"] = self.words_seen.total
        super().log(logs, *args, **kwargs)

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        words = sum(int(b.pop("words").sum()) for b in batches if "words" in b)  # the model takes no `words`
        if self.words_seen is not None:
            if collective(self.args):
                words = int(all_reduce(torch.tensor([words], dtype=torch.int64), self.args).item())
            self.words_seen.add(words)
        return batches, num_items

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        return super().create_scheduler(self.schedule_steps or num_training_steps, optimizer)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():
            raise NonFiniteLoss(self.state.global_step + 1, float(loss))
        return loss

    def _issue_warnings_after_load(self, load_result):
        # Loading the best checkpoint at the end (train.keep_best): a checkpoint holds a tied head once, under the
        # embedding's name, so transformers 5.x warns "missing keys: ['lm_head.weight']" though the shared tensor
        # was loaded (model/ equals the checkpoint bit for bit, tests/test_words.py). Only truly missing keys warn.
        loaded = set(self.model.state_dict()) - set(load_result.missing_keys)
        shared = tied_names(self.model)
        missing = [k for k in load_result.missing_keys if not (shared.get(k, set()) & loaded)]
        super()._issue_warnings_after_load(load_result._replace(missing_keys=missing))

    def _run_epoch(self, *args, **kwargs):
        # The Trainer's loop takes a step before it first checks for the end, so a run resumed from its
        # last checkpoint (killed after it, or stopped by SIGUSR2 in the last step) would train one step
        # past its budget. Such a run only finishes (transformers 5.x: _run_epoch is the loop's body).
        if budget_reached(self.state, self.callback_handler.callbacks):
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)


def tied_names(model: torch.nn.Module) -> dict[str, set[str]]:
    """For each parameter name, the other names of the same tensor (a tied head and its embedding)."""
    by_tensor: dict[int, set[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        by_tensor.setdefault(id(param), set()).add(name)
    return {name: names - {name} for names in by_tensor.values() for name in names if len(names) > 1}


def leave(trainer, code: int) -> int:
    """The end of a run on which every rank ended normally (not on errors: a rank may still wait in a
    collective). With one process: leave and return `code`. With several: wait for every rank, leave the
    process group, run what Python runs at exit (atexit: wandb's run, logging), and end the process with `code`
    without the interpreter's teardown. Objects
    the teardown destroys (DDP's reducer) still hold gloo's worker threads after destroy_process_group,
    and destroying them there aborts a finished rank now and then ("terminate called without an active
    exception", pytorch/pytorch#190489; the atexit fix #179291 was abandoned): seen in two CI runs, the
    second after the process group was already destroyed explicitly. Every file is closed by then."""
    several = collective(trainer.args)
    if several:
        torch.distributed.barrier()
    trainer.accelerator.end_training()
    if not several:
        return code
    from common.errors import run_exit_handlers

    run_exit_handlers(code)  # atexit's work (wandb's run, logging), which os._exit skips
    os._exit(code)


class CheckpointMarker(TrainerCallback):
    """Writes checkpoint-N/COMPLETE, the list of its files and sizes, once the Trainer has saved everything in it."""

    def on_save(self, args, state, control, **kwargs):
        if collective(args):
            # every rank's shards (DeepSpeed ZeRO, RNG) are written before rank 0 lists them
            torch.distributed.barrier()
        if state.is_world_process_zero:
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if ckpt.is_dir():
                write_manifest(ckpt)


class IntervalsFromArguments(TrainerCallback):
    """On a resume the Trainer takes the logging, evaluation and save intervals from the checkpoint's
    trainer_state.json and only warns that the arguments differ. A resume may change them (train.rundir.RunDir.decide
    says so and records it), so at the start of training they are set from the arguments, as a fresh start sets
    them."""

    def on_train_begin(self, args, state, control, **kwargs):
        state.compute_steps(args, state.max_steps)


class OneBar(TrainerCallback):
    """The terminal's one progress bar, over training steps (on a TTY only), its postfix the last training and dev
    loss. It replaces the Trainer's bars (training, and one per evaluation) and its printed log dicts: every logged
    value is in metrics.jsonl."""

    def __init__(self):
        self.bar = None
        self.postfix: dict[str, str] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, unit="step", dynamic_ncols=True,
                            disable=None, file=sys.stderr)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None and logs:
            for key, name in (("loss", "loss"), ("eval_loss", "dev")):
                if isinstance(logs.get(key), (int, float)):
                    self.postfix[name] = f"{logs[key]:.4f}"
            self.bar.set_postfix(self.postfix, refresh=False)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def quiet_library_bars() -> None:
    """No bars from the libraries themselves (weight loading, shard writing, dataset building): one bar per run."""
    import datasets
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()


def row_kind(row: dict) -> str:
    """What a metrics row reports: a training log, a dev evaluation, the evaluation after training
    (`final`), or the Trainer's end-of-training summary."""
    if row.get("final"):
        return "final"
    if any(key.startswith("eval_") for key in row):
        return "eval"
    if "train_runtime" in row:
        return "summary"
    return "train" if "loss" in row else "other"


class MetricsLog(TrainerCallback):
    """Appends each Trainer log to metrics.jsonl, with tokens/s measured over training steps only.

    One row per step and kind: a resumed run first drops the rows of steps after its checkpoint
    (the killed attempt logged them; they are trained again), and a row whose step and kind are
    already in the file replaces that row. The attempt's training time goes to run.json as it goes,
    so a killed attempt's hours still count."""

    RECORD_EVERY_S = 5.0

    def __init__(self, run: RunDir, tokens_per_step: int, words: WordsSeen | None = None):
        self.run, self.path, self.tokens_per_step, self.words = run, run.metrics_file, tokens_per_step, words
        self.train_seconds = 0.0
        self.last = (0, 0.0)  # (step, train_seconds) at the previous training log
        self.step_start = None
        self.final = False  # set by the session for the dev evaluation after training
        self.keys: set[tuple[int, str]] = set()
        self.train_begin = None
        self.recorded = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.last = (state.global_step, self.train_seconds)
        self.train_begin = time.perf_counter()
        if state.is_world_process_zero:
            text = self.path.read_text(encoding="utf-8") if self.path.is_file() else ""
            kept = [
                r for r in parse_jsonl(text)
                if r.get("step", 0) <= state.global_step and row_kind(r) not in ("final", "summary")
            ]
            whole = "".join(json.dumps(r) + "\n" for r in kept)
            if whole != text:  # rows of steps trained again, or a line torn by a kill (the next row would join it)
                write_atomic(self.path, whole)
            self.keys = {(r.get("step", 0), row_kind(r)) for r in kept}

    def on_step_begin(self, args, state, control, **kwargs):
        self.step_start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.step_start is not None:
            self.train_seconds += time.perf_counter() - self.step_start
            self.step_start = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero:
            return
        row = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), "time": now(), **(logs or {})}
        if self.final:
            row["final"] = True
        if self.words is not None:
            row["words_seen"] = self.words.total
        if "loss" in row:
            steps, seconds = state.global_step - self.last[0], self.train_seconds - self.last[1]
            row["tokens_seen"] = state.global_step * self.tokens_per_step
            if steps > 0 and seconds > 0:
                row["tokens_per_s"] = round(steps * self.tokens_per_step / seconds, 1)
            self.last = (state.global_step, self.train_seconds)
        key = (row["step"], row_kind(row))
        if key in self.keys:  # the same step logged again after a resume: keep the latest row only
            rows = [r for r in read_jsonl(self.path) if (r.get("step", 0), row_kind(r)) != key]
            write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in [*rows, row]))
        else:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")
            self.keys.add(key)
        if self.train_begin is not None and time.perf_counter() - self.recorded >= self.RECORD_EVERY_S:
            self.record()

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.record()
        self.train_begin = None

    def record(self) -> None:
        """This attempt's training time into run.json (also when it ends by an exception or Ctrl-C)."""
        if self.train_begin is not None:
            self.recorded = time.perf_counter()
            self.run.record_training_time(self.recorded - self.train_begin)


def make_collator(objective: str, tokenizer, mlm_probability: float):
    """Packed blocks are full length, so causal batches need no padding: labels are the inputs (the model shifts).
    Padded examples carry their length: attention mask and labels (-100) leave the padding out.

    The masked-LM collator draws from the global torch RNG, which checkpoints restore.
    """
    mlm = (
        DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=mlm_probability)
        if objective == "masked"
        else None
    )

    def collate(rows: list[dict]) -> dict:
        ids = torch.stack([torch.as_tensor(r["input_ids"], dtype=torch.long) for r in rows])
        if "length" in rows[0]:  # padded examples (data.packing false): padding is neither attended to nor predicted
            real = torch.arange(ids.shape[1])[None, :] < torch.as_tensor([int(r["length"]) for r in rows])[:, None]
            if mlm is not None:
                batch = mlm([{"input_ids": row[:n]} for row, n in zip(ids, real.sum(1).tolist())])
            else:
                batch = {"input_ids": ids, "attention_mask": real.long(), "labels": ids.masked_fill(~real, -100)}
        else:
            batch = (
                mlm([{"input_ids": row} for row in ids])
                if mlm is not None
                else {"input_ids": ids, "labels": ids.clone()}
            )
        if "block_index" in rows[0]:  # the row of each block in a teacher cache (distillation)
            batch["block_index"] = torch.as_tensor([int(r["block_index"]) for r in rows])
        if "words" in rows[0]:  # the raw words of each block, counted by the trainer and taken out before the model
            batch["words"] = torch.as_tensor([int(r["words"]) for r in rows], dtype=torch.int64)
        return batch

    return collate


def launched_distributed() -> bool:
    return "LOCAL_RANK" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1


def precision_flags(precision: str) -> dict:
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


def training_arguments(cfg, run: RunDir) -> TrainingArguments:
    t, o = cfg.train, cfg.optim
    has_dev = bool(cfg.data.dev_dir)
    deepspeed = None
    if t.deepspeed:
        path = Path(t.deepspeed)
        if not path.is_file() and (REPO / path).is_file():  # config/deepspeed/... from any working folder
            path = REPO / path
        if not path.is_file():
            raise UserError(f"train.deepspeed={t.deepspeed}: file not found; use one of config/deepspeed/*.json")
        if launched_distributed():
            deepspeed = str(path)
        else:
            print(
                f"note: train.deepspeed={t.deepspeed} is used only under torchrun or the deepspeed launcher; training "
                "without it"
            )
    try:
        return TrainingArguments(
            output_dir=str(run.checkpoints),
            max_steps=t.max_steps or -1,
            num_train_epochs=t.epochs or 1.0,  # words: set by the session
            per_device_train_batch_size=t.batch_size,
            per_device_eval_batch_size=t.batch_size,
            gradient_accumulation_steps=t.grad_accum,
            optim="adamw_torch",
            learning_rate=o.lr,
            weight_decay=o.weight_decay,
            adam_beta1=o.beta1,
            adam_beta2=o.beta2,
            adam_epsilon=o.eps,
            max_grad_norm=o.max_grad_norm,
            lr_scheduler_type="cosine_with_min_lr",
            lr_scheduler_kwargs={
                "min_lr_rate": o.min_lr / o.lr if o.lr > 0 else 0.0
            },  # as a rate: DeepSpeed's optimizer has no .defaults
            warmup_steps=o.warmup_steps,
            logging_steps=t.logging_steps,
            logging_nan_inf_filter=False,
            eval_strategy="steps" if has_dev else "no",
            eval_steps=t.eval_steps,
            save_strategy="steps",
            save_steps=t.save_steps,
            save_total_limit=t.save_total_limit,
            load_best_model_at_end=has_dev and t.keep_best,
            metric_for_best_model="eval_loss",
            greater_is_better=False,
            seed=t.seed,
            dataloader_num_workers=t.num_workers,
            dataloader_pin_memory=torch.cuda.is_available(),
            torch_compile=t.compile,
            tf32=True if torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8 else None,  # Ampere+
            restore_callback_states_from_checkpoint=True,  # early stopping's patience counter survives a resume
            **tracking.prepare(cfg, run.path),
            disable_tqdm=False,
            # the collator reads every column (the length of padded examples, block_index)
            remove_unused_columns=False,
            deepspeed=deepspeed,
            **precision_flags(t.precision),
            use_cpu=not torch.cuda.is_available(),
        )  # on CPU, accelerate forms a gloo group under torchrun only with this
    except ImportError as exc:
        raise UserError(
            f"train.deepspeed={t.deepspeed}: {str(exc).splitlines()[0]}; pip install deepspeed on this node"
        ) from None
    except ValueError as exc:  # our checks come first; what is left is the Trainer's own word, under no key of ours
        raise UserError(
            f"the Trainer refused the training arguments ({str(exc).splitlines()[0]}); "
            f"check the train and optim sections of the config"
        ) from None


def build_trainer(cfg, run: RunDir, args: TrainingArguments, model, objective: str, tokenizer, train_ds, dev_ds,
                  budget: Budget, trainer_cls: type = BabyTrainer, **extra) -> BabyTrainer:
    no_accelerator_probe()
    no_resume_argument_table()
    world = args.world_size
    tokens_per_step = cfg.data.block_size * cfg.train.batch_size * cfg.train.grad_accum * world
    words = WordsSeen(run.path, budget)  # before CheckpointMarker: its count is in the checkpoint's manifest
    callbacks = [IntervalsFromArguments(), words, CheckpointMarker(), MetricsLog(run, tokens_per_step, words),
                 Preemption()]
    if cfg.train.early_stopping_patience and dev_ds is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.train.early_stopping_patience))
    trainer = trainer_cls(model=model, args=args, train_dataset=train_ds, eval_dataset=dev_ds,
                          data_collator=make_collator(objective, tokenizer, cfg.data.mlm_probability),
                          processing_class=tokenizer, callbacks=callbacks, **extra)
    trainer.schedule_steps, trainer.words_seen = budget.schedule_steps, words
    if objective == "causal" and trainer_cls is BabyTrainer:  # wrappers chunk their own loss (distill.wrapper)
        trainer.logit_head, trainer.logits_chunk = chunked.logit_head(model), cfg.train.logits_chunk
    trainer.remove_callback(ProgressCallback)  # the Trainer's bars and printed dicts: OneBar instead
    trainer.add_callback(OneBar())
    names = tracking.trackers(cfg.train.report_to)
    if names:
        tracker = tracking.TrackerConfig(cfg, names)
        tracker.callbacks = trainer.callback_handler.callbacks
        trainer.add_callback(tracker)
    return trainer
