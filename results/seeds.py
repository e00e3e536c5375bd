"""Runs that differ only in their seed (`train.seed`), taken together: each setting's mean and spread over seeds,
and each method-against-baseline difference at every seed with its mean, spread and sign agreement.

McNemar's test and the paired bootstrap (results/compare.py) compare two trained models on the same pairs: they say
how sure a difference between those two models is, not whether training again from another seed would give it. Only
replicates say that (Bouthillier et al. 2021, "Accounting for variance in machine learning benchmarks"): here the
standard deviation over seeds, whether the difference has the same sign, and is significant, at every seed, and a
one-sample t test of the per-seed differences against 0 (scipy.stats.ttest_1samp; with n seeds it has n − 1 degrees
of freedom, so two seeds give a weak test).

Replicates are the rows of one setting (results/baselines.py setting_key: the whole config.yaml but the seed, the
run's name and where it ran) and one model, trained on the same inputs where recorded (run.json `inputs`: the
packed text and the teachers' model files; a setting whose runs differ there is named on one line and left out); a
setting needs two seeds or more to appear. A setting run twice with the same seed counts once (the first run
directory in order), and is named on one line.
"""
from __future__ import annotations

import statistics

from common.names import without_axis
from results.baselines import first_run_of_each
from common.metrics import header
from results.collect import metric_of, task_columns
from results.markdown import finite, number, table

ALPHA = 0.05  # the per-seed significance level of the "ahead"/"behind" counts


def _setting_name(recipes) -> str:
    """One name for a setting's runs: their names without a grid's seed axis when that makes them one, else all."""
    names = list(dict.fromkeys(without_axis(str(r), "train.seed") for r in recipes))
    return names[0] if len(names) == 1 else " / ".join(names)


def first_per_seed(df, rows) -> dict:
    """seed -> the row of rows (indices of df, one setting and model) whose run directory comes first in order: a
    seed run twice counts once."""
    first = {}
    for i in sorted(rows, key=lambda i: df.loc[i, "run"]):
        first.setdefault(df.loc[i, "seed"], i)
    return first


def _other_inputs(df, rows) -> tuple[str, str] | None:
    """Two runs of `rows` whose recorded inputs differ (results/baselines.py trained_on), or None."""
    first = first_run_of_each(df, rows, "inputs_key")
    return tuple(list(first.values())[:2]) if len(first) > 1 else None


def replicate_groups(df) -> dict[tuple, list]:
    """(setting, model) -> the row indices of its distinct seeds, in seed order, for groups of two seeds or more."""
    groups: dict[tuple, list] = {}
    for (setting, model), rows in df.groupby(["setting", "model"], sort=False):
        other = _other_inputs(df, rows.index)
        if other:
            print(f"not replicates: {other[0]} and {other[1]} have one setting but were trained on other inputs "
                  f"(run.json `inputs`: the packed text or a teacher's model files changed between them)")
            continue
        first = first_per_seed(df, rows.index)
        for i in set(rows.index) - set(first.values()):
            print(f"same setting and seed {df.loc[i, 'seed']} twice: {df.loc[first[df.loc[i, 'seed']], 'run']} and "
                  f"{df.loc[i, 'run']}; the first counted")
        if len(first) >= 2:
            groups[(setting, model)] = [first[s] for s in sorted(first)]
    return groups


def _spread(values: list) -> tuple[float, float] | None:
    """(mean, sample standard deviation) of finite values; None when any value is missing or not finite."""
    if not values or not all(finite(v) for v in values):
        return None
    return statistics.fmean(values), statistics.stdev(values)


def _mean_sd(values: list, digits: int) -> str:
    spread = _spread(values)
    return "–" if spread is None else f"{spread[0]:.{digits}f} ± {spread[1]:.{digits}f}"


def replicates_markdown(df, groups: dict[tuple, list]) -> str:
    """One row per setting and model: its seeds, and the mean ± standard deviation over them of dev CE and each
    task's score."""
    tasks = task_columns(df)
    head = ["setting", "method", "model", "seeds", "dev CE", *[t + header(metric_of(df, t)) for t in tasks]]
    return table(head, ([_setting_name(df.loc[rows, "recipe"]), str(df.loc[rows[0], "method"]), str(model),
                         ", ".join(str(s) for s in df.loc[rows, "seed"]), _mean_sd(list(df.loc[rows, "dev_ce"]), 4),
                         *[_mean_sd([df.loc[i].get(t) for i in rows], 3) for t in tasks]]
                        for (_, model), rows in groups.items()))


def verdict(differences: list[float], ps: list[float]) -> str:
    """What the seeds agree on: a difference significant (p < ALPHA) in one direction at every seed, the same sign at
    every seed, or not even that."""
    signs = {(d > 0) - (d < 0) for d in differences}
    if signs == {1} or signs == {-1}:
        if all(p < ALPHA for p in ps):
            return "ahead at every seed" if signs == {1} else "behind at every seed"
        return "same sign at every seed, not significant at each"
    return "changes sign" if {1, -1} <= signs else "zero at a seed"


def across_seeds(df, records: list[dict]) -> list[dict]:
    """The comparisons of results/baselines.py grouped over seeds: one record per method setting, model, baseline
    setting and task that two seeds or more compared."""
    from scipy.stats import ttest_1samp

    groups: dict[tuple, list] = {}
    for c in records:
        a, b = df.loc[c["row"]], df.loc[c["baseline_row"]]
        groups.setdefault((a["setting"], a["model"], b["setting"], b["model"], c["task"]), []).append(c)
    out = []
    for (_, model, _, baseline_model, task), tests in groups.items():
        by_row = {c["row"]: c for c in tests}
        by_seed = {seed: by_row[i] for seed, i in first_per_seed(df, by_row).items()}
        if len(by_seed) < 2:
            continue
        seeds = sorted(by_seed)
        diffs = [by_seed[s]["difference"] for s in seeds]
        ps = [by_seed[s]["mcnemar_p"] for s in seeds]
        spread = _spread(diffs)
        t = ttest_1samp(diffs, 0.0) if spread is not None and spread[1] > 0 else None
        out.append({
            "method": _setting_name(df.loc[by_seed[s]["row"], "recipe"] for s in seeds) + f" {model}",
            "baseline": _setting_name(df.loc[by_seed[s]["baseline_row"], "recipe"] for s in seeds)
            + f" {baseline_model}",
            "task": task, "seeds": seeds, "differences": diffs, "mcnemar_p": ps,
            "mean": None if spread is None else spread[0], "sd": None if spread is None else spread[1],
            "ahead": sum(d > 0 and p < ALPHA for d, p in zip(diffs, ps)),
            "behind": sum(d < 0 and p < ALPHA for d, p in zip(diffs, ps)),
            "t_p": None if t is None else float(t.pvalue), "verdict": verdict(diffs, ps),
        })
    return out


def across_seeds_markdown(records: list[dict]) -> str:
    head = ["method", "baseline", "task", "difference at each seed (McNemar p)", "mean ± sd",
            "ahead / behind (p < 0.05)", "t test over seeds p", "seeds say"]
    rows = []
    for r in records:
        each = "; ".join(f"{s}: {d:+.3f} ({p:.2g})" for s, d, p in zip(r["seeds"], r["differences"], r["mcnemar_p"]))
        mean = "–" if r["mean"] is None else f"{r['mean']:+.3f} ± {r['sd']:.3f}"
        rows.append([
            r["method"], r["baseline"], r["task"], each, mean, f"{r['ahead']} / {r['behind']} of {len(r['seeds'])}",
            number(r["t_p"], "{:.2g}") + (f" (df {len(r['seeds']) - 1})" if r["t_p"] is not None else ""), r["verdict"],
        ])
    return table(head, rows)


def seeds_markdown(df, records: list[dict]) -> str | None:
    """`<name>-seeds.md`: the replicates table and the comparisons over seeds; None when no setting has two seeds."""
    groups = replicate_groups(df)
    if not groups:
        return None
    text = ("## Settings run from several seeds: mean ± standard deviation over seeds\n\n"
            + replicates_markdown(df, groups))
    over = across_seeds(df, records)
    if over:
        text += ("\n## Each method against its baseline at every seed (training-run variation, not one pair of "
                 "models)\n\n" + across_seeds_markdown(over))
    return text
