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


def test_few_splits_get_an_honest_t_interval_not_a_degenerate_bootstrap():
    two = paired_difference(np.array([0.90, 0.95]), np.array([0.78, 0.83]))  # two equal differences of 12 points
    assert two["ci"] == "t" and np.isclose(two["mean"], 12.0)
    # with no spread between two splits the t-interval is degenerate too: say so by width, not by luck
    three = paired_difference(np.array([0.90, 0.95, 0.80]), np.array([0.78, 0.80, 0.75]))
    assert three["ci"] == "t" and three["ci_high"] - three["ci_low"] > 10  # t(0.975, 2) = 4.3 standard errors
    many = paired_difference(np.linspace(0.8, 0.9, 12), np.linspace(0.79, 0.89, 12))
    assert many["ci"] == "bootstrap"


def test_headline_keeps_means_cis_and_learneds_pairs():
    from metaaug.stats import compare, headline

    rng = np.random.default_rng(0)
    full = compare({arm: rng.uniform(0.8, 0.9, 12) for arm in ("none", "trivialaugment", "learned")})
    short = headline(full)
    assert set(short["paired"]) == {"learned-none", "learned-trivialaugment"}
    assert set(short["arms"]["none"]) == {"mean", "ci_low", "ci_high"}
    assert short["arms"]["none"]["mean"] == full["arms"]["none"]["mean"]
