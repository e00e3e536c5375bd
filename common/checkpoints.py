"""A Trainer checkpoint folder (`checkpoint-N/`), as training (`train/`) and fine-tuning (`eval finetune`) keep
them: it counts only once its COMPLETE manifest is written, last, listing every file with its size, and only while every
listed file is there whole, it holds what a resume needs, reads, and has finite weights."""
from __future__ import annotations

import datetime as dt
import json
import re
import zipfile
from pathlib import Path

from common.errors import summary
from common.paths import write_atomic

COMPLETE = "COMPLETE"  # written into a checkpoint folder after everything in it is saved
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def write_manifest(ckpt: Path) -> None:
    """COMPLETE: written last into a saved checkpoint; it lists every file with its size."""
    files = {
        str(p.relative_to(ckpt)): p.stat().st_size
        for p in sorted(ckpt.rglob("*"))
        if p.is_file() and p.name != COMPLETE
    }
    write_atomic(ckpt / COMPLETE, json.dumps({"written": now(), "files": files}, indent=1))


def required_files_problem(ckpt: Path) -> str | None:
    """What every resumable checkpoint holds: weights, optimizer, scheduler, RNG and trainer state."""
    deepspeed = any(ckpt.glob("global_step*/*"))
    weights = list(ckpt.glob("*.safetensors")) or list(ckpt.glob("pytorch_model*.bin"))
    needed = [
        ("trainer state", ["trainer_state.json"]),
        ("model weights", ["*.safetensors", "pytorch_model*.bin", "global_step*/*model_states.pt"]),
        ("random-number state", ["rng_state*.pth"]),
    ]
    if deepspeed:
        needed.append(("optimizer state", ["global_step*/*optim_states.pt"]))
    else:
        needed += [("optimizer state", ["optimizer.pt"]), ("scheduler state", ["scheduler.pt"])]
    for what, patterns in needed:
        if not any(any(ckpt.glob(pattern)) for pattern in patterns):
            return f"no {what} ({' or '.join(patterns)})"
    return None if weights or deepspeed else "no model weights"


def checkpoint_problem(ckpt: Path, expected: list[tuple[str, ...]] | None = None) -> str | None:
    """None if `ckpt` is complete (every file its COMPLETE manifest lists, whole), holds everything a
    resume needs, is readable and has finite weights (and, given `expected` (state_groups), every tensor
    of the trained module: the student and the loss's projections and heads, or every peer); else why not."""
    import torch
    from safetensors import safe_open

    marker = ckpt / COMPLETE
    if not marker.exists():
        return "no COMPLETE marker: it was being written when the job stopped"
    try:
        manifest = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = None  # a checkpoint from before the manifest: its COMPLETE holds a time only
    if isinstance(manifest, dict) and isinstance(manifest.get("files"), dict):
        for name, size in manifest["files"].items():
            path = ckpt / name
            if not path.is_file():
                return f"{name} is missing"
            if path.stat().st_size != size:
                return f"{name} has {path.stat().st_size} bytes, not the {size} it was saved with"
    problem = required_files_problem(ckpt)
    if problem is not None:
        return problem
    try:
        found: set[str] = set()
        for file in sorted(ckpt.glob("*.safetensors")):
            with safe_open(str(file), framework="pt") as handle:
                for name in handle.keys():
                    found.add(name)
                    t = handle.get_tensor(name)
                    if t.is_floating_point() and not torch.isfinite(t).all():
                        return f"non-finite values in {file.name}:{name}"
        for file in [*ckpt.glob("*.pt"), *ckpt.glob("*.pth")]:  # torch.save writes zip archives: check every CRC
            with zipfile.ZipFile(file) as archive:
                bad = archive.testzip()
            if bad is not None:
                return f"{file.name}: corrupt member {bad}"
        for file in sorted(ckpt.glob("*.json")):  # trainer_state.json, words_seen.json, the model's config.json
            json.loads(file.read_text(encoding="utf-8"))
    except Exception as exc:  # any unreadable file makes the checkpoint unusable
        return f"unreadable: {summary(exc)}"
    if expected and found:
        missing = [group[0] for group in expected if not found.intersection(group)]
        if missing:
            return f"its weights lack {len(missing)} tensor(s) of the trained model, e.g. {missing[0]}"
    return None
