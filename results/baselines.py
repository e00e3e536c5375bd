"""Each method against its baseline: the same-size model trained alone on the same tokens, found among the collected
runs, and the paired tests of the two on every task both scored pair by pair.

A row's baseline is a model of the same experiment with the same architecture (the saved config.json, read as the
model folder holds it), the same training data and tokenizer (`data_key`; and the same packed text, `train_blocks`,
where both runs recorded it), the same seed and the same number of words seen, trained without distillation: a
`train` run (the student alone) or, for a WML peer, its solo twin (`wml.solo_peer`, preferred when both exist).
Rows trained alone have no baseline; they are the baselines. For every task whose per-pair file
(eval/pairs/<task>.jsonl) both models have, the difference of accuracies with its paired-bootstrap 95% interval
and McNemar's exact p (results/compare.py).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from common.errors import UserError
from common.metrics import METRICS
from results.compare import compare, left_out
from results.markdown import table

ALONE = ("train", "solo-twin")  # methods whose models are trained without distillation: the baselines
NOT_ARCHITECTURE = {"_name_or_path", "transformers_version", "dtype", "torch_dtype", "use_cache", "architectures"}


def fingerprint(value) -> str:
    """12 hex digits of the SHA-256 of `value` as sorted JSON: equal values, equal fingerprints."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]


def architecture(model_dir: Path) -> str:
    """A short fingerprint of the saved model's config.json, without the keys that do not change the architecture."""
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    kept = {k: v for k, v in config.items() if k not in NOT_ARCHITECTURE}
    return fingerprint(kept)


TRAINING_DATA = ("train_dir", "demo", "block_size", "packing", "train_fraction", "seed")  # what decides the tokens seen


def data_key(config: dict) -> str:
    """A short fingerprint of what decides a run's training tokens and their order: the data keys above and the
    tokenizer section of its config.yaml."""
    data = config.get("data") or {}
    kept = {"data": {k: data.get(k) for k in TRAINING_DATA}, "tokenizer": config.get("tokenizer")}
    return fingerprint(kept)


NOT_SETTING = {"output": ("name", "dir"), "train": ("seed", "num_workers", "report_to"),
               "data": ("num_proc", "cache_dir")}  # a run's seed, its name and where it ran: not what it trains


def setting_key(config: dict) -> str:
    """A short fingerprint of a run's whole config.yaml but the keys above: runs with equal keys are replicates of
    one setting, differing at most in their seed (results/seeds.py)."""
    kept = {section: ({k: v for k, v in values.items() if k not in NOT_SETTING.get(section, ())}
                      if isinstance(values, dict) else values) for section, values in config.items()}
    return fingerprint(kept)


def trained_on(inputs) -> dict:
    """A run's recorded inputs (run.json `inputs`, written since 2026-12-03; None before): `train_blocks`, the cache
    name of the packed blocks it trained on (a fingerprint of the raw files' bytes, the tokenizer, the cleaning and
    the packing), and `inputs_key`, a fingerprint of every input, the teachers' model files included. The config
    names a folder; these say what was in it."""
    if not isinstance(inputs, dict):
        return {"train_blocks": None, "inputs_key": None}
    blocks = inputs.get("data.train_dir")
    return {"train_blocks": blocks if isinstance(blocks, str) else None, "inputs_key": fingerprint(inputs)}


def agree(a, b) -> bool:
    """Two recorded fingerprints agree unless both are recorded and differ (a run from before the record agrees)."""
    return not (isinstance(a, str) and isinstance(b, str)) or a == b


def first_run_of_each(df, rows, column: str) -> dict[str, str]:
    """{each fingerprint recorded in `column` among rows `rows` of df: the first run, in run order, that recorded
    it}; rows that recorded none are left out."""
    first: dict[str, str] = {}
    for i in sorted(rows, key=lambda i: df.loc[i, "run"]):
        value = df.loc[i].get(column)
        if isinstance(value, str):
            first.setdefault(value, df.loc[i, "run"])
    return first


def differing_text(df) -> list[str]:
    """One line per experiment and data config (`data_key`) whose runs trained on other text: the same folder
    names, but the files, the tokenizer, the cleaning or the packing changed between the runs. Such runs are not
    paired as method and baseline (find_baseline), and are not replicates (results/seeds.py)."""
    if "train_blocks" not in df.columns:
        return []
    lines = []
    for _, rows in df.groupby(["experiment", "data_key"], sort=False, dropna=False):
        first = first_run_of_each(df, rows.index, "train_blocks")
        if len(first) > 1:
            (a_blocks, a), (b_blocks, b) = list(first.items())[:2]
            lines.append(f"note: {a} and {b} have the same data config but trained on other text ({a_blocks} against "
                         f"{b_blocks}): the corpus files, the tokenizer, the cleaning or the packing changed between "
                         f"them; runs on other text are not compared as method and baseline, nor taken as replicates")
    return lines


def pair_tasks(eval_dir: Path) -> set[str]:
    return {p.stem for p in (eval_dir / "pairs").glob("*.jsonl")}


def label(row) -> str:
    return f"{row['recipe']} {row['model']}"


def find_baseline(df, i: int):
    """The index of row i's baseline in df, or None."""
    r = df.loc[i]
    if r["method"] in ALONE:
        return None
    same = df[(df["experiment"] == r["experiment"]) & (df["architecture"] == r["architecture"])
              & (df["data_key"] == r["data_key"]) & (df["seed"] == r["seed"]) & (df["words_seen"] == r["words_seen"])
              & df["method"].isin(ALONE)]
    if "train_blocks" in df.columns:  # and the same text, where both runs recorded it
        same = same[[agree(r["train_blocks"], blocks) for blocks in same["train_blocks"]]]
    if same.empty:
        return None
    twins = same[same["method"] == "solo-twin"]
    return (twins if r["method"].startswith("wml") and not twins.empty else same).index[0]


def comparisons(df, samples: int = 10_000) -> list[dict]:
    """One record per (method row, task of right-or-wrong items: accuracy, F1): the row, its baseline, and the paired
    test of the two (of their accuracies). A pair file that cannot be read is named on one line and its comparison
    left out; the rest of the collection goes on."""
    out = []
    for i in df.index:
        b = find_baseline(df, i)
        if b is None:
            continue
        a_dir, b_dir = Path(df.loc[i, "eval_dir"]), Path(df.loc[b, "eval_dir"])
        for task in sorted(pair_tasks(a_dir) & pair_tasks(b_dir)):
            metric = df.loc[i].get(f"{task}_metric")
            if metric not in METRICS or not METRICS[metric].right_or_wrong:
                continue  # WUG's rho, reading's ΔR²: their items are no right-or-wrong pairs (an F1 task's are)
            try:
                test = compare(a_dir, b_dir, task, samples)
            except UserError as exc:
                print(f"not compared: {label(df.loc[i])} against {label(df.loc[b])} on {task}: {exc}")
                continue
            if test["left_out"]["a"] or test["left_out"]["b"]:
                print(f"note: {label(df.loc[i])} against {label(df.loc[b])} on {task}: {test['pairs']} shared pairs"
                      + left_out(test["left_out"], "the model", "its baseline"))
            out.append({"model": label(df.loc[i]), "method": df.loc[i, "method"], "baseline": label(df.loc[b]),
                        "row": i, "baseline_row": b, **test})
    return out


def markdown(records: list[dict]) -> str:
    head = ["model", "method", "baseline", "task", "pairs", "model acc.", "baseline acc.", "difference (95% CI)",
            "McNemar p"]
    return table(head, ([
        c["model"], c["method"], c["baseline"], c["task"], pairs_cell(c), f"{c['accuracy_a']:.3f}",
        f"{c['accuracy_b']:.3f}", f"{c['difference']:+.3f} ({c['bootstrap_95'][0]:+.3f}, {c['bootstrap_95'][1]:+.3f})",
        f"{c['mcnemar_p']:.3g}",
    ] for c in records))


def pairs_cell(c: dict) -> str:
    """The shared pairs the test ran on, and those only the model or only its baseline scored (left out)."""
    a, b = c["left_out"]["a"], c["left_out"]["b"]
    return str(c["pairs"]) + (f" ({a} only the model's, {b} only the baseline's: left out)" if a or b else "")
