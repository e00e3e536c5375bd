"""python -m eval MODEL --tasks blimp_filtered,ewok_filtered | --suite babylm2025 ...
python -m eval finetune | curve | aoa | collate | download

Zero-shot evaluation of a Hugging Face model folder, scored as the BabyLM pipelines score
it. Results go to the run directory's eval/ (or <model>/eval, or --out).
"""
from __future__ import annotations

import argparse
import os
import sys

from common.arguments import number
from common.errors import UserError, exit_on_user_error, if_interrupted, leave
from eval.encode import CONVENTIONS
from eval.tasks import SUITES, available, task_names

# torch, numpy and the rest are imported inside main: under its boundary, so that Ctrl-C or SIGTERM while they load
# (the first second or two) is one line too (tests/test_interrupts.py)


def parse_eval(argv: list[str]) -> argparse.Namespace:
    from eval.model import BACKENDS, device_name

    p = argparse.ArgumentParser(
        prog="python -m eval",
        description=__doc__.split("\n\n")[1],
        epilog="Also: python -m eval finetune | curve RUN ... | aoa RUN --words FILE | collate RUN | download "
               "[--dest DIR] [--from FILE_OR_URL ...]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="a Hugging Face model folder (model + tokenizer), e.g. runs/demo/teacher/model")
    p.add_argument("--tasks", help=f"comma-separated task families ({', '.join(available())}) or task YAML paths "
                                   f"(default blimp_filtered)")
    p.add_argument(
        "--suite",
        choices=sorted(SUITES),
        help="the 2025 pipeline's zero-shot tasks (babylm2025), or the same "
        "from the *_fast folders (babylm2025-fast, results in eval/fast/)",
    )
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="causal",
        help="causal: log-likelihood; mlm: pseudo-log-likelihood; mntp: masked next-token prediction (2025 only)",
    )
    p.add_argument(
        "--convention",
        choices=CONVENTIONS,
        help="babylm2024 (' ' + sentence after BOS/EOS; masked: minicons' mean) or babylm2025 (the tokenizer's "
        "own special tokens, completion tokens by offsets; sums). Default: the task's own, else babylm2024; "
        "--suite sets babylm2025",
    )
    p.add_argument(
        "--data-dir", help="BabyLM's evaluation_data folder (default: ./evaluation_data; demo_pairs: cache/demo)"
    )
    p.add_argument("--ewok-zip", help="EWoK's password-protected zip, read without extracting it into the repository")
    p.add_argument(
        "--ewok-password", default=os.environ.get("EWOK_PASSWORD"), help="its password (default $EWOK_PASSWORD)"
    )
    p.add_argument("--batch-size", type=number("--batch-size", auto=True, ge=1), default="64",
                   help="sequences per forward pass, or 'auto' (largest that fits on the GPU)")
    p.add_argument("--device", type=device_name, default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="bfloat16: half the memory, and faster where the device has bf16 units (GPUs, CPUs with "
                   "AMX), but near-ties can flip; float32 gives the pipelines' numbers")
    p.add_argument("--max-length", type=number("--max-length", ge=1),
                   help="positions the model can attend to (default: from its config)")
    p.add_argument(
        "--too-long",
        choices=("truncate", "error"),
        default="truncate",
        help="a causal input longer than the model's positions: left-truncate it (as the harness does) or stop",
    )
    p.add_argument("--trust-remote-code", action="store_true",
                   help="run the Python code a model folder defines its classes with (auto_map in config.json: "
                        "GPT-BERT, LTG-BERT); it runs in this process, so only for a folder you trust")
    p.add_argument("--out", help="where eval/ results go (default: <run>/eval for <run>/model, else <model>/eval)")
    p.add_argument("--keep-scored", action="store_true",
                   help="keep the tasks this model already has whole results for in the results folder (same model "
                        "files, task files, convention, backend and options): a stopped suite continues where it "
                        "stopped")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["finetune"]:
        from eval.finetune import main as finetune

        return finetune(argv[1:])
    if argv[:1] == ["curve"]:
        from eval.curve import main as curve

        return curve(argv[1:])
    if argv[:1] == ["aoa"]:
        from eval.aoa import main as aoa

        return aoa(argv[1:])
    if argv[:1] == ["collate"]:
        from eval.collate import main as collate

        return collate(argv[1:])
    if argv[:1] == ["download"]:
        from eval.download import main as download

        return download(argv[1:])
    args = parse_eval(argv)
    from eval.evaluate import Options, evaluate, results_dir

    if args.suite and args.tasks:
        raise UserError("--suite and --tasks: give one of them (a suite is a fixed list of tasks)")
    if args.suite and args.convention == "babylm2024":
        raise UserError(f"--suite {args.suite} is the 2025 pipeline's; drop --convention babylm2024")
    opts = Options(
        backend=args.backend,
        convention="babylm2025" if args.suite else args.convention,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
        max_length=args.max_length,
        too_long=args.too_long,
        data_dir=args.data_dir,
        ewok_zip=args.ewok_zip,
        ewok_password=args.ewok_password,
        out=args.out,
        progress=not args.no_progress,
        fast=args.suite == "babylm2025-fast",
        keep_scored=args.keep_scored,
        trust_remote_code=args.trust_remote_code,
    )
    given = args.tasks if args.tasks is not None else ",".join(SUITES[args.suite]) if args.suite else "blimp_filtered"
    tasks = task_names(given)
    if not tasks:
        raise UserError(f"--tasks {args.tasks!r}: names no task; give one or more of {', '.join(available())}")
    again = ("run the same command again: it scores only those not kept" if args.keep_scored else
             "the same command with --keep-scored scores only the others")
    with if_interrupted(results_dir(args.model, opts), f"the tasks whose results were written are kept; {again}"):
        results = evaluate(args.model, tasks, opts)
    from eval import report

    print()
    print(report.table([(name, summary) for name, summary, _ in results]))
    return 0


if __name__ == "__main__":
    leave(main())
