"""The AoA curve fitness, as the 2025 pipeline's `utils.AoAEvaluator.compute_curve_fitness` computes it.

Chang & Bergen (2022, "Word acquisition in neural language models", TACL 10, section 3): a
word's age of acquisition is where a sigmoid fitted to its learning curve crosses a
threshold. Children: the proportion producing the word at 16..30 months (Wordbank CDI), a
4-parameter sigmoid f(x) = a / (1 + exp(-b (x - c))) + d fitted with bounds, threshold 0.5.
The model: minus the surprisal against log10(words + 1) over the checkpoints, the sigmoid
fitted without bounds, threshold halfway between "random chance" and the word's lowest
surprisal; the model's AoA is that point's log10(words). The score is Pearson's r between
the model's and the children's AoAs over the words both give one for.

Kept as the pipeline has them (so the score is the one the organisers compute): random
chance is log2(300,000) bits while the surprisals are in nats; the learning curve holds one
point per context of a word (the same surprisal repeated); a surprisal that is not a number
counts in the "fewer than 3 points" test and is then dropped; a fit that fails (or lands
outside the checkpoints or months) drops the word; with fewer than 3 words the pipeline
reports a fitness of 0.0, which is not a correlation (`too_few_words` says so here).
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np

from common.errors import UserError

MONTHS = tuple(str(m) for m in range(16, 31))
CHANCE_VOCAB = 300_000  # the pipeline's approximate_vocab
THRESHOLD = 0.5


def sigmoid(x: np.ndarray, a: float, b: float, c: float, d: float) -> np.ndarray:
    """f(x) = a / (1 + exp(-b (x - c))) + d."""
    return a / (1 + np.exp(-b * (x - c))) + d


def read_cdi(path: Path):
    """The children's data: a CSV with a `word` column and month columns among 16..30 (proportions producing it)."""
    import pandas as pd

    if not path.is_file():
        raise UserError(f"--cdi {path}: no such file; give the CSV of children's production proportions")
    try:
        cdi = pd.read_csv(path)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise UserError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    cdi.columns = [str(c) for c in cdi.columns]
    months = [m for m in MONTHS if m in cdi.columns]
    if "word" not in cdi.columns or not months:
        missing = "word column" if "word" not in cdi.columns else "month column (16 to 30)"
        raise UserError(f"{path}: has no {missing}; the CDI file has a word column and one column per month 16..30")
    for m in months:
        values = pd.to_numeric(cdi[m], errors="coerce")
        bad = ~cdi[m].isna() & (values.isna() | ~values.between(0, 1))  # a word in it, NaN read as text, 2.5, inf
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise UserError(f"{path}:{row + 2}: month {m} is {cdi[m].iloc[row]!r}, not a proportion (0 to 1)")
    return cdi


def _fit(x: np.ndarray, y: np.ndarray, p0: list, **bounds):
    from scipy.optimize import curve_fit

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # overflow in exp and covariance warnings: the pipeline ignores them too
        return curve_fit(sigmoid, x, y, p0=p0, maxfev=1000, **bounds)[0]


def crossing(a: float, b: float, c: float, d: float, level: float) -> float | None:
    """Where the fitted sigmoid reaches `level`; None where it cannot (as the pipeline decides)."""
    if b <= 0 or a <= 0 or level <= d or level >= a + d:
        return None
    return c - math.log(a / (level - d) - 1) / b


def child_aoa(ages: np.ndarray, proportions: np.ndarray) -> float | None:
    """Months at which half the children produce the word; None without 3 months of data or a usable fit."""
    valid = ~np.isnan(proportions)
    x, y = ages[valid], proportions[valid]
    if len(y) < 3:
        return None
    try:
        a, b, c, d = _fit(x, y, [1.0, 0.1, float(np.mean(x)), 0.0],
                          bounds=([0, 0, x[0], -0.5], [2.0, 1.0, x[-1], 0.5]))
    except Exception:  # noqa: BLE001 - any failed fit drops the word, as the pipeline's `except Exception` does
        return None
    aoa = crossing(a, b, c, d, THRESHOLD)
    return None if aoa is None or aoa < x[0] or aoa > x[-1] else aoa


def model_aoa(surprisals: list[float], words: list[float]) -> float | None:
    """log10(words seen) at which the word's surprisal curve crosses halfway from chance to its lowest value."""
    if len(surprisals) < 3:
        return None
    steps, values = np.asarray(words, dtype=float), np.asarray(surprisals, dtype=float)
    valid = ~np.isnan(values)
    if not valid.any():
        return None
    steps, values = steps[valid], values[valid]
    chance = math.log2(CHANCE_VOCAB)
    level = -(chance - THRESHOLD * (chance - values.min()))
    x, y = np.log10(steps + 1), -values
    try:
        a, b, c, d = _fit(x, y, [y.max() - y.min(), 1.0, float(np.mean(x)), y.min()])
    except Exception:  # noqa: BLE001 - as above (fewer points than parameters is a TypeError)
        return None
    log_aoa = crossing(a, b, c, d, level)
    if log_aoa is None:
        return None
    aoa = 10**log_aoa - 1
    return None if aoa < steps[0] or aoa > steps[-1] else log_aoa


def curve_fitness(rows: list[dict], cdi) -> dict:
    """Pearson's r between model and child AoAs from the surprisal rows (surprisal.json's `results`)."""
    from scipy.stats import pearsonr

    from eval.aoa import nominal_words

    curves: dict[str, tuple[list, list]] = {}
    for row in rows:
        steps, values = curves.setdefault(row["target_word"], ([], []))
        steps.append(float(nominal_words(row["step"])))
        values.append(math.nan if row["surprisal"] is None else float(row["surprisal"]))
    months = [m for m in MONTHS if m in cdi.columns]
    ages, table = np.array([int(m) for m in months]), cdi[months].to_numpy(dtype=float)
    first = {}
    for k, word in enumerate(cdi["word"].astype(str)):
        first.setdefault(word, k)
    words, model, child = [], [], []
    for word, (steps, values) in curves.items():
        if word not in first:
            continue
        c = child_aoa(ages, table[first[word]])
        m = None if c is None else model_aoa(values, steps)
        if m is not None:
            words.append(word)
            model.append(m)
            child.append(c)
    if len(words) < 3:
        return {"curve_fitness": 0.0, "n_words": len(words), "too_few_words": True}
    monthly = {f"month_{m}": float(cdi[m].dropna().mean()) for m in months}
    out = {"n_words": len(words), "mean_monthly_score": float(np.mean(list(monthly.values()))),
           "monthly_scores": monthly, "valid_words": words, "model_aoas": model, "child_aoas": child}
    same = [who for who, aoas in (("model", model), ("children's", child)) if len(set(aoas)) == 1]
    if same:  # pearsonr gives NaN (and a warning), which json.dumps wrote as NaN: not JSON
        return {"curve_fitness": None, "p_value": None, **out,
                "undefined": f"every word has the same {same[0]} AoA, so Pearson's r is undefined"}
    r, p = pearsonr(model, child)
    return {"curve_fitness": float(r), "p_value": float(p), **out}
