"""End to end: `python -m distill.wml` on the demo corpus: causal and masked peers, vanilla KD, a weak peer, one peer
against the spine's trainer, outputs, bad inputs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import random

from conftest import (
    assert_bitwise_equal,
    assert_user_error,
    ok,
    run_cli,
    run_here,
    shared,
    start_and_kill,
    stop_at_budget,
    weights,
)

pytestmark = pytest.mark.slow

QUICK_SEARCH = ["wml.init_points=3", "wml.n_iter=6"]


def base(demo_root, cache_dir, out: Path, steps: int = 40) -> list[str]:
    return ["config/runs/demo-wml.yaml", f"data.train_dir={demo_root / 'train'}", f"data.dev_dir={demo_root / 'dev'}",
            f"data.cache_dir={cache_dir}", f"output.dir={out}", f"train.max_steps={steps}", "train.save_steps=20",
            "train.eval_steps=20", "train.logging_steps=5", "optim.warmup_steps=5", "wml.weight_update_frequency=5",
            f"wml.eval_data_dir={demo_root}"]


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def write_peers(out: Path, fields: list[dict], objective: str = "causal") -> None:
    """Hand-written search results (the format `python -m distill.wml search` writes), for wml.use_opt_config=false."""
    folder = out / "demo-wml" / "arch_search_results"
    folder.mkdir(parents=True)
    peers = [{"peer": i, "fields": f} for i, f in enumerate(fields)]
    (folder / "search.json").write_text(json.dumps({"settings": {}, "peers": peers}))
    for i, f in enumerate(fields):
        (folder / f"peer-{i}.yaml").write_text(yaml.safe_dump({"objective": objective, **f}))


@pytest.mark.parametrize("kind", ["causal", "masked"])
def test_two_peers_end_to_end(kind, demo_root, cache_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    extra = (
        []
        if kind == "causal"
        else ["model.arch=roberta-tiny", "wml.objective=masked", "wml.init_points=5", "wml.n_iter=15"]
    )
    proc = ok(
        run_here(
            "distill.wml",
            "train",
            *base(demo_root, cache_dir, tmp_path),
            *QUICK_SEARCH,
            *extra,
            "train.word_checkpoints=2k",
        )
    )
    run = tmp_path / "demo-wml" / "wml"
    assert (run / "DONE").exists() and "champion: peer-" in proc.stdout
    rows = [r for r in metrics(run) if "loss" in r]
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert all(abs(r["omega/0"] + r["omega/1"] - 1) < 1e-5 for r in rows)  # ω on the simplex, logged every time
    assert any("hypergrad/0" in r for r in rows)
    auto = AutoModelForCausalLM if kind == "causal" else AutoModelForMaskedLM
    search = json.loads((tmp_path / "demo-wml" / "arch_search_results" / "search.json").read_text())
    for i in range(2):
        model = auto.from_pretrained(run / "model" / f"peer-{i}")
        assert sum(p.numel() for p in model.parameters()) == search["peers"][i]["n_params"]
        assert json.loads((run / "eval" / f"peer-{i}" / "demo_pairs.json").read_text())["n_items"] > 0
        at_milestone = auto.from_pretrained(
            run / "milestones" / "chck_2k" / f"peer-{i}"
        )  # every peer, at the milestone
        assert sum(p.numel() for p in at_milestone.parameters()) == search["peers"][i]["n_params"]
    assert json.loads((run / "milestones" / "chck_2k" / "words_seen.json").read_text())["words_seen"] >= 2000
    champion = json.loads((run / "model" / "champion.json").read_text())
    assert champion["champion"] == min(range(2), key=lambda i: champion["dev_ce"][i])
    ok(
        run_here("results", "collect", str(run), "--out", str(tmp_path / "results"), "--name", "t")
    )  # ω, from metrics.jsonl
    assert (tmp_path / "results" / "t-omega" / "wml.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_four_peers(demo_root, cache_dir, tmp_path):
    ok(
        run_here(
            "distill.wml",
            "train",
            *base(demo_root, cache_dir, tmp_path, steps=10),
            "wml.num_peers=4",
            "wml.eval_tasks=[]",
        )
    )
    run = tmp_path / "demo-wml" / "wml"
    search = json.loads((tmp_path / "demo-wml" / "arch_search_results" / "search.json").read_text())
    assert [round(p["target"]) for p in search["peers"]] == [
        round(search["settings"]["reference_params"] / d) for d in (2, 3, 4, 5)
    ]
    assert len({(p["layers"], p["heads"], p["hidden"]) for p in search["peers"]}) == 4
    last = [r for r in metrics(run) if "loss" in r][-1]
    assert abs(sum(last[f"omega/{i}"] for i in range(4)) - 1) < 1e-5
    assert all((run / "model" / f"peer-{i}" / "config.json").exists() for i in range(4))


def test_weak_peer_ends_with_lower_weight(demo_root, cache_dir, tmp_path):
    strong = {"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 128}
    weak = {"model_type": "gpt2", "n_embd": 4, "n_layer": 1, "n_head": 1, "n_positions": 128}
    write_peers(tmp_path, [weak, strong])
    ok(run_here("distill.wml", "train", *base(demo_root, cache_dir, tmp_path, steps=60), "wml.use_opt_config=false",
               "wml.eta=0.5", "wml.eta_min=0.1", "wml.eval_tasks=[]"))
    last = [r for r in metrics(tmp_path / "demo-wml" / "wml") if "loss" in r][-1]
    assert last["omega/0"] < last["omega/1"] - 0.05, last


def test_vanilla_mode_with_a_teacher(demo_root, cache_dir, tmp_path):
    ok(
        run_here(
            "train",
            "config/runs/demo-teacher.yaml",
            f"data.train_dir={demo_root / 'train'}",
            f"data.dev_dir={demo_root / 'dev'}",
            f"data.cache_dir={cache_dir}",
            f"output.dir={tmp_path / 't'}",
            "train.max_steps=40",
            "train.save_steps=1000",
            "train.eval_steps=1000",
            "optim.warmup_steps=5",
        )
    )
    teacher = tmp_path / "t" / "demo" / "teacher" / "model"
    proc = ok(run_here("distill.wml", "train", *base(demo_root, cache_dir, tmp_path / "r"), *QUICK_SEARCH,
                      "wml.distillation_method=vanilla", f"wml.teacher={teacher}", "wml.eval_tasks=[]"))
    assert "vanilla learning" in proc.stdout
    rows = [r for r in metrics(tmp_path / "r" / "demo-wml" / "wml") if "loss" in r]
    assert rows[-1]["loss"] < rows[0]["loss"]
    from distill.cache import model_hash  # a resume checks the teacher is the one the run began with

    inputs = json.loads((tmp_path / "r" / "demo-wml" / "wml" / "run.json").read_text())["inputs"]
    assert inputs["wml.teacher"] == model_hash(teacher)
    # the same teacher with a padded embedding (576 logits for the peers' 512): refused before anything is written
    from transformers import AutoModelForCausalLM, AutoTokenizer

    padded = tmp_path / "padded"
    lm = AutoModelForCausalLM.from_pretrained(teacher)
    lm.resize_token_embeddings(576)
    lm.save_pretrained(padded)
    AutoTokenizer.from_pretrained(teacher).save_pretrained(padded)
    assert_user_error(run_here("distill.wml", "train", *base(demo_root, cache_dir, tmp_path / "p"), *QUICK_SEARCH,
                               "wml.distillation_method=vanilla", f"wml.teacher={padded}", "wml.eval_tasks=[]"),
                      f"wml.teacher={padded}", "gives 576 logits a position, the peers' vocabulary 512")
    assert not (tmp_path / "p" / "demo-wml" / "wml").exists()
    # the teacher's weights hold NaN (a diverged run's export): refused before anything is written
    import torch

    diverged = tmp_path / "diverged"
    lm = AutoModelForCausalLM.from_pretrained(teacher)
    with torch.no_grad():
        lm.transformer.ln_f.weight[0] = float("nan")
    lm.save_pretrained(diverged)
    AutoTokenizer.from_pretrained(teacher).save_pretrained(diverged)
    assert_user_error(run_here("distill.wml", "train", *base(demo_root, cache_dir, tmp_path / "p"), *QUICK_SEARCH,
                               "wml.distillation_method=vanilla", f"wml.teacher={diverged}", "wml.eval_tasks=[]"),
                      f"wml.teacher={diverged}: its weights hold NaN or infinite values (transformer.ln_f.weight)")
    assert not (tmp_path / "p" / "demo-wml" / "wml").exists()


def test_one_peer_matches_the_spine_trainer_step_for_step(demo_root, cache_dir, tmp_path):
    peer = {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 128}
    write_peers(tmp_path, [peer])
    common = [
        f"data.train_dir={demo_root / 'train'}",
        f"data.dev_dir={demo_root / 'dev'}",
        f"data.cache_dir={cache_dir}",
        "train.max_steps=20",
        "train.save_steps=10",
        "train.eval_steps=10",
        "train.logging_steps=1",
        "optim.warmup_steps=5",
    ]
    ok(
        run_here(
            "distill.wml",
            "train",
            "config/runs/demo-wml.yaml",
            *common,
            f"output.dir={tmp_path}",
            "wml.num_peers=1",
            "wml.use_opt_config=false",
            "wml.eval_tasks=[]",
        )
    )
    arch = tmp_path / "demo-wml" / "arch_search_results" / "peer-0.yaml"
    ok(run_here("train", "config/runs/demo-teacher.yaml", *common,
               f"output.dir={tmp_path / 'spine'}", f"model.arch={arch}", "optim.lr=3e-3", "optim.min_lr=3e-4",
               "optim.weight_decay=0.1", "optim.beta2=0.95"))
    wml = [r for r in metrics(tmp_path / "demo-wml" / "wml") if "loss" in r or "eval_loss" in r]
    spine = [r for r in metrics(tmp_path / "spine" / "demo" / "teacher") if "loss" in r or "eval_loss" in r]
    assert len(wml) == len(spine) and len(wml) >= 20
    for a, b in zip(wml, spine):
        key = "loss" if "loss" in a else "eval_loss"
        assert a["step"] == b["step"] and a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a, b)


def test_a_solo_twin_starts_and_learns_as_its_peer_does_in_the_wml_run(demo_root, cache_dir, tmp_path):
    """wml.solo_peer=1 trains peer 1 alone. With nothing pulling the peers together (α = 0, ω held at ½ by a tiny η,
    no clipping, no dropout: AdamW does not see the constant ½) peer 1 of the WML run and its twin must end with the
    same weights, which they do only if both start from the same weights and see the same batches in the same order."""
    import torch

    quiet = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "n_positions": 128}
    write_peers(tmp_path, [{"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 2, **quiet},
                           {"model_type": "gpt2", "n_embd": 24, "n_layer": 1, "n_head": 2, **quiet}])
    args = [*base(demo_root, cache_dir, tmp_path, steps=20), "wml.use_opt_config=false", "wml.loss_alpha=0",
            "wml.eta=1e-9", "wml.eta_min=0", "optim.max_grad_norm=0", "wml.eval_tasks=[demo_pairs]"]
    ok(run_here("distill.wml", "train", *args))
    proc = ok(run_here("distill.wml", "train", *args, "wml.solo_peer=1", "output.name=wml-solo1"))
    assert "the solo twin of peer 1" in proc.stdout
    twin = tmp_path / "demo-wml" / "wml-solo1"
    assert json.loads((twin / "model" / "champion.json").read_text())["peers"] == ["peer-1-solo"]
    assert json.loads((twin / "eval" / "peer-1-solo" / "demo_pairs.json").read_text())["n_items"] > 0
    a = weights(tmp_path / "demo-wml" / "wml" / "model" / "peer-1")
    b = weights(twin / "model" / "peer-1-solo")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-3, atol=2e-4), (k, (a[k] - b[k]).abs().max())  # AdamW eps
    # the control: the same twin from another seed (other initial weights and batches) ends far outside that tolerance
    ok(run_here("distill.wml", "train", *args, "wml.solo_peer=1", "output.name=wml-solo1-seed1", "train.seed=1",
               "wml.eval_tasks=[]"))
    c = weights(tmp_path / "demo-wml" / "wml-solo1-seed1" / "model" / "peer-1-solo")
    assert max(float((a[k] - c[k]).abs().max()) for k in a) > 0.05


def budget_args(demo_root, cache_dir, out: Path) -> list[str]:
    return [
        "train",
        *base(demo_root, cache_dir, out, steps=21),
        "train.save_steps=7",
        "train.eval_steps=7",
        "train.logging_steps=1",
        "data.train_fraction=0.05",
        "wml.eval_tasks=[]",
        *QUICK_SEARCH,
    ]  # 2 steps per epoch: 21 ends inside one


@pytest.fixture(scope="module")
def budget_reference(demo_root, cache_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("budget")
    ok(run_cli("distill.wml", *budget_args(demo_root, cache_dir, out)))
    return out / "demo-wml" / "wml"


@pytest.mark.parametrize("window", ["kill", "usr2"])
def test_peers_stopped_at_their_last_step_only_finish(window, budget_reference, demo_root, cache_dir, tmp_path):
    from common.errors import EXIT_PREEMPTED

    args = budget_args(demo_root, cache_dir, tmp_path)
    run = tmp_path / "demo-wml" / "wml"
    proc = stop_at_budget("distill.wml", args, run, 21, window)
    assert proc.returncode == (-9 if window == "kill" else EXIT_PREEMPTED), proc.stderr_text[-2000:]
    ok(run_cli("distill.wml", *args, "--resume"))
    assert json.loads((run / "DONE").read_text())["step"] == 21
    for i in range(2):
        assert_bitwise_equal(weights(run / "model" / f"peer-{i}"), weights(budget_reference / "model" / f"peer-{i}"))
    assert json.loads((run / "model" / "champion.json").read_text()) == json.loads(
        (budget_reference / "model" / "champion.json").read_text()
    )


def test_resume_after_sigkill_continues_the_peer_weights_bitwise(demo_root, cache_dir, tmp_path):
    """ω, its outer-step count and the peers come back from the checkpoint; dev batches are a function of the outer
    step."""
    args = lambda out: [
        "train",
        *base(demo_root, cache_dir, out, steps=30),
        "train.save_steps=5",
        "train.eval_steps=5",  # noqa: E731
        "train.logging_steps=1",
        "wml.eval_tasks=[]",
        *QUICK_SEARCH,
    ]
    ok(run_cli("distill.wml", *args(tmp_path / "ref")))
    ref = tmp_path / "ref" / "demo-wml" / "wml"
    run = tmp_path / "run" / "demo-wml" / "wml"
    step = random.Random().randint(7, 27)
    start_and_kill("distill.wml", args(tmp_path / "run"), run, step)
    assert not (run / "DONE").exists()
    assert "resuming from" in ok(run_cli("distill.wml", *args(tmp_path / "run"), "--resume")).stdout
    for i in range(2):
        (
            assert_bitwise_equal(weights(run / "model" / f"peer-{i}"), weights(ref / "model" / f"peer-{i}")),
            f"killed at step {step}",
        )
    assert (
        json.loads((run / "model" / "champion.json").read_text())["omega"]
        == json.loads((ref / "model" / "champion.json").read_text())["omega"]
    )


def test_bad_inputs(demo_root, cache_dir, tmp_path, monkeypatch):
    """In-process (the WML entry's main): each refusal comes before anything is built or written."""
    from conftest import ROOT, call
    from distill.wml.__main__ import main

    monkeypatch.chdir(ROOT)
    args = base(demo_root, cache_dir, tmp_path, steps=5)
    run = tmp_path / "demo-wml" / "wml"

    def bad(*extra, needles):
        assert_user_error(call(main, "train", *args, *extra), *needles)
        assert not run.exists()

    bad("wml.num_peers=3", needles=("wml.num_peers", "must be 1, 2 or 4"))
    bad("model.arch=gpt2-nonexistent", needles=("model.arch", "unknown architecture"))
    bad(f"wml.reference_folder={tmp_path}/nowhere", needles=("wml.reference_folder", "does not exist"))
    bad("wml.search.layers=[1]", "wml.search.hidden=[16,24]", "wml.search.heads=[2]", *QUICK_SEARCH,
        needles=("wml.search: peer 0 targets", "nearest architecture", "1 layers, 2 heads, hidden 24", "widen"))
    bad(
        "wml.use_opt_config=false",
        needles=("wml.use_opt_config=false", "search.json does not exist", "python -m distill.wml search"),
    )
    bad("wml.distillation_method=vanilla", f"wml.teacher={tmp_path}/none", needles=("wml.teacher", "does not exist"))
    bad("wml.distillation_method=vanilla", f"wml.teacher={shared('hf_tiny_gpt2')}", *QUICK_SEARCH,
        needles=("differ in their vocabulary",))
    bad("wml.loss_alpha=1.5", needles=("wml.loss_alpha", "must be at least 0 and at most 1"))
    bad("wml.solo_peer=2", needles=("wml.solo_peer", "only wml.num_peers=2 peers", "0 to 1"))
    bad("wml.solo_peer=-2", needles=("wml.solo_peer", "at least -1"))
    bad(
        f"wml.reference_folder={shared('hf_tiny_gpt2')}",
        needles=("wml.reference_folder", "50257-token vocabulary", "512"),
    )


def test_the_champion_is_chosen_on_the_whole_dev_set_under_two_ranks(demo_root, cache_dir, tmp_path):
    """The evaluation loader is sharded across ranks: each peer's dev CE must still cover every dev block."""
    import torch
    from transformers import AutoModelForCausalLM

    from common.config import load
    from distill.wml.config import WMLRunConfig
    from tokenizer.prepare import load_blocks, prepare

    proc = ok(
        run_cli(
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "distill.wml",
            "train",
            *base(demo_root, cache_dir, tmp_path, steps=10),
            "wml.eval_tasks=[]",
            *QUICK_SEARCH,
            "train.batch_size=4",
        )
    )
    # DDP is told that every peer parameter gets a gradient at every step (find_unused_parameters=False would stop
    # the run at its second step otherwise): no search, and no warning from each rank that it found nothing
    assert "find_unused_parameters" not in proc.stdout + proc.stderr
    run = tmp_path / "demo-wml" / "wml"
    champion = json.loads((run / "model" / "champion.json").read_text())
    cfg = load(WMLRunConfig, run / "config.yaml")
    dev = load_blocks(prepare(cfg.data, cfg.tokenizer).dev_blocks)
    ids = torch.stack([row["input_ids"] for row in dev])
    expected = []
    for i in range(2):  # one process, every dev block, float64
        peer = AutoModelForCausalLM.from_pretrained(run / "model" / f"peer-{i}").eval()
        with torch.no_grad():
            logp = torch.log_softmax(peer(input_ids=ids).logits[:, :-1].double(), -1)
        expected.append(float(-logp.gather(-1, ids[:, 1:, None]).mean()))
    assert champion["dev_ce"] == pytest.approx(expected, rel=1e-5)
    assert champion["champion"] == min(range(2), key=lambda i: expected[i])
