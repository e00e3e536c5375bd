"""Experiment tracking through the Trainer's own integrations (`train.report_to`: tensorboard, wandb, mlflow).

Each tracker writes inside the run directory unless its own environment says otherwise: TensorBoard's
event files go to <run>/tracking/tensorboard, wandb's run folder to <run>/tracking/wandb (offline with
WANDB_MODE=offline), MLflow's project is the experiment. The tracker's run is named
`<experiment>/<name>-<UTC time>` (as the WML seed's wandb_run_name, with the datetime appended), and gets
the resolved config and, for a grid point, the grid's name, stage and axes (from $BABYDISTILL_GRID, which the
grid sets for the point's training). Our own metrics reach it through the Trainer's logs: `loss/<term>`,
`words_seen`, WML's `omega/<i>`.
"""
from __future__ import annotations

import importlib.util
import json
import os
import time

from transformers import TrainerCallback

TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}  # name -> the package it needs
GRID_ENV = "BABYDISTILL_GRID"


def trackers(report_to: str) -> list[str]:
    names = [t.strip() for t in report_to.split(",") if t.strip()]
    return [] if names in ([], ["none"]) else names


def problem(report_to: str) -> str | None:
    """Why `train.report_to` cannot be used here, or None."""
    from common.config import suggest

    for name in trackers(report_to):
        if name not in TRACKERS:
            return (f"'{name}' is not a tracker{suggest(name, list(TRACKERS))}; use none or a comma-separated list of "
                    f"{', '.join(TRACKERS)}")
        if importlib.util.find_spec(TRACKERS[name]) is None:
            package = TRACKERS[name]
            return f"'{name}' needs the {package} package, which is not installed; pip install {package}, or use none"
    return None


# The trackers' own settings as the user's environment gives them, read once: a setting the user made wins, the others
# are set per run (several runs in one process, as the grid's debug executor runs them, each get their own).
USER_ENV = {key: os.environ.get(key) for key in ("WANDB_DIR", "WANDB_PROJECT", "MLFLOW_EXPERIMENT_NAME")}


def _set(key: str, value: str) -> None:
    os.environ[key] = USER_ENV.get(key) or value


def prepare(cfg, run_path) -> dict:
    """TrainingArguments' report_to and run_name; each tracker's folder set to the run directory (unless the user's
    environment sets it)."""
    names = trackers(cfg.train.report_to)
    if not names:
        return {"report_to": "none"}
    if "tensorboard" in names:
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_path / "tracking" / "tensorboard")
    if "wandb" in names:
        (run_path / "tracking").mkdir(parents=True, exist_ok=True)
        _set("WANDB_DIR", str(run_path / "tracking"))
        _set("WANDB_PROJECT", cfg.output.experiment)
    if "mlflow" in names:
        _set("MLFLOW_EXPERIMENT_NAME", cfg.output.experiment)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return {"report_to": names, "run_name": f"{cfg.output.experiment}/{cfg.output.name}-{stamp}"}


class TrackerConfig(TrainerCallback):
    """Gives each active tracker the run's resolved config and grid axes, after the integration has started."""

    def __init__(self, cfg, names: list[str]):
        from common.config import to_dict

        self.names = names
        # the trainer's callbacks (build_trainer sets them): the TensorBoard writer is among them
        self.callbacks: list = []
        self.config = {"babydistill": to_dict(cfg)}
        grid = os.environ.get(GRID_ENV)
        if grid:
            self.config["grid"] = json.loads(grid)

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        if "tensorboard" in self.names:
            for cb in self.callbacks:
                writer = getattr(cb, "tb_writer", None)
                if writer is not None:
                    writer.add_text("babydistill/config", "```\n" + json.dumps(self.config, indent=2) + "\n```")
                    writer.flush()
        if "wandb" in self.names:
            import wandb

            if wandb.run is not None:
                wandb.run.config.update(self.config, allow_val_change=True)
        if "mlflow" in self.names:
            import mlflow

            if mlflow.active_run() is not None:
                flat = {}
                _flatten(self.config, "", flat)
                mlflow.log_params({k: str(v)[:500] for k, v in list(flat.items())[:100]})


def _flatten(value, prefix: str, out: dict) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(v, f"{prefix}{k}.", out)
    else:
        out[prefix[:-1]] = value
