"""launch_grid.py: the demo grid end to end, a two-axis grid with finalists, reruns that skip
finished points, --dry-run, and every bad input (one line, exit 2, nothing run or written)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ROOT, assert_user_error, call, mounted, ok, run_here, shared

FAST = [
    "train.max_steps=20",
    "train.eval_steps=10",
    "train.save_steps=10",
    "train.logging_steps=5",
    "optim.warmup_steps=5",
]


def launch(workdir: Path, *args: str, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "launch_grid.py"), *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})},
    )


def data_sets(demo_root: Path, cache_dir: Path) -> list[str]:
    sets = [
        f"data.train_dir={demo_root / 'train'}",
        f"data.dev_dir={demo_root / 'dev'}",
        f"data.cache_dir={cache_dir}",
        *FAST,
    ]
    return [a for s in sets for a in ("--set", s)]


def write_grid(workdir: Path, text: str) -> Path:
    path = workdir / "grid.yaml"
    path.write_text(text)
    return path


TWO_AXES = """\
name: lr-seed
stages:
  - name: grid
    recipes: [config/runs/demo-student.yaml]
    axes:
      optim.lr: [1.0e-3, 3.0e-3]
      train.seed: [1, 2]
    overrides: {data.train_fraction: 0.5}
tasks: [demo_pairs]
eval_data_dir: DEMO
select: {stage: grid, metric: demo_pairs, finalists: 1, overrides: {data.train_fraction: 1.0}}
executor: {kind: debug}
"""


@pytest.mark.slow
def test_demo_grid_is_the_whole_pipeline_and_a_rerun_skips_it(workdir, demo_root, cache_dir):
    tasks = workdir / "finetune"  # the demo's acceptability task cut to 200 train and 50 valid sentences: quick
    tasks.mkdir()
    for split, n in (("train", 200), ("valid", 50)):
        lines = (demo_root / "finetune" / f"demo_acceptability.{split}.jsonl").read_text().splitlines()[:n]
        (tasks / f"demo_acceptability.{split}.jsonl").write_text("\n".join(lines) + "\n")
    grid_sets = [f"eval_data_dir={demo_root}", f"finetune_data_dir={tasks}"]
    proc = ok(launch(workdir, "config/grids/demo.yaml", *grid_sets, *data_sets(demo_root, cache_dir)))
    runs = workdir / "runs" / "demo"
    twins = ["wml__wml.solo_peer=0", "wml__wml.solo_peer=1"]
    names = ["teacher", "teacher-llama", "student", "kd", "palenkallama", "contrastive", "wml", *twins]
    for name in names:
        assert (runs / name / "DONE").is_file() and (runs / name / "grid.json").is_file(), name
    table = pd.read_csv(runs / "_results" / "demo.csv")
    assert sorted(table["recipe"].unique()) == sorted(names) and len(table) == 10  # two WML peers
    assert table["demo_pairs"].between(0, 1).all() and table["dev_ce"].notna().all()
    assert table["demo_acceptability"].between(0, 1).all()  # every model, WML peers included, fine-tuned
    tuned = sorted(runs.glob("*/eval/**/demo_acceptability.json"))
    assert len(tuned) == 10 and all(json.loads(p.read_text())["n_items"] == 50 for p in tuned)
    assert len(list(runs.glob("*/eval/**/finetune/demo_acceptability/predictions.json"))) == 10
    # each method against its baseline: the KD students against the student alone, each peer against its solo twin
    baselines = (runs / "_results" / "demo-baselines.md").read_text()
    rows = {tuple(c.strip() for c in line.split("|")[1:4]) for line in baselines.splitlines()[2:]}
    assert rows == {
        *((f"{kd} llama-tiny", method, "student llama-tiny")
          for kd, method in (("kd", "kd:ce+logit_kd"), ("palenkallama", "kd:ce+logit_kd+hidden_mse"),
                             ("contrastive", "kd:ce+logit_kd+contrastive"))),
        *((f"wml gpt2-tiny peer-{i}", "wml-mutual", f"{twins[i]} gpt2-tiny peer-{i}-solo") for i in (0, 1)),
    }, baselines
    assert "each method against its baseline" in proc.stdout
    stamps = {p: p.stat().st_mtime_ns for p in tuned}
    for png in ("demo-tasks.png", "demo-curves.png", "demo-curve-demo_pairs.png"):
        assert (runs / "_results" / png).read_bytes()[:4] == b"\x89PNG"
    for name in names:  # every milestone evaluated (WML: every peer's), at the words seen it recorded
        points = json.loads((runs / name / "eval" / "curve.json").read_text())["tasks"]["demo_pairs"]
        milestones = sorted((runs / name / "milestones").glob("chck_*"))
        assert len(points) == len(milestones) * (2 if name == "wml" else 1) >= 1, name
        assert (runs / name / "eval" / "curves" / "demo_pairs.png").is_file()
    stamps.update({p: p.stat().st_mtime_ns for p in runs.glob("*/milestones/*/**/eval/demo_pairs.json")})
    assert "stage teachers: 2 point(s), 0 incomplete" in proc.stdout
    # The terminal: the plan, a start and an end line per point, the stage lines and the table; no progress bar frame,
    # no warning. Each point's whole output (training, evaluation, fine-tuning) is in its own log instead.
    terminal = proc.stdout + proc.stderr
    assert "\r" not in terminal and "%|" not in terminal and not proc.stderr.strip(), proc.stderr[-2000:]
    assert len(terminal.splitlines()) <= 10 + 2 * len(names) + 3 + 15 + 15, terminal  # ... + the baseline table
    for name in names:
        assert f"{name}: started (new" in proc.stdout and f"{name}: done in " in proc.stdout, name
        (log,) = (runs / name / "logs").glob("grid-*.log")
        assert "demo_pairs: accuracy" in log.read_text() and "demo_acceptability: accuracy" in log.read_text(), name
    assert re.search(
        r"^kd: done in [0-9.]+ s; dev CE [0-9.]+, demo_pairs [01]\.[0-9]{3}, demo_acceptability [01]\.[0-9]{3}$",
        proc.stdout,
        re.M,
    ), proc.stdout
    attempts = {n: len(json.loads((runs / n / "run.json").read_text())["attempts"]) for n in names}

    again = ok(launch(workdir, "config/grids/demo.yaml", *grid_sets, *data_sets(demo_root, cache_dir)))
    plan = [line.split() for line in again.stdout.splitlines() if "config/runs/" in line]
    assert len(plan) == 9 and all(row[-1] == "done" for row in plan), again.stdout[:2000]
    assert {n: len(json.loads((runs / n / "run.json").read_text())["attempts"]) for n in names} == attempts, (
        "a finished point ran again"
    )
    assert len(pd.read_csv(runs / "_results" / "demo.csv")) == 10
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps, "a model was fine-tuned or a milestone evaluated again"


@pytest.mark.slow
def test_two_axis_grid_selects_and_retrains_the_best_point(workdir, demo_root, cache_dir):
    grid = write_grid(workdir, TWO_AXES.replace("DEMO", str(demo_root)))
    dry = ok(launch(workdir, str(grid), "--dry-run", *data_sets(demo_root, cache_dir)))
    assert dry.stdout.count(" new") == 4 and not (workdir / "runs").exists()
    ok(launch(workdir, str(grid), *data_sets(demo_root, cache_dir)))
    runs = workdir / "runs" / "lr-seed"
    points = sorted(p.name for p in runs.iterdir() if (p / "DONE").is_file())
    assert len(points) == 5 and sum(p.endswith("__final") for p in points) == 1
    scores = {
        p: json.loads((runs / p / "eval" / "demo_pairs.json").read_text())["accuracy"]
        for p in points
        if not p.endswith("__final")
    }
    best = max(scores, key=scores.get)
    final = runs / f"{best}__final"
    assert final.is_dir(), (scores, points)
    assert yaml.safe_load((final / "config.yaml").read_text())["data"]["train_fraction"] == 1.0
    assert json.loads((final / "grid.json").read_text())["stage"] == "finalists"
    axes = json.loads((runs / points[0] / "grid.json").read_text())["axes"]
    assert set(axes) == {"optim.lr", "train.seed"}
    table = pd.read_csv(runs / "_results" / "lr-seed.csv")
    assert len(table) == 5 and {"axis:optim.lr", "axis:train.seed"} <= set(table.columns)
    assert (runs / "_results" / "lr-seed-heatmap.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_a_grid_edited_after_its_points_started_is_refused_on_relaunch(workdir, demo_root, cache_dir, monkeypatch):
    """A point keeps the values it started with: a relaunch after the grid's values for it changed fails in one line
    naming the point and the key, before anything runs. Before 2026-12-03 a finished point was shown as done with the
    old values' results, and an unfinished one resumed with values its checkpoint partly overrode. Keys a resume may
    change (here the logging interval) do not count. The launches run in this process (launch_grid.main)."""
    import launch_grid

    monkeypatch.chdir(workdir)

    def relaunch(*args: str):
        return call(launch_grid.main, *args)

    one_point = (f"name: edited\nstages:\n  - name: grid\n    recipes: [config/runs/demo-student.yaml]\n"
                 f"    axes: {{optim.lr: [3.0e-3]}}\nOVERRIDES\ntasks: [demo_pairs]\neval_data_dir: {demo_root}\n"
                 f"executor: {{kind: debug}}\n")
    grid = write_grid(workdir, one_point.replace("OVERRIDES\n", ""))
    ok(relaunch(str(grid), *data_sets(demo_root, cache_dir)))
    (run,) = (workdir / "runs" / "edited").glob("student__*")
    edited = write_grid(workdir, one_point.replace("OVERRIDES", "    overrides: {optim.weight_decay: 0.0}"))
    for unfinished in (False, True):
        if unfinished:  # as if killed after its first checkpoint
            (run / "DONE").unlink()
        snapshot = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
        line = assert_user_error(relaunch(str(edited), *data_sets(demo_root, cache_dir)),
                                 f"{edited}: stage grid, point {run.name}: runs/edited/{run.name} holds "
                                 f"{'an unfinished' if unfinished else 'a finished'} run of other values "
                                 "(optim.weight_decay: 0.1 -> 0.0)", "restore them, or give the grid another name")
        assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == snapshot, line  # nothing ran
    grid = write_grid(workdir, one_point.replace("OVERRIDES\n", ""))  # the values it started with, restored
    proc = ok(relaunch(str(grid), *data_sets(demo_root, cache_dir), "--set", "train.logging_steps=2"))
    assert f"{run.name}: started (partial" in proc.stdout and (run / "DONE").is_file()
    # Its evaluation edited: other task files, or another convention. A scored point is not scored again, so the
    # table would show the old scores as the new ones: refused, naming the result file and the grid key.
    elsewhere = workdir / "other-eval-data"
    shutil.copytree(demo_root, elsewhere)
    scored = run / "eval" / "demo_pairs.json"
    stamp = scored.stat().st_mtime_ns
    for change, needles in ((f"eval_data_dir={elsewhere}", (f"scored with data {demo_root}", f"now gives {elsewhere}",
                                                           "restore eval_data_dir, or move")),
                            ("convention=babylm2025", ("scored with convention babylm2024", "now gives babylm2025 "
                                                                                             "(convention)"))):
        assert_user_error(relaunch(str(grid), change, *data_sets(demo_root, cache_dir)),
                          f"{grid}: point {run.name}: runs/edited/{run.name}/eval/demo_pairs.json holds demo_pairs",
                          *needles,
                          "aside to score the point again")
        assert scored.stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_a_point_trained_on_text_edited_since_is_refused_on_relaunch(workdir, demo_root, cache_dir, monkeypatch):
    """A corpus file edited after a point finished leaves its config as it was; the relaunch compares the text the
    point's run.json records (the packed blocks' fingerprint) with what the corpus gives now, and refuses in one line
    before anything runs. The text restored, the grid goes on (the finished point skipped). The launches run in
    this process (launch_grid.main)."""
    import launch_grid

    corpus = workdir / "corpus"
    shutil.copytree(demo_root, corpus)
    grid = write_grid(workdir, f"name: text\nstages:\n  - name: grid\n    recipes: [config/runs/demo-student.yaml]\n"
                               f"    axes: {{optim.lr: [3.0e-3]}}\ntasks: [demo_pairs]\neval_data_dir: {corpus}\n"
                               f"executor: {{kind: debug}}\n")
    monkeypatch.chdir(workdir)

    def relaunch(*args: str):
        return call(launch_grid.main, *args)

    ok(relaunch(str(grid), *data_sets(corpus, cache_dir)))

    (run,) = (workdir / "runs" / "text").glob("student__*")
    recorded = json.loads((run / "run.json").read_text())["inputs"]["data.train_dir"]
    text = next((corpus / "train").glob("*.train"))
    original = text.read_bytes()
    text.write_bytes(original + b"The child saw a new dog .\n")
    snapshot = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    assert_user_error(relaunch(str(grid), *data_sets(corpus, cache_dir)),
                      f"{grid}: stage grid, point {run.name}: runs/text/{run.name} was trained on other inputs than "
                      f"its config reads now (data.train_dir: {recorded} -> train-",
                      "the corpus files, the tokenizer, or the cleaning or packing changed since it trained); a "
                      "finished point is not trained again", f"or move runs/text/{run.name} aside")
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == snapshot  # nothing ran
    done = (run / "DONE").read_bytes()
    (run / "DONE").unlink()  # as if killed before it finished: refused now, not when its turn comes
    assert_user_error(relaunch(str(grid), *data_sets(corpus, cache_dir)),
                      f"point {run.name}: runs/text/{run.name} was trained on other inputs",
                      "an unfinished point would be refused when its turn came")
    (run / "DONE").write_bytes(done)
    snapshot = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    text.write_bytes(original)
    proc = ok(relaunch(str(grid), *data_sets(corpus, cache_dir)))
    assert re.search(rf"{re.escape(run.name)} .* done\n", proc.stdout), proc.stdout
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if "_results" not in str(p)} == snapshot


@pytest.mark.slow
def test_a_point_distilled_from_a_teacher_trained_again_is_refused_on_relaunch(workdir, demo_root, cache_dir,
                                                                              monkeypatch):
    """The teacher a finished KD point read, trained again (--overwrite, another seed) at the same path: the relaunch
    compares the hash of its model files that the point's run.json records with the folder's now, and refuses (the
    launches run in this process)."""
    import launch_grid

    teacher = workdir / "runs" / "t" / "teacher"

    def train_teacher(*extra: str) -> None:
        ok(run_here("train", "config/runs/demo-student.yaml", f"data.train_dir={demo_root / 'train'}",
                    f"data.dev_dir={demo_root / 'dev'}", f"data.cache_dir={cache_dir}",
                    f"output.dir={workdir / 'runs'}", "output.experiment=t", "output.name=teacher",
                    "train.max_steps=6", "train.save_steps=6",
                    "train.eval_steps=6", "optim.warmup_steps=1", "train.word_checkpoints=[]", *extra))

    train_teacher()
    grid = write_grid(workdir, f"name: kd\nstages:\n  - name: grid\n    recipes: [config/runs/demo-kd.yaml]\n"
                               f"    axes: {{optim.lr: [3.0e-3]}}\n"
                               f"    overrides: {{distill.teachers: [{{path: {teacher / 'model'}}}]}}\n"
                               f"tasks: [demo_pairs]\neval_data_dir: {demo_root}\nexecutor: {{kind: debug}}\n")
    sets = [*data_sets(demo_root, cache_dir), "--set", "train.word_checkpoints=[]"]
    monkeypatch.chdir(workdir)
    ok(call(launch_grid.main, str(grid), *sets))
    (run,) = (workdir / "runs" / "kd").glob("kd__*")
    recorded = json.loads((run / "run.json").read_text())["inputs"]["distill.teachers[0].path"]
    train_teacher("train.seed=5", "--overwrite")
    assert_user_error(call(launch_grid.main, str(grid), *sets),
                      f"point {run.name}: runs/kd/{run.name} was trained on other inputs than its config reads now "
                      f"(distill.teachers[0].path: {recorded} -> ", "a teacher's model files changed since it trained")


@pytest.mark.slow
def test_verbose_keeps_a_points_whole_output_on_the_terminal(workdir, demo_root, cache_dir):
    """-v: the point's own output (the training's closing line, the evaluation's lines) stays on the terminal;
    without -v it goes to the point's log and the terminal has only the point's start and end lines."""
    one_point = (f"name: lr-seed\nstages:\n  - name: grid\n    recipes: [config/runs/demo-student.yaml]\n"
                 f"    axes: {{optim.lr: [3.0e-3]}}\ntasks: [demo_pairs]\neval_data_dir: {demo_root}\n"
                 f"executor: {{kind: debug}}\n")
    grid = write_grid(workdir, one_point)
    proc = ok(launch(workdir, str(grid), "-v", *data_sets(demo_root, cache_dir)))
    run = next((workdir / "runs" / "lr-seed").glob("student__*"))
    assert f"{run.name}: done at step 20" in proc.stdout and "demo_pairs: accuracy" in proc.stdout
    assert not list((run / "logs").glob("grid-*.log"))  # -v: the stream stays on the terminal
    again = ok(launch(workdir, str(grid), "name=quiet", *data_sets(demo_root, cache_dir)))
    assert "done at step" not in again.stdout and "demo_pairs: accuracy" not in again.stdout
    (log,) = (workdir / "runs" / "quiet").glob("student__*/logs/grid-*.log")
    assert "done at step 20" in log.read_text()
    assert "student__" in again.stdout and ": done in " in again.stdout


def test_a_point_fine_tuned_on_other_task_files_is_refused(tmp_path):
    """The fine-tuning side of the check above: a result fine-tuned on the files of another folder than the grid's
    finetune_data_dir now gives is refused, naming both; the same folder, written another way, is not."""
    from grid.config import GridConfig
    from common.errors import UserError
    from grid.plan import Point, check_scored_results

    run = tmp_path / "runs" / "g" / "student"
    (run / "eval").mkdir(parents=True)
    first, second = tmp_path / "tasks-a", tmp_path / "tasks-b"
    (run / "eval" / "demo_acceptability.json").write_text(json.dumps({"data": str(first), "accuracy": 0.7}))
    point = Point(grid="g", stage="s", name="student", recipe="config/runs/demo-student.yaml", kind="train", axes={},
                  overrides={}, run=str(run), tasks=[], finetune=["demo_acceptability"])
    check_scored_results(GridConfig(), [point], {}, {"demo_acceptability": tmp_path / "x" / ".." / "tasks-a"}, "g.yaml")
    with pytest.raises(UserError, match=rf"g.yaml: point student: {run}/eval/demo_acceptability.json holds "
                                        rf"demo_acceptability scored with data {first}, and the grid now gives "
                                        rf"{second} \(finetune_data_dir\)"):
        check_scored_results(GridConfig(), [point], {}, {"demo_acceptability": second}, "g.yaml")


def test_a_points_finetuning_stopped_by_sigusr2_hands_the_signal_back(demo_args, demo_root, tmp_path):
    """A point's fine-tuning runs in the job's own process and arms its SIGUSR2 handler while it trains. A SIGUSR2
    stops it after a checkpoint; the signal then goes back to the handler the process had (submitit's requeues the
    job: a handler here stands for it), and the requeued evaluation continues the fine-tuning. A process without a
    handler (the debug executor) is not killed by the hand-back: the point is reported stopped."""
    import signal
    import time

    from grid.plan import Point
    from grid.point import evaluate_point

    ok(run_here("train", *demo_args, "train.max_steps=10"))
    run = tmp_path / "runs" / "demo" / "teacher"
    point = dict(grid="g", stage="s", name="teacher", recipe="config/runs/demo-teacher.yaml", kind="train", axes={},
                 overrides={}, run=str(run), tasks=[], finetune=["demo_acceptability"],
                 finetune_data_dir=str(demo_root / "finetune"))
    trainer = run / "eval" / "finetune" / "demo_acceptability" / "trainer"
    requeued = tmp_path / "requeued"
    child = f"""
import signal, sys
sys.path.insert(0, {str(ROOT)!r})
from grid.plan import Point
from grid.point import PointFailed, evaluate_point
def requeue(signum, frame):  # what submitit's handler does: checkpoint(), requeue, exit
    open({str(requeued)!r}, "w").write("requeued")
    sys.exit(9)
if sys.argv[1] == "handler":
    signal.signal(signal.SIGUSR2, requeue)
try:
    evaluate_point(Point(**{point!r}))
except PointFailed as exc:
    print(f"stopped: {{exc}} preempted={{exc.preempted}}")
"""
    for case, code in (("handler", 9), ("none", 0)):
        before = set(trainer.glob("checkpoint-*/COMPLETE"))
        requeued.unlink(missing_ok=True)
        proc = subprocess.Popen([sys.executable, "-c", child, case], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 300
        while proc.poll() is None and time.time() < deadline and set(trainer.glob("checkpoint-*/COMPLETE")) <= before:
            time.sleep(0.01)
        proc.send_signal(signal.SIGUSR2)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == code, err[-3000:]
        assert requeued.exists() == (case == "handler")
        assert any(trainer.glob("checkpoint-*/COMPLETE")), err[-3000:]
        if case == "none":
            assert "stopped on SIGUSR2 after a checkpoint; run the launcher again to continue preempted=True" in out
        assert not (run / "eval" / "demo_acceptability.json").exists()
    evaluate_point(Point(**point))  # the requeued job
    assert json.loads((run / "eval" / "demo_acceptability.json").read_text())["epochs"] == 4
    assert not trainer.exists()


def test_a_non_finite_score_never_makes_a_finalist(tmp_path, monkeypatch, capsys):
    """NaN sorts anywhere: a point whose metric is NaN (a broken model's rho, say) would be ranked by chance. It is
    not ranked; the point with a finite score is chosen."""
    import results.collect
    from common import config as cfglib
    from common.errors import UserError
    from grid.config import GridConfig
    from grid.plan import Point, finalists

    points = []
    for name in ("broken", "fine"):
        run = tmp_path / name
        run.mkdir()
        (run / "DONE").write_text("{}")
        (run / "grid.json").write_text("{}")
        points.append(Point(grid="g", stage="grid", name=name, recipe="r.yaml", kind="train", axes={}, overrides={},
                            run=str(run), tasks=[]))
    scores = {"broken": float("nan"), "fine": 0.6}
    monkeypatch.setattr(results.collect, "read_run", lambda run: [{"wug_adj": scores[run.name]}])
    cfg = cfglib.load(GridConfig, None, ["select.stage=grid", "select.metric=wug_adj", "select.finalists=1"],
                      check=False)
    assert [p.name for p in finalists(cfg, points)] == ["fine__final"]
    cfg.select.finalists = 2  # one of the two ranks: said, not silent
    assert [p.name for p in finalists(cfg, points)] == ["fine__final"]
    assert "note: select.finalists is 2, but only 1 point(s) of stage 'grid' have a finite wug_adj" in \
        capsys.readouterr().out
    scores["fine"] = None  # none ranks: refused (the launcher printed "finalists: " and trained nothing)
    with pytest.raises(UserError, match="select.metric 'wug_adj': no finished point of stage 'grid' has a finite"):
        finalists(cfg, points)
    # scored on other files: one on part of the release's items (partial_release), one on all of them
    scores.update(broken=0.5, fine=0.6)
    partial = {"broken": "190 of the release's 200 items", "fine": None}
    monkeypatch.setattr(results.collect, "read_run", lambda run: [
        {"wug_adj": scores[run.name], **({"wug_adj_partial": partial[run.name]} if partial[run.name] else {})}])
    with pytest.raises(UserError, match=r"select.metric 'wug_adj': the points of stage 'grid' were scored on other "
                                        r"files \(broken on 190 of the release's 200 items, fine on the release's "
                                        r"items\), so their scores do not rank"):
        finalists(cfg, points)
    partial["fine"] = partial["broken"]  # the same files: they rank
    assert [p.name for p in finalists(cfg, points)] == ["fine__final", "broken__final"]


def test_zip_axes_pair_their_values(workdir):
    grid = write_grid(workdir, TWO_AXES.replace("train.seed: [1, 2]", "optim.min_lr: [1.0e-4, 3.0e-4]")
                      .replace("    overrides:", "    mode: zip\n    overrides:"))
    proc = ok(launch(workdir, str(grid), "--dry-run"))
    assert "lr=0.001__optim.min_lr=0.0001" in proc.stdout and "lr=0.003__optim.min_lr=0.0003" in proc.stdout
    assert "2 point(s)" in proc.stdout


@pytest.mark.parametrize(
    "change, needles",
    [
        (("optim.lr:", "optim.lrr:"), ["grid.yaml", "unknown key 'optim.lrr'", "did you mean 'optim.lr'"]),
        (("train.seed: [1, 2]", "train.seed: []"), ["grid.yaml", "stages[0].axes.train.seed", "empty"]),
        (
            ("    overrides:", "    mode: zip\n    overrides:"),
            [],
        ),  # same lengths: fine (checked below with different ones)
        (
            ("train.seed: [1, 2]", "train.seed: [1, 2, 3]\n    mode: zip"),
            ["stages[0].axes", "same length", "optim.lr: 2", "train.seed: 3"],
        ),
        (
            ("config/runs/demo-student.yaml", "config/runs/nope.yaml"),
            ["grid.yaml", "config/runs/nope.yaml does not exist"],
        ),
        (
            ("metric: demo_pairs", "metric: blimp_filtered"),
            ["select.metric", "'blimp_filtered' is produced by no evaluation", "demo_pairs"],
        ),
        (("finalists: 1", "finalists: 5"), ["select.finalists is 5", "only 4 point(s)"]),
        (("optim.lr: [1.0e-3, 3.0e-3]", "optim.lr: [fast, 3.0e-3]"), ["optim.lr", "expected float"]),
        (
            (
                "overrides: {data.train_fraction: 0.5}",
                "overrides: {data.train_fraction: 0.5, train.word_checkpoints: none}\n"
                "tasks_per_milestone: [demo_pairs]",
            ),
            ["tasks_per_milestone is set", "demo-student.yaml exports no milestones", "train.word_checkpoints"],
        ),
        (
            ("tasks: [demo_pairs]", "tasks: [demo_pairs]\ntasks_per_milestone: [demo_pair]"),
            ["tasks_per_milestone[0]", "demo_pairs"],
        ),
    ],
    ids=[
        "unknown-axis",
        "empty-axis",
        "zip-ok",
        "zip-lengths",
        "no-recipe",
        "metric",
        "too-many-finalists",
        "bad-value",
        "no-milestones",
        "milestone-task",
    ],
)
def test_bad_grids_fail_with_one_line_and_run_nothing(workdir, change, needles):
    grid = write_grid(workdir, TWO_AXES.replace(*change))
    proc = launch(workdir, str(grid))
    if not needles:
        ok(launch(workdir, str(grid), "--dry-run"))
        return
    assert_user_error(proc, *needles)
    assert not (workdir / "runs").exists() and not (workdir / "results").exists()


def test_the_zero_shot_data_is_read_before_anything_trains(workdir, tmp_path, monkeypatch):
    """A wrong eval_data_dir, a folder without a task's files, EWoK without $EWOK_PASSWORD or with a wrong one, a
    convention that does not exist: each is one line naming the key before the first point trains."""
    import launch_grid

    data = tmp_path / "evaluation_data"
    data.mkdir()
    shutil.copy(shared("ewok_filtered.zip"), data / "ewok_filtered.zip")
    grid = ("name: zero-shot\nstages:\n  - name: s\n    recipes: [config/runs/demo-student.yaml]\n"
            f"tasks: [ewok_filtered]\neval_data_dir: {data}\nexecutor: {{kind: debug}}\n")
    monkeypatch.chdir(workdir)  # in this process: an interpreter start saved per case
    monkeypatch.delenv("EWOK_PASSWORD", raising=False)
    assert_user_error(call(launch_grid.main, write_grid(workdir, grid)), "tasks:", "set EWOK_PASSWORD")
    monkeypatch.setenv("EWOK_PASSWORD", "wrong")
    assert_user_error(call(launch_grid.main, write_grid(workdir, grid)), "tasks:", "$EWOK_PASSWORD")
    monkeypatch.setenv("EWOK_PASSWORD", "ewok")
    for text, needles in (
        (grid.replace(str(data), str(tmp_path / "nowhere")), ["eval_data_dir", "nowhere", "no such folder"]),
        (grid.replace("[ewok_filtered]", "[ewok_filtered, wug_adj]"), ["tasks:", "wug_adj", "set eval_data_dir to"]),
        (grid + "tasks_per_milestone: [reading]\n", ["tasks_per_milestone:", "reading"]),
        (grid + "convention: babylm2026\n", ["convention", "babylm2025"]),
    ):
        assert_user_error(call(launch_grid.main, write_grid(workdir, text)), *needles)
    assert not (workdir / "runs").exists()
    assert "1 point(s)" in ok(call(launch_grid.main, write_grid(workdir, grid), "--dry-run")).stdout


def test_slurm_executor_without_sbatch_submits_nothing(workdir):
    grid = write_grid(workdir, TWO_AXES.replace("kind: debug", "kind: slurm"))
    proc = launch(workdir, str(grid), env={"PATH": str(Path(sys.executable).parent)})
    assert_user_error(proc, "executor.kind=slurm", "sbatch is not on the PATH", "executor.kind=local")
    assert not (workdir / "runs").exists()


def test_unknown_grid_key_and_missing_grid_file(workdir):
    grid = write_grid(workdir, TWO_AXES.replace("tasks:", "taks:"))
    assert_user_error(launch(workdir, str(grid)), "grid.yaml", "unknown key 'taks'", "did you mean 'tasks'")
    assert_user_error(launch(workdir, "config/grids/nope.yaml"), "config/grids/nope.yaml", "not found")
    assert_user_error(
        launch(workdir, str(write_grid(workdir, TWO_AXES)), "executor.kind=cloud"), "executor.kind", "'slurm'"
    )


@pytest.mark.parametrize("grid", sorted((ROOT / "config" / "grids").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_grid_plans(grid, workdir):
    proc = ok(launch(workdir, f"config/grids/{grid.name}", "--dry-run"))
    expected = {"demo": 9, "palenka-weights": 25, "study-cpu": 11, "study-cpu-seed7": 11,
                "strict-small-replication": 16}[grid.stem]
    assert f"{expected} point(s)" in proc.stdout
    assert not (workdir / "runs").exists()
    if grid.stem == "strict-small-replication":  # the grid with GPUs: its plan has GPU hours (grid.estimate)
        assert "GPU h" in proc.stdout and "GPU hours of training in all" in proc.stdout
        assert "/data/babylm/train_10M not here: 10M words assumed" in proc.stdout
    if grid.stem == "study-cpu-seed7":  # the second seed shares the first study's teachers and names its own points
        assert "teacher-llama " in proc.stdout and "kd__train.seed=7 " in proc.stdout
        assert "wml__wml.solo_peer=1__train.seed=7 " in proc.stdout and " student " not in proc.stdout


def test_a_gpu_grid_plans_gpu_hours_from_the_architectures_flops(workdir, tmp_path, monkeypatch):
    """grid.estimate on the demo grid given a GPU: tokens from each budget, FLOPs per token written out here by hand
    from the architectures (6 N + 12 L d T trained, 2 N + 4 L d T per teacher forward, N the linear weights; WML
    peers at N/2 and N/3 of the reference), the MFU from a gpu_check.json (or the assumed one). That the plan prints
    them: test_every_shipped_grid_plans, on the replication grid."""
    from grid import estimate
    from grid.plan import expand, load_grid

    monkeypatch.chdir(workdir)
    cfg = load_grid("config/grids/demo.yaml", ["executor.gpus_per_node=1"])
    points = {p.name: p for p in expand(cfg, "config/grids/demo.yaml")}
    T, V = 64, 512

    def llama(d, ff, layers=2):
        return layers * (4 * d * d + 3 * d * ff) + d * V  # q, k, v, o; gate, up, down; the untied head

    gpt2 = 2 * 12 * 64 * 64 + 64 * V  # c_attn, c_proj, c_fc, mlp c_proj per layer; the tied head, a Linear
    trained = {"llama": 6 * llama(64, 128) + 12 * 2 * 64 * T, "gpt2": 6 * gpt2 + 12 * 2 * 64 * T}
    forward = {"llama": 2 * llama(64, 128) + 4 * 2 * 64 * T, "gpt2": 2 * gpt2 + 4 * 2 * 64 * T}
    measured = estimate.measured_mfu(tmp_path / "absent.json")
    assert measured == {}
    teacher = estimate.estimate(points["teacher-llama"], list(points.values()), 1, measured)
    assert teacher.tokens == 300 * 16 * T and teacher.flops == teacher.tokens * trained["llama"]
    assert teacher.gpu_hours == pytest.approx(teacher.flops / (989e12 * estimate.ASSUMED_MFU) / 3600)
    kd = estimate.estimate(points["kd"], list(points.values()), 1, measured)
    student = 6 * llama(32, 64) + 12 * 2 * 32 * T
    assert kd.flops == kd.tokens * (student + forward["gpt2"] + forward["llama"]) and kd.note == ""
    wml = estimate.estimate(points["wml"], list(points.values()), 1, measured)
    twin = estimate.estimate(points["wml__wml.solo_peer=1"], list(points.values()), 1, measured)
    assert wml.flops == pytest.approx(wml.tokens * trained["gpt2"] * (1 / 2 + 1 / 3))
    assert twin.flops == pytest.approx(twin.tokens * trained["gpt2"] / 3)
    check = tmp_path / "gpu_check.json"
    check.write_text(json.dumps({"training": [{"arch": "llama-tiny", "mfu": 0.3}, {"arch": "llama-tiny", "mfu": 0.4},
                                              {"arch": "gpt2-tiny", "mfu": None}]}))
    measured = estimate.measured_mfu(check)
    assert measured == {"llama-tiny": 0.4}
    again = estimate.estimate(points["teacher-llama"], list(points.values()), 1, measured)
    assert again.gpu_hours == pytest.approx(teacher.gpu_hours * estimate.ASSUMED_MFU / 0.4)
    assert "not measured" in estimate.estimate(points["teacher"], list(points.values()), 1, measured).note


def test_launch_command_follows_the_job_layout(monkeypatch):
    """launch.command, shared by grid points and the .slurm templates: the entry point alone with one
    process, torchrun (one per node, rendezvous on a job-specific port) with several; each kind its entry."""
    from launch.command import command

    for var in (
        "BABYDISTILL_PROCS_PER_NODE",
        "SLURM_GPUS_ON_NODE",
        "SLURM_NNODES",
        "SLURM_JOB_ID",
        "SLURM_JOB_NODELIST",
    ):
        monkeypatch.delenv(var, raising=False)
    assert command("wml", ["r.yaml", "--resume"]) == [
        sys.executable,
        "-m",
        "distill.wml",
        "train",
        "r.yaml",
        "--resume",
    ]
    monkeypatch.setenv("SLURM_GPUS_ON_NODE", "4")
    monkeypatch.setenv("SLURM_JOB_ID", "123457")
    cmd = command("distill", ["r.yaml"])
    assert cmd[:3] == [sys.executable, "-m", "launch.torchrun"] and cmd[-3:] == ["-m", "distill", "r.yaml"]
    assert {"--nnodes=1", "--nproc_per_node=4", "--rdzv_endpoint=localhost:23457", "--rdzv_id=123457"} <= set(cmd)
    monkeypatch.setenv("BABYDISTILL_PROCS_PER_NODE", "1")  # set explicitly, it wins over the GPU count
    assert command("train", ["r.yaml"]) == [sys.executable, "-m", "train", "r.yaml"]


def test_launch_refuses_a_missing_recipe(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "launch", str(tmp_path / "nope.yaml")], cwd=ROOT, capture_output=True, text=True
    )
    assert_user_error(proc, "nope.yaml")


@pytest.mark.slow
def test_finalists_are_refused_while_a_point_of_the_selection_stage_failed(workdir, demo_root, cache_dir):
    """One point diverges (a learning rate of 1e6: the loss becomes nan): no finalist is chosen among the rest unless
    select.allow_incomplete is set, and then the launcher says loudly that it chose among the finished points only."""
    grid = write_grid(
        workdir,
        TWO_AXES.replace("DEMO", str(demo_root))
        .replace("optim.lr: [1.0e-3, 3.0e-3]", "optim.lr: [3.0e-3, 1.0e+6]")
        .replace("train.seed: [1, 2]", "train.seed: [1]"),
    )
    proc = launch(workdir, str(grid), *data_sets(demo_root, cache_dir))
    assert_user_error(proc, "select.stage 'grid': 1 of its points did not finish", "select.allow_incomplete=true")
    runs = workdir / "runs" / "lr-seed"
    assert not list(runs.glob("*__final")) and "FAILED" in proc.stdout and "log: " in proc.stdout
    assert "loss became nan" in proc.stdout  # the failed point's last error line, read from its log
    again = launch(workdir, str(grid), "select.allow_incomplete=true", *data_sets(demo_root, cache_dir))
    assert again.returncode == 1 and "WARNING: finalists chosen among the finished points" in again.stderr
    (final,) = runs.glob("*__final")
    assert "optim.lr=0.003" in final.name and (final / "DONE").is_file()


@pytest.mark.parametrize("sbatch_said, key", [
    ("sbatch: error: invalid partition specified: nope\n"
     "sbatch: error: Batch job submission failed: Invalid partition name specified", "executor.partition"),
    ("sbatch: error: Invalid generic resource (gres) specification", "executor.gpus_per_node"),
    ("sbatch: error: Memory specification can not be satisfied\n"
     "sbatch: error: Batch job submission failed: Requested node configuration is not available", "executor.mem_gb"),
    ("sbatch: error: Batch job submission failed: Requested time limit is invalid (missing or exceeds some limit)",
     "executor.time_min"),
    ("sbatch: error: Batch job submission failed: Node count specification invalid", "executor.nodes"),
    ("sbatch: error: Batch job submission failed: More processors requested than permitted", "executor.cpus_per_task"),
    ("sbatch: error: Batch job submission failed: Job violates accounting/QOS policy (job submit limit, user's size "
     "and/or time limits)", "executor"),
])
def test_a_refused_job_array_names_the_key_its_reason_points_at(sbatch_said, key):
    """sbatch's refusals (as SLURM words them; tests/test_slurm.py provokes the first three on the real cluster):
    the error names the key, quotes sbatch without its prefix, and says what the jobs asked."""
    from grid.config import ExecutorConfig
    from grid.executors import _refusal

    said = _refusal(sbatch_said, ExecutorConfig(kind="slurm", partition="gpu", gpus_per_node=4), "students")
    assert said.startswith(f"{key}: sbatch refused stage 'students' (") and "sbatch: error" not in said
    assert sbatch_said.splitlines()[-1].removeprefix("sbatch: error: ") in said
    assert "asked for partition gpu, 1 node(s), 4 GPU(s) and 2 CPU core(s) per node, the default memory" in said
    assert said.endswith(f"fix {key if key != 'executor' else 'the executor keys'} (sinfo lists the partitions and "
                         f"their limits), then run the same command again")


@pytest.mark.parametrize("state, reason, says", [
    ("PENDING", "JobHeldUser", "is held by SLURM (JobHeldUser); it waits until someone runs scontrol release 7_1"),
    ("PENDING", "JobHeldAdmin", "is held by SLURM (JobHeldAdmin)"),
    ("PENDING", "launch failed requeued held", "is held by SLURM (launch failed requeued held)"),
    ("PENDING", "PartitionConfig", "cannot start as submitted (PartitionConfig: it asks for more than the partition's "
                                   "nodes have: executor.cpus_per_task, gpus_per_node, mem_gb or nodes); it stays "
                                   "pending until someone runs scancel 7_1; then fix the executor keys"),
    ("PENDING", "PartitionNodeLimit", "(PartitionNodeLimit: it asks for more nodes than the partition allows: "
                                      "executor.nodes)"),
    ("PENDING", "PartitionTimeLimit", "(PartitionTimeLimit: its time limit exceeds the partition's: "
                                      "executor.time_min)"),
    ("PENDING", "BadConstraints", "(BadConstraints: no node meets its constraints)"),
    ("PENDING", "InvalidAccount", "(InvalidAccount: the account it runs under is not valid"),
    ("PENDING", "InvalidQOS", "(InvalidQOS: its QOS is not valid"),
    ("PENDING", "QOSMaxGRESPerJob", "(QOSMaxGRESPerJob: it asks for more than the account or QOS grants a job)"),
    ("PENDING", "AssocMaxCpuPerJobLimit", "(AssocMaxCpuPerJobLimit: it asks for more than the account or QOS"),
    ("PENDING", "QOSMaxNodePerJobLimit", "(QOSMaxNodePerJobLimit: it asks for more than the account or QOS"),
    # waits for the queue, not for a person: nothing said
    ("PENDING", "Resources", ""),
    ("PENDING", "Priority", ""),
    ("PENDING", "JobArrayTaskLimit", ""),
    ("PENDING", "QOSGrpCpuLimit", ""),
    ("PENDING", "AssocGrpGRES", ""),
    ("PENDING", "BeginTime", ""),
    ("RUNNING", "None", ""),
    ("COMPLETING", "None", ""),
])
def test_the_launcher_names_a_job_only_a_person_can_start(state, reason, says):
    """squeue's state and reason decide whether the launcher tells the person at the terminal what to do: a hold
    (scontrol release) or a request the cluster never grants (scancel, then fix the executor keys); a job waiting
    for resources, its priority or a group limit is left to the queue. tests/test_slurm.py provokes a hold and
    PartitionConfig on the real cluster."""
    from grid.executors import _waits_for_a_person

    said = _waits_for_a_person("7_1", state, reason)
    assert (says in said) if says else said == "", said


@pytest.mark.parametrize("size", ["8k", "60k"])
def test_a_full_disk_under_a_grids_runs_is_named_where_it_is_full(size, workdir, demo_root, cache_dir):
    """The runs' disk fills while a point trains: the point's line names a file or folder of the run (its log, when
    the disk fills as the training prints, before it writes anything else), never another folder (a print that
    fails inside the data cache's preparation must not blame the data cache, on another disk); the same command,
    given room, finishes the point."""
    grid = write_grid(workdir, f"name: g\nstages:\n  - name: grid\n    recipes: [config/runs/demo-student.yaml]\n"
                               f"    axes: {{optim.lr: [3.0e-3]}}\n"
                               f"tasks: [demo_pairs]\neval_data_dir: {demo_root}\nexecutor: {{kind: debug}}\n")
    argv = [str(grid), *data_sets(demo_root, cache_dir), "--set", "train.word_checkpoints=[]"]
    with mounted(workdir / "runs", size=size):
        proc = launch(workdir, *argv)
        assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
        said = re.findall(r"^  error: (.*)$", proc.stdout, re.M)
        run = re.escape("runs/g/student__optim.lr=0.003")
        assert len(said) == 1 and re.match(rf"({re.escape(str(workdir))}/)?{run}\b", said[0]), said
        assert "No space left on device" in said[0] or "disk is full" in said[0], said
        subprocess.run(["mount", "-o", "remount,size=8m", str(workdir / "runs")], check=True)
        ok(launch(workdir, *argv))
