"""End to end: `python -m train` on tiny models, the run directory, refusals, resume after SIGKILL, NaN."""
from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import (ROOT, assert_bitwise_equal, assert_user_error, hang_up_when, logged_steps, ok, run_cli, run_here,
                      shared, slice_corpus, start_and_kill, stop_at_budget, weights)
from common.checkpoints import checkpoint_problem

pytestmark = pytest.mark.slow


def run_dir(tmp_path, experiment="demo", name="teacher"):
    return tmp_path / "runs" / experiment / name



def test_loading_a_checkpoint_warns_of_missing_tensors_only_when_they_are_missing(monkeypatch):
    """A checkpoint stores a tied head once, under the embedding's name; loading it back is not missing the head. An
    untied head left out of a checkpoint is missing, and the Trainer still says so."""
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from train.trainer import BabyTrainer

    assert hasattr(transformers.Trainer, "_issue_warnings_after_load")  # the hook BabyTrainer narrows
    said = []
    monkeypatch.setattr(transformers.trainer.logger, "warning", lambda message, *a, **k: said.append(message))
    tied = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=40, n_positions=16))
    untied = LlamaForCausalLM(LlamaConfig(num_hidden_layers=1, hidden_size=8, intermediate_size=16,
                                          num_attention_heads=2, vocab_size=40, tie_word_embeddings=False))
    for model, warned in ((tied, []), (untied, ["There were missing keys in the checkpoint model loaded: "
                                                "['lm_head.weight']."])):
        trainer = object.__new__(BabyTrainer)  # only the load hook is under test: no Trainer to set up
        trainer.model = model
        saved = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
        said.clear()
        trainer._issue_warnings_after_load(model.load_state_dict(saved, strict=False))
        assert said == warned


def test_demo_teacher_writes_the_run_directory(demo_args, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    proc = ok(run_cli("train", *demo_args))
    # Nothing a user has to wonder about: DeepSpeed's "Setting accelerator to CPU", or "missing keys:
    # ['lm_head.weight']" when keep_best loads a checkpoint of this tied GPT-2 (its head is the embedding's tensor)
    assert "accelerator" not in proc.stdout + proc.stderr and "missing keys" not in proc.stderr, proc.stderr[-2000:]
    run = run_dir(tmp_path)
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["max_steps"] == 30
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "done" and info["versions"]["torch"].startswith("2.13") and "git_commit" in info
    assert info["attempts"][0]["argv"][0] == "config/runs/demo-teacher.yaml"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert len(train_rows) == 6 and all(r["tokens_per_s"] > 0 for r in train_rows)
    assert train_rows[-1]["loss"] < train_rows[0]["loss"]
    assert len([r for r in rows if "eval_loss" in r]) >= 3
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == [
        "checkpoint-10",
        "checkpoint-20",
        "checkpoint-30",
    ]
    assert all(checkpoint_problem(p) is None for p in (run / "checkpoints").iterdir())
    done = json.loads((run / "DONE").read_text())
    assert done["step"] == 30 and done["dev_loss"] > 0
    model = AutoModelForCausalLM.from_pretrained(run / "model")
    tok = AutoTokenizer.from_pretrained(run / "model")
    ids = tok("The dogs run.", return_tensors="pt").input_ids
    assert ids[0, 0] == tok.bos_token_id and model(ids).logits.shape[-1] == len(tok) == 512
    # The same command again: a finished run is left alone.
    before = (run / "DONE").read_bytes()
    assert_user_error(run_cli("train", *demo_args), "holds a finished run", "--overwrite")
    assert "already finished" in ok(run_cli("train", *demo_args, "--resume")).stdout
    assert (run / "DONE").read_bytes() == before


def test_masked_lm(demo_args, tmp_path):
    from transformers import AutoModelForMaskedLM

    ok(run_here("train", *demo_args, "model.arch=roberta-tiny", "train.max_steps=10"))
    model = AutoModelForMaskedLM.from_pretrained(run_dir(tmp_path) / "model")
    assert type(model).__name__ == "RobertaForMaskedLM"
    assert (run_dir(tmp_path) / "DONE").exists()


def test_dev_blocks_evaluates_a_subset(demo_args, tmp_path):
    """data.dev_blocks=3: the dev loss is taken on 3 blocks (the Trainer's own count of evaluated samples)."""
    proc = ok(run_here("train", *demo_args, "train.max_steps=10", "data.dev_blocks=3"))
    assert "3 dev blocks (data.dev_blocks)" in proc.stdout
    rows = [json.loads(line) for line in (run_dir(tmp_path) / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval_loss" in r]
    assert evals and all(round(r["eval_samples_per_second"] * r["eval_runtime"]) == 3 for r in evals), evals


def test_real_babylm_2023_llama(tmp_path, cache_dir):
    train = slice_corpus(shared("babylm_2023_partial", "train_10M"), tmp_path / "train", 2000)
    dev = slice_corpus(shared("babylm_2023_partial", "dev"), tmp_path / "dev", 300)
    ok(
        run_here(
            "train",
            "config/runs/demo-teacher.yaml",
            "data.demo=false",
            f"data.train_dir={train}",
            f"data.dev_dir={dev}",
            f"data.cache_dir={cache_dir}",
            f"output.dir={tmp_path / 'runs'}",
            "model.arch=llama-tiny",
            "tokenizer.vocab_size=2000",
            "model.vocab_size=2000",
            "train.max_steps=20",
            "train.save_steps=10",
            "train.eval_steps=10",
        )
    )
    assert json.loads((run_dir(tmp_path) / "DONE").read_text())["dev_loss"] < 7.6  # below uniform over 2000 tokens


def test_real_babylm_2024_switchboard_with_pretrained_tokenizer(tmp_path, cache_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = (
        tmp_path / "dev"
    )  # the real dev file's first 2,000 lines: a dev pass over 18,000 at a 50k vocabulary takes a minute
    dev.mkdir()
    lines = (
        shared("babylm_2024_switchboard", "dev", "switchboard.dev")
        .read_text(encoding="utf-8")
        .splitlines(keepends=True)
    )
    (dev / "switchboard.dev").write_text("".join(lines[:2000]), encoding="utf-8")
    ok(run_here("train", "config/runs/demo-teacher.yaml", "data.demo=false",
                f"data.train_dir={shared('babylm_2024_switchboard', 'train_10M')}", f"data.dev_dir={dev}",
                f"data.cache_dir={cache_dir}", f"output.dir={tmp_path / 'runs'}", "tokenizer.type=pretrained_hf",
                f"tokenizer.name_or_path={shared('hf_tiny_gpt2')}", "model.vocab_size=50257", "train.max_steps=10",
                "train.save_steps=10", "train.eval_steps=10"))
    model_dir = run_dir(tmp_path) / "model"
    assert len(AutoTokenizer.from_pretrained(model_dir)) == 50257
    assert AutoModelForCausalLM.from_pretrained(model_dir).config.vocab_size == 50257


def test_refuses_a_different_run_and_overwrites_on_request(demo_args, tmp_path):
    ok(run_here("train", *demo_args, "train.max_steps=10"))
    run = run_dir(tmp_path)
    snapshot = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert_user_error(run_here("train", *demo_args, "train.max_steps=10", "optim.lr=0.001"),
                      str(run), "holds a finished run with a different config (optim.lr: 0.003 -> 0.001)")
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == snapshot  # nothing touched
    ok(run_here("train", *demo_args, "train.max_steps=10", "optim.lr=0.001", "--overwrite"))
    assert yaml.safe_load((run / "config.yaml").read_text())["optim"]["lr"] == 0.001


def test_not_a_run_folder_is_refused(demo_args, tmp_path):
    run = run_dir(tmp_path)
    run.mkdir(parents=True)
    (run / "notes.txt").write_text("mine")
    assert_user_error(run_cli("train", *demo_args), "not a babydistill run")
    assert (run / "notes.txt").read_text() == "mine"


def test_vocab_mismatch_with_pretrained_tokenizer(demo_args, tmp_path):
    proc = run_cli("train", *demo_args, "tokenizer.type=pretrained", f"tokenizer.name_or_path={shared('hf_tiny_gpt2')}")
    assert_user_error(proc, "model.vocab_size: is 512", "has 50257 tokens", "model.vocab_size=50257")
    assert not run_dir(tmp_path).exists()


def test_missing_corpus_folder(demo_args, tmp_path):
    proc = run_cli("train", *demo_args, "data.demo=false", f"data.train_dir={tmp_path / 'nowhere'}")
    assert_user_error(proc, "nowhere: corpus folder not found (data.train_dir)")
    assert not (tmp_path / "runs").exists()


def test_nan_loss_stops_and_keeps_last_good_checkpoint(demo_args, tmp_path):
    # A learning rate that grows by 10 per step without clipping overflows float32 after a few steps.
    proc = run_cli("train", *demo_args, "train.max_steps=60", "train.save_steps=5", "train.eval_steps=5",
                   "optim.lr=1e7", "optim.warmup_steps=1000000", "optim.max_grad_norm=0", "optim.min_lr=0")
    line = assert_user_error(proc, "loss became nan at step", "last good checkpoint:",
                             "rerun with --resume and a lower optim.max_grad_norm, or start again (--overwrite) with "
                             "a lower optim.lr")
    step = int(line.split("at step ")[1].split(";")[0])
    good = line.split("last good checkpoint: ")[1].split(";")[0]
    run = run_dir(tmp_path)
    assert good.startswith(str(run / "checkpoints" / "checkpoint-"))
    assert int(good.rsplit("-", 1)[1]) < step and checkpoint_problem(__import__("pathlib").Path(good)) is None
    assert json.loads((run / "run.json").read_text())["status"] == "failed"
    assert not (run / "DONE").exists() and not (run / "model").exists()


def test_a_batch_larger_than_memory_is_one_line_and_a_failed_run(demo_args, tmp_path):
    """More memory than the machine has (here the dev evaluation's 4 TB for a train.batch_size of 10**12): one line
    naming the batch and block size and what to do, and run.json says failed (it was a RuntimeError traceback from
    torch's CPU allocator; a GPU's OutOfMemoryError is the same case)."""
    proc = run_cli("train", *demo_args, "train.batch_size=1000000000000", "train.max_steps=1", "train.eval_steps=1",
                   "train.save_steps=1", "data.train_fraction=0.02")
    assert_user_error(proc, f"{run_dir(tmp_path)}: out of memory at step 1 (4000.0 GB asked of the CPU, with "
                            "train.batch_size=1000000000000 and data.block_size=64); rerun with --resume where it has "
                            "more memory, or start again (--overwrite) with a lower train.batch_size")
    info = json.loads((run_dir(tmp_path) / "run.json").read_text())
    assert info["status"] == "failed" and info["error"] == "out of memory: 4000.0 GB asked of the CPU"


def test_out_of_memory_is_told_from_its_messages():
    """The three forms an allocation failure takes, as torch and Python word them (a CUDA one cannot happen here)."""
    import torch

    from common.errors import out_of_memory

    cuda = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 139.81 GiB total capacity; "
                                  "137.90 GiB already allocated)")
    assert out_of_memory(cuda) == "2.1 GB asked of the GPU"
    cpu = RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                       "you tried to allocate 400000000000 bytes. Error code 12 (Cannot allocate memory)")
    assert out_of_memory(cpu) == "400.0 GB asked of the CPU"
    assert out_of_memory(MemoryError()) == "on the CPU"
    try:  # raised while handling it, as a library may
        try:
            raise cuda
        except RuntimeError as exc:
            raise ValueError("evaluation failed") from exc
    except ValueError as wrapped:
        assert out_of_memory(wrapped) == "2.1 GB asked of the GPU"
    assert out_of_memory(RuntimeError("shape mismatch")) is None and out_of_memory(None) is None


def test_every_entry_point_says_out_of_memory_in_one_line(capsys):
    """Outside a training run (an evaluation, a fine-tuning, a teacher cache at too large a batch) the entry points'
    one boundary says it, with the batch size to lower; any other exception keeps its traceback."""
    import torch

    from common.errors import exit_on_user_error

    def scoring():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 512.00 MiB (GPU 0; 1 GiB free)")

    assert exit_on_user_error(scoring)() == 2
    assert capsys.readouterr().err == ("error: out of memory (0.5 GB asked of the GPU); lower the batch size "
                                       "(--batch-size, or train.batch_size in a config), or run where there is more "
                                       "memory\n")

    def defect():
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        exit_on_user_error(defect)()


# --------------------------------------------------------------------------- resume


RESUME_ARGS = ["train.max_steps=40", "train.save_steps=10", "train.eval_steps=10", "train.logging_steps=1",
               "data.train_fraction=0.05",  # ~2 steps per epoch: the kill and the resume cross epochs
               "train.word_checkpoints=4k,8k,12k,16k"]  # about every 8 steps: a kill falls between two milestones


def assert_same_milestones(run, reference_run, untouched: dict | None = None) -> None:
    """The same milestone folders as the uninterrupted run's, bitwise; those in `untouched` (name -> mtime of its
    words_seen.json when the run was stopped) were not written again."""
    names = sorted(p.name for p in (reference_run / "milestones").iterdir())
    assert names == ["chck_12k", "chck_16k", "chck_4k", "chck_8k"]
    assert sorted(p.name for p in (run / "milestones").iterdir()) == names  # no temporary folder left
    for name in names:
        assert_bitwise_equal(weights(run / "milestones" / name), weights(reference_run / "milestones" / name))
        assert (run / "milestones" / name / "words_seen.json").read_text() == (
            reference_run / "milestones" / name / "words_seen.json"
        ).read_text()
    for name, mtime in (untouched or {}).items():
        assert (run / "milestones" / name / "words_seen.json").stat().st_mtime_ns == mtime, f"{name} was written again"


def milestone_mtimes(run) -> dict:
    folder = run / "milestones"
    return (
        {p.name: (p / "words_seen.json").stat().st_mtime_ns for p in folder.glob("chck_*")} if folder.is_dir() else {}
    )


@pytest.fixture
def reference(demo_args, tmp_path):
    """An uninterrupted run's final weights."""
    ok(run_cli("train", *demo_args, *RESUME_ARGS, "output.name=reference"))
    return weights(run_dir(tmp_path, name="reference") / "model")


def test_resume_after_sigkill_is_bitwise_identical(demo_args, tmp_path, reference):
    step = random.Random().randint(11, 36)
    run = run_dir(tmp_path)
    start_and_kill("train", [*demo_args, *RESUME_ARGS], run, step)
    assert not (run / "DONE").exists()
    written = milestone_mtimes(run)
    assert_user_error(run_cli("train", *demo_args, *RESUME_ARGS), "holds an unfinished run", "--resume")
    proc = ok(run_cli("train", *demo_args, *RESUME_ARGS, "--resume"))
    assert "resuming from" in proc.stdout
    assert_bitwise_equal(weights(run / "model"), reference), f"killed at step {step}"
    assert_same_milestones(run, run_dir(tmp_path, name="reference"), written)
    info = json.loads((run / "run.json").read_text())
    assert len(info["attempts"]) == 2 and info["attempts"][1]["resumed_from"] and info["status"] == "done"
    # each attempt says how it ended; the killed one could not say so itself, so the next one does
    assert [a["status"] for a in info["attempts"]] == ["killed", "done"], info["attempts"]
    assert "SIGKILL" in info["attempts"][0]["note"] and "end" not in info["attempts"][0]


@pytest.mark.parametrize("sig", [signal.SIGUSR2, signal.SIGTERM], ids=["usr2", "term"])
def test_a_stop_signal_saves_a_checkpoint_stops_and_resumes_bitwise(sig, demo_args, tmp_path, reference):
    """SLURM's warning signal before a time limit or preemption (SIGUSR2: exit 75), and SIGTERM (what SLURM sends at a
    preemption, on scancel and at a time limit without --signal, and `kill` and `timeout` send: the process ends by
    SIGTERM): a checkpoint at the step's end, no DONE, one line, and --resume ends as an uninterrupted run. (Until
    2026-12-04 SIGTERM ended training at once: the work since the last checkpoint was lost and run.json said
    "running".)"""
    from common.errors import EXIT_PREEMPTED

    run = run_dir(tmp_path)
    proc = start_and_kill("train", [*demo_args, *RESUME_ARGS], run, random.Random().randint(11, 30), sig)
    usr2 = sig == signal.SIGUSR2
    assert proc.returncode == (EXIT_PREEMPTED if usr2 else -signal.SIGTERM), proc.stderr_text[-2000:]
    info = json.loads((run / "run.json").read_text())
    stopped = info["step"]
    assert info["status"] == ("preempted" if usr2 else "terminated") and not (run / "DONE").exists()
    assert checkpoint_problem(run / "checkpoints" / f"checkpoint-{stopped}") is None, (
        "no complete checkpoint at the stop"
    )
    said = "stopped on SIGUSR2" if usr2 else "stopped by SIGTERM"
    assert "Traceback" not in proc.stderr_text
    last = proc.stderr_text.strip().splitlines()[-1]
    assert last == f"{run}: {said} after saving checkpoint-{stopped}; rerun with --resume"
    written = milestone_mtimes(run)
    proc = ok(run_cli("train", *demo_args, *RESUME_ARGS, "--resume"))
    assert f"resuming from {run / 'checkpoints' / f'checkpoint-{stopped}'}" in proc.stdout
    assert_bitwise_equal(weights(run / "model"), reference)
    assert_same_milestones(run, run_dir(tmp_path, name="reference"), written)
    attempts = json.loads((run / "run.json").read_text())["attempts"]
    assert [a["status"] for a in attempts] == ["preempted" if usr2 else "terminated", "done"], attempts


def test_a_terminal_that_hangs_up_stops_training_after_a_checkpoint_and_it_resumes_bitwise(demo_args, tmp_path,
                                                                                           reference):
    """An ssh connection lost under a training typed at its terminal: SIGHUP, and every later write to the terminal
    fails. The training saves a checkpoint at the step's end, run.json says terminated by SIGHUP, the process ends by
    SIGHUP, and --resume ends as an uninterrupted run. (Until 2026-12-04 it ended at once, losing the steps since its
    last checkpoint, with run.json saying "running".)"""
    run = run_dir(tmp_path)
    after = random.Random().randint(11, 30)
    rc, screen = hang_up_when([sys.executable, "-m", "train", *demo_args, *RESUME_ARGS],
                              lambda: after in logged_steps(run / "metrics.jsonl"))
    info = json.loads((run / "run.json").read_text())
    assert rc == -signal.SIGHUP, (info, screen[-2000:])
    assert info["status"] == "terminated" and info.get("signal") == "SIGHUP", info  # it said "running"
    stopped = info["step"]
    assert stopped >= after
    assert not (run / "DONE").exists()
    assert checkpoint_problem(run / "checkpoints" / f"checkpoint-{stopped}") is None
    written = milestone_mtimes(run)
    proc = ok(run_cli("train", *demo_args, *RESUME_ARGS, "--resume"))
    assert f"resuming from {run / 'checkpoints' / f'checkpoint-{stopped}'}" in proc.stdout
    assert_bitwise_equal(weights(run / "model"), reference)
    assert_same_milestones(run, run_dir(tmp_path, name="reference"), written)


def test_under_nohup_a_hang_up_changes_nothing(demo_args, tmp_path):
    """SIGHUP ignored (nohup, or a shell's disown) stays ignored: the training goes on to the end."""
    run = run_dir(tmp_path)
    proc = subprocess.Popen(["nohup", sys.executable, "-m", "train", *demo_args, *RESUME_ARGS], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None and 5 not in logged_steps(run / "metrics.jsonl"):
        time.sleep(0.02)
    proc.send_signal(signal.SIGHUP)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()[-2000:]
    assert json.loads((run / "run.json").read_text())["status"] == "done" and (run / "DONE").exists()


def test_corrupt_and_half_written_checkpoints_are_skipped(demo_args, tmp_path, reference):
    run = run_dir(tmp_path)
    start_and_kill("train", [*demo_args, *RESUME_ARGS], run, 31)
    checkpoints = run / "checkpoints"
    assert (checkpoints / "checkpoint-30" / "COMPLETE").exists()
    # checkpoint-30: complete but its optimizer state is cut short; checkpoint-35: never finished writing
    optimizer = checkpoints / "checkpoint-30" / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[: optimizer.stat().st_size // 2])
    half = checkpoints / "checkpoint-35"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"\0" * 100)
    # metrics.jsonl as a node failure may leave it: up to the step the run resumes from, then half a line
    metrics = run / "metrics.jsonl"
    kept = [line for line in metrics.read_text().splitlines() if json.loads(line).get("step", 0) <= 20]
    metrics.write_text("".join(line + "\n" for line in kept) + kept[-1][: len(kept[-1]) // 2])
    proc = ok(run_cli("train", *demo_args, *RESUME_ARGS, "--resume"))
    assert "checkpoint-35 is unusable (no COMPLETE marker" in proc.stderr
    assert "checkpoint-30 is unusable (optimizer.pt has" in proc.stderr and "falling back" in proc.stderr
    assert "resuming from" in proc.stdout and "checkpoint-20" in proc.stdout
    assert (checkpoints / "corrupt-checkpoint-30").is_dir() and (
        checkpoints / "corrupt-checkpoint-35"
    ).is_dir()  # kept, not deleted
    assert_bitwise_equal(weights(run / "model"), reference)
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]  # every line whole again
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 41))  # step 21's row did not join the torn line
    from results.collect import read_run

    assert read_run(run)[0]["words_seen"] == rows[-1]["words_seen"]


def test_resume_with_a_changed_config_refuses_what_the_checkpoint_would_override(demo_args, tmp_path):
    """A run killed after checkpoint-10 (here: what a finished 20-step run leaves without its last checkpoint, model/
    and DONE). --resume with another learning rate, batch size or budget is refused and touches nothing: the
    checkpoint would bring back the old optimizer and schedule while config.yaml said otherwise. Logging and gradient
    clipping may change: a note says so, run.json's attempt records it, config.yaml holds the new values."""
    args = [*demo_args, "train.max_steps=20", "train.save_steps=10", "train.eval_steps=10"]
    ok(run_cli("train", *args))
    run = run_dir(tmp_path)
    for done in (run / "DONE", run / "model", run / "checkpoints" / "checkpoint-20"):
        subprocess.run(["rm", "-r", str(done)], check=True)
    snapshot = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    for change, said in (("optim.lr=0.001", "optim.lr: 0.003 -> 0.001"), ("train.batch_size=8", "train.batch_size: 16 "
                         "-> 8"), ("train.max_steps=40", "train.max_steps: 20 -> 40")):
        assert_user_error(run_cli("train", *args, change, "--resume"), str(run),
                          f"--resume continues a run with the config it started with, and this one differs ({said})",
                          f"resume with {run / 'config.yaml'}'s values, or start a new run")
        assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == snapshot  # nothing touched
    proc = ok(run_cli("train", *args, "train.logging_steps=2", "optim.max_grad_norm=0.5", "--resume"))
    assert (f"note: resuming {run} with optim.max_grad_norm: 1.0 -> 0.5; train.logging_steps: 5 -> 2" in proc.stderr
            and "do not match the ones in the" not in proc.stderr)  # the Trainer's table of the same is dropped
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "done" and info["attempts"][-1]["config_changes"] == [
        "optim.max_grad_norm: 1.0 -> 0.5", "train.logging_steps: 5 -> 2"]
    written = yaml.safe_load((run / "config.yaml").read_text())
    assert written["optim"]["max_grad_norm"] == 0.5 and written["train"]["logging_steps"] == 2
    assert [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r] == [
        5, 10, 12, 14, 16, 18, 20]


def test_resume_refuses_a_corpus_that_changed_since_the_run_started(demo_args, demo_root, tmp_path):
    """The same config over other text: a line added to a training file (or a new cleaner, or another tokenizer)
    packs other blocks under the same keys, and the checkpoint's data position would point into them. --resume is
    refused in one line naming the folder's blocks, and touches nothing; with the file restored it resumes. Changed dev
    files are refused the same way (the dev loss, and keep_best, compare across attempts)."""
    import shutil

    corpus = tmp_path / "corpus"
    shutil.copytree(demo_root / "train", corpus / "train")
    shutil.copytree(demo_root / "dev", corpus / "dev")
    args = [*demo_args, f"data.train_dir={corpus / 'train'}", f"data.dev_dir={corpus / 'dev'}", "train.max_steps=20"]
    ok(run_cli("train", *args))
    run = run_dir(tmp_path)
    blocks = json.loads((run / "run.json").read_text())["inputs"]
    assert blocks["data.train_dir"].startswith("train-") and blocks["data.dev_dir"].startswith("dev-")
    for done in (run / "DONE", run / "model", run / "checkpoints" / "checkpoint-20"):
        subprocess.run(["rm", "-r", str(done)], check=True)
    snapshot = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    for split in ("train", "dev"):
        (text,) = (corpus / split).glob("*")
        original = text.read_bytes()
        text.write_bytes(original + b"the dog saw a cat .\n")
        assert_user_error(run_cli("train", *args, "--resume"), str(run),
                          f"its checkpoints were trained on other inputs than the config reads now (data.{split}_dir: "
                          f"{blocks[f'data.{split}_dir']} -> {split}-", "restore them, or start a new run")
        assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == snapshot  # nothing touched
        text.write_bytes(original)
    proc = ok(run_cli("train", *args, "--resume"))
    assert f"resuming from {run / 'checkpoints' / 'checkpoint-10'}" in proc.stdout and (run / "DONE").is_file()


BUDGET_ARGS = ["train.max_steps=21", "train.save_steps=7", "train.eval_steps=7", "train.logging_steps=1",
               "data.train_fraction=0.05"]  # 2 steps per epoch: the budget ends inside an epoch


@pytest.fixture(scope="module")
def budget_reference(demo_root, cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("budget")
    args = [
        "config/runs/demo-teacher.yaml",
        f"data.train_dir={demo_root / 'train'}",
        f"data.dev_dir={demo_root / 'dev'}",
        f"data.cache_dir={cache_dir}",
        "optim.warmup_steps=5",
        *BUDGET_ARGS,
    ]
    ok(run_cli("train", *args, f"output.dir={out}"))
    return args, weights(out / "demo" / "teacher" / "model")


@pytest.mark.parametrize("window", ["kill", "usr2"])
def test_a_run_stopped_at_its_last_step_only_finishes(window, budget_reference, tmp_path):
    """Killed after the final checkpoint (before DONE), or preempted in the last step: --resume takes no
    further step (it used to train step 22 of 21) and exports what an uninterrupted run exports."""
    from common.errors import EXIT_PREEMPTED

    args, reference = budget_reference
    args = [*args, f"output.dir={tmp_path}"]
    run = tmp_path / "demo" / "teacher"
    proc = stop_at_budget("train", args, run, 21, window)
    assert proc.returncode == (-signal.SIGKILL if window == "kill" else EXIT_PREEMPTED), proc.stderr_text[-2000:]
    assert not (run / "DONE").exists()
    proc = ok(run_cli("train", *args, "--resume"))
    assert f"resuming from {run / 'checkpoints' / 'checkpoint-21'}" in proc.stdout
    assert json.loads((run / "DONE").read_text())["step"] == 21
    assert_bitwise_equal(weights(run / "model"), reference)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().split("\n") if line]
    assert max(r["step"] for r in rows) == 21 and [r["step"] for r in rows if "loss" in r] == list(range(1, 22))


def test_early_stopping_on_a_flat_dev_loss(demo_args, tmp_path):
    # A learning rate below float32 resolution leaves the weights, hence the dev loss, unchanged:
    # patience 1 stops at the second evaluation and keeps the first.
    ok(run_here("train", *demo_args, "optim.lr=1e-30", "optim.min_lr=0", "train.early_stopping_patience=1",
                "train.eval_steps=5", "train.save_steps=5"))
    done = json.loads((run_dir(tmp_path) / "DONE").read_text())
    assert done["step"] == 10 and done["best_checkpoint"].endswith("checkpoint-5")


def test_torchrun_two_processes(demo_args, tmp_path, monkeypatch):
    # Two CPU processes in one gloo group: rank 0 alone writes the run directory, each rank saves its RNG, and rank 0
    # alone prints what both would print alike (a note, the banner, the last line). Its wandb run holds every logged
    # step and the exit code: a rank ends by os._exit (train.trainer.leave), which skipped what Python runs at exit,
    # and the file held its header alone until 2026-12-04.
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    milestones = ["train.max_steps=10", "train.word_checkpoints=3k,6k,9k,1M"]
    two_ranks = ("torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "train", *demo_args,
                 *milestones, "train.report_to=wandb")
    proc = ok(run_cli(*two_ranks))
    run = run_dir(tmp_path)
    (path,) = (run / "tracking" / "wandb").glob("offline-run-*/run-*.wandb")
    records = wandb_records(path)
    assert sum(r.HasField("history") for r in records) >= 2  # steps 5 and 10, and the final evaluation
    assert [r.exit.exit_code for r in records if r.HasField("exit")] == [0]
    said = proc.stdout + proc.stderr
    for line in ("note: train.word_checkpoints: 1 milestone(s) from 1M on", "gpt2-tiny: 141,056 parameters",
                 f"{run}: done at step 10"):
        assert said.count(line) == 1, (line, said)
    assert "find_unused_parameters" not in said  # DDP is told no parameter goes unused: no search, no warning
    said = ok(run_cli(*two_ranks, "--resume")).stdout
    assert said.count(f"{run}: already finished (DONE); nothing to do") == 1, said
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [5, 10]  # written once, not once per rank
    assert train_rows[-1]["tokens_seen"] == 10 * 16 * 64 * 2  # steps x batch x block x world size
    assert (run / "checkpoints" / "checkpoint-10" / "rng_state_1.pth").exists() and (run / "DONE").exists()
    # words are counted over both ranks: the milestones fall where one rank with the same global batch puts them
    ok(run_cli("train", *demo_args, *milestones, "train.batch_size=32", "output.name=one-rank"))
    for name in ("chck_3k", "chck_6k", "chck_9k"):
        two, one = (
            json.loads((r / "milestones" / name / "words_seen.json").read_text())
            for r in (run, run_dir(tmp_path, name="one-rank"))
        )
        assert (two["step"], two["words_seen"]) == (one["step"], one["words_seen"]), name
    one_rank = json.loads((run_dir(tmp_path, name="one-rank") / "DONE").read_text())
    assert (
        json.loads((run / "DONE").read_text())["words_seen"]
        == one_rank["words_seen"]
        == train_rows[-1]["words_seen"]
        > 9000
    )


def test_two_nodes_have_one_writer_and_train_as_one_node_of_two(demo_args, tmp_path):
    """torchrun --nnodes 2 on this machine, one process per node, over gloo. Node 1's rank gets its own output.dir,
    so anything it wrote would show there: only its RNG state (each rank's own, as the Trainer saves it) may."""
    import os
    import socket

    ok(run_cli("torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "train", *demo_args,
               "train.max_steps=10", f"output.dir={tmp_path / 'one-node'}"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # torchrun gives each process one thread when it starts several per node; one per node keeps all cores, and a
    # different thread count sums the matmuls in another order. Same threads, same result, bit for bit.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--node_rank",
                str(rank),
                "--nproc_per_node",
                "1",
                "--rdzv-endpoint",
                f"127.0.0.1:{port}",
                "-m",
                "train",
                *demo_args,
                "train.max_steps=10",
                f"output.dir={tmp_path / f'node{rank}'}",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    written = sorted(str(p.relative_to(tmp_path / "node1")) for p in (tmp_path / "node1").rglob("*") if p.is_file())
    assert written and all(
        w.startswith("demo/teacher/checkpoints/checkpoint-") and w.endswith("/rng_state_1.pth") for w in written
    ), written
    run = tmp_path / "node0" / "demo" / "teacher"
    assert json.loads((run / "DONE").read_text())["step"] == 10
    assert json.loads((run / "run.json").read_text())["attempts"][0]["world_size"] == 2
    assert_bitwise_equal(weights(run / "model"), weights(tmp_path / "one-node" / "demo" / "teacher" / "model"))


def test_trackers_get_the_metrics_and_the_config(demo_args, tmp_path):
    """train.report_to=tensorboard,wandb through the Trainer's integrations, without a network (wandb offline): the
    TensorBoard events parse and hold the loss, the words seen and the config with the grid's axes; wandb writes its
    local run folder under <run>/tracking with the same config."""
    import os

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    grid = {"grid": "g", "stage": "s", "axes": {"optim.lr": 0.003}, "recipe": "config/runs/demo-teacher.yaml"}
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "BABYDISTILL_GRID": json.dumps(grid),
           "TOKENIZERS_PARALLELISM": "false"}
    env.pop("WANDB_DIR", None)
    ok(subprocess.run([sys.executable, "-m", "train", *demo_args, "train.report_to=tensorboard,wandb"], cwd=ROOT,
                      capture_output=True, text=True, timeout=600, env=env))
    run = tmp_path / "runs" / "demo" / "teacher"
    assert list((run / "tracking" / "tensorboard").glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(run / "tracking" / "tensorboard"))
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    assert {"train/loss", "train/words_seen", "eval/loss"} <= set(scalars), scalars
    words = [e.value for e in acc.Scalars("train/words_seen")]
    assert words == sorted(words) and words[0] > 0
    assert len(acc.Scalars("train/loss")) == 30 // 5  # every logging step
    text = acc.Tensors("babydistill/config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"optim.lr": 0.003' in text and '"max_steps": 30' in text
    (records,) = (run / "tracking" / "wandb").glob("offline-run-*/run-*.wandb")  # wandb's local run, synced later
    data = records.read_bytes()
    assert b"babydistill" in data and b"optim.lr" in data and b"words_seen" in data


def wandb_records(path: Path) -> list:
    """The records of wandb's local run file: a 7-byte header, then LevelDB's log format (blocks of 32 KiB; each
    fragment with a 7-byte header of checksum, length and type: 1 whole, 2 first, 3 middle, 4 last), each record a
    protobuf `Record`. (wandb 0.31 reads it only in its Go core.)"""
    import struct

    from wandb.proto import wandb_internal_pb2

    data, pos, part, records = path.read_bytes(), 7, b"", []
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:  # padding to the block's end
            pos += left
            continue
        part += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(part)
            records.append(record)
            part = b""
    return records


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["int", "term"])
def test_a_stopped_run_keeps_its_tracked_steps(sig, demo_args, tmp_path, monkeypatch):
    """A training stopped by Ctrl-C or SIGTERM ends by that signal, which skipped what Python runs at exit: wandb's
    local run file held its header alone, not one logged step (since 2026-12-03 for Ctrl-C; SIGTERM always). Now its
    logged steps are there and it ends with the stop's exit code (130, 143)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    run = run_dir(tmp_path)
    proc = start_and_kill("train", [*demo_args, "train.max_steps=5000", "train.logging_steps=1",
                                    "train.report_to=wandb"], run, 8, sig)
    assert proc.returncode == -sig, proc.stderr_text[-3000:]
    (path,) = (run / "tracking" / "wandb").glob("offline-run-*/run-*.wandb")
    records = wandb_records(path)
    kinds = [r.WhichOneof("record_type") for r in records]
    assert kinds.count("history") >= 8, kinds
    assert [r.exit.exit_code for r in records if r.HasField("exit")] == [128 + sig], kinds


def test_an_unknown_or_missing_tracker_is_refused_before_anything_is_written(demo_args, tmp_path):
    import importlib.util

    assert_user_error(run_cli("train", *demo_args, "train.report_to=tensorbord"), "train.report_to", "'tensorboard'")
    assert_user_error(run_cli("train", *demo_args, "train.report_to=tensorboard,none2"), "train.report_to", "'none2'")
    assert importlib.util.find_spec("mlflow") is None, "this test needs a tracker whose package is not installed"
    assert_user_error(run_cli("train", *demo_args, "train.report_to=mlflow"), "train.report_to", "pip install mlflow")
    assert not (tmp_path / "runs").exists()


def test_a_run_alone_shows_one_progress_bar(demo_args):
    """On a terminal: the banner lines, one bar over the training steps (redrawn in place, with the losses), the
    closing line. No bar for weight loading, shard writing or evaluation, no printed log dicts."""
    from conftest import run_in_terminal

    rc, screen = run_in_terminal("train", *demo_args)
    assert rc == 0, screen[-3000:]
    frames = [part for line in screen.split("\n") for part in line.split("\r") if "%|" in part]
    assert frames and all("/30 [" in f and "step" in f for f in frames), frames[:5]  # every frame is the one bar
    assert "/30 " in frames[-1] and "loss=" in frames[-1] and "dev=" in frames[-1]
    assert not any(needle in screen for needle in ("Loading weights", "Writing model shards", "{'loss'", "eval_loss"))
    lines = [line for line in screen.split("\n") if line.strip()]
    assert len(lines) <= 12, lines  # data preparation (first run), banner, milestones note, the bar, the closing line


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_the_attention_kernel_is_the_configs(attn, tmp_path):
    """model.attn_implementation reaches the built model (sdpa by default: PyTorch's fused attention); eager and sdpa
    give the same logits on the same weights."""
    import torch

    from common import config as cfglib
    from train import models
    from train.config import RunConfig

    cfg = cfglib.load(RunConfig, ROOT / "config" / "runs" / "demo-teacher.yaml", [f"model.attn_implementation={attn}"],
                      check=False)
    assert RunConfig().model.attn_implementation == "sdpa"

    class Tok:
        pad_token_id, bos_token_id, eos_token_id = 0, 1, 2

    torch.manual_seed(0)
    _, model = models.build_model(cfg.model, Tok())
    assert model.config._attn_implementation == attn
    other = "sdpa" if attn == "eager" else "eager"
    twin = type(model)._from_config(model.config, attn_implementation=other)
    twin.load_state_dict(model.state_dict())
    ids = torch.randint(3, cfg.model.vocab_size, (2, 16))
    torch.testing.assert_close(model.eval()(ids).logits, twin.eval()(ids).logits, rtol=1e-5, atol=1e-5)


def test_gpu_options_refused_where_they_cannot_run(demo_args, tmp_path):
    """flash_attention_2 without its package (or a GPU), and train.compile without a compiler for torch.compile's
    backend: one line naming the key and what to install, nothing written."""
    import os

    assert_user_error(run_cli("train", *demo_args, "model.attn_implementation=flash_attention_2"),
                      "model.attn_implementation", "flash-attn")
    env = {**os.environ, "CXX": "/nonexistent/g++", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "train", *demo_args, "train.compile=true"], cwd=ROOT,
                          capture_output=True, text=True, env=env)
    assert_user_error(proc, "train.compile", "C++ compiler (/nonexistent/g++)", "train.compile=false")
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_compiled_training_runs_and_learns(demo_args, tmp_path):
    """train.compile=true: torch.compile (inductor, C++ on this CPU) through the Trainer's torch_compile; the run
    finishes and its dev loss is that of the same run uncompiled to 1% (compiled kernels sum in another order; after
    ten steps the two differ by about 0.1%)."""
    ok(run_cli("train", *demo_args, "train.max_steps=10", "train.save_steps=10", "train.eval_steps=10",
               "output.name=plain"))
    ok(run_cli("train", *demo_args, "train.max_steps=10", "train.save_steps=10", "train.eval_steps=10",
               "output.name=compiled", "train.compile=true"))
    done = {n: json.loads((tmp_path / "runs" / "demo" / n / "DONE").read_text()) for n in ("plain", "compiled")}
    assert done["compiled"]["dev_loss"] == pytest.approx(done["plain"]["dev_loss"], rel=1e-2)
