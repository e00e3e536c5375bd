"""Paired significance tests on the same minimal pairs scored by two runs (eval/pairs/<task>.jsonl).

McNemar's exact test (McNemar 1947; exact binomial form): of the pairs where exactly one run
is right, how unlikely is the split under "both runs are equally good"? The paired bootstrap
(Efron & Tibshirani 1993; for NLP, Berg-Kirkpatrick et al. 2012) resamples the pairs and gives
a confidence interval for the accuracy difference.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from common.errors import UserError
from common.metrics import METRICS, metric_label


def pair_file(run: Path, task: str) -> Path:
    for candidate in (run / "eval" / "pairs" / f"{task}.jsonl", run / "pairs" / f"{task}.jsonl"):
        if candidate.is_file():
            return candidate
    raise UserError(f"{run}: no eval/pairs/{task}.jsonl; run python -m eval {run}/model --tasks {task} first")


def check_accuracy(pairs: Path, task: str) -> str:
    """The metric of the task beside its pairs file, refused unless its items are each right or wrong: McNemar's test
    and the bootstrap compare right and wrong answers, which WUG (a graded human preference) and reading (surprisal
    against reading times) do not have. A fine-tuned task scored by F1 has them: its accuracies are compared."""
    from common.paths import read_json

    result = pairs.parent.parent / f"{task}.json"
    if not result.is_file():
        return "accuracy"
    metric = read_json(result, f"the result of {task}", "run the evaluation again").get("metric", "accuracy")
    if metric in METRICS and not METRICS[metric].right_or_wrong:
        raise UserError(f"--task {task}: its score is {METRICS[metric].label}, not an accuracy ({result}); "
                        "McNemar's test and the paired bootstrap compare right and wrong answers, which it has none "
                        "of: compare an accuracy task")
    return metric


def correctness(run: Path, task: str) -> dict[str, bool]:
    path = pair_file(run, task)
    check_accuracy(path, task)
    out = {}
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason}); re-run the evaluation") from None
    for lineno, line in enumerate(text.split("\n"), 1):
        if line.strip():
            try:
                row = json.loads(line)
                out[str(row["id"])] = bool(row["correct"])
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                raise UserError(f"{path}:{lineno}: not a pair record, a JSON object with id and correct "
                                f"({type(exc).__name__}: {exc}); re-run the evaluation") from None
    return out


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact p-value for b pairs right only in A and c right only in B (statsmodels' exact McNemar: twice
    the binomial tail of min(b, c) in b + c at 1/2, at most 1; 1 when no pair differs)."""
    from statsmodels.stats.contingency_tables import mcnemar

    return float(mcnemar([[0, b], [c, 0]], exact=True).pvalue)


def paired_bootstrap(a: np.ndarray, b: np.ndarray, samples: int = 10000, seed: int = 0) -> tuple[float, float, float]:
    """(accuracy difference A − B, 95% interval low, high) from resampling the pairs with replacement. Each pair's
    difference is +1, 0 or −1, so a resample of n pairs is a multinomial draw of how many of each it holds: the
    same distribution as drawing n indices, in O(samples) memory instead of O(samples x n) (a BLiMP-sized task
    at 10,000 resamples would hold 5 GB of indices)."""
    rng = np.random.default_rng(seed)
    d = a - b
    n = len(d)
    probs = np.array([(d > 0).sum(), (d < 0).sum(), (d == 0).sum()], float) / n
    counts = rng.multinomial(n, probs, size=samples)
    diffs = (counts[:, 0] - counts[:, 1]) / n
    return float(a.mean() - b.mean()), float(np.quantile(diffs, 0.025)), float(np.quantile(diffs, 0.975))


def compare(run_a: Path, run_b: Path, task: str, samples: int = 10000, seed: int = 0) -> dict:
    a, b = correctness(run_a, task), correctness(run_b, task)
    common = sorted(set(a) & set(b))
    if not common:
        raise UserError(f"{run_a} and {run_b} share no pairs of {task}; evaluate both on the same task data")
    va, vb = np.array([a[k] for k in common], float), np.array([b[k] for k in common], float)
    only_a, only_b = int(((va == 1) & (vb == 0)).sum()), int(((va == 0) & (vb == 1)).sum())
    diff, lo, hi = paired_bootstrap(va, vb, samples, seed)
    return {"task": task, "pairs": len(common), "accuracy_a": float(va.mean()), "accuracy_b": float(vb.mean()),
            "only_a_right": only_a, "only_b_right": only_b, "mcnemar_p": mcnemar_exact(only_a, only_b),
            "difference": diff, "bootstrap_95": [lo, hi], "bootstrap_samples": samples,
            "left_out": {"a": len(a) - len(common), "b": len(b) - len(common)}}  # pairs only one run scored


def left_out(counts: dict, a: str = "A", b: str = "B") -> str:
    """The pairs one run scored and the other did not, which the test leaves out ('' when none): a different split or
    data version, said where the accuracies are, since they are then those of the shared pairs only."""
    if not counts["a"] and not counts["b"]:
        return ""
    return f"; left out: {counts['a']} pair(s) only {a} scored, {counts['b']} only {b} scored (different task data?)"


def is_comparison(data) -> bool:
    """Whether `data` (a JSON value) is what `compare` writes."""
    return isinstance(data, dict) and {"task", "mcnemar_p", "bootstrap_95"} <= set(data)


def run_compare(args) -> int:
    """`python -m results compare`: checks, the test, its JSON (printed, and written to --out) and a one-line
    summary."""
    from common.paths import check_replaceable, write_atomic

    for r in (args.run_a, args.run_b):
        if not Path(r).is_dir():
            raise UserError(f"{r}: run directory not found")
    if args.out:
        check_replaceable(args.out, is_comparison, "--out", "a comparison written by python -m results compare")
    out = compare(Path(args.run_a), Path(args.run_b), args.task, args.samples, args.seed)
    print(json.dumps(out, indent=2))
    if args.out:
        write_atomic(Path(args.out), json.dumps(out, indent=2) + "\n")
    metric = check_accuracy(pair_file(Path(args.run_a), args.task), args.task)
    scored = "" if metric == "accuracy" else f" (its score is {metric_label(metric)}; these compare accuracies)"
    print(
        f"{args.task}: accuracy A {out['accuracy_a']:.4f} vs B {out['accuracy_b']:.4f}{scored} on {out['pairs']} "
        "pairs; "
        f"McNemar p = {out['mcnemar_p']:.3g} ({out['only_a_right']} right only in A, {out['only_b_right']} only in B); "
        f"difference {out['difference']:+.4f}, 95% bootstrap [{out['bootstrap_95'][0]:+.4f}, "
        f"{out['bootstrap_95'][1]:+.4f}]" + left_out(out["left_out"])
    )
    return 0
