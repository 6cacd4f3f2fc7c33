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


def test_headline_is_each_arms_mean_and_learneds_gain_over_the_best_fixed_arm():
    from metaaug.stats import compare, headline

    rng = np.random.default_rng(0)
    accuracy = {"none": rng.uniform(0.80, 0.85, 12), "trivialaugment": rng.uniform(0.86, 0.9, 12),
                "learned": rng.uniform(0.85, 0.9, 12)}
    full = compare(accuracy)
    short = headline(full)
    assert set(short) == {"none", "trivialaugment", "learned", "gain", "gain_low", "gain_high"}
    assert short["none"] == round(full["arms"]["none"]["mean"], 2)
    best = full["paired"]["learned-trivialaugment"]  # trivialaugment is the best fixed arm here
    assert (short["gain"], short["gain_low"], short["gain_high"]) == (
        round(best["mean"], 2), round(best["ci_low"], 2), round(best["ci_high"], 2))
    assert all(isinstance(v, float) for v in short.values())  # numbers only: DVC shows no strings as metrics
    assert set(headline(compare({"none": accuracy["none"]}))) == {"none"}  # no learned arm: no gain
