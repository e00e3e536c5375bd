"""The run directory (DESIGN.md): config.yaml, run.json, metrics.jsonl, checkpoints/, model/, DONE.

It is the interface between jobs: launchers decide from it alone whether to skip (DONE),
resume (a good checkpoint) or start. Files are written atomically (temporary name, then
rename), a checkpoint counts only once its COMPLETE marker exists, and nothing here is
deleted except on an explicit --overwrite.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from common.errors import UserError
from common.paths import REPO, write_atomic

COMPLETE = "COMPLETE"  # written into a checkpoint folder after everything in it is saved
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
SLURM_VARS = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_NAME", "SLURM_JOB_NODELIST",
              "SLURM_RESTART_COUNT", "SLURM_PROCID", "SLURM_NNODES")


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def first_difference(old, new, prefix: str = "") -> str | None:
    """Dotted key of the first value that differs between two nested dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            diff = first_difference(old.get(key), new.get(key), f"{prefix}{key}.")
            if diff:
                return diff
        return None
    return None if old == new else f"{prefix.rstrip('.')}: {old!r} -> {new!r}"


@dataclass
class RunDir:
    path: Path

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def done_file(self) -> Path:
        return self.path / "DONE"

    @property
    def info_file(self) -> Path:
        return self.path / "run.json"

    # ------------------------------------------------------------------ deciding what to do

    def decide(self, resolved: dict, resume: bool, overwrite: bool) -> str:
        """'start', 'resume', 'overwrite' or 'done'; refuses (UserError) where data would be lost.

        Only reads: nothing is written or removed here, so a refused run leaves the folder as it was.
        """
        if not self.path.exists() or not any(p.name != "logs" for p in self.path.iterdir()):
            return "start"  # empty, or only the logs/ a SLURM template writes before training starts
        if overwrite:
            return "overwrite"
        if not self.config_file.exists():
            raise UserError(f"{self.path}: exists and is not a babydistill run (no config.yaml); choose another output.name or pass --overwrite")
        old = yaml.safe_load(self.config_file.read_text())
        diff = first_difference(old, resolved)
        if self.done_file.exists():
            if resume and not diff:
                return "done"
            raise UserError(f"{self.path}: holds a finished run" + (f" with a different config ({diff})" if diff else "")
                            + "; choose another output.name, or pass --overwrite to replace it")
        if resume:
            if diff:
                print(f"warning: resuming {self.path} with a changed config ({diff})", file=sys.stderr)
            return "resume"
        if diff:
            raise UserError(f"{self.path}: holds a different run ({diff}); choose another output.name, "
                            f"or pass --resume to continue it or --overwrite to replace it")
        raise UserError(f"{self.path}: holds an unfinished run of this config; pass --resume to continue it or --overwrite to restart it")

    def create(self, resolved: dict, decision: str) -> None:
        """Lay out the folder for `decision` and write config.yaml (main process only)."""
        if not is_main_process():
            return
        if decision == "overwrite":  # everything but logs/ (the job writing this is logging there)
            for entry in self.path.iterdir():
                if entry.name != "logs":
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        write_atomic(self.config_file, yaml.safe_dump(resolved, sort_keys=False))

    # ------------------------------------------------------------------ checkpoints

    def checkpoint_list(self) -> list[Path]:
        """Checkpoint folders, newest (highest step) first."""
        if not self.checkpoints.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.checkpoints.iterdir() if (m := CHECKPOINT.match(p.name)) and p.is_dir()]
        return [p for _, p in sorted(found, reverse=True)]

    def newest_good_checkpoint(self) -> Path | None:
        """The newest checkpoint that passes `checkpoint_problem`; bad ones are renamed aside with a warning."""
        for ckpt in self.checkpoint_list():
            problem = checkpoint_problem(ckpt)
            if problem is None:
                return ckpt
            aside = ckpt.with_name("corrupt-" + ckpt.name)
            if is_main_process():
                ckpt.rename(aside)
            print(f"warning: {ckpt} is unusable ({problem}); moved to {aside.name}, falling back to the previous checkpoint", file=sys.stderr)
        return None

    def newest_finite_checkpoint(self) -> Path | None:
        """For reporting after a non-finite loss: the newest complete checkpoint with finite weights."""
        return next((c for c in self.checkpoint_list() if checkpoint_problem(c) is None), None)

    # ------------------------------------------------------------------ run.json, DONE

    def read_info(self) -> dict:
        return json.loads(self.info_file.read_text()) if self.info_file.exists() else {}

    def write_info(self, **changes) -> None:
        if is_main_process():
            info = self.read_info()
            info.update(changes)
            write_atomic(self.info_file, json.dumps(info, indent=2, default=str))

    def begin(self, argv: list[str], resumed_from: Path | None) -> None:
        info = self.read_info()
        attempts = info.get("attempts", [])
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        attempts.append({"start": now(), "host": socket.gethostname(), "argv": argv,
                         "resumed_from": str(resumed_from) if resumed_from else None,
                         "world_size": int(os.environ.get("WORLD_SIZE", "1")), "gpus_per_node": gpus,
                         "slurm": {k: os.environ[k] for k in SLURM_VARS if k in os.environ}})
        self.write_info(start=info.get("start", now()), status="running", attempts=attempts, **provenance())

    def end(self, status: str, **extra) -> None:
        self.write_info(status=status, end=now(), **extra)

    def mark_done(self, summary: dict) -> None:
        """DONE is written last and atomically: its presence means every other file is final."""
        if is_main_process():
            write_atomic(self.done_file, json.dumps({"finished": now(), **summary}, indent=2))


def checkpoint_problem(ckpt: Path) -> str | None:
    """None if `ckpt` is complete and readable with finite weights, else why it is not."""
    import torch
    from safetensors import safe_open

    if not (ckpt / COMPLETE).exists():
        return "no COMPLETE marker: it was being written when the job stopped"
    try:
        weights = sorted(ckpt.glob("*.safetensors"))
        for file in weights:
            with safe_open(str(file), framework="pt") as handle:
                for name in handle.keys():
                    t = handle.get_tensor(name)
                    if t.is_floating_point() and not torch.isfinite(t).all():
                        return f"non-finite values in {file.name}:{name}"
        for file in [*ckpt.glob("*.pt"), *ckpt.glob("*.pth")]:  # torch.save writes zip archives: check every CRC
            with zipfile.ZipFile(file) as archive:
                bad = archive.testzip()
            if bad is not None:
                return f"{file.name}: corrupt member {bad}"
        json.loads((ckpt / "trainer_state.json").read_text())
    except Exception as exc:  # any unreadable file makes the checkpoint unusable
        return f"unreadable: {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
    if not weights and not any(ckpt.glob("global_step*")):
        return "no model weights"
    return None


def provenance() -> dict:
    """Git commit, package versions, host: what run.json records to reproduce a run."""
    import importlib.metadata as md

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
            return done.stdout.strip() or None if done.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            return None

    versions = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "datasets", "tokenizers", "accelerate", "deepspeed"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return {"git_commit": git("rev-parse", "HEAD"), "git_dirty": bool(git("status", "--porcelain")),
            "versions": versions, "host": socket.gethostname()}
