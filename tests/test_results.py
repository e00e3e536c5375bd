"""python -m results: collecting real run directories into tables and plots, incomplete runs, paired tests."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import assert_user_error, ok, run_cli, run_here

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory, demo_root, cache_dir) -> Path:
    """runs/grid: two finished demo runs (grid points with two axes), both evaluated on the demo pairs."""
    root = tmp_path_factory.mktemp("results") / "runs"
    for name, lr in (("a", "3e-3"), ("b", "1e-3")):
        ok(
            run_here(
                "train",
                "config/runs/demo-teacher.yaml",
                f"data.train_dir={demo_root / 'train'}",
                f"data.dev_dir={demo_root / 'dev'}",
                f"data.cache_dir={cache_dir}",
                f"output.dir={root}",
                "output.experiment=grid",
                f"output.name={name}",
                "train.max_steps=20",
                "train.save_steps=10",
                "train.eval_steps=10",
                "optim.warmup_steps=5",
                f"optim.lr={lr}",
                "optim.min_lr=1e-4",
            )
        )
        run = root / "grid" / name
        ok(run_here("eval", str(run / "model"), "--tasks", "demo_pairs", "--data-dir", str(demo_root), "--no-progress"))
        (run / "grid.json").write_text(json.dumps({"grid": "demo", "axes": {"optim.lr": float(lr), "seed": 1}}))
    return root


def test_collect_writes_beside_the_runs_never_into_the_package(runs):
    """Without --out the table and plots go to the experiment's _results/ (for a run directory too), run from the
    repository root, and nothing appears under the results package's own folder."""
    from conftest import ROOT

    before = sorted(p.name for p in (ROOT / "results").iterdir())
    try:
        for root in (runs / "grid", runs / "grid" / "a"):
            proc = ok(run_cli("results", "collect", str(root), "--name", "grid"))
            assert (runs / "grid" / "_results" / "grid.csv").is_file() and str(
                runs / "grid" / "_results" / "grid.csv"
            ) in proc.stdout
            assert (runs / "grid" / "_results" / "grid-tasks.png").read_bytes()[:4] == b"\x89PNG"
    finally:
        shutil.rmtree(runs / "grid" / "_results", ignore_errors=True)
    assert sorted(p.name for p in (ROOT / "results").iterdir()) == before


def test_collect_writes_csv_markdown_and_plots(runs, tmp_path):
    import pandas as pd

    unfinished = runs / "grid" / "unfinished"
    shutil.copytree(runs / "grid" / "a", unfinished)
    (unfinished / "DONE").unlink()
    broken = runs / "grid" / "broken"
    shutil.copytree(runs / "grid" / "a", broken)
    (broken / "run.json").write_text("{ not json")
    try:
        proc = ok(run_here("results", "collect", str(runs / "grid"), "--out", str(tmp_path / "out")))
    finally:
        shutil.rmtree(unfinished)
        shutil.rmtree(broken)
    assert f"incomplete: {unfinished}: DONE: missing: the run has not finished" in proc.stdout
    assert f"incomplete: {broken}: run.json: unreadable (JSONDecodeError" in proc.stdout
    df = pd.read_csv(tmp_path / "out" / "grid.csv")
    assert sorted(df["recipe"]) == ["a", "b"] and set(df["method"]) == {"train"}
    for _, row in df.iterrows():
        run = runs / "grid" / row["recipe"]
        summary = json.loads((run / "eval" / "demo_pairs.json").read_text())
        assert row["demo_pairs"] == pytest.approx(summary["accuracy"]) and row["demo_pairs_stderr"] == pytest.approx(
            summary["stderr"]
        )
        assert row["dev_ce"] == pytest.approx(json.loads((run / "run.json").read_text())["dev_loss"])
        assert row["params"] == 141_056 and row["tokens_seen"] == 20 * 16 * 64 and row["gpu_hours"] == 0
        assert row["words_seen"] == json.loads((run / "DONE").read_text())["words_seen"] > 0
        assert row["axis:optim.lr"] in (3e-3, 1e-3)
    table = (tmp_path / "out" / "grid.md").read_text()
    first = df.iloc[0]
    assert f"{first['demo_pairs']:.3f} ± {first['demo_pairs_stderr']:.4f}" in table and "| optim.lr |" in table
    for png in ("grid-tasks.png", "grid-curves.png", "grid-heatmap.png"):  # two grid axes (optim.lr x seed): a heatmap
        assert (tmp_path / "out" / png).read_bytes()[:4] == b"\x89PNG"


def test_a_collection_removes_what_its_previous_one_wrote_and_nothing_else(runs, tmp_path):
    """Collected again under the same name, a folder holds this collection's files only: what the last one wrote and
    this one does not (the task bars, once the runs collected have no scores) is removed, by the manifest; files it
    did not write, and entries of a manifest that point outside the collection, are left alone."""
    out = tmp_path / "out"
    unscored = tmp_path / "grid" / "a"  # a run not evaluated yet
    shutil.copytree(runs / "grid" / "a", unscored)
    shutil.rmtree(unscored / "eval")

    def collect(*runs_given: Path) -> set[Path]:
        proc = ok(run_here("results", "collect", *map(str, runs_given), "--out", str(out), "--name", "g"))
        return {Path(p) for p in proc.stdout.strip().splitlines()[-1].split(" -> ")[1].split(", ")}

    first = collect(runs / "grid")
    assert out / "g-tasks.png" in first
    mine = [out / "g-mine.md", out / "notes.txt", tmp_path / "outside.txt"]
    for path in mine:
        path.write_text("a person's file")
    second = collect(unscored)
    assert first - second == {out / "g-tasks.png"}
    files = {p for p in out.rglob("*") if p.is_file()}
    assert files == second | {out / "g-mine.md", out / "notes.txt", out / ".g.collected.json"}
    written = json.loads((out / ".g.collected.json").read_text())
    (out / ".g.collected.json").write_text(json.dumps(written + ["../outside.txt", "notes.txt", str(out / "g-mine.md"),
                                                                 "g-x/../../outside.txt"]))
    collect(unscored)
    assert all(path.read_text() == "a person's file" for path in mine)
    # a manifest that no longer lists the table: that g.csv may be anyone's, so the collection is refused, not written
    (out / ".g.collected.json").write_text(json.dumps([e for e in written if e != "g.csv"]))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert_user_error(run_here("results", "collect", str(unscored), "--out", str(out), "--name", "g"),
                      f"{out / 'g.csv'}: exists and was not written by python -m results collect")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_a_second_collection_of_one_name_into_one_folder_is_refused_and_writes_nothing(runs, tmp_path):
    """Two `results collect --name g` into one folder at once (a grid's launcher and a person): each replaced the
    other's files and manifest, and one could refuse the other's fresh table as "not written by results collect".
    While one holds the collection's lock, the second is refused in one line naming it and writes nothing; another
    name collects beside it."""
    from common.locks import FolderLock

    out = tmp_path / "out"
    out.mkdir()
    with FolderLock(out, ".g.collect.lock"):
        proc = run_here("results", "collect", str(runs / "grid"), "--out", str(out), "--name", "g")
        assert_user_error(proc, f"{out}: another results collect is writing the collection 'g' there (host ",
                          "let it end")
        assert sorted(p.name for p in out.iterdir()) == [".g.collect.lock"]
        ok(run_here("results", "collect", str(runs / "grid"), "--out", str(out), "--name", "other"))
    assert (out / "other.csv").is_file() and not (out / ".g.collect.lock").exists()
    ok(run_here("results", "collect", str(runs / "grid"), "--out", str(out), "--name", "g"))
    assert (out / "g.csv").is_file() and not (out / ".g.collect.lock").exists()


def test_correlations_and_reading_are_labelled_not_accuracies(runs, tmp_path):
    """A run evaluated on WUG (Spearman's rho) and reading (ΔR²): their columns hold those scores, labelled so."""
    import tarfile

    import pandas as pd

    from conftest import shared

    with tarfile.open(shared("babylm2025_extra_tasks.tar.gz")) as tf:
        tf.extractall(tmp_path / "data", filter="data")
    run = tmp_path / "exp" / "a"
    shutil.copytree(runs / "grid" / "a", run)
    ok(
        run_here(
            "eval",
            str(run / "model"),
            "--tasks",
            "wug_adj,reading",
            "--data-dir",
            str(tmp_path / "data"),
            "--no-progress",
        )
    )
    ok(run_here("results", "collect", str(tmp_path / "exp"), "--out", str(tmp_path / "out")))
    df = pd.read_csv(tmp_path / "out" / "exp.csv")
    wug, reading = (json.loads((run / "eval" / f"{t}.json").read_text()) for t in ("wug_adj", "reading"))
    row = df.iloc[0]
    assert row["wug_adj"] == pytest.approx(wug["score"]) and row["wug_adj_metric"] == "spearman"
    assert row["reading"] == pytest.approx(reading["score"]) and row["reading_metric"] == "delta_r2"
    assert row["reading:eye_tracking"] == pytest.approx(reading["eye_tracking"])
    assert row["demo_pairs_metric"] == "accuracy"
    table = (tmp_path / "out" / "exp.md").read_text()
    assert "| wug_adj (Spearman's rho) |" in table and "| reading (ΔR² ×100) |" in table and "| demo_pairs |" in table
    assert f"| {row['wug_adj']:.3f} |" in table
    assert (tmp_path / "out" / "exp-tasks.png").read_bytes()[:4] == b"\x89PNG"
    # McNemar and the bootstrap compare right and wrong answers: a correlation or a regression has none (WUG's
    # pairs file was compared as if preferring the first sentence were right)
    for name, needle in (("wug_adj", "Spearman's rho"), ("reading", "ΔR² ×100")):
        assert_user_error(run_here("results", "compare", str(run), str(run), "--task", name),
                          f"--task {name}: its score is {needle}, not an accuracy")
    # a null score (a rho that is undefined) in every run of a collection: a gap in the table and the plot (a column
    # of nothing but nulls reached matplotlib as None, and the bar plot ended in a TypeError traceback)
    for name in ("wug_adj", "reading"):
        result = run / "eval" / f"{name}.json"
        result.write_text(json.dumps({**json.loads(result.read_text()), "score": None, "eye_tracking": None}))
    ok(run_here("results", "collect", str(tmp_path / "exp"), "--out", str(tmp_path / "null")))
    row = pd.read_csv(tmp_path / "null" / "exp.csv").iloc[0]
    assert pd.isna(row["wug_adj"]) and pd.isna(row["reading"]) and pd.isna(row["reading:eye_tracking"])
    assert "| – | – |" in (tmp_path / "null" / "exp.md").read_text()
    assert (tmp_path / "null" / "exp-tasks.png").read_bytes()[:4] == b"\x89PNG"


def test_a_score_on_part_of_the_releases_items_is_said_to_be_so_wherever_it_is_shown(runs, tmp_path):
    """BLiMP from 5 of its 67 files beside the whole supplement: one note before scoring, a † in `eval`'s table, the
    gap in `blimp_filtered.json` (`partial_release`), a † and its footnote in the collection's table and a
    `blimp_filtered_partial` column; the whole supplement has none of them."""
    import pandas as pd

    from conftest import shared

    data = tmp_path / "data"
    shutil.copytree(shared("blimp_supplement"), data / "blimp_supplement")
    (data / "blimp_filtered").mkdir()
    for file in sorted(Path(shared("blimp_filtered")).glob("*.jsonl"))[:5]:
        shutil.copy(file, data / "blimp_filtered")
    run = tmp_path / "exp" / "a"
    shutil.copytree(runs / "grid" / "a", run)
    proc = ok(run_here("eval", str(run / "model"), "--tasks", "blimp_filtered,blimp_supplement", "--data-dir",
                       str(data), "--no-progress"))
    gap = "5 of the release's 67 subtasks (4,648 of its 59,875 items); missing causative and 61 more"
    notes = [line for line in proc.stdout.splitlines() if line.startswith("note:")]
    assert notes == [f"note: blimp_filtered: {data / 'blimp_filtered'}/*.jsonl holds {gap}: scored as it is, which is "
                     "not the release's blimp_filtered score (recorded as partial_release in its result)"]
    rows = {line.split()[0]: line for line in proc.stdout.splitlines() if line.startswith("blimp_")}
    assert " 4648 †" in rows["blimp_filtered"] and "†" not in rows["blimp_supplement"]
    assert "† part of the release's items, not its score: blimp_filtered" in proc.stdout
    results = {t: json.loads((run / "eval" / f"{t}.json").read_text()) for t in ("blimp_filtered", "blimp_supplement")}
    assert results["blimp_filtered"]["partial_release"] == gap
    assert results["blimp_supplement"]["partial_release"] is None
    ok(run_here("results", "collect", str(tmp_path / "exp"), "--out", str(tmp_path / "out")))
    row = pd.read_csv(tmp_path / "out" / "exp.csv").iloc[0]
    assert row["blimp_filtered_partial"] == gap and "blimp_supplement_partial" not in row
    table = (tmp_path / "out" / "exp.md").read_text()
    assert f"| {row['blimp_filtered']:.3f} ± {row['blimp_filtered_stderr']:.4f} † |" in table
    assert f"| {row['blimp_supplement']:.3f} ± {row['blimp_supplement_stderr']:.4f} |" in table
    assert table.endswith("\n† scored on part of the release's items (the task's `partial_release`, in the csv as "
                          "`<task>_partial`): not the release's score\n")


def test_a_fine_tuned_task_scored_by_f1_is_collected_ranked_and_compared(runs, tmp_path):
    """MRPC and QQP are scored by F1. Until 2026-12-03 `results collect` knew only accuracy, rho and ΔR², so a run
    fine-tuned on either was left out as unusable ("metric is 'f1'"), and a grid could rank none of its points for
    the finalists, whatever select.metric was."""
    import pandas as pd

    from common import config as cfglib
    from grid.config import GridConfig
    from grid.plan import Point, finalists
    from results.collect import read_run

    glue = tmp_path / "glue"
    glue.mkdir()
    for split, n in (("train", 16), ("valid", 8)):
        rows = [{"sentence1": "The cat sat on the mat.", "sentence2": f"A cat sat on mat {k}.", "label": k % 2}
                for k in range(n)]
        (glue / f"mrpc.{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    exp = tmp_path / "exp"
    for name in ("a", "b"):
        shutil.copytree(runs / "grid" / name, exp / name)
        proc = ok(run_here("eval", "finetune", str(exp / name / "model"), "--tasks", "mrpc", "--data-dir", str(glue),
                           "--epochs", "1", "--batch-size", "8", "--no-progress"))
        assert "mrpc: F1 " in proc.stdout
    result = exp / "b" / "eval" / "mrpc.json"  # b's F1 set apart from a's, so that the ranking is known
    summary = json.loads(result.read_text())
    assert summary["metric"] == "f1"
    result.write_text(json.dumps({**summary, "score": 0.9}))
    f1 = json.loads((exp / "a" / "eval" / "mrpc.json").read_text())["score"]
    ok(run_here("results", "collect", str(exp), "--out", str(tmp_path / "out")))
    df = pd.read_csv(tmp_path / "out" / "exp.csv")
    df["name"] = [Path(run).name for run in df["run"]]
    assert sorted(df["name"]) == ["a", "b"] and set(df["mrpc_metric"]) == {"f1"}
    assert df.set_index("name")["mrpc"].to_dict() == pytest.approx({"a": f1, "b": 0.9})
    assert "| mrpc (F1) |" in (tmp_path / "out" / "exp.md").read_text()
    assert [r["mrpc"] for r in read_run(exp / "b")] == [0.9]
    points = [Point(grid="g", stage="grid", name=name, recipe="r.yaml", kind="train", axes={}, overrides={},
                    run=str(exp / name), tasks=[]) for name in ("a", "b")]
    cfg = cfglib.load(GridConfig, None, ["select.stage=grid", "select.metric=mrpc", "select.finalists=1"],
                      check=False)
    assert [p.name for p in finalists(cfg, points)] == (["b__final"] if f1 < 0.9 else ["a__final"])
    # paired tests compare the items' right and wrong answers: for an F1 task those are accuracies, and it says so
    proc = ok(run_here("results", "compare", str(exp / "a"), str(exp / "b"), "--task", "mrpc"))
    assert "mrpc: accuracy A " in proc.stdout and "(its score is F1; these compare accuracies)" in proc.stdout
    # and so does the baselines table: a distilled a against b trained alone (it left F1 tasks out)
    from results.baselines import comparisons
    from results.collect import collect

    table, _ = collect([exp])
    table.loc[[Path(r).name == "a" for r in table["run"]], "method"] = "kd:ce+logit_kd"
    assert sorted(c["task"] for c in comparisons(table, samples=100)) == ["demo_pairs", "mrpc"]


def test_a_curve_whose_every_score_is_null_is_drawn_without_a_warning(tmp_path):
    """A rho undefined at every milestone: the PNG says so (matplotlib warned that the legend had no entries)."""
    import warnings

    from common.curves import curve_lines, plot_curve
    from common.paths import is_our_figure

    curves = {"run": {"wug_adj": [{"words_seen": w, "score": None, "metric": "spearman"} for w in (1000, 10000)]}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        png = plot_curve("wug_adj", *curve_lines(curves, "wug_adj"), tmp_path / "wug_adj.png")
    assert png.read_bytes()[:4] == b"\x89PNG" and is_our_figure(png)


def test_heatmap_only_for_two_axis_grids(runs, tmp_path):
    from results.collect import collect
    from results.plots import grid_heatmap

    df, _ = collect([runs / "grid"])
    assert grid_heatmap(df, "demo_pairs", tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"
    assert grid_heatmap(df.drop(columns=["axis:seed"]), "dev_ce", tmp_path / "one.png") is None
    assert not (tmp_path / "one.png").exists()


def test_compare_is_mcnemar_and_a_paired_bootstrap(runs, tmp_path):
    from scipy.stats import binomtest

    from results.compare import compare, mcnemar_exact

    out = compare(runs / "grid" / "a", runs / "grid" / "b", "demo_pairs", samples=2000)
    assert out["pairs"] == 1000
    b, c = out["only_a_right"], out["only_b_right"]
    assert out["mcnemar_p"] == pytest.approx(binomtest(b, b + c, 0.5).pvalue if b + c else 1.0)
    assert out["difference"] == pytest.approx(out["accuracy_a"] - out["accuracy_b"])
    lo, hi = out["bootstrap_95"]
    assert lo <= out["difference"] <= hi
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(10, 10) == 1.0 and mcnemar_exact(0, 12) < 1e-3
    same = compare(runs / "grid" / "a", runs / "grid" / "a", "demo_pairs", samples=500)
    assert same["mcnemar_p"] == 1.0 and same["bootstrap_95"] == [0.0, 0.0]
    proc = ok(
        run_here(
            "results",
            "compare",
            str(runs / "grid" / "a"),
            str(runs / "grid" / "b"),
            "--task",
            "demo_pairs",
            "--samples",
            "500",
        )
    )
    assert "McNemar p =" in proc.stdout
    # --out replaces an earlier comparison only, never another file
    args = ("results", "compare", str(runs / "grid" / "a"), str(runs / "grid" / "b"), "--task", "demo_pairs",
            "--samples", "100", "--out")
    run_json = runs / "grid" / "a" / "run.json"
    before = run_json.read_bytes()
    assert_user_error(run_here(*args, str(run_json)), f"--out {run_json}: exists and is not a comparison")
    assert_user_error(run_here(*args, str(runs / "grid")), "is a folder")
    assert run_json.read_bytes() == before
    for _ in range(2):
        ok(run_here(*args, str(tmp_path / "ab.json")))
    assert json.loads((tmp_path / "ab.json").read_text())["bootstrap_samples"] == 100


def test_compare_says_which_pairs_only_one_run_scored(runs, tmp_path):
    """Runs scored on different task data (another split, a pair dropped) are tested on the pairs both scored, and
    every output says how many each side had alone, so the accuracies are read as those of the shared pairs."""
    from results.compare import compare

    a = tmp_path / "a"
    shutil.copytree(runs / "grid" / "a", a)
    pairs = a / "eval" / "pairs" / "demo_pairs.jsonl"
    rows = pairs.read_text().splitlines()
    pairs.write_text("\n".join(rows[3:]) + "\n")  # three pairs fewer in A
    shared = [json.loads(r) for r in rows[3:]]
    out = compare(a, runs / "grid" / "b", "demo_pairs", samples=200)
    assert out["pairs"] == 997 and out["left_out"] == {"a": 0, "b": 3}
    assert out["accuracy_a"] == pytest.approx(sum(r["correct"] for r in shared) / 997)
    assert compare(runs / "grid" / "a", runs / "grid" / "b", "demo_pairs", samples=200)["left_out"] == {"a": 0, "b": 0}
    proc = ok(run_here("results", "compare", str(a), str(runs / "grid" / "b"), "--task", "demo_pairs",
                       "--samples", "200"))
    line = proc.stdout.rstrip().splitlines()[-1]
    assert "on 997 pairs" in line and line.endswith(
        "left out: 0 pair(s) only A scored, 3 only B scored (different task data?)"), line
    from results.baselines import markdown

    assert "| 997 (0 only the model's, 3 only the baseline's: left out) |" in markdown([{**out, "model": "m",
                                                                                      "method": "kd", "baseline": "s"}])


def test_the_bootstrap_resamples_pairs_as_index_draws_do_without_holding_them():
    """The multinomial form of the paired bootstrap has the interval of drawing pair indices with replacement; a
    BLiMP-sized task at 10,000 resamples needs no 5 GB index matrix."""
    import numpy as np

    from results.compare import paired_bootstrap

    rng = np.random.default_rng(1)
    a, b = (rng.random(400) < 0.6).astype(float), (rng.random(400) < 0.5).astype(float)
    diff, lo, hi = paired_bootstrap(a, b, 20000, seed=3)
    idx = np.random.default_rng(4).integers(0, 400, size=(20000, 400))
    direct = a[idx].mean(1) - b[idx].mean(1)
    assert diff == pytest.approx(a.mean() - b.mean())
    assert lo == pytest.approx(np.quantile(direct, 0.025), abs=0.006)
    assert hi == pytest.approx(np.quantile(direct, 0.975), abs=0.006)
    assert paired_bootstrap(np.ones(60000), np.zeros(60000), 10000) == (1.0, 1.0, 1.0)


def test_bad_inputs(runs, tmp_path):
    assert_user_error(run_cli("results", "collect", str(tmp_path / "none")), "folder not found")
    (tmp_path / "empty").mkdir()
    assert_user_error(
        run_cli("results", "collect", str(tmp_path / "empty"), "--out", str(tmp_path / "o")), "no finished run"
    )
    assert not (tmp_path / "o").exists()
    # a typo, and a task these runs were not evaluated on
    for metric, needle in (("demo_pair", " (did you mean 'demo_pairs'?)"), ("blimp_filtered", "")):
        assert_user_error(run_here("results", "collect", str(runs / "grid"), "--out", str(tmp_path / "o"), "--metric",
                                   metric),
                          f"--metric: {metric!r} is not a score of these runs{needle}; give dev_ce or a task they "
                          "were evaluated on: demo_pairs")
    assert not (tmp_path / "o").exists()
    assert_user_error(
        run_cli("results", "compare", str(runs / "grid" / "a"), str(runs / "grid" / "b"), "--task", "blimp_filtered"),
        "no eval/pairs/blimp_filtered.jsonl",
        "python -m eval",
    )
    bad = tmp_path / "bad"
    shutil.copytree(runs / "grid" / "b", bad)
    pairs = bad / "eval" / "pairs" / "demo_pairs.jsonl"
    pairs.write_text(pairs.read_text().replace('"correct"', '"right"', 1))
    assert_user_error(run_cli("results", "compare", str(runs / "grid" / "a"), str(bad), "--task", "demo_pairs"),
                      f"{pairs}:1", "not a pair record")


def test_runs_of_one_config_on_changed_text_are_not_replicates(demo_root, cache_dir, tmp_path):
    """Two seeds trained on the corpus, then a line added to a corpus file, then a third seed: one config, but run.json
    records other packed text for the third. collect names it, and the three are no replicates; before the change
    the two were."""
    corpus = tmp_path / "corpus"
    shutil.copytree(demo_root, corpus)

    def train(seed: int) -> None:
        ok(run_here("train", "config/runs/demo-student.yaml", f"data.train_dir={corpus / 'train'}",
                    f"data.dev_dir={corpus / 'dev'}", f"data.cache_dir={cache_dir}", f"output.dir={tmp_path / 'runs'}",
                    "output.experiment=text", f"output.name=student__train.seed={seed}", f"train.seed={seed}",
                    "train.max_steps=4", "train.eval_steps=4", "train.save_steps=4", "optim.warmup_steps=1",
                    "train.word_checkpoints=[]"))

    def collect(out: str):
        return ok(run_here("results", "collect", str(tmp_path / "runs" / "text"), "--out", str(tmp_path / out)))

    train(1)
    train(2)
    proc = collect("before")
    assert "not replicates" not in proc.stdout and "other text" not in proc.stdout
    assert (tmp_path / "before" / "text-seeds.md").is_file()
    first = next((corpus / "train").glob("*.train"))
    first.write_text(first.read_text() + "The child saw a new dog .\n")
    train(3)
    proc = collect("after")
    runs = tmp_path / "runs" / "text"
    blocks = [json.loads((runs / f"student__train.seed={s}" / "run.json").read_text())["inputs"]["data.train_dir"]
              for s in (1, 2, 3)]
    assert blocks[0] == blocks[1] != blocks[2]
    one, three = runs / "student__train.seed=1", runs / "student__train.seed=3"
    assert (f"note: {one} and {three} have the same data config but "
            f"trained on other text ({blocks[0]} against {blocks[2]})") in proc.stdout, proc.stdout
    assert "not replicates" in proc.stdout
    assert not (tmp_path / "after" / "text-seeds.md").exists()


def test_curves_plot_dev_ce_and_the_ce_term_never_the_mixed_training_loss(tmp_path):
    """The curves figure reads, per method, the CE part of the training loss (plain training: its loss; KD: loss/ce;
    WML: none) and every run's dev CE, against words seen; the per-run term plot exists only for runs with terms."""
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd
    from matplotlib import pyplot as plt

    from results import plots

    rows = {"train": {"loss": 5.0}, "kd:ce+logit_kd": {"loss": 8.0, "loss/ce": 6.0, "loss/logit_kd": 10.0},
            "wml-mutual": {"loss": 3.0, "loss/peer0": 3.1, "loss/peer1": 2.9}}
    names = {"train": "train", "kd:ce+logit_kd": "kd", "wml-mutual": "wml"}
    for method, row in rows.items():
        run = tmp_path / names[method]
        run.mkdir()
        lines = [{"step": 10, "words_seen": 700, **row}, {"step": 10, "words_seen": 700, "eval_loss": 4.0},
                 {"step": 10, "words_seen": 700, "eval_loss": 4.0, "final": True}]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert [plots._ce_term(r, m) for m, r in rows.items()] == [5.0, 6.0, None]
    df = pd.DataFrame({"run": [str(tmp_path / names[m]) for m in rows], "method": list(rows)})
    drawn = []
    real_plot = plt.Axes.plot

    def spy(ax, *args, **kwargs):
        drawn.append((ax.get_ylabel() or "", kwargs.get("label"), list(args[1])))
        return real_plot(ax, *args, **kwargs)

    plt.Axes.plot = spy
    try:
        png = plots.training_curves(df, tmp_path / "curves.png")
    finally:
        plt.Axes.plot = real_plot
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert sorted((label, ys) for _, label, ys in drawn) == sorted([("train", [4.0]), ("train", [5.0]), ("kd", [4.0]),
                                                                    ("kd", [6.0]), ("wml (ensemble)", [4.0])])
    assert plots.term_curves(tmp_path / "train", tmp_path / "t.png") is None
    assert plots.term_curves(tmp_path / "kd", tmp_path / "kd.png").read_bytes()[:4] == b"\x89PNG"


def test_a_learning_curve_ends_at_the_final_models_own_score(tmp_path):
    """Milestones give the curve's points; each model's final score (its run's words seen) is the last one, when it
    lies beyond the last milestone; a WML peer's line is run/peer-i; no final score or a non-finite one adds nothing."""
    import pandas as pd

    from results.plots import with_final_scores

    lines = {"student": [(100, 0.51), (300, 0.53)], "wml/peer-0": [(100, 0.50)], "wml/peer-1": [(100, 0.49)],
             "kd": [(100, 0.52), (1000, 0.60)]}
    df = pd.DataFrame([
        {"run": str(tmp_path / "student"), "eval_dir": str(tmp_path / "student" / "eval"), "words_seen": 1000,
         "blimp_filtered": 0.55},
        {"run": str(tmp_path / "wml"), "eval_dir": str(tmp_path / "wml" / "eval" / "peer-0"), "words_seen": 1000,
         "blimp_filtered": 0.56},
        {"run": str(tmp_path / "wml"), "eval_dir": str(tmp_path / "wml" / "eval" / "peer-1"), "words_seen": 1000,
         "blimp_filtered": float("nan")},
        {"run": str(tmp_path / "kd"), "eval_dir": str(tmp_path / "kd" / "eval"), "words_seen": 1000,
         "blimp_filtered": 0.61},
        {"run": str(tmp_path / "teacher"), "eval_dir": str(tmp_path / "teacher" / "eval"), "words_seen": 3000,
         "blimp_filtered": 0.58},
    ])
    out = with_final_scores(lines, df, "blimp_filtered")
    assert out == {"student": [(100, 0.51), (300, 0.53), (1000, 0.55)], "wml/peer-0": [(100, 0.50), (1000, 0.56)],
                   "wml/peer-1": [(100, 0.49)], "kd": [(100, 0.52), (1000, 0.60)]}
    assert lines["student"] == [(100, 0.51), (300, 0.53)]  # the caller's lines are left as they were


def test_a_method_is_compared_with_the_same_architecture_seed_and_words_trained_alone():
    """The baseline rule, on rows as collect makes them: same experiment, architecture, seed and words seen, trained
    alone on the same text and tokenizer; a WML peer's solo twin before a plain run of its architecture; runs trained
    alone have none."""
    import pandas as pd

    from results.baselines import find_baseline

    def row(recipe, method, arch="A", seed=42, words=1000, experiment="e", data="d", blocks="train-1"):
        return {"run": f"runs/{experiment}/{recipe}", "recipe": recipe, "model": arch, "method": method,
                "architecture": arch, "seed": seed, "words_seen": words, "experiment": experiment, "data_key": data,
                "train_blocks": blocks}

    df = pd.DataFrame([
        row("student", "train"), row("kd", "kd:ce+logit_kd"), row("kd-seed", "kd:ce+logit_kd", seed=1),
        row("kd-longer", "kd:ce+logit_kd", words=2000), row("kd-other", "kd:ce+logit_kd", experiment="f"),
        row("kd-wider", "kd:ce+logit_kd", arch="B"), row("kd-other-text", "kd:ce+logit_kd", data="other"),
        row("kd-other-bytes", "kd:ce+logit_kd", blocks="train-2"), row("kd-unrecorded", "kd:ce+logit_kd", blocks=None),
        row("twin", "solo-twin"), row("peer", "wml-mutual"),
        row("teacher", "train", arch="T"),
    ])
    by = {r: i for i, r in enumerate(df["recipe"])}
    assert find_baseline(df, by["kd"]) == by["student"]
    assert find_baseline(df, by["kd-unrecorded"]) == by["student"]  # a run from before run.json recorded its text
    assert find_baseline(df, by["peer"]) == by["twin"]  # the twin, not the plain run of the same architecture
    for alone_or_unmatched in ("student", "twin", "teacher", "kd-seed", "kd-longer", "kd-other", "kd-wider",
                               "kd-other-text", "kd-other-bytes"):
        assert find_baseline(df, by[alone_or_unmatched]) is None, alone_or_unmatched
    from results.baselines import differing_text

    (note,) = differing_text(df)  # the same config, other text: named once, the first two runs in order
    assert note.startswith("note: runs/e/kd and runs/e/kd-other-bytes have the same data config but trained on other "
                           "text (train-1 against train-2)"), note
    assert differing_text(df[df["recipe"] != "kd-other-bytes"]) == []


def test_replicates_are_one_setting_that_differs_only_in_the_seed():
    """Two runs are replicates when their config.yaml differ only in train.seed, their name and where they ran; any
    other key, data.seed included, makes another setting."""
    from results.baselines import setting_key

    base = {"data": {"train_dir": "t", "seed": 42, "num_proc": 2, "cache_dir": "cache"}, "optim": {"lr": 0.002},
            "train": {"seed": 42, "max_words": "500k", "num_workers": 0, "report_to": "none"},
            "output": {"dir": "runs", "experiment": "study", "name": "kd"}}

    def changed(section, key, value):
        return {**base, section: {**base[section], key: value}}

    same = [changed("train", "seed", 7), changed("output", "name", "kd__train.seed=7"), changed("data", "num_proc", 1),
            changed("data", "cache_dir", "/tmp/c"), changed("train", "num_workers", 2), changed("output", "dir", "r")]
    for config in same:
        assert setting_key(config) == setting_key(base), config
    other = [changed("data", "seed", 7), changed("optim", "lr", 0.001), changed("train", "max_words", "1M"),
             changed("output", "experiment", "other"), {**base, "distill": {"losses": {}}}]
    for config in other:
        assert setting_key(config) != setting_key(base), config


def _rows(seeds_of: dict):
    import pandas as pd

    rows = []
    for recipe, seeds in seeds_of.items():
        for seed in seeds:
            name = recipe if seed == 42 else f"{recipe}__train.seed={seed}"
            rows.append({"run": f"runs/s/{name}", "recipe": name, "model": "llama-tiny", "seed": seed,
                         "method": "train" if recipe == "student" else "kd:ce+logit_kd", "setting": recipe,
                         "dev_ce": 5.0 + seed / 100, "blimp_filtered": 0.5 + seed / 1000, "blimp_filtered_stderr": 0.01,
                         "blimp_filtered_metric": "accuracy"})
    return pd.DataFrame(rows)


def test_over_seeds_each_difference_its_mean_spread_t_test_and_what_the_seeds_say(capsys):
    """Per setting the mean and sample standard deviation over its seeds; per method the difference from its
    same-seed baseline at every seed, their mean, spread and one-sample t test (checked against the formula), and a
    verdict; a seed run twice counts once, a setting of one seed is not listed, a missing score is never averaged."""
    import math

    import numpy as np
    from scipy.stats import t as student_t

    from results.seeds import across_seeds, replicate_groups, replicates_markdown, seeds_markdown, verdict

    df = _rows({"student": [42, 7, 3], "kd": [42, 7, 3], "alone": [42]})
    df.loc[len(df)] = {**df.loc[4].to_dict(), "run": "runs/s/kd__train.seed=7-again", "dev_ce": 9.0}  # seed 7 twice
    groups = replicate_groups(df)
    assert "same setting and seed 7 twice" in capsys.readouterr().out
    assert {k[0]: v for k, v in groups.items()} == {"student": [2, 1, 0], "kd": [5, 4, 3]}  # seeds 3, 7, 42
    table = replicates_markdown(df, groups)
    kd_line = next(line for line in table.splitlines() if line.startswith("| kd |"))
    ce = [5.03, 5.07, 5.42]
    assert f"| 3, 7, 42 | {np.mean(ce):.4f} ± {np.std(ce, ddof=1):.4f} |" in kd_line  # not the 9.0 of the repeat
    df.loc[3, "blimp_filtered"] = float("nan")  # kd at seed 42 lost its score: no mean for kd's BLiMP
    assert replicates_markdown(df, groups).splitlines()[3].endswith("| – |")

    diffs, ps = {42: 0.007, 7: 0.014, 3: 0.004}, {42: 1e-8, 7: 1e-32, 3: 0.2}
    records = [{"row": 3 + i, "baseline_row": i, "task": "blimp_filtered", "difference": diffs[s], "mcnemar_p": ps[s]}
               for i, s in enumerate((42, 7, 3))]
    records.append({**records[1], "row": 6, "difference": -0.5, "mcnemar_p": 0.0})  # the repeated seed 7: left out
    (over,) = across_seeds(df, records)
    d = [diffs[3], diffs[7], diffs[42]]
    mean, sd = np.mean(d), np.std(d, ddof=1)
    assert over["seeds"] == [3, 7, 42] and over["differences"] == d
    assert math.isclose(over["mean"], mean) and math.isclose(over["sd"], sd)
    assert math.isclose(over["t_p"], 2 * student_t.sf(abs(mean / (sd / math.sqrt(3))), df=2), rel_tol=1e-9)
    assert (over["ahead"], over["behind"]) == (2, 0)
    assert over["verdict"] == "same sign at every seed, not significant at each"
    assert over["method"] == "kd llama-tiny" and over["baseline"] == "student llama-tiny"

    assert verdict([0.01, 0.02], [0.01, 0.001]) == "ahead at every seed"
    assert verdict([-0.01, -0.02], [0.01, 0.001]) == "behind at every seed"
    assert verdict([0.01, -0.02], [0.01, 0.001]) == "changes sign"
    assert verdict([0.0, 0.02], [1.0, 0.001]) == "zero at a seed"
    assert seeds_markdown(_rows({"student": [42], "kd": [42]}), []) is None  # one seed: no seeds file


def test_seeds_trained_on_other_inputs_are_not_replicates(capsys):
    """One setting whose runs recorded other inputs (the packed text, a teacher's files) is named on one line and left
    out of the replicates; runs that recorded nothing (from before the record) still count."""
    from results.seeds import replicate_groups

    df = _rows({"student": [42, 7, 3], "kd": [42, 7, 3]})
    df["inputs_key"] = ["x", "x", None, "y", "y", "y"]
    assert {k[0] for k in replicate_groups(df)} == {"student", "kd"}
    df.loc[4, "inputs_key"] = "z"  # kd at seed 7 read a teacher trained again
    assert {k[0] for k in replicate_groups(df)} == {"student"}
    out = capsys.readouterr().out
    assert ("not replicates: runs/s/kd and runs/s/kd__train.seed=7 have one setting but were trained on other "
            "inputs") in out, out


def test_a_settings_name_across_seeds_is_the_grid_point_name_without_its_seed():
    """results/seeds.py names a setting run from several seeds by the grid's point names with the seed axis taken
    out, wherever the grid put it among the axes; both sides use common.names."""
    from common.names import point_name, without_axis

    for axes in ({"train.seed": 7}, {"train.seed": 7, "optim.lr": 0.001}, {"optim.lr": 0.001, "train.seed": 13},
                 {"distill.losses.logit_kd.weight": 0.5, "train.seed": 42, "data.train_fraction": 0.5}):
        rest = {k: v for k, v in axes.items() if k != "train.seed"}
        expected = point_name("kd_llama", rest) if rest else "kd_llama"
        assert without_axis(point_name("kd_llama", axes), "train.seed") == expected
