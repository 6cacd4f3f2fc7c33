"""Paired comparison of arms over the same target splits.

Split noise (1–3 points on the digits) dwarfs most augmentation effects, so
arms are compared by the per-split difference, whose spread is much smaller.
Its 95 % confidence interval is a percentile bootstrap from 10 splits up, and a
t-interval below (a bootstrap of 2 or 3 values gives a falsely narrow interval,
e.g. [+12.28, +12.28] from two equal differences); `ci` says which.
"""

from __future__ import annotations

import numpy as np

BOOTSTRAP_FROM = 10  # splits; fewer get a t-interval


def t_interval(values: np.ndarray) -> tuple[float, float]:
    """95 % t-interval of the mean; the mean itself for a single value (no spread to go on)."""
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, mean
    from scipy import stats as scipy_stats  # here: about a second to import, and a train stage never needs it

    half = float(scipy_stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values)))
    return mean - half, mean + half


def summarise(acc: np.ndarray) -> dict[str, float]:
    """Mean, sample standard deviation, standard error and 95 % t-interval of per-split accuracies (points)."""
    acc = 100.0 * np.asarray(acc, dtype=float)
    std = float(acc.std(ddof=1)) if len(acc) > 1 else 0.0
    low, high = t_interval(acc)
    return {"mean": float(acc.mean()), "std": std, "sem": std / np.sqrt(len(acc)), "n": int(len(acc)),
            "ci_low": low, "ci_high": high}


def paired_difference(a: np.ndarray, b: np.ndarray, n_boot: int = 10000, seed: int = 0) -> dict[str, float]:
    """Mean of a - b over splits (points) with a 95 % CI; a[i] and b[i] share split i."""
    d = 100.0 * (np.asarray(a, dtype=float) - np.asarray(b, dtype=float))
    if len(d) >= BOOTSTRAP_FROM:
        rng = np.random.default_rng(seed)
        means = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)
        (low, high), method = np.percentile(means, [2.5, 97.5]), "bootstrap"
    else:
        (low, high), method = t_interval(d), "t"
    return {"mean": float(d.mean()), "ci_low": float(low), "ci_high": float(high), "ci": method,
            "wins": int(np.sum(d > 0)), "losses": int(np.sum(d < 0)), "n": int(len(d))}


def compare(accuracy: dict[str, np.ndarray]) -> dict:
    """Per-arm summary and paired differences: learned (if present) minus each arm, each arm minus none."""
    metrics = {"arms": {arm: summarise(acc) for arm, acc in accuracy.items()}, "paired": {}}
    pairs = [("learned", b) for b in accuracy if b != "learned" and "learned" in accuracy]
    pairs += [(a, "none") for a in accuracy if a not in ("none", "learned") and "none" in accuracy]
    for a, b in pairs:
        metrics["paired"][f"{a}-{b}"] = paired_difference(accuracy[a], accuracy[b])
    return metrics


def best_fixed(arms: dict) -> str | None:
    """The fixed arm (any arm but `learned`) with the highest mean test accuracy; None when there is none."""
    fixed = [a for a in arms if a != "learned"]
    return max(fixed, key=lambda a: arms[a]["mean"]) if fixed else None


def headline(full: dict) -> dict[str, float]:
    """The answer in a few numbers, flat and rounded to 0.01 point so that `dvc metrics show` and MLflow's run
    list show it in one narrow row: each arm's mean test accuracy (%), and `gain`, `gain_low`, `gain_high`:
    learned minus the best fixed arm, paired over the splits, with its 95 % CI. Everything else (spread, n,
    wins and losses, every pair, the verdict) is in reports/evaluation.json, which DVC does not list."""
    arms = full["arms"]
    numbers = {arm: round(s["mean"], 2) for arm, s in arms.items()}
    best = best_fixed(arms)
    if "learned" in arms and best is not None:
        d = full["paired"][f"learned-{best}"]
        numbers.update(gain=round(d["mean"], 2), gain_low=round(d["ci_low"], 2), gain_high=round(d["ci_high"], 2))
    return numbers
