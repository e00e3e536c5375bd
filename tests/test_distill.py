"""End to end: `python -m distill` on every demo recipe, accumulation invariance, resume, the teacher cache, bad
inputs."""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from conftest import (
    ROOT,
    assert_bitwise_equal,
    assert_user_error,
    call,
    mounted,
    ok,
    run_cli,
    run_here,
    shared,
    start_and_kill,
    stop_at_budget,
    swallow_a_ctrl_c,
    weights,
)

pytestmark = pytest.mark.slow

STUDENT_RECIPES = ["demo-kd", "demo-distilledgpt", "demo-palenkallama", "demo-contrastive", "demo-dskd-aux",
                   "demo-dskd-aux-single", "demo-warmstart", "demo-reverse-kl", "demo-jsd", "demo-tvd", "demo-skew-kl",
                   "demo-skew-reverse-kl", "demo-attention-relation", "demo-uld"]


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, demo_root, cache_dir) -> Path:
    """The demo teachers (GPT-2 and Llama with the demo tokenizer, GPT-2 with GPT-2's own), trained by
    `python -m train` into <root>/runs/demo/."""
    root = tmp_path_factory.mktemp("distill")
    for recipe, steps in (("demo-teacher", 60), ("demo-teacher-llama", 60), ("demo-teacher-gpt2tok", 20)):
        ok(
            run_here(
                "train",
                f"config/runs/{recipe}.yaml",
                f"data.train_dir={demo_root / 'train'}",
                f"data.dev_dir={demo_root / 'dev'}",
                f"data.cache_dir={cache_dir}",
                f"output.dir={root / 'runs'}",
                f"train.max_steps={steps}",
                "train.save_steps=1000",
                "train.eval_steps=1000",
                "optim.warmup_steps=5",
            )
        )
    return root


def recipe_copy(name: str, teachers: Path, dest: Path) -> Path:
    """The recipe with its teacher (and init_from) folders pointed at the test's teachers; nothing else changes."""
    text = (ROOT / "config" / "runs" / f"{name}.yaml").read_text().replace("runs/demo/", f"{teachers}/runs/demo/")
    path = dest / f"{name}.yaml"
    path.write_text(text)
    return path


def overrides(demo_root, cache_dir, out: Path, steps: int = 30) -> list[str]:
    return [
        f"data.train_dir={demo_root / 'train'}",
        f"data.dev_dir={demo_root / 'dev'}",
        f"data.cache_dir={cache_dir}",
        f"output.dir={out}",
        f"train.max_steps={steps}",
        "train.save_steps=10",
        "train.eval_steps=10",
        "train.logging_steps=5",
        "optim.warmup_steps=5",
    ]


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def teacher_hashes(teachers: Path) -> dict:
    return {p.parent.parent.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((teachers / "runs" / "demo").glob("*/model/model.safetensors"))}


# ------------------------------------------------------------------ every demo recipe
@pytest.mark.parametrize("name", STUDENT_RECIPES)
def test_demo_recipe_trains_and_exports_a_plain_student(name, teachers, demo_root, cache_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    before = teacher_hashes(teachers)
    recipe = recipe_copy(name, teachers, tmp_path)
    raw = yaml.safe_load(recipe.read_text())
    proc = ok(
        run_here(
            "distill", str(recipe), *overrides(demo_root, cache_dir, tmp_path / "runs"), "train.word_checkpoints=1k"
        )
    )
    active = [k for k, v in raw["distill"]["losses"].items() if v.get("weight", 0) > 0]
    assert "loss = " in proc.stdout and all(k in proc.stdout.split("loss = ", 1)[1].splitlines()[0] for k in active)
    run = tmp_path / "runs" / "demo" / raw["output"]["name"]
    assert (run / "DONE").exists()
    rows = [r for r in metrics(run) if "loss" in r]
    assert rows[-1]["loss"] < rows[0]["loss"], [r["loss"] for r in rows]
    assert all(f"loss/{k}" in rows[0] for k in active), rows[0]
    evals = [r for r in metrics(run) if "eval_loss" in r]
    assert evals and all(r["eval_loss"] > 0 for r in evals)
    # the export is the plain student: Auto classes load it, and it holds no projection or auxiliary weights
    model = AutoModelForCausalLM.from_pretrained(run / "model")
    exported = weights(run / "model")
    assert not [k for k in exported if "projection" in k or "aux_head" in k or k.startswith("student.")]
    assert model.config.model_type == ("gpt2" if name == "demo-distilledgpt" else "llama")
    # the milestone is the plain student too, with its tokenizer and its words seen
    milestone = run / "milestones" / "chck_1k"
    assert AutoModelForCausalLM.from_pretrained(milestone).config.model_type == model.config.model_type
    assert weights(milestone).keys() == exported.keys() and (milestone / "tokenizer.json").exists()
    assert (
        1000 <= json.loads((milestone / "words_seen.json").read_text())["words_seen"] < 1000 + 16 * 64
    )  # <= a word per token
    # checkpoints hold the trainable parts of the loss as well
    ckpt = sorted((run / "checkpoints").glob("checkpoint-*"))[-1]
    saved = weights(ckpt)
    if "hidden_mse" in active or "contrastive" in active:
        assert any(k.startswith("projections.") for k in saved)
    if "aux_kd" in active:
        assert any(k.startswith("aux_heads.") for k in saved)
    assert teacher_hashes(teachers) == before  # teachers are never updated


def test_teachers_with_their_own_and_the_shared_tokenizer_together(teachers, demo_root, cache_dir, tmp_path):
    """demo-uld with a second teacher that shares the student's tokenizer, and hidden_mse and contrastive
    beside uld: each term reads both teachers (the one with GPT-2's tokenizer at its aligned positions)."""
    import math

    recipe = recipe_copy("demo-uld", teachers, tmp_path)
    both = (f"distill.teachers=[{{path: {teachers}/runs/demo/teacher-gpt2tok/model, tokenizer: own}}, "
            f"{{path: {teachers}/runs/demo/teacher/model}}]")
    proc = ok(
        run_here(
            "distill",
            str(recipe),
            *overrides(demo_root, cache_dir, tmp_path / "runs", steps=10),
            both,
            "distill.losses.hidden_mse.weight=0.5",
            "distill.losses.contrastive.weight=0.1",
            "train.logging_steps=1",
        )
    )
    assert "0.5*uld(T=1 + 0.5*KL(shared tokens))" in proc.stdout and "teacher-gpt2tok {" in proc.stdout
    rows = [r for r in metrics(tmp_path / "runs" / "demo" / "uld") if "loss" in r]
    assert all(
        math.isfinite(r[f"loss/{k}"]) and r[f"loss/{k}"] > 0 for r in rows for k in ("uld", "hidden_mse", "contrastive")
    )
    assert rows[-1]["loss"] < rows[0]["loss"]
    saved = weights(sorted((tmp_path / "runs" / "demo" / "uld" / "checkpoints").glob("checkpoint-*"))[-1])
    assert all(
        any(k.startswith(f"projections.{part}") for k in saved)
        for part in ("hidden_t0_", "hidden_t1_", "contrastive_t0", "contrastive_t1")
    )


def test_warm_start_begins_from_the_checkpoint(teachers, demo_root, cache_dir, tmp_path):
    """demo-warmstart starts from the Llama teacher's weights: its first loss is far below a random student's."""
    runs = {}
    for name, extra in (("warm", []), ("cold", ["student.init_from="])):
        recipe = recipe_copy("demo-warmstart", teachers, tmp_path)
        ok(
            run_here(
                "distill",
                str(recipe),
                *overrides(demo_root, cache_dir, tmp_path / name, steps=5),
                "train.logging_steps=1",
                *extra,
            )
        )
        runs[name] = [r for r in metrics(tmp_path / name / "demo" / "warmstart") if "loss/ce" in r][0]["loss/ce"]
    assert runs["warm"] < runs["cold"] - 1.0, runs


# ------------------------------------------------------------------ normalisation across accumulation
def test_first_step_is_the_same_with_gradient_accumulation(teachers, demo_root, cache_dir, tmp_path):
    """8 blocks in one micro-batch or in two of 4: the same loss, terms and weights after the step (per-token
    normalisation)."""
    recipe = recipe_copy("demo-palenkallama", teachers, tmp_path)
    results = {}
    for name, bs, ga in (("one", 8, 1), ("two", 4, 2)):
        ok(
            run_here(
                "distill",
                str(recipe),
                *overrides(demo_root, cache_dir, tmp_path / name, steps=1),
                "train.logging_steps=1",
                f"train.batch_size={bs}",
                f"train.grad_accum={ga}",
                "data.dev_dir=",
                "train.keep_best=false",
            )
        )
        run = tmp_path / name / "demo" / "palenkallama"
        results[name] = ([r for r in metrics(run) if "loss" in r][0], weights(run / "model"))
    (one, w1), (two, w2) = results["one"], results["two"]
    for key in ("loss", "loss/ce", "loss/logit_kd", "loss/hidden_mse"):
        assert one[key] == pytest.approx(two[key], rel=1e-4, abs=1e-5), key
    for k in w1:
        assert torch.allclose(w1[k], w2[k], atol=1e-5), k


# ------------------------------------------------------------------ resume
def test_resume_after_sigkill_restores_projections_and_is_bitwise_identical(teachers, demo_root, cache_dir, tmp_path):
    recipe = recipe_copy("demo-palenkallama", teachers, tmp_path)
    args = [str(recipe), *overrides(demo_root, cache_dir, tmp_path / "ref", steps=30), "train.logging_steps=1"]
    ok(run_cli("distill", *args))
    reference = weights(tmp_path / "ref" / "demo" / "palenkallama" / "model")
    args = [str(recipe), *overrides(demo_root, cache_dir, tmp_path / "runs", steps=30), "train.logging_steps=1"]
    run = tmp_path / "runs" / "demo" / "palenkallama"
    step = random.Random().randint(11, 27)
    start_and_kill("distill", args, run, step)
    assert not (run / "DONE").exists()
    proc = ok(run_cli("distill", *args, "--resume"))
    assert "resuming from" in proc.stdout
    assert_bitwise_equal(weights(run / "model"), reference), f"killed at step {step}"


def test_resume_refuses_a_teacher_trained_again_since_the_run_started(teachers, demo_root, cache_dir, tmp_path):
    """The same config, another teacher: a teacher folder trained again (here one weight nudged) between two attempts
    would steer the rest of the run towards another distribution while the checkpoint carried on. run.json records
    a hash of each teacher's model files; --resume over a changed one is refused in one line, nothing touched; with the
    teacher restored it resumes. (With a teacher cache, the cache's own fingerprint already refuses it.)"""
    from safetensors.torch import load_file, save_file

    copies = tmp_path / "copies"
    for name in ("teacher", "teacher-llama"):
        shutil.copytree(teachers / "runs" / "demo" / name / "model", copies / "runs" / "demo" / name / "model")
    recipe = recipe_copy("demo-kd", copies, tmp_path)
    args = [str(recipe), *overrides(demo_root, cache_dir, tmp_path / "runs", steps=20)]
    ok(run_cli("distill", *args))
    run = tmp_path / "runs" / "demo" / "kd"
    recorded = json.loads((run / "run.json").read_text())["inputs"]
    assert set(recorded) == {"data.train_dir", "data.dev_dir", "distill.teachers[0].path", "distill.teachers[1].path"}
    for done in (run / "DONE", run / "model", run / "checkpoints" / "checkpoint-20"):
        shutil.rmtree(done) if done.is_dir() else done.unlink()
    snapshot = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    weights_file = copies / "runs" / "demo" / "teacher-llama" / "model" / "model.safetensors"
    original = weights_file.read_bytes()
    tensors = load_file(str(weights_file))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1e-3
    save_file(tensors, str(weights_file), metadata={"format": "pt"})
    assert_user_error(run_cli("distill", *args, "--resume"), str(run),
                      "its checkpoints were trained on other inputs than the config reads now "
                      f"(distill.teachers[1].path: {recorded['distill.teachers[1].path']} -> ",
                      "a teacher's model files changed since the run started", "restore them, or start a new run")
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == snapshot  # nothing touched
    weights_file.write_bytes(original)
    proc = ok(run_cli("distill", *args, "--resume"))
    assert "resuming from" in proc.stdout and (run / "DONE").is_file()


BUDGET = [
    "train.save_steps=7",
    "train.eval_steps=7",
    "train.logging_steps=1",
    "data.train_fraction=0.05",
]  # 21 steps, 2 per epoch


@pytest.fixture(scope="module")
def budget_reference(teachers, demo_root, cache_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("budget")
    recipe = recipe_copy("demo-palenkallama", teachers, folder)
    ok(run_cli("distill", str(recipe), *overrides(demo_root, cache_dir, folder / "ref", steps=21), *BUDGET))
    return recipe, weights(folder / "ref" / "demo" / "palenkallama" / "model")


@pytest.mark.parametrize("window", ["kill", "usr2"])
def test_a_student_stopped_at_its_last_step_only_finishes(window, budget_reference, demo_root, cache_dir, tmp_path):
    from common.errors import EXIT_PREEMPTED

    recipe, reference = budget_reference
    args = [str(recipe), *overrides(demo_root, cache_dir, tmp_path, steps=21), *BUDGET]
    run = tmp_path / "demo" / "palenkallama"
    proc = stop_at_budget("distill", args, run, 21, window)
    assert proc.returncode == (-9 if window == "kill" else EXIT_PREEMPTED), proc.stderr_text[-2000:]
    ok(run_cli("distill", *args, "--resume"))
    assert json.loads((run / "DONE").read_text())["step"] == 21
    assert_bitwise_equal(weights(run / "model"), reference)


# ------------------------------------------------------------------ the teacher cache
def test_cached_kd_trains_and_checks_its_fingerprint(teachers, demo_root, cache_dir, tmp_path):
    recipe = recipe_copy("demo-kd", teachers, tmp_path)
    base = overrides(demo_root, cache_dir, tmp_path / "runs", steps=20)
    cache = tmp_path / "teacher-cache"
    proc = ok(run_here("distill", "cache-teachers", str(recipe), *base, "distill.cache_top_k=16", "--out", str(cache)))
    assert "caching top-16 of 2 teacher(s)" in proc.stdout and (cache / "cache.json").exists()
    info = json.loads((cache / "cache.json").read_text())
    assert info["fingerprint"]["top_k"] == 16 and info["n_blocks"] > 0
    # the default q8 with 9-bit ids (512 tokens): 18 bytes of ids, 4 float16 head values, a step, 12 codes, a rest; +
    # .npy headers
    assert (
        info["format"] == "q8"
        and 42 <= info["bytes_per_token"] < 43
        and f"{info['bytes_per_token']:g} bytes per token (q8, k=16" in proc.stdout
    )
    assert (
        "nothing to do"
        in ok(
            run_here("distill", "cache-teachers", str(recipe), *base, "distill.cache_top_k=16", "--out", str(cache))
        ).stdout
    )

    proc = ok(run_here("distill", str(recipe), *base, "distill.cache_top_k=16", f"distill.teacher_cache={cache}"))
    assert (
        "teacher targets from the cache" in proc.stdout and "teacher (cached)" in proc.stdout
    )  # checked, never loaded
    rows = [r for r in metrics(tmp_path / "runs" / "demo" / "kd") if "loss" in r]
    assert rows[-1]["loss"] < rows[0]["loss"] and "loss/logit_kd" in rows[0]
    # another logit term at the cache's temperature and ensemble reads the same cache; at another temperature it is
    # stale
    rkl = ["distill.cache_top_k=16", f"distill.teacher_cache={cache}", "distill.losses.logit_kd.weight=0",
           "distill.losses.reverse_kl.weight=0.5", "output.name=cached-rkl"]
    ok(run_here("distill", str(recipe), *base, *rkl, "distill.losses.reverse_kl.temperature=2"))
    rows = [r for r in metrics(tmp_path / "runs" / "demo" / "cached-rkl") if "loss" in r]
    assert rows[-1]["loss"] < rows[0]["loss"] and "loss/reverse_kl" in rows[0] and "loss/logit_kd" not in rows[0]
    assert_user_error(run_here("distill", str(recipe), *base, *rkl, "output.name=stale"), "stale cache", "temperature")

    # a different k, temperature or teacher set is a stale cache: an error, never a silent reuse
    for change, needle in (("distill.cache_top_k=32", "distill.cache_top_k"),
                           ("distill.losses.logit_kd.temperature=3", "temperature")):
        assert_user_error(
            run_here(
                "distill",
                str(recipe),
                *base,
                "distill.cache_top_k=16",
                f"distill.teacher_cache={cache}",
                change,
                "output.name=stale",
            ),
            "stale cache",
            needle,
        )
    assert_user_error(
        run_here("distill", "cache-teachers", str(recipe), *base, "distill.cache_top_k=8", "--out", str(cache)),
        "holds a cache of different inputs",
        "--overwrite",
    )
    assert json.loads((cache / "cache.json").read_text())["fingerprint"]["top_k"] == 16  # nothing overwritten

    # a truncated shard is one line naming it, before the run directory exists
    shard = cache / "shard-00000.codes.npy"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    assert_user_error(run_here("distill", str(recipe), *base, "distill.cache_top_k=16",
                               f"distill.teacher_cache={cache}", "output.name=truncated"),
                      str(shard), "cannot be read", "cache-teachers --overwrite")
    assert not (tmp_path / "runs" / "demo" / "truncated").exists()


def test_a_second_cache_writer_is_refused_while_the_first_writes(teachers, demo_root, cache_dir, tmp_path):
    """Two cache-teachers on one folder (two jobs, a command run twice): the second removed the first's unfinished
    folder as left by a killed run, each then wrote shards into the folder of the other, the first renamed it into
    place with its manifest and the second ended in a "No such file" error (seen 2026-12-03). The second is refused
    while the first holds the cache's lock, and the first's cache is whole."""
    import signal

    from conftest import freeze_when

    recipe = recipe_copy("demo-kd", teachers, tmp_path)
    base = [*overrides(demo_root, cache_dir, tmp_path / "runs", steps=20), "distill.cache_top_k=16"]
    cache = tmp_path / "teacher-cache"
    args = ["cache-teachers", str(recipe), *base, "--out", str(cache)]
    first = freeze_when("distill", args, lambda: any((cache.parent / "teacher-cache.partial").glob("shard-*")))
    try:
        shards = sorted((cache.parent / "teacher-cache.partial").glob("shard-*"))
        assert_user_error(run_here("distill", *args),
                          f"{cache}: another python -m distill cache-teachers is writing this cache (host ",
                          f"pid {first.pid}", "let it end")
        assert sorted((cache.parent / "teacher-cache.partial").glob("shard-*")) == shards  # not removed
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=600) == 0, first.communicate()[1][-2000:]
    info = json.loads((cache / "cache.json").read_text())
    assert len(sorted(cache.glob("shard-*.npy"))) == info["n_shards"] * 6  # q8: ids, head, step, codes, rest; crc32
    assert sorted(p.name for p in cache.parent.iterdir()) == ["demo-kd.yaml", "teacher-cache"]  # the lock is gone
    assert "nothing to do" in ok(run_here("distill", *args)).stdout


def test_ctrl_c_while_a_cache_is_written_takes_its_shards_and_a_kill_leaves_them_to_the_same_command(
        teachers, demo_root, cache_dir, tmp_path):
    """Ctrl-C while the shards are written: one line, ended by SIGINT, and the unfinished folder goes with it (it
    stayed until the next command until 2026-12-04). A kill leaves it, marked as ours; the same command removes it
    and writes the cache whole (the moves that put a cache in place: tests/test_interrupts.py)."""
    import signal

    from conftest import assert_interrupted, freeze_when, interrupt_when

    recipe = recipe_copy("demo-kd", teachers, tmp_path)
    cache = tmp_path / "teacher-cache"
    args = ["cache-teachers", str(recipe), *overrides(demo_root, cache_dir, tmp_path / "runs", steps=20),
            "distill.cache_top_k=16", "--out", str(cache)]
    partial = cache.parent / "teacher-cache.partial"
    assert_interrupted(interrupt_when("distill", args, lambda: any(partial.glob("shard-*"))),
                       f"{cache}: interrupted; a cache there is whole once this command ends: run the same command "
                       "again")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo-kd.yaml"]  # neither the folder nor the lock
    killed = freeze_when("distill", args, lambda: any(partial.glob("shard-*")))
    killed.kill()
    assert killed.wait(timeout=60) == -signal.SIGKILL
    assert (partial / ".babydistill-partial").is_file() and not cache.exists()
    ok(run_cli("distill", *args))
    info = json.loads((cache / "cache.json").read_text())
    assert len(sorted(cache.glob("shard-*.npy"))) == info["n_shards"] * 6 and not partial.exists()  # q8 and crc32


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_full_disk_while_a_cache_is_written_is_one_line_and_the_cache_there_stays(teachers, demo_root, cache_dir,
                                                                                    tmp_path):
    """The shards used to be written through memory maps, and a disk that filled up under them ended the process by
    SIGBUS (exit -7, a page of C-level dump, seen 2026-12-04). Now: one line naming the file where the disk filled up,
    exit 2, the cache being replaced (--overwrite) whole, the unfinished folder removed (it stayed, holding the space
    the line asks to free, until the next command, until 2026-12-04), and once there is room the same command writes
    the cache."""
    recipe = recipe_copy("demo-kd", teachers, tmp_path)
    base = [*overrides(demo_root, cache_dir, tmp_path / "runs", steps=20), "distill.cache_format=q8"]
    disk = tmp_path / "disk"
    with mounted(disk, size="3m"):  # the demo's 470 blocks of 64 tokens: 30k tokens
        cache = disk / "cache"
        to = lambda k, *extra: run_cli("distill", "cache-teachers", str(recipe), *base,  # noqa: E731
                                       f"distill.cache_top_k={k}", "--out", str(cache), *extra)
        ok(to(8))  # 25 bytes a token: 0.75 MB
        before = {p.name: p.read_bytes() for p in cache.iterdir()}
        proc = to(64, "--overwrite")  # 144 bytes a token: 4.3 MB, more than the 2.2 MB left
        assert_user_error(proc, f"{disk / 'cache.partial'}: No space left on device", "the disk is full")
        assert "Fatal Python error" not in proc.stderr and {p.name: p.read_bytes() for p in cache.iterdir()} == before
        assert sorted(p.name for p in disk.iterdir()) == ["cache"]  # the unfinished folder and the lock are gone
        subprocess.run(["mount", "-o", "remount,size=12m", str(disk)], check=True)
        ok(to(64, "--overwrite"))
        assert json.loads((cache / "cache.json").read_text())["fingerprint"]["top_k"] == 64
        assert sorted(p.name for p in disk.iterdir()) == ["cache"]  # the unfinished folder and the lock are gone


def test_a_ctrl_c_a_finalizer_swallowed_stops_a_cache_at_its_next_batch(teachers, demo_root, cache_dir, tmp_path,
                                                                         monkeypatch):
    """Ctrl-C raised inside a finalizer, where Python drops it, while the teachers run (the class:
    tests/test_interrupts.py): the cache stops at its next batch instead of writing every shard."""
    recipe = recipe_copy("demo-kd", teachers, tmp_path)
    cache = tmp_path / "teacher-cache"
    seen = swallow_a_ctrl_c(monkeypatch)
    proc = run_here("distill", "cache-teachers", str(recipe), *overrides(demo_root, cache_dir, tmp_path / "runs"),
                    "distill.cache_top_k=16", "train.batch_size=4", "--out", str(cache))
    assert seen["swallowed"] and proc.returncode == 130, (seen, proc.stderr[-3000:])
    assert proc.stderr.splitlines()[-1] == (f"{cache}: interrupted; a cache there is whole once this command ends: "
                                            "run the same command again")
    assert not cache.exists() and seen["calls"] < 20, seen  # the whole cache: 361 lookups, 3 a batch


# q8, the default, goes through the command in the test above, and q4 is q8's codec at 4 bits, as s8 is s7's at 8
# (each codec alone: tests/test_cache_format.py; each format's error: the test after this one)
@pytest.mark.parametrize("fmt", ["fp16", "s7"])
def test_each_cache_format_stores_the_top_k_and_reports_its_error(fmt, teachers, demo_root, cache_dir, tmp_path):
    """Written by cache-teachers, read back by the trainer's reader: the ids exactly, the log-probabilities
    within the format's step, the storage's KD-loss error reported and below 1e-3 of the dense loss."""
    from transformers import AutoModelForCausalLM

    from distill import cache_format
    from distill.cache import TeacherCache, read_manifest, top_k
    from distill.teachers import Teacher, run_teachers
    from tokenizer.prepare import load_blocks

    recipe = recipe_copy("demo-kd", teachers, tmp_path)
    base = [*overrides(demo_root, cache_dir, tmp_path / "runs", steps=6), "distill.cache_top_k=32"]
    cache = tmp_path / "cache"
    proc = ok(
        run_here("distill", "cache-teachers", str(recipe), *base, f"distill.cache_format={fmt}", "--out", str(cache))
    )
    info = read_manifest(cache / "cache.json", "")
    assert info["format"] == fmt and "the storage changes it by" in proc.stdout
    # fp16: 4k + 2; s7 at 512 tokens: a set of 27 bytes (32 low parts of 4 bits, 63 unary bits, 4 places of 5 bits),
    # 4 float16 head values, a step, 28 codes of 7 bits, a rest: 27 + 8 + 2 + 25 + 2
    expected = cache_format.bytes_per_token(fmt, 32, 512)
    assert expected == {"fp16": 130, "s7": 64}[fmt] and expected <= info["bytes_per_token"] < expected + 1
    assert info["storage_error"]["logit_kd"]["relative"] < 1e-3, info["storage_error"]

    models = [
        AutoModelForCausalLM.from_pretrained(teachers / "runs" / "demo" / n / "model").eval()
        for n in ("teacher", "teacher-llama")
    ]
    ids = load_blocks(cache_dir / "blocks" / f"train-{info['fingerprint']['data']}")[:3][
        "input_ids"
    ]  # the blocks it was built from
    logits = [o.logits for o in run_teachers([Teacher("t", m, 1, [], 0, 0) for m in models], ids, None, hidden=False)]
    top, top_ids, rest = top_k(logits, info["fingerprint"], 32)
    read = TeacherCache(cache, info["fingerprint"]).lookup(torch.arange(3))
    logp, got_ids, got_rest = (x.flatten(0, 1) for x in read)
    order, want_order = got_ids.argsort(1), top_ids.argsort(1)  # the s formats give each row in id order
    assert torch.equal(got_ids.gather(1, order), top_ids.gather(1, want_order))
    assert (got_rest - rest).abs().max() < 1e-3
    assert (logp.gather(1, order) - top.gather(1, want_order)).abs().max() < {"fp16": 0.02, "s7": 0.1}[fmt]

    # a bit flipped in any array of any block, after the cache was written, is one line naming the block (never a
    # silently wrong target); the blocks beside it still read
    import numpy as np

    from common.errors import UserError

    for name in cache_format.layout(fmt, 32, 512):
        damaged = tmp_path / f"damaged-{name}"
        shutil.copytree(cache, damaged)
        shard = np.load(damaged / f"shard-00000.{name}.npy", mmap_mode="r+")
        shard.view(np.uint8).reshape(shard.shape[0], -1)[1, -1] ^= 0x10  # one bit of block 1's last byte there
        shard.flush()
        del shard
        where = re.escape(f"teacher_cache={damaged}: block 1 (row 1 of {damaged}/shard-00000.*.npy) differs from "
                          "what cache-teachers wrote")
        with pytest.raises(UserError, match=f"{where} .*CRC-32.*--overwrite"):
            TeacherCache(damaged, info["fingerprint"]).lookup(torch.tensor([0, 1, 2]))
        for block in (0, 2):
            assert all(torch.equal(a, b) for a, b in zip(TeacherCache(damaged, info["fingerprint"]).lookup(
                torch.tensor([block])), TeacherCache(cache, info["fingerprint"]).lookup(torch.tensor([block]))))

    # the trainer reads it; changing the format asks for --overwrite; a format this version does not know is one line
    ok(run_here("distill", str(recipe), *base, f"distill.teacher_cache={cache}"))
    if fmt == "fp16":  # what a person sees of a damaged cache: from cache-teachers, and from a run that reads it
        fresh = (cache / "shard-00000.logp.npy").read_bytes()
        damaged = tmp_path / "damaged-logp"
        before = (damaged / "shard-00000.logp.npy").read_bytes()
        to = lambda out, *extra: run_here("distill", "cache-teachers", str(recipe), *base,  # noqa: E731
                                          f"distill.cache_format={fmt}", "--out", str(out), *extra)
        assert_user_error(to(damaged), f"{damaged}: holds this cache, but 1 of its {info['n_blocks']} blocks differ",
                          f"first: block 1 (row 1 of {damaged}/shard-00000.*.npy)", "pass --overwrite")
        assert (damaged / "shard-00000.logp.npy").read_bytes() == before != fresh  # refused: nothing written
        assert "every block checked); nothing to do" in ok(to(cache)).stdout
        every = np.load(damaged / "shard-00000.rest.npy", mmap_mode="r+")
        every.view(np.uint8)[:, 0] ^= 0x01  # every block: whichever a run reads first
        every.flush()
        del every
        assert_user_error(run_here("distill", str(recipe), *base, f"distill.teacher_cache={damaged}",
                                   "output.name=damaged"), f"teacher_cache={damaged}: block ", "CRC-32")
        assert json.loads((tmp_path / "runs" / "demo" / "damaged" / "run.json").read_text())["status"] == "failed"
        ok(to(damaged, "--overwrite"))
        assert (damaged / "shard-00000.logp.npy").read_bytes() == fresh  # written again, the same
        assert "every block checked); nothing to do" in ok(to(damaged)).stdout

        # a cache written before the checksums is read, unchecked, and cache-teachers says so
        legacy = tmp_path / "legacy"
        shutil.copytree(cache, legacy)
        for crc in legacy.glob("shard-*.crc32.npy"):
            crc.unlink()
        manifest = json.loads((legacy / "cache.json").read_text())
        del manifest["checksums"]
        (legacy / "cache.json").write_text(json.dumps(manifest))
        assert all(torch.equal(a, b) for a, b in zip(TeacherCache(legacy, info["fingerprint"]).lookup(
            torch.arange(3)), TeacherCache(cache, info["fingerprint"]).lookup(torch.arange(3))))
        assert "written before the checksums, so its blocks cannot be checked" in ok(to(legacy)).stdout
    other = "q4"
    assert_user_error(
        run_here("distill", "cache-teachers", str(recipe), *base, f"distill.cache_format={other}", "--out", str(cache)),
        f"the format: {fmt} there, distill.cache_format={other} here",
        "--overwrite",
    )
    assert read_manifest(cache / "cache.json", "")["format"] == fmt  # nothing overwritten
    manifest = json.loads((cache / "cache.json").read_text())
    unknown = {"fp16": "q6", "s7": "s6"}[fmt]  # widths the codecs could write, not formats this version reads
    (cache / "cache.json").write_text(json.dumps({**manifest, "format": unknown}))
    assert_user_error(run_here("distill", str(recipe), *base, f"distill.teacher_cache={cache}", "output.name=unknown"),
                      str(cache / "cache.json"), f"'{unknown}' is not one this version reads (fp16, q8, q4, s8, s7)")
    assert_user_error(
        run_here("distill", "cache-teachers", str(recipe), *base, f"distill.cache_format={unknown}", "--out",
                 str(tmp_path / "c2")),
        "distill.cache_format: expected one of 'fp16', 'q8', 'q4', 's8', 's7'",
        f"got '{unknown}'",
    )
    assert not (tmp_path / "c2").exists() and not (tmp_path / "runs" / "demo" / "unknown").exists()


def test_cached_kd_matches_dense_kd_on_a_batch(teachers, demo_root, cache_dir, tmp_path):
    """The cached term against the dense one on the same student and batch, per k (the gap is printed)."""
    from transformers import AutoModelForCausalLM

    from distill import losses as L
    from distill.teachers import run_teachers, Teacher
    from tokenizer.prepare import load_blocks

    student = AutoModelForCausalLM.from_pretrained(teachers / "runs" / "demo" / "teacher-llama" / "model")
    models = [
        AutoModelForCausalLM.from_pretrained(teachers / "runs" / "demo" / n / "model").eval()
        for n in ("teacher", "teacher-llama")
    ]
    blocks = sorted(cache_dir.glob("blocks/train-*"))[0]
    ids = load_blocks(blocks)[:4]["input_ids"]
    t_logits = [o.logits[:, :-1].reshape(-1, o.logits.shape[-1]) for o in
                run_teachers([Teacher("t", m, 1, [], 0, 0) for m in models], ids, None, hidden=False)]
    with torch.no_grad():
        s = student(ids).logits[:, :-1].reshape(-1, t_logits[0].shape[-1])
    n = s.shape[0]
    dense = float(L.logit_kd(s, t_logits, 2.0, n))
    (_, logp), = L.teacher_logprobs(t_logits, 2.0, "mean_logits")
    gaps = {}
    for k in (8, 32, 128, 512):
        top, top_ids = logp.topk(k, -1)
        rest = (1 - top.exp().sum(-1)).clamp_min(0)
        gaps[k] = dense - float(L.cached_logit_kd(s, top.half().float(), top_ids, rest.half().float(), 2.0, n))
    print(f"dense KD {dense:.4f}; dense - cached, per k:", {k: f"{g:.2e}" for k, g in gaps.items()})
    assert abs(gaps[512]) < 1e-3 * max(dense, 1)  # the full 512-token vocabulary: only float16 rounding remains
    assert all(g >= -1e-3 for g in gaps.values()) and gaps[8] >= gaps[128] - 1e-4


def test_every_format_keeps_a_trained_students_storage_error_below_1e_3(teachers, demo_root, cache_dir, tmp_path):
    """A trained student (the Llama teacher standing in for one) is the hard case for storage: its loss is small.
    Each format encodes the same targets (the cache command does the same on its first batch)."""
    from transformers import AutoModelForCausalLM

    from common import config as cfglib
    from distill.cache import storage_error, top_k
    from distill.cache_format import FORMATS
    from distill.config import DistillRunConfig
    from distill.teachers import Teacher, run_teachers
    from tokenizer.prepare import load_blocks

    models = [
        AutoModelForCausalLM.from_pretrained(teachers / "runs" / "demo" / n / "model").eval()
        for n in ("teacher", "teacher-llama")
    ]
    ids = load_blocks(sorted(cache_dir.glob("blocks/train-*"))[0])[:3]["input_ids"]
    logits = [o.logits for o in run_teachers([Teacher("t", m, 1, [], 0, 0) for m in models], ids, None, hidden=False)]
    top, top_ids, rest = top_k(logits, {"temperature": 2.0, "ensemble": "mean_logits"}, 32)
    with torch.no_grad():
        near = models[1](ids).logits.flatten(0, 1)
    recipe = recipe_copy("demo-kd", teachers, tmp_path)
    base = [*overrides(demo_root, cache_dir, tmp_path / "runs"), "distill.cache_top_k=32",
            "distill.losses.reverse_kl.weight=0.5", "distill.losses.reverse_kl.temperature=2"]
    for fmt in FORMATS:
        cfg = cfglib.load(DistillRunConfig, str(recipe), [*base, f"distill.cache_format={fmt}"])
        assert (cfg.distill.losses.logit_kd.temperature, cfg.distill.losses.logit_kd.ensemble) == (2.0, "mean_logits")
        report = storage_error(cfg, near, [x.flatten(0, 1) for x in logits], (top, top_ids, rest), 512)
        print(fmt, {k: f"{v['relative']:.1e} of {v['dense']:.3f}" for k, v in report.items()})
        assert set(report) == {"logit_kd", "reverse_kl"} and all(v["relative"] < 1e-3 for v in report.values()), fmt


# ------------------------------------------------------------------ bad inputs
def test_bad_inputs(teachers, demo_root, cache_dir, tmp_path, monkeypatch):
    """In-process (distill's main): each refusal comes before anything is built or written."""
    from distill.__main__ import main

    monkeypatch.chdir(ROOT)
    recipe = recipe_copy("demo-kd", teachers, tmp_path)
    base = [str(recipe), *overrides(demo_root, cache_dir, tmp_path / "runs", steps=5)]
    run = tmp_path / "runs" / "demo" / "kd"
    gpt2 = f"{teachers}/runs/demo/teacher/model"

    def bad(*extra, needles):
        assert_user_error(call(main, *base, *extra), *needles)
        assert not run.exists()  # nothing written

    bad(f"distill.teachers=[{{path: {tmp_path}/nowhere}}]", needles=("distill.teachers[0].path", "does not exist"))
    bad(
        f"distill.teachers=[{{path: {shared('hf_tiny_gpt2')}}}]",
        needles=("differ in their vocabulary", "tokenizer.type=pretrained"),
    )
    bad(f"distill.teachers=[{{path: {gpt2}, layer_map: {{5: 1}}}}]", "distill.losses.hidden_mse.weight=0.5",
        needles=("distill.teachers[0]", "teacher block 5 is out of range: the teacher has 2 blocks"))
    bad("distill.losses.hiden_mse.weight=0.5", needles=("unknown key", "did you mean 'distill.losses.hidden_mse'"))
    bad("distill.losses.logit_kd.weight=-0.5", needles=("distill.losses.logit_kd.weight", "must be at least 0"))
    bad("distill.losses.logit_kd.temperature=0", needles=("distill.losses.logit_kd.temperature", "must be above 0"))
    bad(f"student.init_from={gpt2}", needles=("student.init_from", "cannot load into student.arch"))
    unfinished = tmp_path / "unfinished"  # a teacher run whose export failed: DONE is written last
    shutil.copytree(Path(gpt2).parent, unfinished, ignore=shutil.ignore_patterns("checkpoints", "milestones", "DONE"))
    needles = (f"{unfinished / 'model'}: the model of a run that has not finished (no DONE in {unfinished}; its "
               "run.json says done)", "rerun its training with --resume")  # a DONE lost, run.json intact
    bad(f"distill.teachers=[{{path: {unfinished / 'model'}}}]", needles=("distill.teachers[0]", *needles))
    bad(f"student.init_from={unfinished / 'model'}", needles=("student.init_from", *needles))
    from test_own_code import own_code_model  # a model whose classes are its own code: evaluated, never used here

    custom = own_code_model(tmp_path / "own-code")
    bad(f"distill.teachers=[{{path: {custom}}}]", needles=(
        f"{custom / 'config.json'}: model type 'tinycustom' is defined by the Python code in its folder",
        "only to evaluate it", "not as teacher 0"))
    bad(f"student.init_from={custom}", needles=("is defined by the Python code", "not as the warm-start model"))
    bad(f"distill.teacher_cache={tmp_path}/no-cache", needles=("distill.teacher_cache", "cache-teachers"))
    # a teacher with its own tokenizer: only terms that align positions read it; never from the cache; a fast tokenizer
    # only
    own = f"distill.teachers=[{{path: {teachers}/runs/demo/teacher-gpt2tok/model, tokenizer: own}}]"
    bad(own, needles=("distill.teachers[0].tokenizer", "logit_kd", "distill.losses.uld"))
    bad(own, "distill.losses.logit_kd.weight=0", "distill.losses.uld.weight=0.5", f"distill.teacher_cache={tmp_path}",
        needles=("distill.teacher_cache", "its own tokenizer"))
    assert_user_error(
        call(
            main,
            "cache-teachers",
            *base,
            own,
            "distill.losses.logit_kd.weight=0",
            "distill.losses.uld.weight=0.5",
            "--out",
            str(tmp_path / "own-cache"),
        ),
        "distill.teachers[0].tokenizer",
        "run online",
    )
    assert not (tmp_path / "own-cache").exists()
    slow = tmp_path / "slow-tokenizer-teacher"
    shutil.copytree(gpt2, slow)
    for f in slow.glob("tokenizer*"):
        f.unlink()
    from transformers import ByT5Tokenizer
    ByT5Tokenizer().save_pretrained(slow)  # a tokenizer without character offsets
    bad(
        f"distill.teachers=[{{path: {slow}, tokenizer: own}}]",
        "distill.losses.logit_kd.weight=0",
        "distill.losses.uld.weight=0.5",
        needles=("distill.teachers[0]", "not a fast tokenizer"),
    )
    bad("data.block_size=256", "student.overrides.max_position_embeddings=512", f"distill.teachers=[{{path: {gpt2}}}]",
        needles=("distill.teachers[0]", "has 128 positions, fewer than data.block_size=256"))
    # a corrupt teacher, and a corrupt warm start: one line naming the file
    broken = tmp_path / "broken-teacher"
    shutil.copytree(gpt2, broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    bad(f"distill.teachers=[{{path: {broken}}}]", needles=(str(broken / "model.safetensors"), "cannot be read"))
    bad(
        f"student.init_from={broken}",
        "student.arch=gpt2-tiny",
        needles=(str(broken / "model.safetensors"), "cannot be read"),
    )
    # a teacher whose logits are wider or narrower than the student's vocabulary (a padded embedding): refused by its
    # config alone, so the cache refuses it too; and a teacher whose config builds more layers than its weights hold
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for rows in (576, 500):
        resized = tmp_path / f"teacher-{rows}"
        lm = AutoModelForCausalLM.from_pretrained(gpt2)
        lm.resize_token_embeddings(rows)
        lm.save_pretrained(resized)
        AutoTokenizer.from_pretrained(gpt2).save_pretrained(resized)
        needles = ("distill.teachers[0]", f"gives {rows} logits a position, the student's vocabulary 512",
                   "tokenizer: own")
        bad(f"distill.teachers=[{{path: {resized}}}]", needles=needles)
        assert_user_error(call(main, "cache-teachers", *base, f"distill.teachers=[{{path: {resized}}}]", "--out",
                               str(tmp_path / "wide-cache")), *needles)
        assert not (tmp_path / "wide-cache").exists()
    # a teacher read with its own tokenizer, but the folder holds GPT-2's 50,257-token one beside a 512-row embedding
    borrowed = tmp_path / "borrowed-tokenizer-teacher"
    shutil.copytree(gpt2, borrowed)
    for f in borrowed.glob("tokenizer*"):
        f.unlink()
    AutoTokenizer.from_pretrained(shared("hf_tiny_gpt2")).save_pretrained(borrowed)
    bad(f"distill.teachers=[{{path: {borrowed}, tokenizer: own}}]", "distill.losses.logit_kd.weight=0",
        "distill.losses.uld.weight=0.5", needles=("distill.teachers[0]", "its tokenizer has 50257 tokens",
                                                  "only 512 embedding rows", "another model's tokenizer"))
    # a teacher, and a warm start, whose weights hold NaN or infinity (a diverged run's export): refused before a
    # cache of NaN is written, or a student stops at its first step with a message that names the learning rate
    diverged = tmp_path / "diverged-teacher"
    lm = AutoModelForCausalLM.from_pretrained(gpt2)
    with torch.no_grad():
        lm.transformer.h[0].mlp.c_fc.weight[0, 0] = float("inf")
        lm.transformer.ln_f.bias[1] = float("nan")
    lm.save_pretrained(diverged)
    AutoTokenizer.from_pretrained(gpt2).save_pretrained(diverged)
    needles = (f"distill.teachers[0] ({diverged}): its weights hold NaN or infinite values "
               "(transformer.h.0.mlp.c_fc.weight and 1 more tensor(s))", "use an earlier checkpoint")
    bad(f"distill.teachers=[{{path: {diverged}}}]", needles=needles)
    assert_user_error(call(main, "cache-teachers", *base, f"distill.teachers=[{{path: {diverged}}}]", "--out",
                           str(tmp_path / "nan-cache")), *needles)
    assert not (tmp_path / "nan-cache").exists() and not (tmp_path / "nan-cache.partial").exists()
    bad(f"student.init_from={diverged}", "student.arch=gpt2-tiny",
        needles=(f"student.init_from={diverged}: its weights hold NaN or infinite values",))
    deeper = tmp_path / "deeper-teacher"
    shutil.copytree(gpt2, deeper)
    config = json.loads((deeper / "config.json").read_text())
    (deeper / "config.json").write_text(json.dumps({**config, "n_layer": config["n_layer"] + 1}))
    bad(f"distill.teachers=[{{path: {deeper}}}]",
        needles=(str(deeper / "config.json"), "tensors the weights lack", "fix distill.teachers[0].path"))

    mlm = tmp_path / "mlm"
    ok(
        run_cli(
            "train",
            "config/runs/demo-teacher.yaml",
            f"data.train_dir={demo_root / 'train'}",
            f"data.dev_dir={demo_root / 'dev'}",
            f"data.cache_dir={cache_dir}",
            f"output.dir={mlm}",
            "model.arch=roberta-tiny",
            "train.max_steps=2",
            "train.save_steps=1000",
            "train.eval_steps=1000",
            "optim.warmup_steps=1",
        )
    )
    bad(f"distill.teachers=[{{path: {mlm}/demo/teacher/model}}]", needles=("not a causal LM", "causal teachers"))


def test_torchrun_two_processes(teachers, demo_root, cache_dir, tmp_path):
    """Two CPU ranks: the run directory is written once, and the loss keeps its per-token scale (not x world size)."""
    import math

    recipe = recipe_copy("demo-kd", teachers, tmp_path)
    proc = ok(
        run_cli(
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "distill",
            str(recipe),
            *overrides(demo_root, cache_dir, tmp_path / "runs", steps=10),
            "train.logging_steps=1",
            "train.batch_size=4",
        )
    )
    assert "find_unused_parameters" not in proc.stdout + proc.stderr  # DDP told no parameter goes unused: no warning
    run = tmp_path / "runs" / "demo" / "kd"
    rows = [r for r in metrics(run) if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 11)) and (run / "DONE").exists()
    first = rows[0]
    assert abs(first["loss/ce"] - math.log(512)) < 0.5, first  # an untrained student: about ln(vocabulary)
    assert first["loss"] == pytest.approx(0.5 * first["loss/ce"] + 0.5 * first["loss/logit_kd"], rel=1e-3)
    assert (run / "checkpoints" / "checkpoint-10" / "rng_state_1.pth").exists()


def test_two_ranks_with_every_term_tell_ddp_that_no_parameter_goes_unused(teachers, demo_root, cache_dir, tmp_path):
    """Every term at once (and uld, hidden_mse and contrastive with a teacher of another tokenizer beside one of the
    student's): DDP runs with find_unused_parameters=False, which stops a run at its second step when any trainable
    parameter (a projection, an auxiliary head, a block) got no gradient; so 4 steps finishing is the test. It was
    True for every distillation, and each rank printed PyTorch's warning that the search found nothing."""
    from distill.losses import REGISTRY

    same = [f"distill.losses.{key}.weight=0.1" for key in REGISTRY if key not in ("ce", "logit_kd", "uld")]
    own = [f"distill.teachers=[{{path: {teachers}/runs/demo/teacher-gpt2tok/model, tokenizer: own}}, "
           f"{{path: {teachers}/runs/demo/teacher/model}}]", "distill.losses.hidden_mse.weight=0.5",
           "distill.losses.contrastive.weight=0.1"]
    for name, extra in (("kd", same), ("uld", own)):
        proc = ok(run_cli("torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "distill",
                          str(recipe_copy(f"demo-{name}", teachers, tmp_path)),
                          *overrides(demo_root, cache_dir, tmp_path / "runs", steps=4), "train.batch_size=4", *extra))
        said = proc.stdout + proc.stderr
        assert "find_unused_parameters" not in said, said[-3000:]
        assert (tmp_path / "runs" / "demo" / name / "DONE").exists()
        assert said.count("loss = ") == 1 and (name != "kd" or "0.1*attention_relation(" in said)
