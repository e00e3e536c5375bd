"""The study grid on real text (config/grids/study-cpu.yaml), scaled down: every point of it for a few steps on a
slice of the partial BabyLM corpus, evaluated on a slice of the real evaluation data, then the results, the
baselines table and the learning curve. The full study is a benchmark (README), not a test."""
from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from conftest import ok, shared
from test_grid import launch

SHORT = [
    "train.epochs=0",
    "train.max_words=",
    "train.max_steps=4",
    "train.eval_steps=2",
    "train.save_steps=2",
    "train.logging_steps=2",
    "train.word_checkpoints=[5k]",
    "optim.warmup_steps=1",
    "data.dev_blocks=4",
    "data.num_proc=1",
]


def _head(src, dst, n: int) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("".join(src.read_text(encoding="utf-8").splitlines(keepends=True)[:n]), encoding="utf-8")


@pytest.fixture
def study_slice(tmp_path):
    """The corpus (first lines of each file) and the evaluation data (two BLiMP paradigms, one supplement file, the
    WUG adjectives and the reading data), each cut short."""
    corpus = shared("babylm_2023_partial")
    for split, n in (("train_10M", 300), ("dev", 60)):
        for f in sorted((corpus / split).iterdir()):
            _head(f, tmp_path / "corpus" / split / f.name, n)
    data = tmp_path / "evaluation_data"
    for name in ("anaphor_gender_agreement", "wh_questions_object_gap"):
        _head(shared("blimp_filtered") / f"{name}.jsonl", data / "blimp_filtered" / f"{name}.jsonl", 40)
    _head(shared("blimp_supplement") / "hypernym.jsonl", data / "blimp_supplement" / "hypernym.jsonl", 40)
    shutil.copy(shared("babylm2025_extra_tasks.tar.gz"), tmp_path / "extras.tar.gz")
    from eval.download import unpack

    unpack(tmp_path / "extras.tar.gz", data)
    shutil.rmtree(data / "entity_tracking")
    return tmp_path / "corpus", data


@pytest.mark.slow
def test_the_study_grid_runs_scaled_down_and_pairs_every_method_with_its_baseline(workdir, study_slice):
    corpus, data = study_slice
    sets = [f"data.train_dir={corpus / 'train_10M'}", f"data.dev_dir={corpus / 'dev'}",
            f"data.cache_dir={workdir / 'cache'}", *SHORT]
    grid = [f"eval_data_dir={data}", "tasks=[blimp_filtered,blimp_supplement,wug_adj,reading]", "finetune=[]",
            "finetune_data_dir=", "executor.kind=debug"]  # in this process: no interpreter start per point
    proc = ok(launch(workdir, "config/grids/study-cpu.yaml", *grid, *(a for s in sets for a in ("--set", s))))
    runs = workdir / "runs" / "study"
    names = ["teacher-llama", "teacher-gpt2", "student", "kd", "palenkallama", "contrastive", "dskd-aux", "reverse-kl",
             "wml", "wml__wml.solo_peer=0", "wml__wml.solo_peer=1"]
    for name in names:
        assert (runs / name / "DONE").is_file(), name
    table = pd.read_csv(runs / "_results" / "study.csv")
    assert sorted(table["recipe"].unique()) == sorted(names) and len(table) == 12  # two WML peers
    for task in ("blimp_filtered", "blimp_supplement", "wug_adj", "reading"):
        assert table[task].notna().all(), task
    scored = json.loads((runs / "student" / "eval" / "blimp_filtered.json").read_text())
    assert scored["n_items"] == 80 and scored["convention"] == "babylm2025"  # the grid's convention reached eval
    # every student and peer sees the same words in the same order: equal words seen, one data key
    students = table[table["recipe"].isin(names[2:])]
    assert students["words_seen"].nunique() == 1 and students["data_key"].nunique() == 1
    baselines = (runs / "_results" / "study-baselines.md").read_text()
    rows = {tuple(c.strip() for c in line.split("|")[1:2] + line.split("|")[3:4]) for line in
            baselines.splitlines()[2:]}
    assert rows == {
        *((f"{m} llama-tiny", "student llama-tiny") for m in ("kd", "palenkallama", "contrastive", "dskd-aux",
                                                              "reverse-kl")),
        *((f"wml gpt2-tiny peer-{i}", f"wml__wml.solo_peer={i} gpt2-tiny peer-{i}-solo") for i in (0, 1)),
    }, baselines
    assert "each method against its baseline" in proc.stdout and "not compared" not in proc.stdout
    tasks = {line.split("|")[4].strip() for line in baselines.splitlines()[2:]}
    assert tasks == {"blimp_filtered", "blimp_supplement"}  # accuracy tasks only: WUG's rho and reading's ΔR² are not
    # learning curves: the students and the WML peers at their milestone; the teachers' and twins' stages have none
    for name in names:
        curve = runs / name / "eval" / "curve.json"
        assert curve.is_file() == (name in names[2:9]), name
    assert (runs / "_results" / "study-curve-blimp_filtered.png").read_bytes()[:4] == b"\x89PNG"
    again = ok(launch(workdir, "config/grids/study-cpu.yaml", "--dry-run", *grid,
                      *(a for s in sets for a in ("--set", s))))
    assert again.stdout.count(" done") == len(names)

    # the second seed beside the first (config/grids/study-cpu-seed7.yaml): its teachers stage is the first one's,
    # already done; then each setting's spread over the two seeds and each method's difference at both
    proc = ok(launch(workdir, "config/grids/study-cpu-seed7.yaml", *grid, *(a for s in sets for a in ("--set", s))))
    assert "stage teachers: 2 point(s), 0 incomplete" in proc.stdout
    for name in names[2:]:
        assert (runs / f"{name}__train.seed=7" / "DONE").is_file(), name
    seeds = (runs / "_results" / "study-seeds.md").read_text()
    spread, _, over = seeds.partition("## Each method against its baseline at every seed")
    settings = {tuple(c.strip() for c in line.split("|")[1:5]) for line in spread.splitlines() if line[:2] == "| "}
    assert settings - {("setting", "method", "model", "seeds"), ("---",) * 4} == {
        ("student", "train", "llama-tiny", "7, 42"),
        *((m, method, "llama-tiny", "7, 42") for m, method in (
            ("kd", "kd:ce+logit_kd"), ("palenkallama", "kd:ce+logit_kd+hidden_mse"),
            ("contrastive", "kd:ce+logit_kd+contrastive"), ("dskd-aux", "kd:ce+logit_kd+hidden_mse+aux_kd"),
            ("reverse-kl", "kd:ce+reverse_kl"))),
        *(("wml", "wml-mutual", f"gpt2-tiny peer-{i}", "7, 42") for i in (0, 1)),
        *((f"wml__wml.solo_peer={i}", "solo-twin", f"gpt2-tiny peer-{i}-solo", "7, 42") for i in (0, 1)),
    }, seeds
    table = pd.read_csv(runs / "_results" / "study.csv")
    pairs = {tuple(c.strip() for c in line.split("|")[1:4]) for line in over.splitlines() if line[:2] == "| "}
    assert {p for p in pairs if p[2] == "blimp_filtered"} == {
        *((f"{m} llama-tiny", "student llama-tiny", "blimp_filtered") for m in ("kd", "palenkallama", "contrastive",
                                                                                 "dskd-aux", "reverse-kl")),
        *((f"wml gpt2-tiny peer-{i}", f"wml__wml.solo_peer={i} gpt2-tiny peer-{i}-solo", "blimp_filtered")
          for i in (0, 1)),
    }, over
    kd = table[table["recipe"].isin(["kd", "kd__train.seed=7"])].set_index("seed")["blimp_filtered"]
    student = table[table["recipe"].isin(["student", "student__train.seed=7"])].set_index("seed")["blimp_filtered"]
    kd_line = next(line for line in over.splitlines() if line.startswith("| kd llama-tiny | student llama-tiny | "
                                                                             "blimp_filtered |"))
    # each seed's difference is that seed's kd minus that seed's student (the table's macro BLiMP is the accuracy
    # over pairs here: both paradigms of the slice have 40 pairs)
    for seed in (7, 42):
        assert f"{seed}: {kd[seed] - student[seed]:+.3f} (" in kd_line, kd_line
