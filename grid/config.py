"""The grid YAML (config/grids/*.yaml): stages of points, evaluation, selection, the executor."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from common.config import ConfigError, field

FINALISTS = "finalists"  # the stage the launcher adds for the retrained best points


@dataclass
class StageConfig:
    name: str = field("", "stage name; a stage starts when every point of the previous stage has finished")
    recipes: list[str] = field([], "run YAMLs (config/runs/...): each is one point, or the base that the axes vary")
    axes: dict[str, Any] = field(
        {}, "dotted recipe key -> list of values, e.g. distill.losses.logit_kd.weight: [0.1, 0.5]"
    )
    mode: Literal["product", "zip"] = field(
        "product", "product: every combination of the axes; zip: their i-th values together"
    )
    overrides: dict[str, Any] = field(
        {}, "dotted recipe key -> value for every point of the stage, e.g. data.train_fraction: 0.2"
    )
    curve: bool = field(True, "evaluate this stage's milestones on the grid's tasks_per_milestone (false: the stage "
                              "needs no train.word_checkpoints, e.g. teachers)")


@dataclass
class SelectConfig:
    stage: str = field("", "the stage whose points are ranked for finalists; empty: no selection")
    metric: str = field(
        "dev_ce", "dev_ce (lower is better) or an evaluated or fine-tuned task's score (its accuracy, F1, rho or ΔR²), "
                  "e.g. blimp_filtered (higher is better)")
    finalists: int = field(1, "how many of the best points are retrained with `overrides`", ge=1)
    overrides: dict[str, Any] = field(
        {"data.train_fraction": 1.0}, "dotted recipe keys for the finalists' runs (the full data)"
    )
    allow_incomplete: bool = field(False, "choose finalists even when points of the selection stage did not finish "
                                          "(among the finished ones); false: refuse until every point has finished")


@dataclass
class ExecutorConfig:
    kind: Literal["slurm", "local", "debug"] = field(
        "local", "slurm: one submitit job array per stage; local: one point after another here; debug: in this process")
    partition: str = field("", "SLURM partition (empty: the cluster's default)")
    nodes: int = field(1, "nodes per point (torchrun across them)", ge=1)
    gpus_per_node: int = field(0, "GPUs per node (one process each); 0: one CPU process", ge=0)
    cpus_per_task: int = field(2, "CPU cores per point and node", ge=1)
    mem_gb: int = field(0, "memory per node in GB; 0: the cluster's default", ge=0)
    time_min: int = field(
        60, "time limit per job in minutes (a point that needs longer checkpoints and requeues)", ge=1
    )
    array_parallelism: int = field(16, "points of one stage running at once", ge=1)
    signal_delay_s: int = field(120, "SIGUSR2 this many seconds before the time limit: checkpoint, then requeue", ge=1)
    max_requeues: int = field(3, "time-limit requeues per point before it is given up", ge=0)
    deepspeed: str = field("", "DeepSpeed JSON for every point (config/deepspeed/zero2.json); empty: none")
    venv: str = field("", "venv activated in the jobs (default: the launcher's own python)")


@dataclass
class GridConfig:
    name: str = field("", "grid name: its runs go to <output_dir>/<name>/<point>")
    output_dir: str = field("runs", "root of the run directories")
    results_dir: str = field("", "where the table and plots go (<results_dir>/<name>.csv, .md, PNGs); empty: "
                                 "<output_dir>/<name>/_results, beside the runs")
    stages: list[StageConfig] = field([], "the stages, run in order")
    tasks: list[str] = field(["demo_pairs"], "evaluation tasks run on every point (python -m eval --tasks)")
    eval_data_dir: str = field("", "BabyLM evaluation_data folder for the tasks (empty: eval's default)")
    convention: Literal["", "babylm2024", "babylm2025"] = field(
        "", "how the zero-shot tasks are scored (python -m eval --convention; empty: each task's own, else babylm2024)"
    )
    finetune: list[str] = field([], "fine-tuning tasks run on every point's models (python -m eval finetune --tasks)")
    tasks_per_milestone: list[str] = field(
        [],
        "zero-shot tasks run on every words-seen milestone of every point: its learning "
        "curve (python -m eval curve; the recipes need train.word_checkpoints)",
    )
    finetune_data_dir: str = field(
        "", "folder of the fine-tuning tasks' files, e.g. glue_filtered (empty: each task's own, the demo's)"
    )
    select: SelectConfig = field(SelectConfig(), "finalists: the best points of one stage, retrained")
    executor: ExecutorConfig = field(ExecutorConfig(), "where the points run")

    @property
    def root(self) -> Path:
        """<output_dir>/<name>: the folder of the grid's run directories."""
        return Path(self.output_dir) / self.name

    @property
    def results_path(self) -> Path:
        return Path(self.results_dir) if self.results_dir else self.root / "_results"

    def check(self) -> None:
        from common.paths import file_in_the_way, name_problem
        from eval.tasks import unknown_task

        problem = name_problem(self.name)
        if problem:
            raise ConfigError(
                "name", f"{problem}; name the grid with one folder name (its runs go to <output_dir>/<name>/)"
            )
        blocker = file_in_the_way(self.root)
        if blocker is not None:
            raise ConfigError(
                "output_dir",
                f"{blocker} is a file, but the grid's runs go to {self.root}; move it or choose another output_dir",
            )
        for key in ("tasks", "tasks_per_milestone"):
            for i, task in enumerate(getattr(self, key)):
                problem = unknown_task(task)
                if problem:
                    raise ConfigError(f"{key}[{i}]", problem)
        from common.config import suggest
        from eval.finetune import known

        tunable = known()
        for i, task in enumerate(self.finetune):
            if task not in tunable:
                raise ConfigError(
                    f"finetune[{i}]",
                    f"'{task}' is not a fine-tuning task{suggest(task, tunable)}; known: {', '.join(tunable)}",
                )
        if not self.stages:
            raise ConfigError("stages", "is empty; give at least one stage with recipes")
        names = [s.name for s in self.stages]
        for i, stage in enumerate(self.stages):
            key = f"stages[{i}]"
            if not stage.name:
                raise ConfigError(f"{key}.name", "is empty; name the stage")
            if names.count(stage.name) > 1:
                raise ConfigError(f"{key}.name", f"'{stage.name}' names two stages; give each stage its own name")
            if stage.name == FINALISTS:
                raise ConfigError(f"{key}.name", f"'{FINALISTS}' is the launcher's own stage; choose another name")
            if not stage.recipes:
                raise ConfigError(f"{key}.recipes", "is empty; list at least one run YAML")
            for axis, values in stage.axes.items():
                if not isinstance(values, list) or not values:
                    raise ConfigError(
                        f"{key}.axes.{axis}",
                        f"is {'empty' if values == [] else repr(values)}; give a non-empty list of values",
                    )
            lengths = {axis: len(v) for axis, v in stage.axes.items()}
            if stage.mode == "zip" and len(set(lengths.values())) > 1:
                raise ConfigError(f"{key}.axes", "zip axes must have the same length; got "
                                  + ", ".join(f"{a}: {n}" for a, n in lengths.items()) + " (or set mode: product)")
        if self.select.stage and self.select.stage not in names:
            raise ConfigError(
                "select.stage", f"'{self.select.stage}' is not a stage{suggest(self.select.stage, names)}"
            )
        if self.select.metric != "dev_ce" and self.select.metric not in self.tasks + self.finetune:
            raise ConfigError(
                "select.metric",
                f"'{self.select.metric}' is produced by no evaluation; use dev_ce or one of "
                f"the grid's tasks: {', '.join(self.tasks + self.finetune) or '(none)'}",
            )
        if self.select.stage and self.select.finalists < 1:
            raise ConfigError("select.finalists", f"must be at least 1, got {self.select.finalists}")
        if self.executor.kind == "slurm" and self.executor.time_min * 60 <= self.executor.signal_delay_s:
            raise ConfigError("executor.signal_delay_s", f"{self.executor.signal_delay_s} s is not shorter than the "
                              f"time limit ({self.executor.time_min} min)")

