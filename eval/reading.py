"""The 2025 reading task: word surprisal against eye-tracking and self-paced reading times.

Surprisal follows the 2025 pipeline's `reading/evaluation_functions.get_p2` exactly: the item
(the words before the target) is encoded with the tokenizer's special tokens and the
distribution at its last position is read; the word is encoded without special tokens (so
usually without its leading space, as the pipeline does). A word of several tokens is scored
one token at a time, each after the item extended by the decoded earlier tokens and
re-encoded, the token being the first of its own decoded text re-encoded; the word's
probability is the product. Surprisal = -ln p. The previous word's surprisal (spillover) is
the same computation on `prev_item`/`prev_word`, NaN where there is none.
Masked LMs (`mlm`, `mntp`) read the word after three appended mask tokens, as `get_p2_mlm` and
`get_p2_mntp` do.

The score (`reading/run.py`): for each eye-tracking measure an OLS of the reading time on
Subtlex_log10, length and context_length with all pairwise interactions, then again with the
surprisal added; (R2_model - R2_base) / (1 - R2_base) x 100, averaged over RTfirstfix,
RTfirstpass, RTgopast, RTrightbound. Self-paced reading: the same with prev_length and the
previous word's surprisal in the baseline (all pairwise interactions). Fitted by statsmodels'
formula API, with the pipeline's formulas and its row dropping (`dropna` over the columns
each model uses).
"""
from __future__ import annotations

import math
from itertools import combinations
from pathlib import Path

import numpy as np

from common.errors import UserError, reading
from eval.encode import CausalRequest, MaskedRequest

EYE_TRACKING = ("RTfirstfix", "RTfirstpass", "RTgopast", "RTrightbound")
SELF_PACED = "self_paced_reading_time"
PREDICTORS = ("Subtlex_log10", "length", "context_length")
NUMERIC = PREDICTORS + ("prev_length",) + EYE_TRACKING + (SELF_PACED,)
COLUMNS = ("item", "word", "prev_item", "prev_word") + NUMERIC
# each measure's baseline terms (all pairwise interactions, then the surprisal `pred` added); prev_pred is the previous
# word's surprisal, which exists only on a row with a prev_item
REGRESSIONS = {**{dv: PREDICTORS for dv in EYE_TRACKING}, SELF_PACED: (*PREDICTORS, "prev_length", "prev_pred")}
EXACT_FIT = 1e-9  # 1 - R2 of the baseline at or below which delta R2 is undefined (null), not a ratio of rounding
MASKS_APPENDED = 3  # the pipeline's --number_of_mask_tokens_to_append default


def read_table(path: Path):
    """The CSV as the pipeline reads it (pandas defaults, `item` as text, a missing item as the text "None"),
    with every needed column present and every number numeric; else one line naming the file, row and column."""
    import pandas as pd

    with reading(path, "the reading CSV", "download BabyLM's evaluation data again"):
        df = pd.read_csv(path, dtype={"item": str})
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise UserError(f"{path}: no column '{missing[0]}' (the reading task needs {', '.join(COLUMNS)})")
    if df.empty:
        raise UserError(f"{path}: no rows; download BabyLM's evaluation data again")
    for col in NUMERIC:
        values = pd.to_numeric(df[col], errors="coerce")
        wrong = df[col].notna() & values.isna()
        if wrong.any():
            row = int(np.flatnonzero(wrong.to_numpy())[0])
            raise UserError(f"{path}:{row + 2}: column '{col}' holds {df[col].iloc[row]!r}, not a number; fix the row")
        df[col] = values
    words = df["word"]
    if words.isna().any() or (words.astype(str).str.len() == 0).any():
        row = int(np.flatnonzero((words.isna() | (words.astype(str).str.len() == 0)).to_numpy())[0])
        raise UserError(f"{path}:{row + 2}: column 'word' is empty; every row needs its word")
    _check_rows(df, path)
    df["item"] = df["item"].fillna("None")
    return df


def coefficients(terms: int) -> int:
    """Coefficients of the model regression: an intercept, the terms, their pairwise interactions, the surprisal."""
    return 1 + terms + terms * (terms - 1) // 2 + 1


def _check_rows(df, path: Path) -> None:
    """Every regression has more complete rows (the pipeline's dropna over its columns) than coefficients, else its
    R2 is 1 by construction and the score undefined."""
    for dv, terms in REGRESSIONS.items():
        complete = df[[dv, *(t for t in terms if t != "prev_pred")]].notna().all(axis=1)
        if "prev_pred" in terms:
            complete &= df["prev_item"].notna()
        n, k = int(complete.sum()), coefficients(len(terms))
        if n <= k:
            raise UserError(
                f"{path}: {n} row(s) have every column the {dv} regression uses, but it fits {k} coefficients, so it "
                f"needs at least {k + 1}; give the whole reading_data.csv of BabyLM's evaluation data"
            )
        times = df.loc[complete, dv]
        if times.nunique() == 1:
            raise UserError(f"{path}: column '{dv}' is {float(times.iloc[0])!r} on every row, so it explains nothing "
                            "and delta R2 is undefined; give the whole reading_data.csv")


# transformers 4.x's `clean_up_tokenization`, which `decode` applied when the tokenizer's config set
# clean_up_tokenization_spaces (GPT-2's does): the 2025 pipeline pins transformers 4.51.3, so its
# multi-token contexts are built from decoded pieces cleaned this way. transformers 5 no longer
# applies it to BPE tokenizers, so it is applied here, in that order.
CLEAN_UP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
            (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def decode_piece(tokenizer, token: int) -> str:
    text = tokenizer.decode([token], clean_up_tokenization_spaces=False)
    if getattr(tokenizer, "clean_up_tokenization_spaces", False):
        for old, new in CLEAN_UP:
            text = text.replace(old, new)
    return text


def _steps(tokenizer, context: str, word: str, target: list[int]) -> list[tuple[str, int]]:
    """(context text, token id) per sub-token of `word` (encoded as `target`), as get_p2 builds them."""
    if not target:
        raise UserError(f"the word {word!r} has no tokens; the reading task cannot score it")
    steps = [(context, target[0])]
    context = context + decode_piece(tokenizer, target[0])
    for token in target[1:]:
        piece = decode_piece(tokenizer, token)
        again = tokenizer(piece, add_special_tokens=False)["input_ids"]
        steps.append((context, again[0] if again else token))
        context = context + piece
    return steps


def requests(tokenizer, pairs: list[tuple[str, str]], backend: str) -> tuple[list, np.ndarray]:
    """One scoring request per sub-token step of every (context, word); and for each step the index of its word."""
    steps, owner = [], []
    targets = tokenizer([w for _, w in pairs], add_special_tokens=False)["input_ids"] if pairs else []
    for k, ((context, word), target) in enumerate(zip(pairs, targets)):
        for step in _steps(tokenizer, context, word, list(target)):
            steps.append(step)
            owner.append(k)
    if backend == "causal":
        ids = tokenizer([c for c, _ in steps], add_special_tokens=True)["input_ids"]
        reqs = [CausalRequest(list(x), [t]) for x, (_, t) in zip(ids, steps)]
    else:
        mask = tokenizer.mask_token
        ids = tokenizer([c + mask * MASKS_APPENDED for c, _ in steps], add_special_tokens=True)["input_ids"]
        reqs = []
        for x, (_, t) in zip(ids, steps):
            ends_in_mask = x[-1] == tokenizer.mask_token_id
            if backend == "mlm":  # read at the first appended mask
                first = len(x) - MASKS_APPENDED - (0 if ends_in_mask else 1)
                reqs.append(MaskedRequest(list(x), [first], shift=0, target_ids=[t]))
            else:  # mntp: read one position before the first mask
                first = len(x) - MASKS_APPENDED - (0 if ends_in_mask else 1)
                reqs.append(MaskedRequest(list(x), [first], shift=1, target_ids=[t]))
    return reqs, np.array(owner, dtype=np.int64)


def surprisals(step_logprobs: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    """-ln of the product of each word's sub-token probabilities."""
    total = np.zeros(n)
    np.add.at(total, owner, step_logprobs)
    return -total


def _formula(dv: str, terms: list[str], extra: str | None) -> str:
    pairs = [f"{a}:{b}" for a, b in combinations(terms, 2)]
    return f"{dv} ~ " + " + ".join(terms + pairs + ([extra] if extra else []))


def _gain(df, dv: str, terms: list[str]) -> dict:
    import statsmodels.formula.api as smf

    base = smf.ols(_formula(dv, terms, None), data=df[[dv, *terms]].dropna()).fit()
    model = smf.ols(_formula(dv, terms, "pred"), data=df[["pred", dv, *terms]].dropna()).fit()
    r2_base, r2_model = float(base.rsquared), float(model.rsquared)
    # an exact fit leaves no variance to explain (1 - R2 is rounding noise); a constant time makes R2 NaN
    defined = math.isfinite(r2_base) and math.isfinite(r2_model) and 1 - r2_base > EXACT_FIT
    return {"r2_base": r2_base, "r2_model": r2_model,
            "delta_r2": (r2_model - r2_base) / (1 - r2_base) * 100 if defined else math.nan,
            "coefficient": float(model.params["pred"]), "p_value": float(model.pvalues["pred"]), "n": int(model.nobs)}


def delta_r2(df, pred: np.ndarray, prev_pred: np.ndarray) -> dict:
    """The eye-tracking and self-paced reading scores of `reading/run.py` from the surprisals."""
    df = df.assign(pred=pred, prev_pred=prev_pred)
    measures = {dv: _gain(df, dv, list(terms)) for dv, terms in REGRESSIONS.items()}
    eye_score = float(np.mean([measures[dv]["delta_r2"] for dv in EYE_TRACKING]))
    scores = {"eye_tracking": eye_score, "self_paced_reading": measures[SELF_PACED]["delta_r2"], "measures": measures}
    undefined = [dv for dv, m in measures.items() if not math.isfinite(m["delta_r2"])]
    if undefined:
        scores["undefined"] = (f"the {', '.join(undefined)} regression(s) fit exactly or the time is the same on every "
                               "row, so delta R2 is undefined there")
    return scores


def score_table(df, tokenizer, backend: str, score) -> tuple[np.ndarray, np.ndarray]:
    """(surprisal, previous word's surprisal) per row; `score(requests)` returns each request's log-probability."""
    pairs = [(str(i), str(w)) for i, w in zip(df["item"], df["word"])]
    has_prev = [isinstance(i, str) for i in df["prev_item"]]
    prev_pairs = [(i, str(w)) for i, w, h in zip(df["prev_item"], df["prev_word"], has_prev) if h]
    reqs, owner = requests(tokenizer, pairs + prev_pairs, backend)
    values = surprisals(score(reqs), owner, len(pairs) + len(prev_pairs))
    pred = values[:len(pairs)]
    prev = np.full(len(pairs), math.nan)
    prev[np.flatnonzero(has_prev)] = values[len(pairs):]
    return pred, prev


def evaluate_reading(task, m, score, out_dir: Path, meta: dict, started: float) -> tuple[dict, dict]:
    """Surprisals, the two scores, and the files: eval/pairs/reading.jsonl (per word), the pipeline's
    eval/babylm2025/reading/predictions.json ({"reading": {"predictions": [{"id", "pred", "prev_pred"}]}}), then
    eval/reading.json (`write_result`: last). `started`: when scoring began (time.perf_counter())."""
    import json

    from common.paths import write_atomic
    from eval.report import OFFICIAL_DIR, json_safe, timing, write_result

    df = task.table
    pred, prev = score_table(df, m.tokenizer, m.backend, score)
    bad = ~np.isfinite(pred)
    if bad.all():
        raise UserError(
            f"{meta['model']}: every surprisal on task {task.name} is NaN or infinite, so the model is broken "
            f"(check its weights for NaN, or its training log); nothing was written for {task.name}"
        )
    if bad.any() or not np.isfinite(prev[~np.isnan(prev)]).all():
        scores = {"eye_tracking": math.nan, "self_paced_reading": math.nan, "measures": {}}  # no partial regression
    else:
        scores = delta_r2(df, pred, prev)
    summary = {
        "metric": "delta_r2",
        "score": (scores["eye_tracking"] + scores["self_paced_reading"]) / 2,
        "stderr": math.nan,
        **scores,
        "n_items": len(df),
        "n_subtasks": 2,
        "ties": 0,
        "non_finite": int(bad.sum()),
        "subtasks": {},
    }
    summary.update(timing(started, summary["n_items"]))
    (out_dir / "pairs").mkdir(parents=True, exist_ok=True)
    rows = [json.dumps(json_safe({"id": i, "word": str(w), "pred": float(p), "prev_pred": float(q)}), allow_nan=False)
            for i, (w, p, q) in enumerate(zip(df["word"], pred, prev))]
    per_item = out_dir / "pairs" / f"{task.name}.jsonl"
    write_atomic(per_item, "\n".join(rows) + "\n")
    official = out_dir / OFFICIAL_DIR / task.name / "predictions.json"
    official.parent.mkdir(parents=True, exist_ok=True)
    preds = [json_safe({"id": i, "pred": float(p), "prev_pred": float(q)}) for i, (p, q) in enumerate(zip(pred, prev))]
    write_atomic(official, json.dumps({"reading": {"predictions": preds}}, allow_nan=False) + "\n")
    result = write_result(out_dir, task, {**meta, "convention": "babylm2025", "data": task.origin, **summary})
    return summary, {"pairs": per_item, "official": official, "result": result}
