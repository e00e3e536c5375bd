"""python -m eval aoa RUN --words cdi_childes.json: the 2025 pipeline's age-of-acquisition surprisals.

Every milestone checkpoint of the run (`milestones/chck_*/`) gives each CDI word a surprisal,
written as the pipeline's `AoA_word/run.py` writes `surprisal.json` (the `aoa` entry of the
submission, which `eval collate` adds): one entry per (checkpoint, word, context) with
`step`, `word_count`, `target_word`, `context_id`, `context` and `surprisal`.

The pipeline's convention, quirks included (Chang & Bergen 2022 score words out of context
at each step; the pipeline's `use_bos_only` is on): the text is the tokenizer's BOS text
followed by the word (stripped), encoded with the tokenizer's own special tokens and
offsets; the scored tokens are those whose span ends after the BOS text; the surprisal is
minus the sum of their natural-log probabilities (causal: each read at the position before
it, position 0 never; mlm: each masked in its own copy; mntp: masked, read one position
earlier). The contexts are not read: every context of a word records the same surprisal,
with `context` "BOS_ONLY". Words of one character are dropped, as the pipeline's
`load_eval` drops them. A surprisal that is not finite is written as null (the pipeline
writes NaN, which is not JSON); the curve fitness skips it, as it skips NaN.
"""
from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import UserError
from common.paths import decode_utf8, write_atomic

TASK = "aoa"
SURPRISALS = "surprisal.json"  # in eval/babylm2025/aoa/, the pipeline's AoA_word/surprisal.json
FITNESS = "curve_fitness.json"  # beside it, with --cdi: what the pipeline's scoring computes from it
NAME = re.compile(r"chck_(\d+)([kM]?)$")


@dataclass
class Word:
    text: str  # as the file's key (recorded as target_word)
    contexts: int  # how many contexts the file gives it (one entry each)


def read_words(path: Path, min_contexts: int = 0) -> list[Word]:
    """The CDI words of the pipeline's cdi_childes.json ({word: [{"context": ...}, ...]}) in file order, as its
    load_eval keeps them: more than one character, at least `min_contexts` contexts."""
    if not path.is_file():
        raise UserError(f"--words {path}: no such file; give the pipeline's cdi_childes.json "
                        "(evaluation_data/full_eval/aoa/cdi_childes.json)")
    try:
        data = json.loads(decode_utf8(path.read_bytes(), str(path)))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); restore the file") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: holds a {type(data).__name__}, not the object {{word: [{{\"context\": ...}}, ...]}} "
                        "of cdi_childes.json")
    words = []
    for word, entries in data.items():
        if not isinstance(entries, list):
            raise UserError(f"{path}: word {word!r} has a {type(entries).__name__}, not a list of contexts")
        bad = next((k for k, e in enumerate(entries)
                    if not isinstance(e, dict) or not isinstance(e.get("context"), str)), None)
        if bad is not None:
            raise UserError(f"{path}: word {word!r}, context {bad}: no \"context\" text; every context is an object "
                            "with a \"context\" string")
        if len(word) > 1 and len(entries) >= min_contexts:
            words.append(Word(word, len(entries)))
    if not words:
        raise UserError(f"{path}: no word of more than one character with at least {min_contexts} context(s)")
    return words


def nominal_words(name: str) -> int:
    """chck_1M -> 1000000, chck_5k -> 5000, chck_1234 -> 1234: the words a milestone's name stands for."""
    m = NAME.match(name)
    if not m:
        raise UserError(f"{name}: not a milestone name (chck_<N>M, chck_<N>k or chck_<N>)")
    return int(m.group(1)) * {"": 1, "k": 10**3, "M": 10**6}[m.group(2)]


def requests(tokenizer, words: list[Word], backend: str, where: str) -> list:
    """One request per word: its tokens after the BOS text, found by offsets (eval.encode's 2025 requests, whose
    causal start is the text's first offset: 0, as the text opens with the BOS text)."""
    from eval.encode import offset_requests

    if tokenizer.bos_token is None:
        raise UserError(f"{where}: the tokenizer has no BOS token, which the 2025 AoA convention puts before every "
                        "word (the pipeline scores every word NaN then); set bos_token in its tokenizer_config.json")
    if not getattr(tokenizer, "is_fast", False):
        raise UserError(f"{where}: the tokenizer is not a fast tokenizer, and the AoA convention finds the word's "
                        "tokens by character offsets, which only fast tokenizers give; save a tokenizer.json")
    stripped = [w.text.strip() for w in words]
    return offset_requests(tokenizer, [tokenizer.bos_token + w for w in stripped], stripped, backend)


def surprisals(model_dir: Path, words: list[Word], backend: str, batch_size: int | str, device: str,
               progress: bool) -> np.ndarray:
    """Each word's surprisal (nats) under the model at `model_dir`."""
    from eval.evaluate import Options, score_requests
    from eval.model import load
    from eval.scorer import Scorer

    m = load(str(model_dir), "causal" if backend == "causal" else "mlm", device)
    m.backend = backend
    reqs = requests(m.tokenizer, words, backend, str(model_dir))
    scores = score_requests(Scorer(m, progress=progress), m, reqs, Options(backend=backend, batch_size=batch_size))[0]
    return -np.asarray(scores, dtype=np.float64)


def entries(step: str, words: list[Word], values: np.ndarray) -> list[dict]:
    """The pipeline's rows for one checkpoint: every context of every word, in file order."""
    count = nominal_words(step)
    return [{"step": step, "word_count": count, "target_word": w.text, "context_id": k, "context": "BOS_ONLY",
             "surprisal": float(s) if math.isfinite(s) else None}
            for w, s in zip(words, values) for k in range(w.contexts)]


def parse(argv: list[str]) -> argparse.Namespace:
    from common.arguments import number
    from eval.model import BACKENDS, device_name

    p = argparse.ArgumentParser(prog="python -m eval aoa", description=__doc__.split("\n\n")[1])
    p.add_argument("run", help="a run directory with milestones (train.word_checkpoints=babylm)")
    p.add_argument("--words", required=True, help="the pipeline's cdi_childes.json")
    p.add_argument("--backend", choices=BACKENDS, default="causal", help="causal, mlm or mntp")
    p.add_argument("--min-contexts", type=number("--min-contexts", ge=0), default=0,
                   help="drop words with fewer contexts (the pipeline's --min_context; default 0)")
    p.add_argument("--cdi", help="children's production proportions (a CSV with word and month columns 16..30): "
                                 "also compute the curve fitness, as the pipeline's scoring does")
    p.add_argument("--batch-size", type=number("--batch-size", auto=True, ge=1), default="64",
                   help="sequences per forward pass, or 'auto'")
    p.add_argument("--device", type=device_name, default="auto", help="auto, cpu, cuda, ...")
    p.add_argument("--out", help="the results folder (default: the run's eval/)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def recorded_otherwise(target: Path, asked: dict) -> tuple[str, object, object] | None:
    """(key, recorded, asked) when the surprisal file at `target` was made from another words file or backend."""
    from eval.tasks import same_files

    try:
        old = json.loads(target.read_text(encoding="utf-8")).get("metadata", {})
    except (OSError, ValueError, AttributeError):
        return None
    for key, value in asked.items():
        if key in old and not (same_files(old[key], value) if key == "words" else old[key] == value):
            return key, old[key], value
    return None


def keep_other(target: Path, asked: dict) -> None:
    """Surprisals made another way are never replaced (as `python -m eval` keeps other scores)."""
    found = recorded_otherwise(target, asked)
    if found:
        key, old, new = found
        raise UserError(f"{target}: holds surprisals made with {key} {old}; making them with {new} would replace "
                        "them: pass --out DIR to keep both, or move that file away")


def checkpoints(run: Path) -> list[Path]:
    """The run's milestone model folders in words order; a WML run's peers are refused (one model per checkpoint)."""
    from eval.curve import milestones, models_in

    folders = []
    for _, milestone in milestones(run):
        nominal_words(milestone.name)
        found = models_in(milestone)
        if found[0][0]:
            raise UserError(f"{milestone}: holds WML peers ({', '.join(p for p, _ in found)}); the AoA submission is "
                            "one model's: export that peer's milestones as a run of its own")
        folders.append(milestone)
    return folders


def main(argv: list[str]) -> int:
    from tqdm.auto import tqdm

    from eval.aoa_fit import curve_fitness, read_cdi
    from eval.evaluate import tasks_locked
    from eval.model import loading_bars
    from eval.report import OFFICIAL_DIR

    args = parse(argv)
    run = Path(args.run)
    if not (run / "run.json").is_file():
        raise UserError(f"{run}: not a run directory (no run.json); give runs/<experiment>/<name>")
    folders = checkpoints(run)
    words = read_words(Path(args.words), args.min_contexts)
    cdi = read_cdi(Path(args.cdi)) if args.cdi else None
    out_dir = Path(args.out) if args.out else run / "eval"
    target = out_dir / OFFICIAL_DIR / TASK / SURPRISALS
    asked = {"backend": args.backend, "words": str(Path(args.words).resolve()), "min_contexts": args.min_contexts}
    keep_other(target, asked)
    rows: list[dict] = []  # scored before anything is written: a model that cannot be scored so leaves no file
    with loading_bars(False):
        for folder in tqdm(folders, desc="aoa", unit="checkpoint", disable=args.no_progress):
            values = surprisals(folder, words, args.backend, args.batch_size, args.device, progress=False)
            rows += entries(folder.name, words, values)
    metadata = {"model_name": str(run.resolve()), "use_bos_only": True, "total_steps": len(folders),
                "completed_steps": len(folders), **asked}
    target.parent.mkdir(parents=True, exist_ok=True)
    with tasks_locked(out_dir, [TASK]):
        keep_other(target, asked)
        fitness_file = target.with_name(FITNESS)
        stale = fitness_file.is_file()  # it scored the surprisals about to be replaced: removed first, so that a
        if stale:  # command stopped between the two files never leaves it beside surprisals it did not score
            fitness_file.unlink()
        write_atomic(target, json.dumps({"metadata": metadata, "results": rows}, indent=2) + "\n")
        print(f"aoa: {len(words)} words, {sum(w.contexts for w in words)} entries at each of {len(folders)} "
              f"checkpoints ({folders[0].name} .. {folders[-1].name}) -> {target}")
        if cdi is None and stale:
            print(f"aoa: removed {fitness_file}, the curve fitness of the surprisals replaced; --cdi computes it")
        if cdi is not None:
            fitness = {**curve_fitness(rows, cdi), "cdi": str(Path(args.cdi).resolve())}
            write_atomic(fitness_file, json.dumps(fitness, indent=2) + "\n")
            note = " (fewer than 3 words could be fitted: the pipeline's 0.0, not a correlation)" \
                if fitness.get("too_few_words") else ""
            shown = "null" if fitness["curve_fitness"] is None else f"{fitness['curve_fitness']:.4f}"
            print(f"aoa: curve fitness {shown} over {fitness['n_words']} words{note} -> {fitness_file}")
            if fitness.get("undefined"):
                print(f"warning: aoa: the curve fitness is null: {fitness['undefined']}")
    return 0
