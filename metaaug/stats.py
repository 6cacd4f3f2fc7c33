"""Paired comparison of arms over the same target splits.

Split noise (1–3 points on the digits) dwarfs most augmentation effects, so
arms are compared by the per-split difference, whose spread is much smaller,
with a percentile-bootstrap 95 % confidence interval of its mean.
"""

from __future__ import annotations

import numpy as np


def summarise(acc: np.ndarray) -> dict[str, float]:
    """Mean, sample standard deviation and standard error of per-split accuracies (in points)."""
    acc = 100.0 * np.asarray(acc, dtype=float)
    std = float(acc.std(ddof=1)) if len(acc) > 1 else 0.0
    return {"mean": float(acc.mean()), "std": std, "sem": std / np.sqrt(len(acc)), "n": int(len(acc))}


def paired_difference(a: np.ndarray, b: np.ndarray, n_boot: int = 10000, seed: int = 0) -> dict[str, float]:
    """Mean of a - b over splits (points) with a bootstrap 95 % CI; a[i] and b[i] share split i."""
    d = 100.0 * (np.asarray(a, dtype=float) - np.asarray(b, dtype=float))
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"mean": float(d.mean()), "ci_low": float(low), "ci_high": float(high),
            "wins": int(np.sum(d > 0)), "losses": int(np.sum(d < 0)), "n": int(len(d))}


def compare(accuracy: dict[str, np.ndarray]) -> dict:
    """Per-arm summary and paired differences: learned (if present) minus each arm, each arm minus none."""
    metrics = {"arms": {arm: summarise(acc) for arm, acc in accuracy.items()}, "paired": {}}
    pairs = [("learned", b) for b in accuracy if b != "learned" and "learned" in accuracy]
    pairs += [(a, "none") for a in accuracy if a not in ("none", "learned") and "none" in accuracy]
    for a, b in pairs:
        metrics["paired"][f"{a}-{b}"] = paired_difference(accuracy[a], accuracy[b])
    return metrics
