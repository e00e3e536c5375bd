"""One results folder holds one model's results. Every task result (`<task>.json`, zero-shot and fine-tuning) records
`model_hash`, a hash of the model files it was scored on (config.json and the weights: common.paths.model_hash), and
an evaluation or a fine-tuning refuses a folder that holds results of another model, as `collate` refuses a folder
whose results disagree or are not the given model's. Two models' results in one folder (`--out DIR` given twice, a
model folder saved again after it was evaluated) would otherwise be read as one model's: `collate` would submit a
mix, and `results collect` would table them as one row. Results from before the hash was recorded are not checked.

Two evaluations of two models into one folder at the same moment would each find no other model's results there and
both write: `writing_as` holds a shared lock on `.model-<hash>.lock` while it writes, and refuses a folder where another
model's lock is held (evaluations and fine-tunings of one model, a SLURM array's tasks, share theirs)."""
from __future__ import annotations

import contextlib
import fcntl
import json
from pathlib import Path

from common.errors import UserError
from common.locks import file_lock, flock, opened_lock, write_lock_text
from common.paths import model_hash

KEY = "model_hash"


def _recorded(file: Path) -> tuple[Path, str, str] | None:
    """(file, model hash, model path) when `file` is a task result that records a model hash."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(data, dict) and "task" in data and isinstance(data.get(KEY), str):
        return file, data[KEY], str(data.get("model", "?"))
    return None


def check_result_file(result: Path, task: str) -> dict | None:
    """`result` (`<task>.json` in a results folder), where it exists, is a result of `task` that writing the task's
    result may replace: returned (None where there is none). A file of another kind there (the user's own, or one
    damaged) is refused in one line before anything is scored: a folder given as --out may hold anything."""
    if not result.exists():
        return None
    try:
        data = json.loads(result.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = None
    if not (isinstance(data, dict) and data.get("task") == task):
        raise UserError(f"{result}: exists and is not a result of {task} (no \"task\": \"{task}\" in it), and "
                        "scoring the task would replace it: pass --out DIR, or move that file away")
    return data


def recorded(out_dir: Path) -> list[tuple[Path, str, str]]:
    """(result file, model hash, model path) of every task result in `out_dir` that records a model hash."""
    found = [_recorded(file) for file in sorted(out_dir.glob("*.json"))] if out_dir.is_dir() else []
    return [f for f in found if f is not None]


def _writer(lock: Path) -> str | None:
    """The model path a live `writing_as` names in `lock`, or None when no process holds it."""
    try:
        handle = open(lock, encoding="utf-8")
    except OSError:
        return None
    with handle:
        try:
            flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB, lock, created=False)
        except BlockingIOError:
            return handle.read().strip() or "?"
        fcntl.flock(handle, fcntl.LOCK_UN)
        return None


def _lock_name(hashed: str) -> str:
    return f".model-{hashed[:16]}.lock"


def check_one_model(out_dir: Path, model: str | Path, hashed: str) -> None:
    """Refuse (one line) to write results of `model` (hash `hashed`) into `out_dir` when it holds another model's, or
    another model's evaluation is writing there now (`writing_as`)."""
    for file, other, path in recorded(out_dir):
        if other != hashed:
            raise UserError(
                f"{out_dir}: holds results of another model ({file.name}: {path}, model files {other[:12]}; "
                f"{model}: {hashed[:12]}); one folder holds one model's results, or collate and results collect "
                f"would read them as one model's: pass --out DIR for this model, or move that folder's results away"
            )
    for lock in sorted(out_dir.glob(".model-*.lock")) if out_dir.is_dir() else []:
        if lock.name != _lock_name(hashed) and (writer := _writer(lock)) is not None:
            raise UserError(f"{out_dir}: an evaluation of another model ({writer}, model files {lock.name[7:-5]}) is "
                            f"writing there now; one folder holds one model's results: pass --out DIR for {model}, "
                            "or let it end")


@contextlib.contextmanager
def writing_as(out_dir: Path, model: str | Path, hashed: str):
    """Held while results of `model` (hash `hashed`) are written into `out_dir` (which exists): refused (one line) when
    the folder holds another model's results or another model's evaluation is writing there now (`check_one_model`,
    made with taking this one's lock as one step for every writer)."""
    with file_lock(out_dir / ".models.lock"):
        check_one_model(out_dir, model, hashed)
        handle = opened_lock(out_dir / _lock_name(hashed), "a+", fcntl.LOCK_SH)
        if handle.tell() == 0:
            write_lock_text(handle, str(model), out_dir / _lock_name(hashed))
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def check_same_model(files: list[Path], model: Path | None) -> None:
    """The task results `files` (those that exist and record a hash) were all scored on one model, and on `model`'s
    files as they are now when `model` is a model folder; else one line names two files, or the file and the model."""
    seen = [found for found in map(_recorded, files) if found is not None]
    for file, hashed, path in seen[1:]:
        if hashed != seen[0][1]:
            raise UserError(f"collate: {seen[0][0]} and {file} were scored on two models ({seen[0][2]}: "
                            f"{seen[0][1][:12]}; {path}: {hashed[:12]}); a submission is one model's: evaluate the "
                            f"model into its own folder (--out DIR) and collate that")
    if seen and model is not None and (model / "config.json").is_file():
        now = model_hash(model)
        if now != seen[0][1]:
            raise UserError(f"collate: {seen[0][0]} was scored on other model files ({seen[0][1][:12]}) than "
                            f"{model} holds now ({now[:12]}); evaluate {model} again (into another --out folder, "
                            f"or with that folder's results moved away), or collate the model they were scored on")
