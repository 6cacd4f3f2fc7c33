"""Paired bootstrap comparison."""

import numpy as np

from metaaug.stats import paired_difference, summarise


def test_summary_in_points():
    s = summarise(np.array([0.9, 0.8, 1.0]))
    assert np.isclose(s["mean"], 90.0) and np.isclose(s["std"], 10.0) and s["n"] == 3


def test_paired_ci_excludes_zero_for_a_consistent_gain_despite_split_noise():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.80, 0.95, 20)  # large split-to-split noise
    better = base + 0.01 + rng.normal(0, 0.002, 20)
    d = paired_difference(better, base)
    assert d["ci_low"] > 0 and np.isclose(d["mean"], 100 * np.mean(better - base))
    assert d["wins"] == 20


def test_paired_ci_contains_zero_without_an_effect():
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0.8, 0.9, 20), rng.uniform(0.8, 0.9, 20)
    d = paired_difference(a, b)
    assert d["ci_low"] < 0 < d["ci_high"]
