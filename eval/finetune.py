"""python -m eval finetune MODEL --tasks boolq,mnli,... : (Super)GLUE fine-tuning as the BabyLM 2025 pipeline runs it.

Each task (eval/tasks/finetune/<task>.yaml) reads `<task>.train.jsonl` and `<task>.valid.jsonl`
from --data-dir (BabyLM's evaluation_data/full_eval/glue_filtered), builds the text pair as
the pipeline's `finetune/dataset.py` does, and trains a classifier on the saved model through
the HF Trainer: AdamW (weight decay 0.01 on every parameter, no clipping), 6% warmup (rounded
down) then cosine to 0.1x, lr 3e-5, batch 32 (16 for BoolQ and MultiRC), 10 epochs (30 for
WSC), seed 42, inputs truncated to 512 tokens, the pipeline's classifier head, the last
incomplete training batch of each epoch dropped. The validation set is
scored after every epoch and the best epoch (F1 for MRPC and QQP, accuracy otherwise) is
kept; its predictions on the validation set are the task's result, as in the pipeline.

The classifier reads the hidden state of one position. Masked LMs: position 0 (CLS / <s>).
Causal LMs: the last non-padding token, the only one that has seen the whole input. The
official script reads position 0 of causal models too, where a causal model has seen one
token, so every GPT-2 scores about the same; `--pool first` reproduces that, off by default.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.arguments import number, seed
from common.config import ConfigError, field, load, suggest
from common.errors import UserError, if_interrupted, writing
from common.libraries import no_accelerator_probe
from common.metrics import METRICS
from common.paths import REPO, decode_utf8, hash_files, local_folder, model_hash, write_atomic
from eval import release
from eval.one_model import KEY, check_one_model, check_result_file, writing_as
from eval.report import decide, json_safe
from eval.tasks import absolute, jsonl_rows, same_files, task_names

FINETUNE_DIR = REPO / "eval" / "tasks" / "finetune"
PIPELINE_MAX_LENGTH = 512  # the 2025 pipeline's truncation length for fine-tuning
GLUE = ("boolq", "mnli", "mrpc", "multirc", "qqp", "rte", "wsc")
WARMUP = 0.06  # the pipeline's warmup_proportion
TOKENIZER_HASHED = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.*", "merges.txt",
                    "*.model")  # what a saved tokenizer is made of, hashed into a fine-tuning attempt


class Stopped(Exception):
    """A fine-tuning stopped on SIGUSR2, SIGTERM or SIGHUP after saving its checkpoint (`code`: the command's exit
    code); the same command continues it."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


@dataclass
class FinetuneSpec:
    """A classification task: where its files are, how its text is built, its defaults."""

    description: str = field("", "one line shown in the summary")
    data_dir: str | None = field(None, "default data folder when --data-dir is not given (the demo's)")
    text_a: list[str] = field([], "fields joined (or filled into template_a) into the first text")
    template_a: str | None = field(
        None, "a str.format template with one {} per text_a field; null joins them with spaces"
    )
    text_b: list[str] = field([], "fields of the second text of a pair; empty: a single text")
    template_b: str | None = field(None, "as template_a, for text_b")
    num_labels: int = field(2, "classes; labels are 0..num_labels-1", ge=2)
    metric: str = field("accuracy", "accuracy or f1 (binary F1 of class 1): the metric that picks the best epoch")
    batch_size: int = field(32, "training batch size", ge=1)
    epochs: int = field(10, "training epochs", ge=1)
    lr: float = field(3e-5, "peak learning rate", gt=0)

    def check(self) -> None:
        if not self.text_a:
            raise ConfigError("text_a", "missing: list the fields of the first text, e.g. [premise]")
        if self.metric not in ("accuracy", "f1"):
            raise ConfigError("metric", f"must be accuracy or f1, got {self.metric!r}")
        if self.metric == "f1" and self.num_labels != 2:
            raise ConfigError("metric", "f1 is the binary F1 of class 1; use accuracy for more than two classes")


def known() -> list[str]:
    return sorted(p.stem for p in FINETUNE_DIR.glob("*.yaml"))


def spec_of(name: str) -> FinetuneSpec:
    if not (FINETUNE_DIR / f"{name}.yaml").is_file():
        raise UserError(
            f"--tasks: unknown fine-tuning task '{name}'{suggest(name, known())}; known: {', '.join(known())}"
        )
    return load(FinetuneSpec, FINETUNE_DIR / f"{name}.yaml")


def _text(row: dict, fields: list[str], template: str | None) -> str:
    values = [row[f] for f in fields]
    return template.format(*values) if template else " ".join(values)


def read_split(path: Path, spec: FinetuneSpec, name: str) -> tuple[list, list[int]]:
    """(texts, labels) of one JSONL file; every line checked, one error line naming file:line."""
    if not path.is_file():
        raise UserError(
            f"task {name}: {path} does not exist; pass --data-dir with BabyLM's evaluation_data/full_eval/glue_filtered"
        )
    texts, labels = [], []
    fields = spec.text_a + spec.text_b + ["label"]
    for where, row in jsonl_rows(decode_utf8(path.read_bytes(), str(path)), str(path), fields):
        for key in fields:
            if key not in row:
                raise UserError(f"{where}: no field '{key}' (task {name} reads {fields}){suggest(key, list(row))}")
            if key != "label" and not isinstance(row[key], str):
                raise UserError(f"{where}: field '{key}' must be a string, got {row[key]!r}")
        label = row["label"]
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < spec.num_labels:
            raise UserError(f"{where}: label {label!r} is not one of task {name}'s classes 0..{spec.num_labels - 1}")
        a = _text(row, spec.text_a, spec.template_a)
        texts.append((a, _text(row, spec.text_b, spec.template_b)) if spec.text_b else a)
        labels.append(label)
    if not texts:
        raise UserError(f"{path}: no examples; check the download")
    if len(set(labels)) < 2:  # nothing to learn from, or an F1 and MCC that are undefined (sklearn's warnings, 0.0)
        raise UserError(f"{path}: every example has label {labels[0]}; task {name} needs examples of at least two of "
                        "its classes in each split; check the download")
    return texts, labels


def is_causal(config, trust: bool = False) -> bool:
    """A causal LM: saved as one (GPT2LMHeadModel, LlamaForCausalLM ...), not as a *ForMaskedLM; a model with its own
    code (trusted) whose auto_map names a causal class."""
    from transformers import AutoModelForCausalLM

    from eval.model import serves

    saved_as = [a for a in (getattr(config, "architectures", None) or []) if isinstance(a, str)]
    if saved_as and all(a.endswith("ForMaskedLM") for a in saved_as):
        return False
    return serves(AutoModelForCausalLM, config, trust)


def backbone_of(folder: Path, auto, config, trust: bool):
    """The saved LM's backbone, whose first output is one hidden state per position. A model with its own code: its
    AutoModel class (auto_map), as the 2025 pipeline's classifier loads it, with the LM head's tensors left unread;
    else the backbone that the LM class `auto` loads holds (base_model): the whole LM is loaded, as loading the
    backbone alone would report the LM head's weights as unused."""
    from transformers import AutoModel

    from eval.model import load_model_folder, own_class

    fix = "save the model again with save_pretrained"
    if own_class(AutoModel, config, trust):
        return load_model_folder(folder, AutoModel, "the model's backbone (AutoModel)", fix, config, trust,
                                 unused_ok=True)
    lm = load_model_folder(folder, auto, "the model", fix, config, trust)
    if lm.base_model is lm:
        raise UserError(f"{folder / 'config.json'}: the model's code gives no backbone apart from its LM head "
                        "(base_model is the whole LM, and auto_map names no AutoModel); fine-tuning puts its head on "
                        "the backbone's hidden states: add an AutoModel class to the model's auto_map")
    return lm.base_model


HEADS = ("pipeline", "linear")


class Classifier(torch.nn.Module):
    """The saved model's backbone and a head on one position's hidden state. `head`: the 2025 pipeline's
    (finetune/classifier_model.ClassifierHead: LayerNorm without weights, a hidden-wide linear layer, GELU, LayerNorm,
    dropout, the output layer; eps 1e-5) or `linear` (dropout and the output layer alone)."""

    def __init__(self, backbone, num_labels: int, pool: str, head: str = "pipeline", dropout: float = 0.1):
        super().__init__()
        self.backbone, self.pool = backbone, pool
        width = backbone.config.hidden_size
        nn = torch.nn
        if head == "pipeline":
            self.head = nn.Sequential(nn.LayerNorm(width, eps=1e-5, elementwise_affine=False), nn.Linear(width, width),
                                      nn.GELU(), nn.LayerNorm(width, eps=1e-5, elementwise_affine=False),
                                      nn.Dropout(dropout), nn.Linear(width, num_labels))
        else:
            self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, num_labels))

    def forward(self, input_ids, attention_mask, labels=None):
        from transformers.modeling_outputs import SequenceClassifierOutput

        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask)[0]
        if self.pool == "first":
            picked = hidden[:, 0]
        else:  # right padding: the last real token of each row
            picked = hidden[torch.arange(len(hidden), device=hidden.device), attention_mask.sum(1) - 1]
        logits = self.head(picked)
        loss = torch.nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


def scores(logits: np.ndarray, labels: np.ndarray) -> dict:
    """logits [items, classes], labels [items] -> accuracy, MCC, F1 of class 1 (two classes), ties, non-finite items.
    The prediction is `report.decide`'s, as zero-shot's: the first maximum; an item with a non-finite logit predicts
    nothing (-1) and is wrong (np.argmax would take the first NaN, so a diverged epoch scored the share of class 0,
    and could be kept as the best one). Every item non-finite: accuracy and F1 are NaN, never a best epoch."""
    from sklearn.metrics import f1_score, matthews_corrcoef

    pred, right, tied, bad = decide(logits, labels)
    everything_bad = bool(bad.all())
    out = {"accuracy": math.nan if everything_bad else float(right.mean()),
           "mcc": math.nan if everything_bad else float(matthews_corrcoef(labels, pred)),
           "ties": int(tied.sum()), "non_finite": int(bad.sum())}
    if logits.shape[1] == 2:  # class 1's F1; an item that predicts nothing is a false negative when its label is 1
        out["f1"] = math.nan if everything_bad else float(f1_score(labels, pred, labels=[1], average="micro"))
    return out


@dataclass
class Settings:
    lr: float | None = None
    batch_size: int | None = None
    epochs: int | None = None
    seed: int = 42
    max_length: int | None = None  # None: 512 (the pipeline's), or the model's positions where it has fewer
    pool: str | None = None  # None: first for masked LMs, last for causal LMs
    device: str = "auto"
    progress: bool = True
    checkpoint_minutes: float = 10.0  # a checkpoint after the first epoch, then at most this often (0: every epoch)
    trust_remote_code: bool = False  # --trust-remote-code: the model folder's own code may run (eval.model)
    head: str = "pipeline"  # the classifier head on the pooled state: the 2025 pipeline's, or linear (HEADS)


def read_task(name: str, data_dir: Path) -> tuple[FinetuneSpec, tuple, tuple]:
    """The task's spec and its train and valid splits, every line checked before anything is trained or written."""
    spec = spec_of(name)
    return (
        spec,
        read_split(data_dir / f"{name}.train.jsonl", spec, name),
        read_split(data_dir / f"{name}.valid.jsonl", spec, name),
    )


def valid_gap(name: str, valid: tuple) -> str | None:
    """How the validation split (texts, labels) differs from the release's (`eval.release`), or None."""
    return release.gap_in(name, False, Counter({name: len(valid[1])}))


def default_folder(spec: FinetuneSpec) -> Path | None:
    """The task's own folder (the demo's) under the working directory or the repository, when it is there."""
    return local_folder(spec.data_dir) if spec.data_dir else None


def data_folder(name: str, spec: FinetuneSpec, data_dir: str | None) -> Path:
    """`data_dir`, else the task's own default folder."""
    data = data_dir or default_folder(spec)
    if data is None:
        hint = "run `python -m tokenizer demo cache/demo` first" if spec.data_dir else "pass --data-dir (BabyLM's " \
            "evaluation_data/full_eval/glue_filtered)"
        raise UserError(f"task {name}: no data folder; {hint}")
    if not Path(data).is_dir():
        raise UserError(f"--data-dir {data}: no such folder")
    return Path(data)


def tuned_otherwise(result: Path, folder: Path) -> tuple[str, object, object] | None:
    """("data", recorded, asked) when the fine-tuning result `result` was tuned on the files of another folder than
    `folder` (a grid skips a tuned point: launch_grid checks this first); None when not, or unreadable."""
    try:
        old = json.loads(result.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(old, dict) or not isinstance(old.get("data"), str):
        return None
    return None if same_files(old["data"], str(folder)) else ("data", old["data"], absolute(str(folder)))


@dataclass
class Prepared:
    """A task's classifier on the saved model and the tokenizer that feeds it: loaded and checked, nothing written."""

    folder: Path
    model: Classifier
    tokenizer: Any
    causal: bool
    pool: str
    length: int  # inputs are truncated to this many tokens
    device: Any

    def encode(self, texts, labels) -> list[dict]:
        enc = self.tokenizer(texts, truncation=True, max_length=self.length)
        return [{"input_ids": i, "attention_mask": a, "labels": y}
                for i, a, y in zip(enc["input_ids"], enc["attention_mask"], labels)]

    def collate(self, rows) -> dict:
        batch = self.tokenizer.pad([{k: r[k] for k in ("input_ids", "attention_mask")} for r in rows],
                                   return_tensors="pt")
        batch["labels"] = torch.tensor([r["labels"] for r in rows])
        return batch


def prepare(model_path: str, spec: FinetuneSpec, s: Settings) -> Prepared:
    """The saved LM with a fresh head for `spec` (seeded): a damaged folder is one line, before anything is written."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, set_seed

    from eval.model import (TRUST_FLAG, check_embedding, check_folder, check_tokenizer_files, load_config,
                            load_tokenizer, loading_bars, pick_device, positions, serves)

    folder = check_folder(model_path)
    check_tokenizer_files(folder)
    device = pick_device(s.device)
    trust = s.trust_remote_code
    config = load_config(folder, "the model", "save the model again with save_pretrained", trust, TRUST_FLAG)
    causal = is_causal(config, trust)
    pool = s.pool or ("last" if causal else "first")
    tokenizer = load_tokenizer(folder, trust)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    set_seed(s.seed)
    auto = AutoModelForCausalLM if causal else AutoModelForMaskedLM
    if not serves(auto, config, trust):
        raise UserError(f"{folder / 'config.json'}: a {config.model_type} model is neither a causal nor a masked LM "
                        "this project can load (its auto_map names neither class); fine-tuning starts from one")
    with loading_bars(s.progress):
        backbone = backbone_of(folder, auto, config, trust)
    check_embedding(backbone, tokenizer, folder)
    length = s.max_length if s.max_length is not None else min(PIPELINE_MAX_LENGTH, positions(config))
    return Prepared(folder, Classifier(backbone, spec.num_labels, pool, s.head), tokenizer, causal, pool, length,
                    device)


def finetune(model_path: str, name: str, task: tuple, data_dir: Path, out_dir: Path, s: Settings, hashed: str) -> dict:
    """Fine-tune on one task, keep the best epoch, write its validation predictions; the task's summary. A stopped
    earlier attempt of the same fine-tuning is continued (eval.finetune_state). `hashed`: the model files' hash
    (common.paths.model_hash), taken once for all tasks."""
    from transformers import PrinterCallback

    from common.preemption import Preemption
    from eval import finetune_state as state

    spec, train, valid = task
    m = prepare(model_path, spec, s)
    work = out_dir / "finetune" / name
    epochs, batch, lr = s.epochs or spec.epochs, s.batch_size or spec.batch_size, s.lr or spec.lr
    files = (f"{name}.train.jsonl", f"{name}.valid.jsonl")
    attempt = {"model": hashed, "tokenizer": hash_files(m.folder, TOKENIZER_HASHED),
               "data": hash_files(data_dir, files),
               "spec": dataclasses.asdict(spec), "lr": lr, "batch_size": batch, "epochs": epochs, "seed": s.seed,
               "max_length": m.length, "pool": m.pool, "head": s.head, "last_batch": "dropped"}
    with state.locked(work, name), writing(work, "then run the same command again to continue"), \
            writing_as(out_dir, model_path, hashed):  # no other model's results there, nor its evaluation writing now
        checkpoint, best = state.resume(work, attempt)
        if checkpoint is not None:
            print(f"{name}: continuing from {checkpoint} (an earlier attempt of the same fine-tuning stopped there)")
        args = training_arguments(work / state.TRAINER, lr, batch, epochs, s.seed, m.device.type == "cpu", s.progress,
                                  len(train[1]))
        no_accelerator_probe()
        preemption = Preemption()
        trainer = pipeline_trainer()(
            model=m.model, args=args, train_dataset=m.encode(*train), eval_dataset=m.encode(*valid),
            data_collator=m.collate, compute_metrics=lambda p: scores(p.predictions, p.label_ids),
            callbacks=[state.Keeper(m.model, spec.metric, work, best, s.checkpoint_minutes), preemption])
        if not s.progress:
            trainer.remove_callback(PrinterCallback)  # no per-epoch dicts on the console: history.jsonl has them
        t0 = time.perf_counter()
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        if preemption.stopped_at is not None:
            raise Stopped(f"{name}: {preemption.how} after saving {work / state.TRAINER}/checkpoint-"
                          f"{preemption.stopped_at}", preemption.exit_code)
        if not best:
            state.forget(work)
            raise UserError(f"task {name}: no epoch gave a finite {spec.metric}: every validation logit was NaN or "
                            "infinite (non-finite weights in the model, or a loss that diverged: lower --lr)")
        m.model.load_state_dict(best["state"])
        out = trainer.predict(m.encode(*valid))
        settings = {"model": str(Path(model_path).resolve()), KEY: hashed,
                    "backend": "causal" if m.causal else "mlm",
                    "pool": m.pool, "head": s.head, "lr": lr, "batch_size": batch, "epochs": epochs, "seed": s.seed,
                    "steps": trainer.state.max_steps, "warmup_steps": args.warmup_steps, "max_length": m.length,
                    "data": absolute(str(data_dir)), "partial_release": valid_gap(name, valid),
                    "seconds": round(time.perf_counter() - t0, 1)}
        history = [r for r in trainer.state.log_history if "eval_loss" in r or "loss" in r]
        summary = write_results(name, spec, out, best["epoch"], settings, history, out_dir)
        state.forget(work)
        return summary


def warmup_steps(n_train: int, batch: int, epochs: int) -> int:
    """The warmup steps of the 2025 pipeline's trainer: its steps are full batches only (its training DataLoader drops
    the last incomplete one) times the epochs, and `int(0.06 * steps)` of them warm up (rounded down, float product
    included)."""
    return int(WARMUP * (n_train // batch * epochs))


def training_arguments(folder: Path, lr: float, batch: int, epochs: int, seed: int, cpu: bool, progress: bool,
                       n_train: int):
    """The HF Trainer's settings for the 2025 pipeline's fine-tuning: AdamW (betas 0.9, 0.999, eps 1e-8) with weight
    decay 0.01, the pipeline's warmup steps (`warmup_steps`; the HF Trainer's warmup ratio rounds up), cosine to
    0.1x, validation batch 64, an evaluation and a checkpoint per epoch, and no gradient clipping (the pipeline's
    trainer clips nothing; the HF Trainer's default is a norm of 1)."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(folder), learning_rate=lr, per_device_train_batch_size=batch, per_device_eval_batch_size=64,
        num_train_epochs=epochs, weight_decay=0.01, warmup_steps=warmup_steps(n_train, batch, epochs),
        max_grad_norm=0.0, lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": 0.1},
        eval_strategy="epoch", save_strategy="epoch", logging_strategy="epoch", seed=seed, report_to=[], use_cpu=cpu,
        disable_tqdm=not progress, remove_unused_columns=False)


def pipeline_trainer():
    """The HF Trainer with the pipeline's optimizer and batches: weight decay on every parameter, as its
    AdamW(model.parameters()) has it (the HF Trainer leaves biases and LayerNorm weights out), and the last incomplete
    training batch of each epoch dropped, as its training DataLoader(drop_last=True) does (the HF Trainer keeps it;
    its `dataloader_drop_last` would drop validation items too)."""
    from transformers import Trainer

    class PipelineTrainer(Trainer):
        def get_decay_parameter_names(self, model) -> list[str]:
            return [name for name, _ in model.named_parameters()]

        def get_train_dataloader(self):
            kept, self.args.dataloader_drop_last = self.args.dataloader_drop_last, True  # validation keeps every item
            try:
                return super().get_train_dataloader()
            finally:
                self.args.dataloader_drop_last = kept

    return PipelineTrainer


def write_results(name: str, spec: FinetuneSpec, out, best_epoch: float, settings: dict, history: list[dict],
                  out_dir: Path) -> dict:
    """`<task>.json`, `pairs/<task>.jsonl` and the pipeline's `finetune/<task>/predictions.json` of the best epoch's
    predictions on the validation set (`out`, the Trainer's), with `history.jsonl`; the summary."""
    final = scores(out.predictions, out.label_ids)
    pred = decide(out.predictions, out.label_ids)[0]
    summary = {
        "task": name,
        "description": spec.description,
        "metric": spec.metric,
        "score": final[spec.metric],
        "stderr": math.sqrt(final["accuracy"] * (1 - final["accuracy"]) / len(pred))
        if spec.metric == "accuracy"
        else None,
        "accuracy": final["accuracy"],
        "f1": final.get("f1"),
        "mcc": final["mcc"],
        "best_epoch": best_epoch,
        "n_items": len(pred),
        "n_subtasks": 1,
        "ties": final["ties"],
        "non_finite": final["non_finite"],
        "subtasks": {},
        **settings,
    }
    work = out_dir / "finetune" / name
    work.mkdir(parents=True, exist_ok=True)
    predictions = [{"id": f"{name}_{i}", "pred": int(p) if p >= 0 else None} for i, p in enumerate(pred)]
    write_atomic(work / "predictions.json", json.dumps({name: {"predictions": predictions}}) + "\n")
    write_atomic(work / "history.jsonl", "".join(json.dumps(json_safe(r), allow_nan=False) + "\n" for r in history))
    (out_dir / "pairs").mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / "pairs" / f"{name}.jsonl", "".join(
        json.dumps({"id": f"{name}_{i}", "pred": int(p), "label": int(y), "correct": bool(p == y)}) + "\n"
        for i, (p, y) in enumerate(zip(pred, out.label_ids))))
    write_atomic(out_dir / f"{name}.json", json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return summary


def check_one_batch(train_file: Path, n_train: int, batch: int, given: bool) -> None:
    """A training split smaller than one batch trains nothing, as the pipeline drops the incomplete batch: refused
    (the pipeline would score the untrained head). `given`: the batch is --batch-size's, not the task's."""
    if n_train >= batch:
        return
    asked, fix = ((f"--batch-size {batch}", f"give --batch-size {n_train} or less") if given else
                  (f"the task's batch of {batch}", f"give it {batch} or more examples, or run python -m eval finetune "
                                                   f"with --batch-size {n_train} or less"))
    raise UserError(f"{train_file}: {n_train} training example(s), fewer than {asked}; each epoch's incomplete last "
                    f"batch is dropped, as the pipeline drops it, so nothing would be trained: {fix}")


def main(argv: list[str]) -> int:
    from eval.evaluate import output_dir
    from eval.model import device_name

    p = argparse.ArgumentParser(prog="python -m eval finetune", description=__doc__.split("\n\n")[1])
    p.add_argument("model", help="a Hugging Face model folder (model + tokenizer)")
    p.add_argument(
        "--tasks", default=",".join(GLUE), help=f"comma-separated ({', '.join(known())}); default the seven GLUE tasks"
    )
    p.add_argument("--data-dir", help="the folder holding <task>.train.jsonl and <task>.valid.jsonl (glue_filtered)")
    p.add_argument("--lr", type=number("--lr", float, gt=0), help="peak learning rate (default: the task's, 3e-5)")
    p.add_argument("--batch-size", type=number("--batch-size", ge=1),
                   help="training batch size (default: the task's, 32 or 16)")
    p.add_argument("--epochs", type=number("--epochs", ge=1), help="epochs (default: the task's, 10 or 30)")
    p.add_argument("--seed", type=seed(), default=42, help="seed of the head, the shuffling and dropout")
    p.add_argument("--max-length", type=number("--max-length", ge=1),
                   help=f"inputs are truncated to this many tokens (default {PIPELINE_MAX_LENGTH}, the pipeline's, or "
                        "the model's positions where it has fewer; more than the model's positions is refused)")
    p.add_argument(
        "--pool",
        choices=("last", "first"),
        help="the position the head reads: last non-padding token (causal "
        "default) or position 0 (masked default; the official script's choice for causal too)",
    )
    p.add_argument("--head", choices=HEADS, default="pipeline",
                   help="the classifier head: the 2025 pipeline's (LayerNorm, a hidden-wide layer, GELU, LayerNorm, "
                        "dropout 0.1, the output layer; default) or linear (dropout 0.1 and the output layer)")
    p.add_argument("--checkpoint-minutes", type=number("--checkpoint-minutes", float, ge=0), default=10.0,
                   help="a checkpoint after the first epoch, then after any epoch that ends this long after the last "
                        "one (0: every epoch), so that a stopped fine-tuning continues (default 10)")
    p.add_argument("--device", type=device_name, default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="run the Python code a model folder defines its classes with (auto_map in config.json); it "
                        "runs in this process, so only for a folder you trust")
    p.add_argument("--out", help="where results go (default: <run>/eval for <run>/model, else <model>/eval)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    names = task_names(args.tasks)
    if not names:
        raise UserError(f"--tasks {args.tasks!r}: names no task; give one or more of {', '.join(known())}")
    from eval.model import TRUST_FLAG, check_folder, check_max_length, load_config

    folder = check_folder(args.model)
    check_max_length(args.max_length, load_config(folder, "the model", "save the model again with save_pretrained",
                                                   args.trust_remote_code, TRUST_FLAG), args.model)
    specs = {n: spec_of(n) for n in names}
    settings = Settings(args.lr, args.batch_size, args.epochs, args.seed, args.max_length, args.pool, args.device,
                        not args.no_progress, args.checkpoint_minutes, args.trust_remote_code, args.head)
    out_dir = output_dir(Path(args.model), args.out)
    hashed = model_hash(Path(args.model))
    check_one_model(out_dir, args.model, hashed)  # before any training: another model's results there
    for name in names:
        check_result_file(out_dir / f"{name}.json", name)
    tasks = {}
    for name in names:  # every task's files are read and checked before any training
        data = data_folder(name, specs[name], args.data_dir)
        tasks[name] = (data, read_task(name, data))
        if (how := valid_gap(name, tasks[name][1][2])) is not None:  # part of the release's validation items
            print(release.note(name, str(data / f"{name}.valid.jsonl"), how))
        labels = tasks[name][1][1][1]  # the training split's
        check_one_batch(data / f"{name}.train.jsonl", len(labels), settings.batch_size or specs[name].batch_size,
                        given=settings.batch_size is not None)
    for i, (name, (data, task)) in enumerate(tasks.items()):
        left = ",".join(list(tasks)[i:])
        try:
            with if_interrupted(out_dir, f"the tasks whose results were written are kept, and {name} its newest "
                                         f"checkpoint if it wrote one; the same command with --tasks {left} continues"):
                summary = finetune(args.model, name, task, data, out_dir, settings, hashed)
        except Stopped as exc:
            again = "the same command again" if i == 0 else f"the same command with --tasks {left}"
            print(f"{exc}; run {again} to continue from it", file=sys.stderr)
            return exc.code
        extra = f", F1 {summary['f1']:.4f}" if summary.get("f1") is not None else ""
        print(
            f"{name}: {METRICS[summary['metric']].label} {summary['score']:.4f} (accuracy {summary['accuracy']:.4f}"
            f"{extra}, best epoch {summary['best_epoch']:.0f} of {summary['epochs']}) -> {out_dir / name}.json"
        )
        if summary["non_finite"]:
            print(f"warning: {name}: {summary['non_finite']} validation item(s) have a NaN or infinite logit at the "
                  "best epoch; they count as wrong")
    return 0
