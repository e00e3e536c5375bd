"""One training session, shared by `python -m train` and `python -m distill`.

Reads top to bottom: run directory decision -> data and tokenizer -> model (from a
`Builder`) -> Trainer -> export -> DONE. A Builder says how to build what is trained and
how to export it; everything else (refusing to overwrite, resuming from the newest good
checkpoint, run.json, the non-finite-loss stop) is the same for every kind of run.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from common import config as cfglib
from common import errors
from common.errors import UserError
from common.paths import replacing_folder
from common.ranks import say


@dataclass
class Built:
    """What a builder hands the session: the module the Trainer trains and how model/ is written."""

    trained: Any            # the Trainer's model (the model itself, or a wrapper around the student or the peers)
    objective: str          # "causal" or "masked" (picks the collator)
    banner: str             # one line printed before training
    trainer_cls: type | None = None
    trainer_kwargs: dict = field(default_factory=dict)
    block_index: bool = False  # give every training block its row number (a teacher cache is read by it)
    export: Callable[[Path], None] | None = None  # writes model/ (rank 0); None: the Trainer saves `trained` there
    finish: Callable[[Any, Path], dict] | None = None  # (trainer, run path) -> extra summary, after export, before DONE
    inputs: dict[str, str] = field(default_factory=dict)  # teachers read at every step: key -> hash of model files
    # every trainable parameter gets a gradient at every step: DDP then skips its per-step search for unused ones
    # (find_unused_parameters=False; else the Trainer's default for a wrapper, True, which also warns on every rank
    # when it finds none). A parameter left unused under False stops the run at its second step, naming it.
    all_parameters_used: bool = False


Builder = Callable[[Any, Any, Any, Any], Built]  # (cfg, tokenizer, prepared data, device) -> Built


def run_parser(
    prog: str, description: str, schema: type, example_config: str, example_override: str
) -> argparse.ArgumentParser:
    """The command line every training entry point shares: CONFIG, dotted overrides, --resume | --overwrite."""
    parser = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter, description=description,
        epilog="config keys (YAML sections, or key=value on the command line):\n" + "\n".join(cfglib.describe(schema)))
    parser.add_argument("config", help=f"run YAML, e.g. {example_config}")
    parser.add_argument("overrides", nargs="*", help=f"dotted overrides, e.g. {example_override}")
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--resume", action="store_true", help="continue from the newest complete checkpoint (or start if there is none)"
    )
    group.add_argument("--overwrite", action="store_true", help="delete an existing run directory and start again")
    return parser


def run(cfg, argv: list[str], resume: bool, overwrite: bool, build: Builder) -> int:
    """Hold the run directory's lock, decide what to do with it, then train (or only finish)."""
    from train.rundir import RunDir

    run_dir = RunDir(cfg.output.run_path)
    with run_dir.locked():  # one process per run directory; a second one is refused in one line
        decision = run_dir.decide(cfg, resume=resume, overwrite=overwrite)
        if decision == "done":
            say(f"{run_dir.path}: already finished (DONE); nothing to do")
            return 0
        return train_run(cfg, argv, run_dir, decision, build)


def train_run(cfg, argv: list[str], run_dir, decision: str, build: Builder) -> int:
    from transformers import set_seed

    from common.errors import writing
    from common.preemption import Preemption
    from tokenizer.bpe import load_pretrained
    from tokenizer.prepare import block_words, load_blocks, prepare
    from train import models, words
    from train.rundir import state_groups
    from train.trainer import (
        BabyTrainer,
        MetricsLog,
        NonFiniteLoss,
        build_trainer,
        leave,
        quiet_library_bars,
        training_arguments,
    )

    # 1. Data and tokenizer (cached), the model, and the checks, before anything is written.
    quiet_library_bars()
    targs = training_arguments(cfg, run_dir)
    with targs.main_process_first(desc="prepare data"):
        prepared = prepare(cfg.data, cfg.tokenizer)
    tokenizer = load_pretrained(prepared.tokenizer_dir, "the run's tokenizer")
    models.check_vocab(cfg.model, tokenizer, prepared.tokenizer_dir)
    set_seed(cfg.train.seed)  # the model is initialised before the Trainer seeds anything
    built = build(cfg, tokenizer, prepared, targs.device)
    if built.all_parameters_used:
        targs.ddp_find_unused_parameters = False
    train_ds = load_blocks(
        prepared.train_blocks, cfg.data.train_fraction, cfg.data.seed, with_index=built.block_index, with_words=True
    )
    dev_ds = None
    if prepared.dev_blocks:
        dev_ds = load_blocks(prepared.dev_blocks, seed=cfg.data.seed, limit=cfg.data.dev_blocks)
    budget = words.plan(cfg.train, block_words(train_ds), targs.world_size)
    targs.max_steps, targs.num_train_epochs = budget.max_steps, budget.epochs or targs.num_train_epochs
    say(f"{built.banner}; {len(train_ds)} train blocks of {cfg.data.block_size} tokens ({budget.epoch_words:,} words)"
          + (f", {len(dev_ds)} dev blocks" + (" (data.dev_blocks)" if cfg.data.dev_blocks else "") if dev_ds else ""))

    # 2. The run directory, then training from the newest good checkpoint (none left to take: only finish).
    inputs = {"data.train_dir": prepared.train_blocks.name,
              "data.dev_dir": prepared.dev_blocks.name if prepared.dev_blocks else None, **built.inputs}
    if decision == "resume":
        run_dir.check_same_inputs(inputs)
    run_dir.create(cfglib.to_dict(cfg), decision)
    checkpoint = run_dir.newest_good_checkpoint(state_groups(built.trained)) if decision == "resume" else None
    if decision == "resume":
        say(f"resuming from {checkpoint}" if checkpoint
            else f"{run_dir.path}: no usable checkpoint; starting from step 0")
    trainer = build_trainer(cfg, run_dir, targs, built.trained, built.objective, tokenizer, train_ds, dev_ds, budget,
                            trainer_cls=built.trainer_cls or BabyTrainer, **built.trainer_kwargs)
    words_seen = trainer.words_seen
    words_seen.export = lambda folder: export(trainer, built, tokenizer, folder)
    if checkpoint:
        words_seen.restore(checkpoint)
    run_dir.begin(argv, checkpoint)
    run_dir.write_info(words=budget.summary(json.loads((prepared.train_blocks / "stats.json").read_text())),
                       inputs=inputs)
    metrics_log = next(c for c in trainer.callback_handler.callbacks if isinstance(c, MetricsLog))
    try:
        with writing(run_dir.path, "then rerun with --resume"):
            trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except NonFiniteLoss as exc:
        good = run_dir.newest_finite_checkpoint()
        run_dir.end("failed", error=str(exc))
        raise UserError(f"{run_dir.path}: {exc}; training stopped, last good checkpoint: {good or 'none'}; "
                        f"rerun with --resume and a lower optim.max_grad_norm, or start again (--overwrite) with a "
                        f"lower optim.lr") from None
    except KeyboardInterrupt:
        stopped(run_dir, metrics_log)
    except UserError as exc:
        with contextlib.suppress(OSError, UserError):  # the disk may be too full even for run.json
            metrics_log.record()
            run_dir.end("failed", error=str(exc))
        raise
    except Exception as exc:  # a defect (ours or a library's): run.json says failed, the traceback says where
        if errors.cut_short():  # a library's error raised from Ctrl-C or SIGTERM: the stop
            stopped(run_dir, metrics_log)
        memory = errors.out_of_memory(exc)  # not a defect: more than the machine has, for the batch and block size
        with contextlib.suppress(OSError, UserError):
            metrics_log.record()
            run_dir.end("failed", error=f"out of memory: {memory}" if memory else errors.summary(exc, 300))
        if memory:
            raise UserError(
                f"{run_dir.path}: out of memory at step {trainer.state.global_step} ({memory}, with train.batch_size="
                f"{cfg.train.batch_size} and data.block_size={cfg.data.block_size}); rerun with --resume where it "
                "has more memory, or start again (--overwrite) with a lower train.batch_size (a higher "
                "train.grad_accum keeps the batch per step)") from None
        raise
    preemption = next(c for c in trainer.callback_handler.callbacks if isinstance(c, Preemption))
    if preemption.stopped_at is not None:
        run_dir.end(**ended_by(preemption.signal), step=preemption.stopped_at)
        say(f"{run_dir.path}: {preemption.how} after saving checkpoint-{preemption.stopped_at}; rerun with --resume",
            err=True)
        return leave(trainer, preemption.exit_code)

    # 3. Export the (best) model with its tokenizer, final dev loss, DONE last.
    metrics_log.final = True
    with writing(run_dir.path, "then rerun with --resume"):
        dev_loss = trainer.evaluate()["eval_loss"] if dev_ds is not None else None
        with replacing_folder(run_dir.model_dir, trainer.is_world_process_zero()) as folder:  # whole, or not there
            export(trainer, built, tokenizer, folder)
        summary = {"step": trainer.state.global_step, "words_seen": words_seen.total, "dev_loss": dev_loss,
                   "best_checkpoint": trainer.state.best_model_checkpoint}
        if built.finish is not None:
            summary.update(built.finish(trainer, run_dir.path))
        run_dir.end("done", **summary)
        run_dir.mark_done(summary)
    say(f"{run_dir.path}: done at step {trainer.state.global_step}"
        + (f", dev loss {dev_loss:.4f}" if dev_loss is not None else ""))
    return leave(trainer, 0)


def ended_by(signum: int) -> dict:
    """run.json's status for a training a signal stopped: `preempted` (SIGUSR2), `interrupted` (Ctrl-C), else
    `terminated` with the signal's name (SIGTERM, SIGHUP)."""
    if signum == signal.SIGUSR2:
        return {"status": "preempted"}
    if signum == signal.SIGINT:
        return {"status": "interrupted"}
    return {"status": "terminated", "signal": signal.Signals(signum).name}


def stopped(run_dir, metrics_log) -> None:
    """Ctrl-C, SIGTERM or SIGHUP stopped the training: run.json says so, and the one line says how to go on."""
    metrics_log.record()
    run_dir.end(**ended_by(errors.stopped_by()))
    raise errors.Interrupted(run_dir.path, "rerun with --resume to continue from its newest checkpoint") from None


def export(trainer, built: Built, tokenizer, folder: Path) -> None:
    """The trained model (or the builder's export of it) and the tokenizer into `folder`, the folder beside model/
    (at the end) or milestones/chck_*/ (on the way) that `replacing_folder` renames into place once it is whole.
    Every rank calls it (a sharded model is gathered for saving)."""
    if built.export is None:
        trainer.save_model(str(folder))  # with the tokenizer (the Trainer's processing_class)
    elif trainer.is_world_process_zero():
        built.export(folder)
        tokenizer.save_pretrained(str(folder))
