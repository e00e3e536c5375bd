"""python -m train CONFIG [key=value ...] [--resume | --overwrite]: train a teacher or baseline.

Reads top to bottom: config -> run directory decision -> data and tokenizer -> model ->
Trainer -> export -> DONE. `--help` lists every config key with its doc.
"""
from __future__ import annotations

import argparse
import sys

from common import config as cfglib
from common.errors import UserError, exit_on_user_error
from train.config import RunConfig


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a teacher or baseline LM into runs/<experiment>/<name>/ (see DESIGN.md, 'The run directory').",
        epilog="config keys (YAML sections, or key=value on the command line):\n" + "\n".join(cfglib.describe(RunConfig)))
    parser.add_argument("config", help="run YAML, e.g. config/runs/demo-teacher.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=3e-4 data.train_dir=/data/babylm/train_10M")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint (or start if there is none)")
    group.add_argument("--overwrite", action="store_true", help="delete an existing run directory and start again")
    return parser


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    cfg = cfglib.load(RunConfig, args.config, args.overrides)
    resolved = cfglib.to_dict(cfg)

    from pathlib import Path

    from transformers import AutoTokenizer, set_seed

    from tokenizer.prepare import load_blocks, prepare
    from train import models
    from train.rundir import RunDir
    from train.trainer import NonFiniteLoss, build_trainer, training_arguments

    # 1. What to do with the run directory: refuse before anything is written.
    run = RunDir(Path(cfg.output.dir) / cfg.output.experiment / cfg.output.name)
    decision = run.decide(resolved, resume=args.resume, overwrite=args.overwrite)
    if decision == "done":
        print(f"{run.path}: already finished (DONE); nothing to do")
        return 0

    # 2. Data and tokenizer (cached), the model, and the vocab check, still before writing.
    targs = training_arguments(cfg, run)
    with targs.main_process_first(desc="prepare data"):
        prepared = prepare(cfg.data, cfg.tokenizer)
    tokenizer = AutoTokenizer.from_pretrained(prepared.tokenizer_dir)
    models.check_vocab(cfg.model, tokenizer, prepared.tokenizer_dir)
    set_seed(cfg.train.seed)  # the model is initialised before the Trainer seeds anything
    objective, model = models.build_model(cfg.model, tokenizer)
    train_ds = load_blocks(prepared.train_blocks, cfg.data.train_fraction, cfg.data.seed)
    dev_ds = load_blocks(prepared.dev_blocks) if prepared.dev_blocks else None
    print(f"{cfg.model.arch}: {sum(p.numel() for p in model.parameters()):,} parameters, {objective} LM; "
          f"{len(train_ds)} train blocks of {cfg.data.block_size} tokens" + (f", {len(dev_ds)} dev blocks" if dev_ds else ""))

    # 3. The run directory, then training (resuming from the newest good checkpoint).
    run.create(resolved, decision)
    checkpoint = run.newest_good_checkpoint() if decision == "resume" else None
    if decision == "resume":
        print(f"resuming from {checkpoint}" if checkpoint else f"{run.path}: no usable checkpoint; starting from step 0")
    trainer = build_trainer(cfg, run, targs, model, objective, tokenizer, train_ds, dev_ds)
    run.begin(argv, checkpoint)
    try:
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except NonFiniteLoss as exc:
        good = run.newest_finite_checkpoint()
        run.end("failed", error=str(exc))
        print(file=sys.stderr)  # end the progress bar's line before the error
        raise UserError(f"{run.path}: {exc}; training stopped, last good checkpoint: {good or 'none'}; "
                        f"lower optim.lr or set optim.max_grad_norm, then rerun with --resume") from None

    # 4. Export the (best) model with its tokenizer, final dev loss, DONE last.
    dev_loss = trainer.evaluate()["eval_loss"] if dev_ds is not None else None
    trainer.save_model(str(run.model_dir))
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(run.model_dir))
    summary = {"step": trainer.state.global_step, "dev_loss": dev_loss, "best_checkpoint": trainer.state.best_model_checkpoint}
    run.end("done", **summary)
    run.mark_done(summary)
    if trainer.is_world_process_zero():
        print(f"{run.path}: done at step {trainer.state.global_step}" + (f", dev loss {dev_loss:.4f}" if dev_loss is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
