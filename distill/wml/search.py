"""Peer search: architectures whose parameter counts hit N/2, N/3, ... of a reference model.

N is the parameter count of the reference (a model YAML of config/models/ or a local
Hugging Face folder), counted on the meta device with the run's vocabulary. With K peers,
peer i (0-based) targets N/(i + 2). For each peer, Bayesian optimisation (the
`bayesian-optimization` package: a Gaussian process with expected improvement after random
initial points) searches the number of layers, attention heads and hidden size, each
chosen from a list, minimising the relative error |n − target| / target. The search runs
over the indices of the lists, rounded to the nearest choice. A hidden size that the heads
do not divide, or an architecture an earlier peer already took, scores as infeasible.
Everything else (vocabulary, positions, the ratio of the feed-forward width to the hidden
size) is the reference's.
"""
from __future__ import annotations

import functools
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from common import config as cfglib
from common.errors import UserError
from common.paths import read_json

INFEASIBLE = 10.0  # relative error given to invalid or already-taken architectures


@dataclass(frozen=True)
class Arch:
    layers: int
    heads: int
    hidden: int


@dataclass
class Reference:
    objective: str        # causal or masked
    fields: dict          # Hugging Face config fields, model_type included, vocabulary set
    n_params: int

    def fields_for(self, arch: Arch) -> dict:
        """The reference's fields with this architecture's depth, heads and width (feed-forward scaled alike)."""
        f = dict(self.fields)
        names = _names(f["model_type"])
        ratio = f[names["ffn"]] / f[names["hidden"]] if names["ffn"] and f.get(names["ffn"]) else None
        f[names["layers"]], f[names["heads"]], f[names["hidden"]] = arch.layers, arch.heads, arch.hidden
        if ratio is not None:
            f[names["ffn"]] = int(round(ratio * arch.hidden))
        for key in ("num_key_value_heads", "head_dim"):  # grouped-query / fixed head sizes follow the new heads
            f.pop(key, None)
        return f


def _names(model_type: str) -> dict:
    if model_type == "gpt2":
        return {"layers": "n_layer", "heads": "n_head", "hidden": "n_embd", "ffn": "n_inner"}
    return {
        "layers": "num_hidden_layers",
        "heads": "num_attention_heads",
        "hidden": "hidden_size",
        "ffn": "intermediate_size",
    }


def count_params(fields: dict, objective: str) -> int:
    return _count(json.dumps(fields, sort_keys=True), objective)


@functools.lru_cache(maxsize=4096)
def _count(fields_json: str, objective: str) -> int:
    from transformers import AutoConfig

    from train.models import on_meta

    fields = json.loads(fields_json)
    ids = {
        k: fields.pop(k, None) for k in ("bos_token_id", "eos_token_id", "pad_token_id")
    }  # no GPT-2 defaults past the vocabulary
    config = AutoConfig.for_model(fields.pop("model_type"), **fields, **ids)
    return sum(p.numel() for p in on_meta(config, objective).parameters())


def reference_from_arch(model_cfg) -> Reference:
    """A model section (arch YAML + overrides + vocab_size) as the reference."""
    from train.models import read_architecture

    objective, fields = read_architecture(model_cfg)
    fields = {**fields, "vocab_size": model_cfg.vocab_size}
    return Reference(objective, fields, count_params(fields, objective))


def reference_from_folder(folder: str) -> Reference:
    """A local Hugging Face model folder as the reference."""
    from pathlib import Path

    from eval.model import load_config

    config = load_config(
        Path(folder), "the reference model", "save it again with save_pretrained, or fix wml.reference_folder"
    )
    arch = (config.architectures or [""])[0]
    objective = "masked" if "MaskedLM" in arch else "causal"
    fields = {
        k: v
        for k, v in config.to_diff_dict().items()
        if k not in ("architectures", "transformers_version", "dtype", "torch_dtype")
    }
    fields["model_type"] = config.model_type
    return Reference(objective, fields, count_params(fields, objective))


def error(ref: Reference, arch: Arch, target: float, taken: set[Arch]) -> float:
    if arch.hidden % arch.heads or arch in taken:
        return INFEASIBLE
    return abs(count_params(ref.fields_for(arch), ref.objective) - target) / target


def bayes_search(ref: Reference, target: float, space: dict[str, list[int]], taken: set[Arch], init_points: int,
                 n_iter: int, seed: int) -> tuple[Arch, float]:
    """The architecture with the lowest relative error found by Bayesian optimisation over the choice indices."""
    from bayes_opt import BayesianOptimization

    def arch_at(li: float, hi: float, wi: float) -> Arch:
        pick = lambda values, x: values[min(len(values) - 1, max(0, int(round(x))))]  # noqa: E731
        return Arch(pick(space["layers"], li), pick(space["heads"], hi), pick(space["hidden"], wi))

    best: dict = {}

    def objective(li: float, hi: float, wi: float) -> float:
        arch = arch_at(li, hi, wi)
        e = error(ref, arch, target, taken)
        if e < best.get("error", float("inf")):
            best.update(arch=arch, error=e)
        return -e

    bounds = {
        "li": (0, len(space["layers"]) - 1),
        "hi": (0, len(space["heads"]) - 1),
        "wi": (0, len(space["hidden"]) - 1),
    }
    bounds = {k: (lo, hi if hi > lo else lo + 1e-9) for k, (lo, hi) in bounds.items()}
    optimizer = BayesianOptimization(
        f=objective, pbounds=bounds, random_state=seed, verbose=0, allow_duplicate_points=True
    )
    optimizer.maximize(init_points=init_points, n_iter=n_iter)
    return best["arch"], best["error"]


def exhaustive_search(
    ref: Reference, target: float, space: dict[str, list[int]], taken: set[Arch]
) -> tuple[Arch, float]:
    """Every architecture of the space; for checking the Bayesian search on small spaces."""
    candidates = [Arch(*c) for c in itertools.product(space["layers"], space["heads"], space["hidden"])]
    return min(
        ((a, error(ref, a, target, taken)) for a in candidates),
        key=lambda t: (t[1], t[0].layers, t[0].heads, t[0].hidden),
    )


def search_peers(ref: Reference, num_peers: int, space: dict[str, list[int]], init_points: int, n_iter: int, seed: int,
                 exhaustive: bool = False) -> list[dict]:
    """One distinct architecture per peer, peer i targeting N/(i + 2)."""
    taken: set[Arch] = set()
    out = []
    for i in range(num_peers):
        target = ref.n_params / (i + 2)
        arch, err = (exhaustive_search(ref, target, space, taken) if exhaustive
                     else bayes_search(ref, target, space, taken, init_points, n_iter, seed + i))
        if err >= INFEASIBLE:
            raise ValueError(f"no valid architecture left in the search space for peer {i}")
        taken.add(arch)
        fields = ref.fields_for(arch)
        out.append({"peer": i, "target": target, "n_params": count_params(fields, ref.objective), "relative_error": err,
                    "layers": arch.layers, "heads": arch.heads, "hidden": arch.hidden, "fields": fields})
    return out


# --------------------------------------------------------------------------- the driver: search, write, reuse

SPECIAL = ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id")
MAX_ERROR = 0.20  # a peer further than this from its target parameter count is an error


def results_dir(cfg) -> Path:
    return Path(cfg.output.dir) / cfg.output.experiment / "arch_search_results"


def search_settings(cfg, ref) -> dict:
    w = cfg.wml
    return {"reference_params": ref.n_params, "reference_fields": ref.fields, "num_peers": w.num_peers,
            "space": cfglib.to_dict(w.search), "init_points": w.init_points, "n_iter": w.n_iter, "seed": w.seed}


def reference(cfg):
    if not cfg.wml.reference_folder:
        return reference_from_arch(cfg.model)
    ref = reference_from_folder(cfg.wml.reference_folder)
    if (
        ref.fields.get("vocab_size") != cfg.model.vocab_size
    ):  # N counts its embeddings: the peers must share its vocabulary
        raise UserError(
            f"wml.reference_folder={cfg.wml.reference_folder}: has a {ref.fields.get('vocab_size')}-token vocabulary "
            "but the "
            f"peers use the run's tokenizer (model.vocab_size={cfg.model.vocab_size}); give a reference trained with "
            "this tokenizer"
        )
    return ref


def run_search(cfg) -> list[dict]:
    """Search, then write search.json and one model YAML per peer (usable as model.arch=...)."""
    from common.paths import write_atomic

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
            raise UserError(
                f"wml.search: peer {p['peer']} targets {p['target']:,.0f} parameters but the nearest architecture in "
                "the "
                f"search space ({p['layers']} layers, {p['heads']} heads, hidden {p['hidden']}) has {p['n_params']:,} "
                f"({p['relative_error']:.0%} off, more than {MAX_ERROR:.0%}); widen wml.search.layers or "
                "wml.search.hidden"
            )
    out = results_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    for p in peers:
        fields = {k: v for k, v in p["fields"].items() if k not in SPECIAL}
        text = (
            f"# Peer {p['peer']} of weighted mutual learning: {p['n_params']:,} parameters for a target of "
            f"{p['target']:,.0f} "
            f"({p['relative_error']:.2%} off).\n"
            + yaml.safe_dump({"objective": ref.objective, **fields}, sort_keys=False)
        )
        write_atomic(out / f"peer-{p['peer']}.yaml", text)
        print(
            f"peer {p['peer']}: {p['layers']} layers, {p['heads']} heads, hidden {p['hidden']}: {p['n_params']:,} "
            "parameters "
            f"(target {p['target']:,.0f}, {p['relative_error']:.2%} off)"
        )
    print(f"wrote {out}/peer-*.yaml and search.json")
    write_atomic(out / "search.json", json.dumps({"settings": search_settings(cfg, ref), "peers": peers}, indent=2))
    return peers


def peer_architectures(cfg) -> list[dict]:
    """The peers' fields: a finished search with the same settings is reused; `use_opt_config: false` requires one."""
    saved = results_dir(cfg) / "search.json"
    if not cfg.wml.use_opt_config:
        if not saved.is_file():
            raise UserError(
                f"wml.use_opt_config=false but {saved} does not exist; run python -m distill.wml search CONFIG first "
                f"(or set wml.use_opt_config=true)"
            )
        peers = read_search(saved)["peers"]
        if len(peers) < cfg.wml.num_peers:
            raise UserError(f"{saved} holds {len(peers)} peer(s) but wml.num_peers={cfg.wml.num_peers}; search again")
        return peers[:cfg.wml.num_peers]
    if saved.is_file() and (found := read_search(saved))["settings"] == search_settings(cfg, reference(cfg)):
        print(f"reusing the peer search in {saved}")
        return found["peers"]
    return run_search(cfg)


def read_search(saved: Path) -> dict:
    """A finished search's search.json (its settings and the peers' fields); a damaged one is one error line, never
    searched over."""
    return read_json(saved, "the peer search's result", "move it away to search again",
                     {"settings": dict, "peers": list})
