"""Paired statistics, in one place: every comparison in the search is of two candidates scored on the
same tasks (common random numbers), so each is a statistic of the per-task differences."""

from __future__ import annotations

import math

import numpy as np

from metaaug.stats import t_interval

# An explorer is separated from the best explorer when the 95 % t-interval of their paired difference
# (the interval the evidence prints) excludes 0, i.e. its one-sided 97.5 % bound lies below 0. The best is
# picked as the maximum, so its lead is biased upward: at 90 % one equal explorer in ten was declared worse.
SEPARATED = 0.975


def paired_interval(a: list[float], b: list[float]) -> tuple[float, float | None, float | None]:
    """Mean of a - b in points with its 95 % t-interval (a[i], b[i] on the same task); no interval
    below two tasks (no spread to judge by)."""
    d = 100.0 * (np.asarray(a, float) - np.asarray(b, float))
    if len(d) < 2:
        return (float(d.mean()) if len(d) else 0.0), None, None
    low, high = t_interval(d)
    return float(d.mean()), low, high


def futile(explorer: list[float], reference: list[float], cap: int, accept_z: float, margin: float) -> bool:
    """Can this explorer no longer pass the screen? Its paired z against the reference trails the track to
    `accept_z` (the screen's z) at `cap` tasks (z grows with the square root of the tasks:
    `accept_z * sqrt(n / cap)`) by more than `margin` (futility; bench/race_rules.py's replays). Without it an
    explorer level with the reference raced all `race_tasks` tasks, and the default search's cost had
    a tail to 14x one training, every time for the same answer."""
    n = len(explorer)
    if n < 2 or n >= cap:
        return False
    mean, se = paired_mean_se(explorer, reference)
    z = mean / se if se > 0 else math.copysign(math.inf, mean) if mean else 0.0
    return bool(z < accept_z * math.sqrt(n / cap) - margin)


def paired_mean_se(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean of a - b (a[i], b[i] on the same task) and its standard error (0 below two tasks)."""
    d = np.asarray(a, float) - np.asarray(b, float)
    return float(d.mean()), (float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else 0.0)


def clearly_worse(challenger: list[float], leader: list[float], confidence: float) -> bool:
    """Is the challenger worse than the leader on the same tasks with one-sided `confidence`
    (its paired t upper bound below 0)? Never on a single task (no spread to judge by)."""
    from scipy import stats

    if len(challenger) < 2:
        return False
    mean, se = paired_mean_se(challenger, leader)
    return bool(mean + stats.t.ppf(confidence, len(challenger) - 1) * se < 0)


def clearly_better(challenger: list[float], incumbent: list[float], z: float) -> bool:
    """Does the challenger beat the incumbent on the same tasks by more than `z` standard errors?

    The best of several noisy scores is biased upward (the winner's curse); without
    this test the search drifts to whatever got lucky on a few tasks.
    """
    if len(challenger) < 2:
        return False
    mean, se = paired_mean_se(challenger, incumbent)
    return bool(mean > 0 and mean > z * se)


def within(a: list[float], b: list[float], delta: float, confidence: float) -> bool:
    """Is a at most `delta` better than b on the same tasks, with one-sided `confidence` (the paired t upper
    bound of a - b below delta)? Never on a single task. The indifference zone of ranking and selection:
    a gap below delta is not worth the budget it takes to resolve."""
    from scipy import stats

    if len(a) < 2:
        return False
    mean, se = paired_mean_se(a, b)
    return bool(mean + stats.t.ppf(confidence, len(a) - 1) * se < delta)


def confirmation(challenger: list[float], reference: list[float]) -> tuple[float, float, float]:
    """One-sided paired t test that the challenger beats the reference on the same (fresh) tasks: the mean
    difference in points, t and the p-value. t, not z: at 6 tasks a z of 2 is only ~95 % one-sided t-confidence
    at best, at 3 tasks ~85 %. Differences without spread give p = 0 when positive, 1 otherwise."""
    from scipy import stats

    mean, se = paired_mean_se(challenger, reference)
    if len(challenger) < 2 or se == 0:
        return 100 * mean, (math.inf if mean > 0 else 0.0), (0.0 if mean > 0 and len(challenger) > 1 else 1.0)
    t = mean / se
    return 100 * mean, t, float(stats.t.sf(t, len(challenger) - 1))
