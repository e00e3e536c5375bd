"""The run directory (DESIGN.md): config.yaml, run.json, metrics.jsonl, checkpoints/, model/, DONE.

It is the interface between jobs: launchers decide from it alone whether to skip (DONE),
resume (a good checkpoint) or start. One process works on a run at a time (`locked`, a
LOCK file held with flock). Files are written atomically (temporary name, then rename), a
checkpoint counts only once its COMPLETE manifest exists and every file it lists is there
whole, and nothing here is deleted except a run directory of ours on an explicit --overwrite.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import platform
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from common import config as cfglib
from common.errors import UserError, summary
from common.checkpoints import CHECKPOINT, checkpoint_problem, now
from common.locks import FolderLock, holding
from common.paths import REPO, file_in_the_way, write_atomic
from common.ranks import is_main_process, say

SLURM_VARS = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_NAME", "SLURM_JOB_NODELIST",
              "SLURM_RESTART_COUNT", "SLURM_PROCID", "SLURM_NNODES")


def differences(old, new, prefix: str = "") -> list[tuple[str, object, object]]:
    """(dotted key, old value, new value) of every value that differs between two nested dicts, in key order; lists
    of sections of the same length item by item (`distill.teachers[0].path`)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for key in sorted(set(old) | set(new)) for d in differences(old.get(key), new.get(key),
                                                                               f"{prefix}{key}.")]
    key = prefix.rstrip(".")
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new) and any(
            isinstance(item, dict) for item in old):
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in differences(a, b, f"{key}[{i}].")]
    return [] if old == new else [(key, old, new)]


def describe_changes(changes: list[tuple[str, object, object]], most: int = 3) -> str:
    """`optim.lr: 0.003 -> 0.001; train.max_steps: 40 -> 60` (and `; and 2 more` past `most`); a list of sections
    is shown by its length."""

    def shown(value) -> str:
        if isinstance(value, list) and any(isinstance(item, dict) for item in value):
            return f"{len(value)} item{'s' * (len(value) != 1)}"
        return repr(value)

    text = "; ".join(f"{key}: {shown(old)} -> {shown(new)}" for key, old, new in changes[:most])
    return text + (f"; and {len(changes) - most} more" if len(changes) > most else "")


@dataclass
class RunDir:
    path: Path
    config_changes: list[str] = dataclasses.field(default_factory=list)  # what this attempt's --resume changed

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

    # ------------------------------------------------------------------ one process at a time

    @contextlib.contextmanager
    def locked(self):
        """Hold the run's LOCK for the block (global rank 0 only: it alone writes the run directory).
        A live holder is refused in one line naming it; a dead one's lock is taken over. A folder this
        call created and left empty (a run refused or failed before it wrote anything) is removed again."""
        if not is_main_process():
            yield
            return
        blocker = file_in_the_way(self.path)
        if blocker is not None:
            raise UserError(f"{blocker}: is a file, but the run directory {self.path} must go there; "
                            f"move the file or choose another output.dir")
        self.refuse_foreign()  # not even a LOCK goes into a folder that is not ours
        created = [p for p in [self.path, *self.path.parents] if not p.exists()]
        try:
            with holding(FolderLock(self.path), self.path, "process is working on this run",
                         "wait for it to end, or stop it, then run the same command again"):
                yield
        finally:
            for folder in created:  # innermost first; only folders made here and still empty
                try:
                    folder.rmdir()
                except OSError:
                    break

    # ------------------------------------------------------------------ deciding what to do

    def is_ours(self) -> bool:
        """A run directory written by this project: run.json (a JSON object) beside config.yaml."""
        try:
            info = json.loads(self.info_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(info, dict) and ("attempts" in info or "babydistill" in info) and self.config_file.is_file()

    def read_config(self, schema: type) -> dict:
        """The run's config.yaml as `schema` reads it today: keys it lacks (added to the code since) take their
        defaults and old spellings their new names, so only real changes differ; as written when it no longer
        loads (a key since removed)."""
        try:
            old = yaml.safe_load(self.config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError, yaml.YAMLError) as exc:
            old = exc
        if not isinstance(old, dict):
            why = summary(old) if isinstance(old, Exception) else f"it holds a {type(old).__name__}"
            raise UserError(
                f"{self.config_file}: cannot be read ({why}); restore the file, or pass --overwrite to start the run "
                "again"
            )
        with contextlib.redirect_stderr(io.StringIO()), contextlib.suppress(UserError):  # no notes on old spellings
            return cfglib.to_dict(cfglib.load(schema, self.config_file, check=False))
        return old

    def refuse_foreign(self) -> None:
        """A folder at the run's path that holds something and is not a run directory of ours is never used."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"{self.path}: is a file, not a run directory; move it or choose another output.name")
        if (
            self.path.is_dir()
            and any(p.name not in ("logs", FolderLock.NAME) for p in self.path.iterdir())
            and not self.is_ours()
        ):
            raise UserError(
                f"{self.path}: exists and is not a babydistill run directory (no run.json beside config.yaml), so "
                f"neither --resume nor --overwrite touches it; choose another output.name"
            )

    def changes_to(self, cfg) -> tuple[list, list]:
        """What config `cfg` changes in the run's config.yaml: every change, and those a resume may not make (keys
        not declared `field(..., resume=True)`). `output.*` is the run's address, the same folder here."""
        changes = [c for c in differences(self.read_config(type(cfg)), cfglib.to_dict(cfg))
                   if not c[0].startswith("output.")]
        may_change = cfglib.may_change_on_resume(cfg)
        return changes, [c for c in changes if c[0] not in may_change]

    def decide(self, cfg, resume: bool, overwrite: bool) -> str:
        """'start', 'resume', 'overwrite' or 'done' for the run of config `cfg`; refuses (UserError) where data would
        be lost or a resumed run would not be the run its checkpoints belong to.

        `--resume` continues a run with the config it started with: a checkpoint brings back the optimizer (its
        learning rate and betas), the schedule, the data position and the RNG, so a changed value would apply
        partly or not at all while config.yaml claimed it. Only keys declared `field(..., resume=True)` (logging,
        checkpoints, kernels, exports, gradient clipping) may change; they are noted and recorded in the attempt.
        Only reads: nothing is written or removed here, so a refused run leaves the folder as it was.
        """
        self.refuse_foreign()
        if not self.path.exists() or not any(p.name not in ("logs", FolderLock.NAME) for p in self.path.iterdir()):
            return "start"  # empty, or only the logs/ a SLURM template writes before training starts
        if overwrite:
            return "overwrite"
        changes, fixed = self.changes_to(cfg)
        if self.done_file.exists():
            if resume and not fixed:
                return "done"
            raise UserError(
                f"{self.path}: holds a finished run"
                + (f" with a different config ({describe_changes(fixed or changes)})" if changes else "")
                + "; choose another output.name, or pass --overwrite to replace it"
            )
        if resume:
            if fixed:
                raise UserError(
                    f"{self.path}: --resume continues a run with the config it started with, and this one differs "
                    f"({describe_changes(fixed)}); its checkpoint restores the optimizer, schedule and data position, "
                    f"so the change would not apply as written: resume with {self.config_file}'s values, or start a "
                    f"new run (another output.name, or --overwrite)"
                )
            if changes:
                self.config_changes = [describe_changes([c]) for c in changes]
                say(f"note: resuming {self.path} with {describe_changes(changes, most=len(changes))} (these may "
                    "change on --resume; recorded in run.json)", err=True)
            return "resume"
        if changes:
            raise UserError(f"{self.path}: holds a different run ({describe_changes(changes)}); choose another "
                            f"output.name, or pass --resume to continue it or --overwrite to replace it")
        if not any(checkpoint_problem(c) is None for c in self.checkpoint_list()):
            say(f"{self.path}: an earlier attempt of this config stopped before its first checkpoint; starting it "
                "again")
            return "resume"  # nothing trained to lose: resuming from no checkpoint starts at step 0
        raise UserError(
            f"{self.path}: holds an unfinished run of this config; pass --resume to continue it or --overwrite to "
            "restart it"
        )

    def check_same_inputs(self, inputs: dict[str, str | None]) -> None:
        """A resume trains on what its checkpoints were trained on. `inputs` maps data.train_dir and data.dev_dir to
        the cache's name of their packed blocks (a fingerprint of the raw files' bytes, the tokenizer, this version's
        cleaning and the packing), and each teacher read at every step to a hash of its model files; run.json
        recorded them when the run started. The config alone cannot tell: a line added to a corpus file, a new
        cleaner or a teacher trained again leaves every key as it was, and the checkpoint's data position and
        optimizer would carry on over other text or towards another teacher. Only reads."""
        before = self.read_info().get("inputs")
        if not isinstance(before, dict) or not self.checkpoint_list():  # recorded before 2026-12-03, or nothing trained
            return
        changed = [key for key, value in inputs.items() if before.get(key) != value]
        if not changed:
            return
        reasons = []
        if any(key.startswith("data.") for key in changed):
            folder = "that folder" if len(changed) == 1 else "a data folder"
            reasons.append(f"the files of {folder}, the tokenizer, or this version's cleaning or packing changed")
        if any(not key.startswith("data.") for key in changed):
            reasons.append("a teacher's model files changed")
        raise UserError(
            f"{self.path}: its checkpoints were trained on other inputs than the config reads now ("
            + "; ".join(f"{key}: {before.get(key)} -> {inputs[key]}" for key in changed)
            + f"): {'; '.join(reasons)} since the run started; restore them, or start a new run (another output.name, "
            f"or --overwrite)"
        )

    def create(self, resolved: dict, decision: str) -> None:
        """Lay out the folder for `decision` and write config.yaml (main process only)."""
        if not is_main_process():
            return
        if decision == "overwrite":  # everything but logs/ (the job writing this is logging there) and our LOCK
            if not self.is_ours():
                raise UserError(f"{self.path}: is not a babydistill run directory; --overwrite removes only those")
            for entry in self.path.iterdir():
                if entry.name not in ("logs", FolderLock.NAME):
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        write_atomic(self.config_file, yaml.safe_dump(resolved, sort_keys=False))
        if not self.info_file.exists():  # marks the folder as a run directory of ours from its first file on
            self.write_info(babydistill=1, status="created")

    # ------------------------------------------------------------------ checkpoints

    def checkpoint_list(self) -> list[Path]:
        """Checkpoint folders, newest (highest step) first."""
        if not self.checkpoints.is_dir():
            return []
        found = [
            (int(m.group(1)), p) for p in self.checkpoints.iterdir() if (m := CHECKPOINT.match(p.name)) and p.is_dir()
        ]
        return [p for _, p in sorted(found, reverse=True)]

    def newest_good_checkpoint(self, expected: list[tuple[str, ...]] | None = None) -> Path | None:
        """The newest checkpoint that passes `checkpoint_problem`; bad ones are renamed aside with a warning
        (to `corrupt-checkpoint-N`, or `corrupt-checkpoint-N.2` ... when an earlier one has that name)."""
        for ckpt in self.checkpoint_list():
            problem = checkpoint_problem(ckpt, expected)
            if problem is None:
                return ckpt
            aside = free_name(ckpt.with_name("corrupt-" + ckpt.name))
            if is_main_process():
                ckpt.rename(aside)
            say(f"warning: {ckpt} is unusable ({problem}); moved to {aside.name}, falling back to the previous "
                "checkpoint", err=True)
        return None

    def newest_finite_checkpoint(self) -> Path | None:
        """For reporting after a non-finite loss: the newest complete checkpoint with finite weights."""
        return next((c for c in self.checkpoint_list() if checkpoint_problem(c) is None), None)

    # ------------------------------------------------------------------ run.json, DONE

    def read_info(self) -> dict:
        if not self.info_file.exists():
            return {}
        try:
            info = json.loads(self.info_file.read_text(encoding="utf-8"))
        except ValueError:
            info = None
        if not isinstance(info, dict):
            raise UserError(
                f"{self.info_file}: not a JSON object (damaged); restore it, or pass --overwrite to start the run again"
            )
        return info

    def write_info(self, **changes) -> None:
        if is_main_process():
            info = self.read_info()
            info.update(changes)
            write_atomic(self.info_file, json.dumps(info, indent=2, default=str))

    def begin(self, argv: list[str], resumed_from: Path | None) -> None:
        """A new attempt in run.json. An attempt whose process never recorded its end (run.json still says running,
        yet this process holds the run's lock) is marked `killed` first."""
        info = self.read_info()
        attempts = info.get("attempts", [])
        if info.get("status") == "running" and attempts and isinstance(attempts[-1], dict):
            attempts[-1].update(status="killed", note="it stopped without recording its end: SIGKILL, the "
                                                      "out-of-memory killer, or the loss of its node")
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        attempts.append({"start": now(), "host": socket.gethostname(), "argv": argv,
                         "resumed_from": str(resumed_from) if resumed_from else None,
                         "world_size": int(os.environ.get("WORLD_SIZE", "1")), "gpus_per_node": gpus,
                         "slurm": {k: os.environ[k] for k in SLURM_VARS if k in os.environ},
                         **({"config_changes": self.config_changes} if self.config_changes else {})})
        self.write_info(start=info.get("start", now()), status="running", attempts=attempts, **provenance())

    def end(self, status: str, **extra) -> None:
        """The run's status, also recorded as its last attempt's."""
        attempts, end = self.read_info().get("attempts", []), now()  # one moment for the attempt and the run
        if attempts and isinstance(attempts[-1], dict):
            attempts[-1].update(status=status, end=end)
        self.write_info(status=status, end=end, **extra, **({"attempts": attempts} if attempts else {}))

    def record_training_time(self, seconds: float) -> None:
        """This attempt's training time so far (wall clock inside trainer.train); an attempt that is
        killed keeps what it recorded at its last log, so results count every attempt's hours."""
        if is_main_process():
            info = self.read_info()
            if info.get("attempts"):
                info["attempts"][-1]["train_seconds"] = round(seconds, 3)
                write_atomic(self.info_file, json.dumps(info, indent=2, default=str))

    def mark_done(self, summary: dict) -> None:
        """DONE is written last and atomically: its presence means every other file is final."""
        if is_main_process():
            write_atomic(self.done_file, json.dumps({"finished": now(), **summary}, indent=2))


def free_name(path: Path) -> Path:
    """`path`, or `path.2`, `path.3` ... : the first that does not exist."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate


def state_groups(module) -> list[tuple[str, ...]]:
    """The trained module's tensors as groups of names that share storage (tied weights): a checkpoint
    must hold at least one name of every group (savers keep one name of a tied group)."""
    groups: dict[tuple, list[str]] = {}
    for name, tensor in module.state_dict(keep_vars=True).items():
        key = (
            (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
            if tensor.numel()
            else (name,)
        )
        groups.setdefault(key, []).append(name)
    return [tuple(names) for names in groups.values()]


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
