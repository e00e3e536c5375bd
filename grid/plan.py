"""A grid YAML -> its points: one run directory each, with the overrides that make its config.

A point's state is read from its run directory alone: `done` (DONE, grid.json and every
task's evaluation), `partial` (a config.yaml: resumed from its newest checkpoint) or `new`.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import config as cfglib
from common.errors import UserError
from common.names import point_name
from common.paths import read_json
from grid.config import FINALISTS, GridConfig, StageConfig
from launch.kinds import recipe_kind, schema


@dataclass
class Point:
    grid: str
    stage: str
    name: str
    recipe: str
    kind: str                      # train, distill or wml (launch.kinds)
    axes: dict[str, Any]           # the grid's varied keys and this point's values
    overrides: dict[str, Any]      # every dotted recipe key set by the grid, output.* included
    run: str                       # the run directory
    tasks: list[str]
    eval_data_dir: str = ""
    convention: str = ""           # python -m eval --convention; empty: each task's own
    backend: str = "causal"        # how its models are evaluated (eval.model.backend_for its objective)
    finetune: list[str] = field(default_factory=list)  # fine-tuning tasks (eval.finetune), after the zero-shot ones
    finetune_data_dir: str = ""
    tasks_per_milestone: list[str] = field(default_factory=list)  # on every milestone: the point's learning curve
    deepspeed: str = ""
    extra: list[str] = field(default_factory=list)  # overrides from the launcher's command line, last
    config: Any = field(default=None, repr=False, compare=False)  # as expand built it, for the plan; finalists: None

    def sets(self) -> list[str]:
        """Every override as key=JSON: the grid's, DeepSpeed's, then the launcher's command line."""
        sets = [f"{k}={json.dumps(v)}" for k, v in self.overrides.items()]
        if self.deepspeed:
            sets.append(f"train.deepspeed={json.dumps(self.deepspeed)}")
        return [*sets, *self.extra]

    def argv(self) -> list[str]:
        """The entry point's arguments: the recipe, the overrides, --resume."""
        return [self.recipe, *self.sets(), "--resume"]

    # ------------------------------------------------------------------ state, from the run directory

    def model_dirs(self) -> list[Path]:
        run = Path(self.run)
        if self.kind == "wml":
            champion = run / "model" / "champion.json"
            peers = read_json(champion, "the WML run's peers and champion", "move the run away to train that point "
                              "again", {"peers": list})["peers"] if champion.is_file() else []
            return [run / "model" / p for p in peers]
        return [run / "model"]

    def eval_dir(self, model_dir: Path) -> Path:
        run = Path(self.run)
        return run / "eval" if model_dir == run / "model" else run / "eval" / model_dir.name

    def evaluated(self) -> bool:
        models = self.model_dirs()
        if not models or not all(
            (self.eval_dir(m) / f"{t}.json").is_file() for m in models for t in self.tasks + self.finetune
        ):
            return False
        if not self.tasks_per_milestone:
            return True
        curve = Path(self.run) / "eval" / "curve.json"  # the learning curve, when the grid asks for one
        try:  # one that cannot be read is made again from the milestones' results, as a missing one is
            return set(self.tasks_per_milestone) <= set(json.loads(curve.read_text(encoding="utf-8"))["tasks"])
        except (OSError, ValueError, KeyError, TypeError):
            return False

    def state(self) -> str:
        run = Path(self.run)
        if (run / "DONE").is_file() and (run / "grid.json").is_file() and self.evaluated():
            return "done"
        return "partial" if (run / "config.yaml").is_file() else "new"


def plain(value: Any) -> Any:
    """A config value as YAML/JSON data (sections as mappings)."""
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def dotted_get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = cfg.get(part) if isinstance(cfg, dict) else getattr(cfg, part)
    return plain(cfg)


def _combinations(stage: StageConfig) -> list[dict[str, Any]]:
    keys = list(stage.axes)
    if not keys:
        return [{}]
    values = zip(*stage.axes.values()) if stage.mode == "zip" else itertools.product(*stage.axes.values())
    return [dict(zip(keys, v)) for v in values]


def load_grid(path: str | Path, overrides: list[str] = ()) -> GridConfig:
    return cfglib.load(GridConfig, path, overrides)


def expand(cfg: GridConfig, grid_path: str | Path, extra: list[str] = ()) -> list[Point]:
    """Every point of every stage (finalists come later, from the results). Each point's config is
    built and checked now, without the checks that need earlier stages' outputs, so a wrong axis
    key or value, or values that do not go together, fail before anything runs."""
    points: list[Point] = []
    plan = cfglib.Plan(elsewhere=cfg.executor.kind == "slurm")
    for i, stage in enumerate(cfg.stages):
        for recipe in stage.recipes:
            if not Path(recipe).is_file():
                raise UserError(f"{grid_path}: stages[{i}] ({stage.name}): recipe {recipe} does not exist; "
                                f"give a run YAML such as config/runs/demo-teacher.yaml")
            raw, _ = cfglib.read_yaml(recipe)
            kind = recipe_kind(raw)
            base = (raw.get("output") or {}).get("name") or Path(recipe).stem
            for combo in _combinations(stage):
                overrides = {**stage.overrides, **combo, "output.dir": cfg.output_dir, "output.experiment": cfg.name,
                             "output.name": base}
                if kind == "wml":
                    overrides["wml.eval_tasks"] = []  # the grid evaluates every peer itself, on its own tasks
                point = Point(grid=cfg.name, stage=stage.name, name=base, recipe=recipe, kind=kind, axes=combo,
                              overrides=overrides, run="", tasks=list(cfg.tasks), eval_data_dir=cfg.eval_data_dir,
                              convention=cfg.convention, finetune=list(cfg.finetune),
                              finetune_data_dir=cfg.finetune_data_dir,
                              tasks_per_milestone=list(cfg.tasks_per_milestone) if stage.curve else [],
                              deepspeed=cfg.executor.deepspeed, extra=list(extra))
                point.config, point.backend = check_point(point, grid_path, f"stages[{i}] ({stage.name})", plan)
                # The values as the config reads them: 0.001 and "1e-3" are one value, hence one point.
                point.axes = {k: dotted_get(point.config, k) for k in combo}
                point.name = point_name(base, point.axes)
                point.overrides.update({**point.axes, "output.name": point.name})
                point.run = str(cfg.root / point.name)
                points.append(point)
    seen: dict[str, Point] = {}
    for p in points:
        if p.name in seen:
            q = seen[p.name]
            if (q.recipe, q.stage) == (p.recipe, p.stage):
                raise UserError(
                    f"{grid_path}: stage {p.stage}: two points of {p.recipe} have the same values "
                    f"({', '.join(f'{k}={v!r}' for k, v in p.axes.items())}): an axis lists one value twice "
                    f"(maybe in two spellings, as 0.001 and 1e-3); remove the repeat"
                )
            raise UserError(f"{grid_path}: two points are both named '{p.name}' ({q.recipe} in stage "
                            f"{q.stage}, {p.recipe} in stage {p.stage}); give the recipes different output.name")
        seen[p.name] = p
    if cfg.select.stage:
        for p in points:  # any of them may be a finalist: each must take select.overrides
            if p.stage == cfg.select.stage and cfg.select.overrides:
                check_point(dataclasses.replace(p, overrides={**p.overrides, **cfg.select.overrides}), grid_path,
                            f"select.overrides on point {p.name}", plan)
        n = sum(p.stage == cfg.select.stage for p in points)
        if cfg.select.finalists > n:
            raise UserError(
                f"{grid_path}: select.finalists is {cfg.select.finalists} but stage '{cfg.select.stage}' has only "
                f"{n} point(s); lower select.finalists"
            )
    return points


def other_runs(point: Point) -> list[tuple[str, str]]:
    """(key, folder) of every other run's folder the point reads: teachers, a warm start, a WML reference."""
    cfg = point.config
    if point.kind == "distill":
        return [(f"distill.teachers[{i}].path", t.path) for i, t in enumerate(cfg.distill.teachers)] + (
            [("student.init_from", cfg.student.init_from)] if cfg.student.init_from else [])
    if point.kind == "wml":
        w = cfg.wml
        uses_teacher = w.distillation_method == "vanilla" and w.solo_peer < 0
        return ([("wml.teacher", w.teacher)] if uses_teacher and w.teacher else []) + (
            [("wml.reference_folder", w.reference_folder)] if w.reference_folder else [])
    return []


def check_other_runs(cfg: GridConfig, points: list[Point], grid_path: str | Path) -> None:
    """Each folder of another run that a point reads is there now, or inside the run directory of a point of an
    earlier stage (which will write it): a mistyped teacher fails the grid on launch, not after the stages before it.
    (A plan, `--dry-run`, reads no folders: it can be shown before the teachers exist.)"""
    stages = [stage.name for stage in cfg.stages]
    for point in points:
        earlier = [Path(p.run).resolve() for p in points if stages.index(p.stage) < stages.index(point.stage)]
        for key, folder in other_runs(point):
            path = Path(folder).resolve()
            if not path.is_dir() and not any(path == run or run in path.parents for run in earlier):
                raise UserError(
                    f"{grid_path}: stages[{stages.index(point.stage)}] ({point.stage}), recipe {point.recipe}: {key}: "
                    f"{folder} does not exist and no earlier stage's point writes it; fix the path, or train that "
                    f"model in an earlier stage"
                )


def check_started_points(points: list[Point], grid_path: str | Path) -> None:
    """A point whose run directory exists holds a run of the values the grid gives it now: a grid edited after its
    points started would otherwise resume them with values their checkpoints override, or show finished runs of the
    old values under the new ones. Keys a resume may change (logging, checkpoints, ...) may differ."""
    from train.rundir import RunDir, describe_changes

    for point in points:
        run = RunDir(Path(point.run))
        if point.config is None or not run.config_file.is_file():
            continue
        _, fixed = run.changes_to(point.config)
        if fixed:
            finished = "a finished run" if (run.path / "DONE").is_file() else "an unfinished run"
            raise UserError(
                f"{grid_path}: stage {point.stage}, point {point.name}: {run.path} holds {finished} of other values "
                f"({describe_changes(fixed)}): the grid's values for it changed since it started; restore them, or "
                f"give the grid another name for a new set of runs"
            )


def check_trained_inputs(points: list[Point], grid_path: str | Path) -> None:
    """A started point's run was trained on what its config reads now: the packed text (the corpus files' bytes, the
    tokenizer, the cleaning and packing) and each teacher's model files, as its run.json recorded them. A corpus
    edited, or a teacher trained again, between two launches leaves every config as it was: a finished point would
    be skipped, and its scores would stand beside those of points trained on the new inputs (an unfinished one would
    be refused only when its turn comes). What cannot be known before training (a folder not there yet) is left to
    the run's own check."""
    from common.paths import model_hash
    from tokenizer.prepare import blocks_names
    from train.rundir import RunDir

    names_of: dict[str, dict | None] = {}  # one fingerprint of each corpus and teacher, however many points read it
    hashes: dict[str, str] = {}
    for point in points:
        recorded = RunDir(Path(point.run)).read_info().get("inputs") if point.config is not None else None
        if not isinstance(recorded, dict):
            continue
        data, tok = point.config.data, point.config.tokenizer
        key = json.dumps([dataclasses.asdict(data), dataclasses.asdict(tok)], sort_keys=True, default=str)
        if key not in names_of:
            names_of[key] = blocks_names(data, tok)
        now = dict(names_of[key] or {})
        for k, folder in other_runs(point):
            if k in recorded and Path(folder).is_dir():
                now[k] = hashes.setdefault(folder, model_hash(Path(folder)))
        changed = [k for k in recorded if k in now and now[k] is not None and recorded[k] != now[k]]
        if changed:
            finished = ("a finished point is not trained again, so its scores would stand beside runs on the new "
                        "inputs" if (Path(point.run) / "DONE").is_file() else
                        "an unfinished point would be refused when its turn came, after the points before it")
            raise UserError(
                f"{grid_path}: stage {point.stage}, point {point.name}: {point.run} was trained on other inputs than "
                f"its config reads now ({'; '.join(f'{k}: {recorded[k]} -> {now[k]}' for k in changed)}: "
                + " or ".join(reason for reason, kind in (
                    ("the corpus files, the tokenizer, or the cleaning or packing", True),
                    ("a teacher's model files", False)) if any(k.startswith("data.") == kind for k in changed))
                + f" changed since it trained); {finished}: restore them, or move {point.run} aside to train the "
                f"point again"
            )


def check_finetune(cfg: GridConfig) -> dict[str, Path]:
    """Every fine-tuning task's files that are already there are read and checked now, before anything trains; a
    task's own default folder (the demo's) may appear later, when the first demo run writes the corpus. Returns the
    folder of each task read."""
    from eval import finetune

    folders = {}
    for name in cfg.finetune:
        spec = finetune.spec_of(name)
        if not cfg.finetune_data_dir and spec.data_dir and finetune.default_folder(spec) is None:
            continue
        try:
            data = finetune.data_folder(name, spec, cfg.finetune_data_dir or None)
        except UserError as exc:
            raise UserError(f"finetune_data_dir: {exc}".replace("--data-dir ", "")) from None
        _, (_, labels), _ = finetune.read_task(name, data)  # the grid fine-tunes with the task's own batch size
        finetune.check_one_batch(data / f"{name}.train.jsonl", len(labels), spec.batch_size, given=False)
        folders[name] = data
    return folders


GRID_WORDS = (("pass --ewok-password (or set EWOK_PASSWORD)", "set EWOK_PASSWORD"),
              ("--ewok-password", "$EWOK_PASSWORD"), ("pass --data-dir with", "set eval_data_dir to"),
              ("pass --data-dir", "set eval_data_dir"), ("--data-dir", "eval_data_dir"))


def check_tasks(cfg: GridConfig) -> dict:
    """Every zero-shot task's files are read now, before anything trains: a wrong eval_data_dir or a missing
    $EWOK_PASSWORD would otherwise stop the first point after its training. A task's own default folder (the
    demo's) may appear later, when the first demo run writes the corpus. Returns each task read (eval.tasks.Task)."""
    import os

    from common.config import load
    from common.paths import local_folder
    from eval.tasks import TaskSpec, load_task, resolve_spec

    read = {}
    for key in ("tasks", "tasks_per_milestone"):
        for task in dict.fromkeys(getattr(cfg, key)):
            spec = load(TaskSpec, resolve_spec(task)[1])
            if not cfg.eval_data_dir and spec.data_dir and local_folder(spec.data_dir) is None:
                continue
            try:
                read[task] = load_task(task, cfg.eval_data_dir or None, password=os.environ.get("EWOK_PASSWORD"))
            except UserError as exc:
                message = str(exc)  # eval's advice, in the grid's words
                for flag, key_word in GRID_WORDS:
                    message = message.replace(flag, key_word)
                raise UserError(f"{key}: {message}") from None
    return read


def check_scored_results(cfg: GridConfig, points: list[Point], tasks: dict, tuning: dict[str, Path],
                         grid_path: str | Path) -> None:
    """A point's result files were scored as the grid asks now: the same task files (eval_data_dir,
    finetune_data_dir), convention and backend. A point with a task's result is not evaluated again, so a grid
    whose evaluation was edited after its points were scored would show the old scores as the new ones."""
    from eval.evaluate import Options, scored_otherwise
    from eval.finetune import tuned_otherwise

    grid_keys = {"data": "eval_data_dir", "convention": "convention", "backend": "the recipe's model"}
    for point in points:
        for model in point.model_dirs():
            folder = point.eval_dir(model)
            for name in point.tasks + point.finetune:
                result = folder / f"{name}.json"
                if name in tasks:
                    try:
                        found = scored_otherwise(result, tasks[name], Options(backend=point.backend,
                                                                              convention=cfg.convention or None))
                    except UserError:  # a convention the task has not: the point's own evaluation says so
                        continue
                elif name in tuning:
                    found = tuned_otherwise(result, tuning[name])
                else:
                    continue
                if found:
                    key, old, new = found
                    grid_key = "finetune_data_dir" if name in tuning else grid_keys[key]
                    raise UserError(
                        f"{grid_path}: point {point.name}: {result} holds {name} scored with {key} {old}, and the "
                        f"grid now gives {new} ({grid_key}): a scored point is not scored again, so the table would "
                        f"show the old scores as the new ones; restore {grid_key}, or move {folder} aside to score "
                        f"the point again"
                    )


def check_point(point: Point, grid_path: str | Path, where: str, plan: cfglib.Plan) -> tuple[Any, str]:
    """Build and check the point's config as the point will (but for what `plan` leaves to the point: earlier
    stages' folders, another machine's GPU); returns it and how its models are evaluated."""
    try:
        cfg = cfglib.load(schema(point.kind), point.recipe, point.sets(), plan=plan)
    except UserError as exc:
        message = str(exc).replace("command line: ", "")
        raise UserError(f"{grid_path}: {where}, recipe {point.recipe}: {message}") from None
    from train.words import milestone_list

    if point.tasks_per_milestone and not milestone_list(cfg.train.word_checkpoints):
        raise UserError(
            f"{grid_path}: tasks_per_milestone is set, but {where}, recipe {point.recipe} exports no milestones; "
            f"set train.word_checkpoints in the recipe or the stage's overrides (e.g. babylm)"
        )
    from eval.model import backend_for

    if point.kind == "wml":
        return cfg, backend_for(cfg.wml.objective)
    from train.models import read_architecture

    objective, _ = read_architecture(cfg.model)
    return cfg, backend_for(objective)


def finalists(cfg: GridConfig, points: list[Point]) -> list[Point]:
    """The `select.finalists` best finished points of `select.stage` by `select.metric`, as new points
    with `select.overrides` (run directory <name>__final)."""
    from results.collect import read_run

    metric = cfg.select.metric
    sign = 1 if metric == "dev_ce" else -1  # lower dev CE is better, higher accuracy is better
    scored, files = [], {}  # how the metric's task files differ from the release's (None: not at all) -> a point
    for p in points:
        if p.stage != cfg.select.stage or p.state() != "done":
            continue
        try:
            rows = [r for r in read_run(Path(p.run))
                    if isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])]  # NaN never ranks
        except (ValueError, KeyError, TypeError) as exc:
            print(f"warning: {p.name} is not ranked for the finalists: {exc}")
            continue
        if rows:  # a WML point counts with its best peer
            scored.append((min(sign * r[metric] for r in rows), p))
            for r in rows:
                files.setdefault(r.get(f"{metric}_partial"), p.name)
    if len(files) > 1:  # a score on part of the release's items does not rank against one on all of them
        (a_how, a), (b_how, b) = ((how or "the release's items", name) for how, name in list(files.items())[:2])
        raise UserError(
            f"select.metric '{metric}': the points of stage '{cfg.select.stage}' were scored on other files ({a} on "
            f"{a_how}, {b} on {b_how}), so their scores do not rank; evaluate them on the same files, then run the "
            "same command again"
        )
    if not scored:  # the grid's selection would end with nothing to train, and say only "finalists: "
        raise UserError(
            f"select.metric '{metric}': no finished point of stage '{cfg.select.stage}' has a finite value (a null "
            f"or NaN score never ranks: an undefined rho, a diverged dev loss), so no finalists were chosen; choose "
            f"another select.metric, or fix the points and run the same command again"
        )
    if len(scored) < cfg.select.finalists:
        print(f"note: select.finalists is {cfg.select.finalists}, but only {len(scored)} point(s) of stage "
              f"'{cfg.select.stage}' have a finite {metric}: {len(scored)} finalist(s)")
    scored.sort(key=lambda t: t[0])
    out = []
    for _, p in scored[: cfg.select.finalists]:
        name = p.name + "__final"
        overrides = {**p.overrides, **cfg.select.overrides, "output.name": name}
        out.append(
            dataclasses.replace(p, stage=FINALISTS, name=name, overrides=overrides, run=str(Path(p.run).parent / name),
                                config=None)  # select.overrides change it: the point's run builds its own
        )
    return out
