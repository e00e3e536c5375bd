"""python -m tokenizer {prepare,demo}: build the cached tokenizer and blocks of a run config, or write the demo
corpus."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import config as cfglib
from common.arguments import number, seed
from common.errors import exit_on_user_error, leave
from common.locks import file_lock
from tokenizer.config import PrepareConfig


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tokenizer",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Clean a BabyLM corpus, train or load a tokenizer, tokenize and pack into blocks (all cached).",
        epilog="config keys read by `prepare` (set in the YAML or as key=value):\n"
        + "\n".join(cfglib.describe(PrepareConfig)),
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="clean + tokenizer + pack for a run config (config/runs/*.yaml)")
    p.add_argument("config", help="run YAML; only its data: and tokenizer: sections are read")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.train_dir=/data/babylm/train_10M")
    d = sub.add_parser("demo", help="write the embedded demo corpus and minimal pairs")
    d.add_argument("out_dir")
    d.add_argument("--seed", type=seed(), default=42, help="the grammar's seed")
    d.add_argument("--sentences", type=number("--sentences", ge=10), default=20000,
                   help="training sentences (at least 10; dev gets a tenth)")
    return parser


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from tokenizer import demo

        demo.check_target(args.out_dir, args.sentences)  # before anything is written, the lock's file included
        with file_lock(Path(args.out_dir) / demo.LOCK):  # one writer at a time: the others wait, then find it taken
            demo.check_target(args.out_dir, args.sentences)
            print(demo.generate(args.out_dir, seed=args.seed, n_sentences=args.sentences))
        return 0
    from tokenizer.prepare import prepare

    cfg = cfglib.load(PrepareConfig, args.config, args.overrides, sections=("data", "tokenizer"))
    prepared = prepare(cfg.data, cfg.tokenizer)
    for name, path in (("train", prepared.train_blocks), ("dev", prepared.dev_blocks)):
        if path is not None:
            print(f"{name}: {path} {json.loads((path / 'stats.json').read_text())}")
    print(f"tokenizer: {prepared.tokenizer_dir}")
    return 0


if __name__ == "__main__":
    leave(main())
