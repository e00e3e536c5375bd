"""Weighted mutual learning's model building and finishing: the peers of the searched architectures (and the
teacher for `vanilla`) in their wrapper and trainer, then, after training, each peer's dev cross-entropy, the
champion (model/champion.json) and, when `wml.eval_tasks` is set, each peer's evaluation."""
from __future__ import annotations

import json
from pathlib import Path

from common.errors import UserError
from distill.wml.search import SPECIAL


def build_peers(cfg, tokenizer, prepared, device, peer_fields: list[dict]):
    """The peers (one per searched architecture, initialised in order after the run's seed), the teacher for vanilla.
    With `wml.solo_peer` = i, every peer is still built (so peer i starts from the weights it has in the WML run) and
    only peer i is kept, trained on its own cross-entropy (one peer: ordinary training) and exported as peer-i-solo."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

    from common.paths import model_hash
    from distill.teachers import check_same_tokenizer, logit_width_problem, positions
    from distill.wml.peers import PeersWrapper, WMLTrainer
    from eval.model import check_finite_weights, check_folder, load_config, load_model_folder
    from train.session import Built

    objective = cfg.wml.objective
    auto = AutoModelForMaskedLM if objective == "masked" else AutoModelForCausalLM
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": pad}
    peers = []
    for p in peer_fields:
        fields = {k: v for k, v in p["fields"].items() if k not in SPECIAL}
        peers.append(
            auto.from_config(
                AutoConfig.for_model(fields.pop("model_type"), **fields, vocab_size=cfg.model.vocab_size, **ids),
                attn_implementation=cfg.model.attn_implementation,
            )
        )
    solo = cfg.wml.solo_peer
    names = [f"peer-{i}" for i in range(len(peers))]
    if solo >= 0:
        peers, names = [peers[solo]], [f"peer-{solo}-solo"]
    if cfg.wml.reference_folder and (Path(cfg.wml.reference_folder) / "tokenizer.json").is_file():
        try:  # N counts the reference's embeddings, so its vocabulary must be the peers' (the run's tokenizer)
            check_same_tokenizer(Path(cfg.wml.reference_folder), Path(prepared.tokenizer_dir))
        except UserError as exc:
            raise UserError(f"wml.reference_folder: {exc}") from None
    teacher, inputs = None, {}
    method = "mutual" if solo >= 0 else cfg.wml.distillation_method  # one peer, mutual: its own cross-entropy
    if method == "vanilla":
        folder = check_folder(cfg.wml.teacher)
        check_same_tokenizer(folder, Path(prepared.tokenizer_dir))
        what, fix = "the vanilla teacher (wml.teacher)", "save it again with save_pretrained, or fix wml.teacher"
        config = load_config(folder, what, fix)  # checked before its weights are read
        problem = logit_width_problem(config, cfg.model.vocab_size, "the peers' vocabulary")
        if problem:  # its distribution is compared with each peer's
            raise UserError(f"wml.teacher={cfg.wml.teacher}: {problem} (model.vocab_size); use a teacher trained with "
                            f"that vocabulary size")
        if positions(config) is not None and positions(config) < cfg.data.block_size:
            raise UserError(f"wml.teacher={cfg.wml.teacher}: has {positions(config)} positions, fewer than "
                            f"data.block_size={cfg.data.block_size}; lower data.block_size or use another teacher")
        teacher = load_model_folder(folder, auto, what, fix, config).to(device).eval().requires_grad_(False)
        check_finite_weights(dict(teacher.named_parameters()), f"wml.teacher={cfg.wml.teacher}")
        inputs = {"wml.teacher": model_hash(folder)}
    wrapper = PeersWrapper(peers, objective, cfg.wml.loss_alpha, method, teacher)
    sizes = ", ".join(f"{sum(x.numel() for x in m.parameters()):,}" for m in peers)

    def export(model_dir: Path) -> None:
        for name, peer in zip(names, wrapper.peers):
            peer.save_pretrained(model_dir / name)
            tokenizer.save_pretrained(model_dir / name)

    def finish(trainer, run_path: Path) -> dict:
        return finish_run(cfg, trainer, wrapper, run_path, names)

    return Built(
        trained=wrapper,
        export=export,
        finish=finish,
        objective=objective,
        trainer_cls=WMLTrainer,
        trainer_kwargs={"wml": cfg.wml},
        inputs=inputs,
        all_parameters_used=True,  # each peer's loss reads its logits; ω's update runs outside DDP (functional_call)
        banner=f"the solo twin of peer {solo}: {sizes} parameters, {objective}, its own cross-entropy" if solo >= 0 else
        f"{len(peers)} {objective} peer(s) of {sizes} parameters, {method} learning, "
        f"α={cfg.wml.loss_alpha:g}, ω updated every {cfg.wml.weight_update_frequency} steps",
    )


def finish_run(cfg, trainer, wrapper, run_path: Path, names: list[str]) -> dict:
    """Each peer's dev CE, the champion, and each peer's evaluation (the ω plot is results' job); `names`: the peers'
    folders under model/."""
    import math

    from common.paths import write_atomic

    dev_ce = trainer.peer_dev_ce() if trainer.eval_dataset is not None else [None] * len(wrapper.peers)
    dev_ce = [
        x if x is None or math.isfinite(x) else None for x in dev_ce
    ]  # a diverged peer has no dev CE, never the champion
    finite = [i for i, x in enumerate(dev_ce) if x is not None]
    champion = min(finite, key=lambda i: dev_ce[i]) if finite else 0
    info = {"champion": champion, "dev_ce": dev_ce, "omega": [float(x) for x in wrapper.omega],
            "peers": names}
    if trainer.is_world_process_zero():
        write_atomic(run_path / "model" / "champion.json", json.dumps(info, indent=2))
        if cfg.wml.eval_tasks:
            from eval.evaluate import Options, evaluate
            from eval.model import backend_for

            opts = Options(backend=backend_for(cfg.wml.objective), data_dir=cfg.wml.eval_data_dir or None,
                           progress=False)
            for name in names:
                opts.out = str(run_path / "eval" / name)
                evaluate(str(run_path / "model" / name), cfg.wml.eval_tasks, opts)
        print(f"champion: {names[champion]} (dev CE {dev_ce[champion]:.4f})" if finite
              else f"champion: {names[0]} (no dev CE)")
    return {"champion": champion, "peer_dev_ce": dev_ce}
