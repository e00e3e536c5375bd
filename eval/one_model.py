"""One results folder holds one model's results. Every task result (`<task>.json`, zero-shot and fine-tuning) records
`model_hash`, a hash of the model files it was scored on (config.json and the weights: common.paths.model_hash), and
an evaluation or a fine-tuning refuses a folder that holds results of another model, as `collate` refuses a folder
whose results disagree or are not the given model's. Two models' results in one folder (`--out DIR` given twice, a
model folder saved again after it was evaluated) would otherwise be read as one model's: `collate` would submit a
mix, and `results collect` would table them as one row. Results from before the hash was recorded are not checked."""
from __future__ import annotations

import json
from pathlib import Path

from common.errors import UserError
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


def recorded(out_dir: Path) -> list[tuple[Path, str, str]]:
    """(result file, model hash, model path) of every task result in `out_dir` that records a model hash."""
    found = [_recorded(file) for file in sorted(out_dir.glob("*.json"))] if out_dir.is_dir() else []
    return [f for f in found if f is not None]


def check_one_model(out_dir: Path, model: str | Path, hashed: str) -> None:
    """Refuse (one line) to write results of `model` (hash `hashed`) into `out_dir` when it holds another model's."""
    for file, other, path in recorded(out_dir):
        if other != hashed:
            raise UserError(
                f"{out_dir}: holds results of another model ({file.name}: {path}, model files {other[:12]}; "
                f"{model}: {hashed[:12]}); one folder holds one model's results, or collate and results collect "
                f"would read them as one model's: pass --out DIR for this model, or move that folder's results away"
            )


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
