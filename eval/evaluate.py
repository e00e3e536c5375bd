"""Evaluate one model folder on task families: read every task, load the model, score, write eval/.

Each task is scored under one convention: the one it exists in (the 2025-only tasks), else
--convention, else babylm2024. Under babylm2025 each task also gets the 2025 pipeline's
predictions.json (eval/babylm2025/<task>/), which `python -m eval collate` reads.
"""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.errors import UserError
from common.metrics import METRICS
from common.locks import FolderLock, holding
from common.paths import model_hash
from eval import encode, release, report
from eval.model import TRUST_FLAG, Loaded, check_folder, check_own_code, load, loading_bars
from eval.one_model import KEY, check_one_model, check_result_file, writing_as
from eval.scorer import Scorer
from eval.tasks import Task, load_task, resolve_spec, same_files

CPU_BATCH = 64  # `--batch-size auto` on CPU: memory is not the limit there, and larger batches gain nothing


@dataclass
class Options:
    backend: str = "causal"
    convention: str | None = None  # None: the task's own (babylm2025 for the 2025-only tasks), else babylm2024
    batch_size: int | str = 64  # sequences per forward pass, or "auto" (the largest that fits on the GPU)
    device: str = "auto"
    dtype: str = "float32"
    max_length: int | None = None
    too_long: str = "truncate"  # or "error"
    data_dir: str | None = None
    ewok_zip: str | None = None
    ewok_password: str | None = None
    out: str | None = None
    progress: bool = True
    fast: bool = False  # the fast variant's files (--suite babylm2025-fast); results go to eval/fast/
    keep_scored: bool = False  # --keep-scored: a task this model already has whole results for is not scored again
    trust_remote_code: bool = False  # --trust-remote-code: the model folder's own code may run (eval.model)


def convention_for(task: Task, opts: Options) -> str:
    """The convention `task` is scored in; a task that exists in one convention only refuses the other."""
    only = task.spec.only_convention
    if only and opts.convention and opts.convention != only:
        raise UserError(f"--convention {opts.convention}: task {task.name} exists only in the {only} convention; "
                        f"drop --convention or evaluate {task.name} separately")
    convention = only or opts.convention or "babylm2024"
    if opts.backend == "mntp" and convention != "babylm2025":
        raise UserError(f"--backend mntp: the {convention} pipeline has no mntp scoring; use --convention babylm2025")
    return convention


def recorded_convention(convention: str, backend: str) -> str:
    """The convention a result file records for a task scored in `convention` by `backend`: the 2024 pipeline scored
    masked models with minicons' mean PLL."""
    return convention if backend == "causal" or convention == "babylm2025" else "minicons-pll-mean"


def scored_otherwise(result: Path, task: Task, opts: Options) -> tuple[str, object, object] | None:
    """(key, recorded, asked) when the result file `result` holds `task` scored otherwise than `opts` asks: from other
    task files (`data`), in another convention or by another backend. None when it was scored so, or cannot be read
    (it is then scored again). Callers that skip a task with a result check this first."""
    try:
        old = json.loads(result.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return differs(old, task, opts) if isinstance(old, dict) else None


def differs(old: dict, task: Task, opts: Options) -> tuple[str, object, object] | None:
    """(key, recorded, asked) when the result `old` (a result file's contents) holds `task` scored otherwise than
    `opts` asks (`scored_otherwise`); else None."""
    asked = {"data": task.origin, "backend": opts.backend,
             "convention": recorded_convention(convention_for(task, opts), opts.backend)}
    for key, value in asked.items():
        if key not in old:
            continue
        same = same_files(old[key], value) if key == "data" and isinstance(old[key], str) else old[key] == value
        if not same:
            return key, old[key], value
    return None


def scoring_options(opts: Options) -> dict:
    """The options besides the convention and backend that change a score, as a result file records them."""
    return {"dtype": opts.dtype, "max_length_given": opts.max_length, "too_long": opts.too_long}


def kept_result(out_dir: Path, task: Task, opts: Options, hashed: str) -> dict | None:
    """`task`'s result in `out_dir` when --keep-scored keeps it: scored on this model's files (`hashed`), from the
    same task files, convention, backend and scoring options, with every file the scoring writes beside it (the
    per-item file, and the task's predictions: eval/predictions.json's entry, or the 2025 pipeline's file). Else
    None: it is scored again."""
    result = out_dir / f"{task.name}.json"
    try:
        old = json.loads(result.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    asked = {KEY: hashed, **scoring_options(opts)}
    if (not isinstance(old, dict) or any(key not in old or old[key] != value for key, value in asked.items())
            or not {"data", "backend", "convention"} <= set(old) or differs(old, task, opts) is not None):
        return None
    if convention_for(task, opts) == "babylm2025":
        predictions = (out_dir / report.OFFICIAL_DIR / task.name / "predictions.json").is_file()
    else:
        try:
            predictions = task.name in json.loads((out_dir / "predictions.json").read_text(encoding="utf-8"))
        except (OSError, ValueError, TypeError):
            predictions = False
    return old if predictions and (out_dir / "pairs" / f"{task.name}.jsonl").is_file() else None


def output_dir(model_dir: Path, out: str | None) -> Path:
    """The run directory's eval/ when the model is <run>/model, else <model>/eval; --out wins."""
    if out:
        return Path(out)
    if (model_dir.parent / "run.json").is_file() and model_dir.name == "model":
        return model_dir.parent / "eval"
    return model_dir / "eval"


def requests_for(task: Task, m: Loaded, opts: Options) -> tuple[list, list[str]]:
    """Token requests for every (item, choice), item-major; and warnings about over-long inputs."""
    convention = convention_for(task, opts)
    owners = [it for it in task.items for _ in it.choices]
    if convention == "babylm2025":
        if not getattr(m.tokenizer, "is_fast", False):
            raise UserError(
                f"{m.path}: the tokenizer is not a fast tokenizer, and the 2025 convention finds the scored tokens "
                f"by character offsets, which only fast tokenizers give; save a tokenizer.json (a `tokenizers` "
                f"tokenizer) in the model folder"
            )
        sentences = [s for it in task.items for s in it.sentences]
        completions = [c for it in task.items for c in it.completions]
        try:
            reqs = encode.offset_requests(m.tokenizer, sentences, completions, m.backend)
        except ValueError as exc:
            raise UserError(f"task {task.name}: {exc}; the 2025 convention cannot score it") from None
    elif m.backend == "causal":
        contexts = [it.context for it in task.items for _ in it.choices]
        choices = [c for it in task.items for c in it.choices]
        reqs = encode.causal_requests(m.tokenizer, contexts, choices, m.prefix_id, convention)
        empty = [i for i, r in enumerate(reqs) if not r.cont]
        if empty:
            raise UserError(
                f"{owners[empty[0]].where}: the choice {choices[empty[0]]!r} has no tokens to score after tokenization"
            )
    else:
        contexts = [it.context for it in task.items for _ in it.choices]
        choices = [c for it in task.items for c in it.choices]
        reqs = encode.masked_requests(m.tokenizer, contexts, choices)
        empty = [i for i, r in enumerate(reqs) if not r.targets]
        if empty:
            raise UserError(
                f"{owners[empty[0]].where}: the choice {choices[empty[0]]!r} has no tokens to score after tokenization"
            )
    return reqs, too_long(task.name, reqs, owners, m, opts)


def too_long(name: str, reqs: list, owners: list, m: Loaded, opts: Options) -> list[str]:
    """Warnings for causal inputs past the model's positions (left-truncated); an error where truncation cannot help."""
    causal = m.backend == "causal"
    lengths = [len(r.ctx) + len(r.cont) - 1 if causal else len(r.ids) for r in reqs]
    long = [i for i, n in enumerate(lengths) if n > m.max_length]
    if not long:
        return []
    where = owners[long[0]].where if owners else "an item"
    first = f"first: {where}, {lengths[long[0]]} tokens"
    what = f"task {name}: {len(long)} input(s) longer than the model's {m.max_length} positions ({first})"
    if not causal or opts.too_long == "error":
        how = "masked LMs cannot be truncated without changing what is scored" if not causal else "--too-long error"
        raise UserError(f"{what}; {how}: shorten the item or use --max-length with a model that has more positions")
    if any(len(reqs[i].cont) > m.max_length for i in long):
        i = next(i for i in long if len(reqs[i].cont) > m.max_length)
        raise UserError(
            f"{owners[i].where if owners else name}: the scored continuation alone has {len(reqs[i].cont)} tokens, "
            f"more than the model's {m.max_length} positions; it cannot be scored"
        )
    return [f"warning: {what} were left-truncated (the context loses its first tokens), as lm-evaluation-harness does; "
            f"--too-long error refuses instead"]


def pick_batch_size(value: int | str, m: Loaded, longest: int) -> int:
    """`value` (checked as the command line was read: `common.arguments.number`), or for "auto" the largest batch of
    `longest`-token sequences that fits on the GPU (CPU_BATCH on a CPU)."""
    if value != "auto":
        return int(value)
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


def results_dir(model_path: str, opts: Options) -> Path:
    return output_dir(Path(model_path), opts.out) / ("fast" if opts.fast and not opts.out else "")


def keep_other_results(out_dir: Path, task: Task, opts: Options) -> None:
    """Scores of a task made another way (other task files, another convention or backend: `scored_otherwise`) are
    never replaced: rerunning an evaluation as it was replaces its files; another way needs another --out."""
    result = out_dir / f"{task.name}.json"
    recorded = check_result_file(result, task.name)
    found = differs(recorded, task, opts) if recorded is not None else None
    if found:
        key, old, new = found
        raise UserError(f"{result}: holds {task.name} scored with {key} {old}; scoring it with {new} would "
                        f"replace it: pass --out DIR to keep both, or move that file away")


def task_lock(out_dir: Path, task: str) -> FolderLock:
    """The lock one evaluation holds on `task`'s results in `out_dir` while it scores and writes them."""
    return FolderLock(out_dir, f".{task}.lock")


@contextlib.contextmanager
def writing(model_path: str, tasks: list[Task], opts: Options, hashed: str):
    """The results folder, made, with every task's lock held for the block: two evaluations of one task into one
    folder at once would mix their files (a result from one, pairs from the other), or each would pass the check
    of `keep_other_results` and the second would replace the first's scores made another way. Refused in one line
    naming the holder; the checks (and that the folder holds no other model's results, and no other model's
    evaluation is writing there: `writing_as`) are made again once the locks are held."""
    out_dir = results_dir(model_path, opts)
    check_results_folder(out_dir, tasks, opts)  # before the folder and its lock files are made
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write results to {out_dir} ({exc.strerror}); pass --out DIR") from None
    with tasks_locked(out_dir, [task.name for task in tasks]), writing_as(out_dir, model_path, hashed):
        check_results_folder(out_dir, tasks, opts)
        yield out_dir


def check_results_folder(out_dir: Path, tasks: list[Task], opts: Options) -> None:
    """What scoring `tasks` into `out_dir` would replace may be replaced (`keep_other_results`), and its
    predictions.json can take theirs: refused before scoring, not after."""
    for task in tasks:
        keep_other_results(out_dir, task, opts)
    report.read_predictions(out_dir)


@contextlib.contextmanager
def tasks_locked(out_dir: Path, names: list[str]):
    """Each task's lock in `out_dir` held for the block (a task named twice, once); a live holder of one is refused
    in one line naming it."""
    with contextlib.ExitStack() as held:
        for name in dict.fromkeys(names):
            held.enter_context(holding(task_lock(out_dir, name), out_dir, f"evaluation of {name} is writing there",
                                       "let it end, or pass --out DIR"))
        yield


def score_requests(
    scorer: Scorer, m: Loaded, reqs: list, opts: Options, choices: list[int] | None = None
) -> tuple[np.ndarray, int]:
    """Each request's score; `choices`: how many consecutive requests belong to one item (default one each: the
    reading task's requests), read as one tree, and items that open alike share their prefix."""
    longest = max((len(r.ctx) + len(r.cont) if m.backend == "causal" else len(r.ids)) for r in reqs)
    batch = pick_batch_size(opts.batch_size, m, longest)
    if m.backend != "causal":
        return scorer.masked(reqs, batch), batch
    return scorer.causal_items(reqs, choices or [1] * len(reqs), batch), batch


def item_scores(flat: np.ndarray, task: Task) -> np.ndarray:
    """[items, choices]: every item of a task has the same number of choices."""
    return flat.reshape(len(task.items), -1)


def reduce_masked(flat: np.ndarray, reqs: list, m: Loaded, convention: str) -> np.ndarray:
    """2024 masked scores are minicons' conditional_score at its defaults: the mean over the scored tokens, not the
    sum."""
    if m.backend != "causal" and convention == "babylm2024":
        return flat / np.array([len(r.targets) for r in reqs], dtype=np.float64)
    return flat


def score_pairs(task: Task, m: Loaded, scorer: Scorer, reqs: list, opts: Options, out_dir: Path, meta: dict,
                started: float):
    convention = convention_for(task, opts)
    flat, batch = score_requests(scorer, m, reqs, opts, [len(it.choices) for it in task.items])
    scores = item_scores(reduce_masked(flat, reqs, m, convention), task)
    _, right, tied, bad = report.decide(scores, np.array([it.correct for it in task.items]))
    if bad.all():  # nothing is written: a result file would mark the task as evaluated
        raise UserError(f"{meta['model']}: every score on task {task.name} is NaN or infinite, so the model is broken "
                        f"(check its weights for NaN, or its training log); nothing was written for {task.name}")
    summary = report.summarise(task, scores, right, tied, bad)
    summary.update(report.timing(started, summary["n_items"]))
    meta = {
        **meta,
        "convention": recorded_convention(convention, m.backend),
        "batch_size": batch,
    }
    return summary, report.write_results(out_dir, task, scores, summary, meta, official=convention == "babylm2025")


def load_tasks(task_names: list[str], opts: Options) -> list[Task]:
    """Every task's items, from `opts.data_dir` (or each task's own folder); an unknown name fails before any is
    loaded."""
    for name in task_names:
        resolve_spec(name)
    tasks = []
    for name in task_names:
        override = Path(opts.ewok_zip) if opts.ewok_zip and resolve_spec(name)[0] == "ewok_filtered" else None
        if override is not None and not override.is_file():
            raise UserError(f"--ewok-zip: {override} does not exist")
        tasks.append(load_task(name, opts.data_dir, opts.ewok_password, override, fast=opts.fast))
        if tasks[-1].partial_release is not None:  # a folder short of the release's items: said once
            print(release.note(name, tasks[-1].origin, tasks[-1].partial_release))
    return tasks


def evaluate(model_path: str, task_names: list[str], opts: Options,
             loaded: dict[str, Task] | None = None) -> list[tuple[str, dict, dict]]:
    """Score `task_names` with the model at `model_path`; returns (task, summary, files) per task. `loaded`: the
    tasks already read by `load_tasks` under `opts` (several models scored on them: a learning curve)."""
    check_own_code(check_folder(model_path), "the model", opts.trust_remote_code, TRUST_FLAG)  # before tasks are read
    tasks = [loaded[name] for name in task_names] if loaded is not None else load_tasks(task_names, opts)
    target = results_dir(model_path, opts)
    hashed = model_hash(Path(model_path))
    check_one_model(target, model_path, hashed)  # another model's results there fail here, before the model loads
    for task in tasks:  # a task that cannot be scored this way, or whose other scores it would replace, fails here
        convention_for(task, opts)
        keep_other_results(target, task, opts)
    order = [task.name for task in tasks]
    kept = {task.name: (task.name, found, {"result": target / f"{task.name}.json"}) for task in tasks
            if opts.keep_scored and (found := kept_result(target, task, opts, hashed)) is not None}
    for name in kept:
        print(f"{name}: kept ({target / name}.json: this model's results from the same task files, convention and "
              "backend; --keep-scored)")
    tasks = [task for task in tasks if task.name not in kept]
    if not tasks:
        return [kept[name] for name in order]
    with loading_bars(opts.progress):
        m = load(model_path, "causal" if opts.backend == "causal" else "mlm", opts.device, opts.dtype, opts.max_length,
                 opts.trust_remote_code)
    m.backend = opts.backend
    print(
        f"model {model_path}: {opts.backend}, {sum(p.numel() for p in m.model.parameters()):,} parameters, "
        f"{m.max_length} positions, {m.device}; "
        f"{m.prefix_note if m.backend != 'causal' else 'prefix token ' + m.prefix_note}"
    )
    prepared = []
    for task in tasks:
        if task.spec.kind == "reading":
            prepared.append((task, None))
            continue
        reqs, warnings = requests_for(task, m, opts)
        for w in warnings:
            print(w)
        prepared.append((task, reqs))
    with writing(model_path, tasks, opts, hashed) as out_dir:
        scored = {result[0]: result for result in score_tasks(model_path, m, prepared, opts, out_dir, hashed)}
    return [scored[name] if name in scored else kept[name] for name in order]


def score_tasks(model_path: str, m: Loaded, prepared: list[tuple[Task, list | None]], opts: Options,
                out_dir: Path, hashed: str) -> list[tuple[str, dict, dict]]:
    """Score and write each prepared (task, requests); the reading task's requests are made by its own module."""
    from eval.reading import evaluate_reading

    scorer = Scorer(m, progress=opts.progress)
    results = []
    for task, reqs in prepared:
        t0 = time.perf_counter()
        meta = {
            "model": str(Path(model_path).resolve()),
            KEY: hashed,
            "backend": m.backend,
            "prefix": m.prefix_note,
            **scoring_options(opts),
            "device": str(m.device),
            "fast": task.fast,
            "partial_release": task.partial_release,  # null: the release's items, or a task it does not hold
        }
        if reqs is None:
            summary, files = evaluate_reading(task, m, lambda r: score_requests(scorer, m, r, opts)[0], out_dir, meta,
                                              t0)
        else:
            summary, files = score_pairs(task, m, scorer, reqs, opts, out_dir, meta, t0)
        summary["partial_release"] = meta["partial_release"]  # for the table
        seconds, n = summary["seconds"], summary["n_items"]
        score = summary["score"]
        shown = "null" if score is None or not np.isfinite(score) else f"{score:.4f}"
        print(f"{task.name}: {METRICS[summary['metric']].label} {shown}, {n} items in {seconds:.1f} s "
              f"({n / max(seconds, 1e-9):.0f} items/s), {summary['ties']} ties -> {files['result']}")
        if summary["non_finite"]:
            print(
                f"warning: {task.name}: {summary['non_finite']} item(s) have a NaN or infinite score; they count as "
                "wrong"
                + (" and the correlation is null" if summary["metric"] == "spearman" else "")
            )
        if summary.get("undefined"):
            print(f"warning: {task.name}: the score is null: {summary['undefined']}")
        results.append((task.name, summary, files))
    return results
