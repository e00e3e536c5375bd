"""python -m distill.wml search CONFIG [key=value ...]: find the peer architectures (Bayesian optimisation).
python -m distill.wml train CONFIG [key=value ...] [--resume | --overwrite]: weighted mutual learning.

Reads top to bottom: config -> peer architectures (arch_search_results/ in the experiment
folder: searched now, or reused) -> train.session.run with the peers recipe (the peers, the
teacher for `vanilla`, the peers wrapper and its trainer) -> model/peer-<i>/ for every peer,
the champion by dev cross-entropy, the ω trajectory as a PNG, each peer evaluated.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from common import config as cfglib
from common.errors import UserError, exit_on_user_error
from distill.wml.config import WMLRunConfig

SPECIAL = ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id")
MAX_ERROR = 0.20  # a peer further than this from its target parameter count is an error


def results_dir(cfg) -> Path:
    return Path(cfg.output.dir) / cfg.output.experiment / "arch_search_results"


def search_settings(cfg, ref) -> dict:
    w = cfg.wml
    return {"reference_params": ref.n_params, "reference_fields": ref.fields, "num_peers": w.num_peers,
            "space": cfglib.to_dict(w.search), "init_points": w.init_points, "n_iter": w.n_iter, "seed": w.seed}


def reference(cfg):
    from distill.wml.search import reference_from_arch, reference_from_folder

    if not cfg.wml.reference_folder:
        return reference_from_arch(cfg.model)
    ref = reference_from_folder(cfg.wml.reference_folder)
    if ref.fields.get("vocab_size") != cfg.model.vocab_size:  # N counts its embeddings: the peers must share its vocabulary
        raise UserError(f"wml.reference_folder={cfg.wml.reference_folder}: has a {ref.fields.get('vocab_size')}-token vocabulary but the "
                        f"peers use the run's tokenizer (model.vocab_size={cfg.model.vocab_size}); give a reference trained with this tokenizer")
    return ref


def run_search(cfg) -> list[dict]:
    """Search, then write search.json and one model YAML per peer (usable as model.arch=...)."""
    from common.paths import write_atomic
    from distill.wml.search import search_peers

    ref = reference(cfg)
    w = cfg.wml
    print(f"reference: {ref.n_params:,} parameters; searching {w.num_peers} peer(s) "
          f"({w.init_points} initial points + {w.n_iter} iterations each, seed {w.seed})")
    try:
        peers = search_peers(ref, w.num_peers, cfglib.to_dict(w.search), w.init_points, w.n_iter, w.seed)
    except ValueError as exc:
        raise UserError(f"wml.search: {exc}; widen the search space") from None
    for p in peers:
        if p["relative_error"] > MAX_ERROR:
            raise UserError(f"wml.search: peer {p['peer']} targets {p['target']:,.0f} parameters but the nearest architecture in the "
                            f"search space ({p['layers']} layers, {p['heads']} heads, hidden {p['hidden']}) has {p['n_params']:,} "
                            f"({p['relative_error']:.0%} off, more than {MAX_ERROR:.0%}); widen wml.search.layers or wml.search.hidden")
    out = results_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    for p in peers:
        fields = {k: v for k, v in p["fields"].items() if k not in SPECIAL}
        text = (f"# Peer {p['peer']} of weighted mutual learning: {p['n_params']:,} parameters for a target of {p['target']:,.0f} "
                f"({p['relative_error']:.2%} off).\n" + yaml.safe_dump({"objective": ref.objective, **fields}, sort_keys=False))
        write_atomic(out / f"peer-{p['peer']}.yaml", text)
        print(f"peer {p['peer']}: {p['layers']} layers, {p['heads']} heads, hidden {p['hidden']}: {p['n_params']:,} parameters "
              f"(target {p['target']:,.0f}, {p['relative_error']:.2%} off)")
    print(f"wrote {out}/peer-*.yaml and search.json")
    write_atomic(out / "search.json", json.dumps({"settings": search_settings(cfg, ref), "peers": peers}, indent=2))
    return peers


def peer_architectures(cfg) -> list[dict]:
    """The peers' fields: a finished search with the same settings is reused; `use_opt_config: false` requires one."""
    saved = results_dir(cfg) / "search.json"
    if not cfg.wml.use_opt_config:
        if not saved.is_file():
            raise UserError(f"wml.use_opt_config=false but {saved} does not exist; run python -m distill.wml search CONFIG first "
                            f"(or set wml.use_opt_config=true)")
        peers = json.loads(saved.read_text())["peers"]
        if len(peers) < cfg.wml.num_peers:
            raise UserError(f"{saved} holds {len(peers)} peer(s) but wml.num_peers={cfg.wml.num_peers}; search again")
        return peers[:cfg.wml.num_peers]
    if saved.is_file() and json.loads(saved.read_text())["settings"] == search_settings(cfg, reference(cfg)):
        print(f"reusing the peer search in {saved}")
        return json.loads(saved.read_text())["peers"]
    return run_search(cfg)


def build_peers(cfg, tokenizer, prepared, device, peer_fields: list[dict]):
    """The peers (one per searched architecture, initialised in order after the run's seed), the teacher for vanilla."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

    from distill.teachers import check_same_tokenizer, positions
    from distill.wml.peers import PeersWrapper, WMLTrainer
    from eval.model import check_folder, load_model_folder
    from train.session import Built

    objective = "masked" if cfg.wml.model_type == "MLM" else "causal"
    auto = AutoModelForMaskedLM if objective == "masked" else AutoModelForCausalLM
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": pad}
    peers = []
    for p in peer_fields:
        fields = {k: v for k, v in p["fields"].items() if k not in SPECIAL}
        peers.append(auto.from_config(AutoConfig.for_model(fields.pop("model_type"), **fields, vocab_size=cfg.model.vocab_size, **ids)))
    if cfg.wml.reference_folder and (Path(cfg.wml.reference_folder) / "tokenizer.json").is_file():
        try:  # N counts the reference's embeddings, so its vocabulary must be the peers' (the run's tokenizer)
            check_same_tokenizer(Path(cfg.wml.reference_folder), Path(prepared.tokenizer_dir))
        except UserError as exc:
            raise UserError(f"wml.reference_folder: {exc}") from None
    teacher = None
    if cfg.wml.distillation_method == "vanilla":
        folder = check_folder(cfg.wml.teacher)
        check_same_tokenizer(folder, Path(prepared.tokenizer_dir))
        teacher = load_model_folder(folder, auto, "the vanilla teacher (wml.teacher)", "save it again with save_pretrained, or fix wml.teacher")
        if positions(teacher.config) is not None and positions(teacher.config) < cfg.data.block_size:
            raise UserError(f"wml.teacher={cfg.wml.teacher}: has {positions(teacher.config)} positions, fewer than "
                            f"data.block_size={cfg.data.block_size}; lower data.block_size or use another teacher")
        teacher = teacher.to(device).eval().requires_grad_(False)
    wrapper = PeersWrapper(peers, objective, cfg.wml.loss_alpha, cfg.wml.distillation_method, teacher)
    sizes = ", ".join(f"{sum(x.numel() for x in m.parameters()):,}" for m in peers)

    def export(model_dir: Path) -> None:
        for i, peer in enumerate(wrapper.peers):
            peer.save_pretrained(model_dir / f"peer-{i}")
            tokenizer.save_pretrained(model_dir / f"peer-{i}")

    def finish(trainer, run_path: Path) -> dict:
        return finish_run(cfg, trainer, wrapper, run_path)

    return Built(trained=wrapper, export=export, finish=finish, objective=objective,
                 trainer_cls=WMLTrainer, trainer_kwargs={"wml": cfg.wml},
                 banner=f"{len(peers)} {objective} peer(s) of {sizes} parameters, {cfg.wml.distillation_method} learning, "
                        f"α={cfg.wml.loss_alpha:g}, ω updated every {cfg.wml.weight_update_frequency} steps")


def finish_run(cfg, trainer, wrapper, run_path: Path) -> dict:
    """Each peer's dev CE, the champion, the ω plot, and each peer's evaluation."""
    from common.paths import write_atomic

    import math

    dev_ce = trainer.peer_dev_ce() if trainer.eval_dataset is not None else [None] * len(wrapper.peers)
    dev_ce = [x if x is None or math.isfinite(x) else None for x in dev_ce]  # a diverged peer has no dev CE, never the champion
    finite = [i for i, x in enumerate(dev_ce) if x is not None]
    champion = min(finite, key=lambda i: dev_ce[i]) if finite else 0
    info = {"champion": champion, "dev_ce": dev_ce, "omega": [float(x) for x in wrapper.omega],
            "peers": [f"peer-{i}" for i in range(len(wrapper.peers))]}
    if trainer.is_world_process_zero():
        write_atomic(run_path / "model" / "champion.json", json.dumps(info, indent=2))
        plot_omega(run_path / "metrics.jsonl", run_path / "omega.png")
        if cfg.wml.eval_tasks:
            from eval.evaluate import Options, evaluate

            opts = Options(backend="mlm" if cfg.wml.model_type == "MLM" else "causal", data_dir=cfg.wml.eval_data_dir or None,
                           progress=False)
            for i in range(len(wrapper.peers)):
                opts.out = str(run_path / "eval" / f"peer-{i}")
                evaluate(str(run_path / "model" / f"peer-{i}"), cfg.wml.eval_tasks, opts)
        print(f"champion: peer-{champion} (dev CE {dev_ce[champion]:.4f})" if finite else "champion: peer-0 (no dev CE)")
    return {"champion": champion, "peer_dev_ce": dev_ce}


def plot_omega(metrics: Path, out: Path) -> None:
    """The peer weights over training steps, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from common.paths import read_jsonl

    rows = [r for r in read_jsonl(metrics) if "omega/0" in r and "loss" in r]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    k = len([key for key in rows[0] if key.startswith("omega/")]) if rows else 0
    for i in range(k):
        ax.plot([r["step"] for r in rows], [r[f"omega/{i}"] for r in rows], label=f"peer {i}")
    ax.set_xlabel("step")
    ax.set_ylabel("ω (peer weight)")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title("peer weights")
    fig.tight_layout()
    from common.paths import save_figure

    save_figure(fig, out)


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    from train.session import run, run_parser

    argv = sys.argv[1:] if argv is None else argv
    commands = ("search", "train")
    if not argv or argv[0] not in commands:
        if argv and argv[0] in ("-h", "--help"):
            print(__doc__)
            return 0
        raise UserError(f"python -m distill.wml: give a command, one of {', '.join(commands)} (e.g. python -m distill.wml train config/runs/demo-wml.yaml)")
    command, rest = argv[0], argv[1:]
    args = run_parser(f"python -m distill.wml {command}", "Weighted mutual learning of peers found by Bayesian optimisation.",
                      WMLRunConfig, "config/runs/demo-wml.yaml", "wml.num_peers=2 wml.distillation_method=vanilla").parse_args(rest)
    cfg = cfglib.load(WMLRunConfig, args.config, args.overrides)
    if command == "search":
        run_search(cfg)
        return 0
    peer_fields = peer_architectures(cfg)
    return run(cfg, argv, args.resume, args.overwrite,
               lambda cfg, tokenizer, prepared, device: build_peers(cfg, tokenizer, prepared, device, peer_fields))


if __name__ == "__main__":
    sys.exit(main())
