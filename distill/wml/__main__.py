"""python -m distill.wml search CONFIG [key=value ...]: find the peer architectures (Bayesian optimisation).
python -m distill.wml train CONFIG [key=value ...] [--resume | --overwrite]: weighted mutual learning.

Reads top to bottom: config -> peer architectures (arch_search_results/ in the experiment
folder: searched now, or reused; distill.wml.search) -> train.session.run with the peers
(distill.wml.build: the peers, the teacher for `vanilla`, the peers wrapper and its trainer) ->
model/peer-<i>/ for every peer, the champion by dev cross-entropy, each peer evaluated.
`python -m results collect` plots the ω trajectory.
"""
from __future__ import annotations

import sys

from common import config as cfglib
from common.errors import UserError, exit_on_user_error, leave
from distill.wml.config import WMLRunConfig


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    from distill.wml.build import build_peers
    from distill.wml.search import peer_architectures, run_search
    from train.session import run, run_parser

    argv = sys.argv[1:] if argv is None else argv
    commands = ("search", "train")
    if not argv or argv[0] not in commands:
        if argv and argv[0] in ("-h", "--help"):
            print(__doc__)
            return 0
        raise UserError(
            f"python -m distill.wml: give a command, one of {', '.join(commands)} (e.g. python -m distill.wml train "
            "config/runs/demo-wml.yaml)"
        )
    command, rest = argv[0], argv[1:]
    args = run_parser(
        f"python -m distill.wml {command}",
        "Weighted mutual learning of peers found by Bayesian optimisation.",
        WMLRunConfig,
        "config/runs/demo-wml.yaml",
        "wml.num_peers=2 wml.distillation_method=vanilla",
    ).parse_args(rest)
    cfg = cfglib.load(WMLRunConfig, args.config, args.overrides)
    if command == "search":
        run_search(cfg)
        return 0
    peer_fields = peer_architectures(cfg)
    return run(cfg, argv, args.resume, args.overwrite,
               lambda cfg, tokenizer, prepared, device: build_peers(cfg, tokenizer, prepared, device, peer_fields))


if __name__ == "__main__":
    leave(main())
