"""Evaluate one model folder on task families: read every task, load the model, score, write eval/."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.errors import UserError
from eval import encode, report
from eval.model import Loaded, check_folder, load
from eval.scorer import Scorer
from eval.tasks import Task, load_task, resolve_spec

CPU_BATCH = 64  # `--batch-size auto` on CPU: memory is not the limit there, and larger batches gain nothing


@dataclass
class Options:
    backend: str = "causal"
    convention: str = "babylm2024"
    batch_size: str = "64"
    device: str = "auto"
    dtype: str = "float32"
    max_length: int | None = None
    too_long: str = "truncate"  # or "error"
    data_dir: str | None = None
    ewok_zip: str | None = None
    ewok_password: str | None = None
    out: str | None = None
    progress: bool = True


def output_dir(model_dir: Path, out: str | None) -> Path:
    """The run directory's eval/ when the model is <run>/model, else <model>/eval; --out wins."""
    if out:
        return Path(out)
    if (model_dir.parent / "run.json").is_file() and model_dir.name == "model":
        return model_dir.parent / "eval"
    return model_dir / "eval"


def requests_for(task: Task, m: Loaded, opts: Options) -> tuple[list, list[str]]:
    """Token requests for every (item, choice), item-major; and warnings about over-long inputs."""
    contexts = [it.context for it in task.items for _ in it.choices]
    choices = [c for it in task.items for c in it.choices]
    owners = [it for it in task.items for _ in it.choices]
    if m.backend == "causal":
        reqs = encode.causal_requests(m.tokenizer, contexts, choices, m.prefix_id, opts.convention)
        lengths = [len(r.ctx) + len(r.cont) - 1 for r in reqs]
        empty = [i for i, r in enumerate(reqs) if not r.cont]
    else:
        reqs = encode.masked_requests(m.tokenizer, contexts, choices)
        lengths = [len(r.ids) for r in reqs]
        empty = [i for i, r in enumerate(reqs) if not r.targets]
    if empty:
        raise UserError(f"{owners[empty[0]].where}: the choice {choices[empty[0]]!r} has no tokens to score after tokenization")
    long = [i for i, n in enumerate(lengths) if n > m.max_length]
    warnings = []
    if long:
        first = owners[long[0]]
        what = f"task {task.name}: {len(long)} choice(s) longer than the model's {m.max_length} positions (first: {first.where}, {lengths[long[0]]} tokens)"
        if m.backend == "mlm" or opts.too_long == "error":
            how = "masked LMs cannot be truncated without changing what is scored" if m.backend == "mlm" else "--too-long error"
            raise UserError(f"{what}; {how}: shorten the item or use --max-length with a model that has more positions")
        if m.backend == "causal" and any(len(reqs[i].cont) > m.max_length for i in long):
            i = next(i for i in long if len(reqs[i].cont) > m.max_length)
            raise UserError(f"{owners[i].where}: the scored continuation alone has {len(reqs[i].cont)} tokens, more than the model's "
                            f"{m.max_length} positions; it cannot be scored")
        warnings.append(f"warning: {what} were left-truncated (the context loses its first tokens), as lm-evaluation-harness does; "
                        f"--too-long error refuses instead")
    return reqs, warnings


def pick_batch_size(value: str, m: Loaded, longest: int) -> int:
    if value != "auto":
        try:
            size = int(value)
        except ValueError:
            size = 0
        if size < 1:
            raise UserError(f"--batch-size: expected a positive integer or 'auto', got {value!r}")
        return size
    if m.device.type != "cuda":
        return CPU_BATCH
    from accelerate.utils import find_executable_batch_size

    @find_executable_batch_size(starting_batch_size=1024)
    def probe(batch_size: int) -> int:
        ids = torch.zeros((batch_size, max(longest, 1)), dtype=torch.long, device=m.device)
        with torch.inference_mode():
            m.model(input_ids=ids).logits.float().logsumexp(-1)
        return batch_size

    size = probe()
    torch.cuda.empty_cache()
    return size


def evaluate(model_path: str, task_names: list[str], opts: Options) -> list[tuple[str, dict, dict]]:
    """Score `task_names` with the model at `model_path`; returns (task, summary, files) per task."""
    check_folder(model_path)
    for name in task_names:
        resolve_spec(name)  # an unknown name fails before anything is loaded
    tasks = []
    for name in task_names:
        override = Path(opts.ewok_zip) if opts.ewok_zip and resolve_spec(name)[0] == "ewok_filtered" else None
        if override is not None and not override.is_file():
            raise UserError(f"--ewok-zip: {override} does not exist")
        tasks.append(load_task(name, opts.data_dir, opts.ewok_password, override))
    m = load(model_path, opts.backend, opts.device, opts.dtype, opts.max_length)
    print(f"model {model_path}: {opts.backend}, {sum(p.numel() for p in m.model.parameters()):,} parameters, "
          f"{m.max_length} positions, {m.device}; {m.prefix_note if m.backend == 'mlm' else 'prefix token ' + m.prefix_note}")
    prepared = []
    for task in tasks:
        reqs, warnings = requests_for(task, m, opts)
        for w in warnings:
            print(w)
        prepared.append((task, reqs))
    out_dir = output_dir(Path(model_path), opts.out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write results to {out_dir} ({exc.strerror}); pass --out DIR") from None
    scorer = Scorer(m, progress=opts.progress)
    results = []
    for task, reqs in prepared:
        longest = max((len(r.ctx) + len(r.cont) if m.backend == "causal" else len(r.ids)) for r in reqs)
        batch = pick_batch_size(opts.batch_size, m, longest)
        t0 = time.perf_counter()
        flat = scorer.causal(reqs, batch) if m.backend == "causal" else scorer.masked(reqs, batch)
        seconds = time.perf_counter() - t0
        scores = flat.reshape(len(task.items), -1)
        _, right, tied, bad = report.decide(scores, np.array([it.correct for it in task.items]))
        if bad.all():  # nothing is written: a result file would mark the task as evaluated
            raise UserError(f"{model_path}: every score on task {task.name} is NaN or infinite, so the model is broken "
                            f"(check its weights for NaN, or its training log); nothing was written for {task.name}")
        summary = report.summarise(task, right, tied, bad)
        meta = {"model": str(Path(model_path).resolve()), "backend": m.backend,
                "convention": opts.convention if m.backend == "causal" else "minicons-pll",
                "prefix": m.prefix_note, "batch_size": batch, "dtype": opts.dtype, "device": str(m.device),
                "seconds": round(seconds, 3), "items_per_second": round(len(task.items) / max(seconds, 1e-9), 1)}
        files = report.write_results(out_dir, task, scores, summary, meta)
        print(f"{task.name}: {summary['accuracy']:.4f} ± {summary['stderr']:.4f} over {summary['n_subtasks']} subtasks, "
              f"{len(task.items)} items in {seconds:.1f} s ({len(task.items) / max(seconds, 1e-9):.0f} items/s), "
              f"{summary['ties']} ties -> {files['result']}")
        if summary["non_finite"]:
            print(f"warning: {task.name}: {summary['non_finite']} item(s) have a NaN or infinite score; they count as wrong")
        results.append((task.name, summary, files))
    return results
