"""The weighted-mutual-learning run config: a training run whose `model` is the reference
architecture (the peers are found from its parameter count N) plus a `wml` section.

`python -m distill.wml --help` lists every key with its doc.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from common.config import ConfigError, field, planning
from train.config import ModelConfig, RunSections, check_run


@dataclass
class SearchSpace:
    layers: list[int] = field([6, 8, 12, 16, 20], "numbers of layers the peer search may choose", ge=1)
    heads: list[int] = field([8, 16, 32], "numbers of attention heads (a head count must divide the hidden size)", ge=1)
    hidden: list[int] = field([256, 512, 768, 1024, 2048], "hidden sizes", ge=1)


@dataclass
class WMLConfig:
    RENAMED = {"model_type": ("objective", {"CLM": "causal", "MLM": "masked"})}  # the seed's spelling, still read

    num_peers: int = field(
        4, "peers trained together: 1 (ordinary training), 2 or 4; peer i targets N/(i + 2) parameters", ge=1, le=4
    )
    objective: Literal["causal", "masked"] = field(
        "causal",
        "causal or masked LM peers; must match the reference architecture's "
        "objective (the seed's model_type: CLM/MLM is read as this)",
    )
    distillation_method: Literal["mutual", "vanilla"] = field(
        "mutual", "mutual: peers teach each other; vanilla: each peer distils from wml.teacher instead"
    )
    teacher: str = field("", "vanilla: a local Hugging Face folder of the teacher (same tokenizer, same objective)")
    loss_alpha: float = field(
        0.5, "α: weight of the distillation part against (1 − α) for the peers' cross-entropy", ge=0, le=1
    )
    weight_update_frequency: int = field(
        10, "a mirror-descent step of the peer weights ω every this many training steps", ge=1
    )
    eta: float = field(0.05, "peak step size η of the peer-weight update", gt=0)
    eta_min: float = field(0.005, "η after its cosine decay", ge=0)
    eta_warmup: int = field(5, "peer-weight updates of linear η warmup", ge=0)
    eta_steps: int = field(200, "peer-weight updates over which η decays to eta_min", ge=1)
    reference_folder: str = field(
        "", "a local Hugging Face folder whose parameter count is N; empty = the model section's architecture"
    )
    use_opt_config: bool = field(
        True,
        "true: search peer architectures (or reuse a finished search with the same settings); false: reuse "
        "arch_search_results/, which must exist",
    )
    search: SearchSpace = field(SearchSpace(), "the peer search space (hidden must be divisible by heads)")
    init_points: int = field(10, "random initial points of the Bayesian search, per peer", ge=1)
    n_iter: int = field(100, "Bayesian-optimisation iterations, per peer", ge=0)
    seed: int = field(0, "seed of the peer search", ge=0, le=2**32 - 1)
    solo_peer: int = field(
        -1, "train only peer i of the search, alone, on its own cross-entropy: the solo twin its WML run is compared "
        "with (same architecture, initial weights, data order and schedule); -1: the peers together", ge=-1, le=3)
    eval_tasks: list[str] = field(
        [], "evaluation tasks run on every peer at the end (e.g. demo_pairs); empty = none", resume=True
    )
    eval_data_dir: str = field("", "data folder for eval_tasks (as python -m eval --data-dir)", resume=True)


@dataclass
class WMLRunConfig(RunSections):
    model: ModelConfig = field(
        ModelConfig(), "the reference architecture: its parameter count N sets the peers' targets"
    )
    wml: WMLConfig = field(
        WMLConfig(), "peers (one AdamW over all), the mutual-learning loss, the peer weights and the peer search"
    )

    def check(self) -> None:
        check_run(self)
        w = self.wml
        if w.num_peers not in (1, 2, 4):
            raise ConfigError("wml.num_peers", f"must be 1, 2 or 4, got {w.num_peers}")
        if w.num_peers > 1 and not self.data.dev_dir:
            raise ConfigError(
                "data.dev_dir",
                "is empty; the peer weights are learned on dev batches, so wml.num_peers > 1 needs a dev set",
            )
        if w.solo_peer >= w.num_peers:
            raise ConfigError("wml.solo_peer", f"is {w.solo_peer} but there are only wml.num_peers={w.num_peers} peers "
                                               f"(0 to {w.num_peers - 1}); give one of those, or -1")
        if w.eta_min > w.eta:
            raise ConfigError("wml.eta_min", f"is {w.eta_min}, above wml.eta={w.eta}")
        for key in ("layers", "heads", "hidden"):
            if not getattr(w.search, key):
                raise ConfigError(f"wml.search.{key}", "is empty; give a list of positive integers")
        from eval.tasks import unknown_task

        for i, task in enumerate(w.eval_tasks):
            problem = unknown_task(task)
            if problem:
                raise ConfigError(f"wml.eval_tasks[{i}]", problem)
        if not any(h % n == 0 for h in w.search.hidden for n in w.search.heads):
            raise ConfigError(
                "wml.search.hidden", "no hidden size is divisible by any head count; no architecture is valid"
            )
        if w.distillation_method == "vanilla" and w.solo_peer < 0:  # a solo twin learns from no teacher
            if not w.teacher:
                raise ConfigError(
                    "wml.teacher", "is empty but wml.distillation_method is vanilla; give the teacher's model folder"
                )
            if not planning() and not Path(w.teacher).is_dir():
                raise ConfigError("wml.teacher", f"{w.teacher} does not exist; train the teacher first or fix the path")
        if w.reference_folder and not planning() and not Path(w.reference_folder).is_dir():
            raise ConfigError("wml.reference_folder", f"{w.reference_folder} does not exist")
        from train.models import read_architecture

        objective, _ = read_architecture(self.model)
        if objective != w.objective:
            raise ConfigError(
                "wml.objective",
                f"is {w.objective} but model.arch={self.model.arch} is a {objective} LM; make them agree",
            )
