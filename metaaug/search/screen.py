"""The screen before the race: which op groups leave the class signal readable, and up to which magnitude.

A learner trained on clean support images (the `none` reference's proxy, so its scores are `none`'s on those
tasks: no extra training when `none` is an anchor) is scored on its task's query images augmented by each op
group alone at magnitude caps 1, 1/2, 1/4, 1/8. The share of its accuracy above chance that survives is the
group's label preservation at that cap (the affinity of Gontijo-Lopes et al. 2020, "Affinity and Diversity").
A group keeps the largest cap at which the share is at least `screen_keep`; a group that keeps it at no cap is
switched off. Every point the race offers is screened the same way (`apply`), so no budget is spent racing
policies whose ops rewrite the label cue (the `intensity` and `position` tasks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from metaaug.ops import OPS
from metaaug.policies import Policy
from metaaug.search.space import SearchSpace

LEVELS = (1.0, 0.5, 0.25, 0.125)  # magnitude caps probed, largest first


@dataclass(frozen=True)
class Screen:
    """Per screened group: the highest cap that keeps the class signal (0: the group is off), the share kept
    at each level probed; the clean learners' scores on the screen's tasks."""

    limits: dict[str, float]
    kept: dict[str, list[float]]
    clean: list[float]
    tasks: list[int]

    def describe(self) -> str:
        """What the screen changed, in words ("" when nothing)."""
        off = [g for g, c in self.limits.items() if c == 0]
        capped = [f"{g} ≤ {c:g}" for g, c in self.limits.items() if 0 < c < 1]
        return ", ".join([*(f"{g} off" for g in off), *capped])


def probes(space: SearchSpace) -> list[tuple[str, float, Policy]]:
    """(group, cap, policy) probes: each group but identity alone, its ops equally likely, magnitudes in
    [0, cap]; a group without magnitudes once, at cap 1."""
    out = []
    for group, members in space.groups.items():
        if group == "identity":
            continue
        sized = any(OPS[op].max_value > 0 for op in members)
        for cap in LEVELS if sized else LEVELS[:1]:
            n = len(members)
            out.append((group, cap, Policy(f"probe-{group}-{cap:g}", members, (1 / n,) * n, (1.0,) * n, (0.0,) * n,
                                           tuple(cap if OPS[op].max_value > 0 else 1.0 for op in members), 1)))
    return out


def judge(space: SearchSpace, results: list[tuple[float, list[float]]], n_classes: int, keep: float,
          task_ids: list[int]) -> Screen:
    """The screen from the clean learners' (score, probe accuracies): a group's share kept at a cap is the mean
    over tasks of (accuracy under the probe - chance) / (clean accuracy - chance); tasks where the clean
    learner is at chance say nothing and are left out (no task left: nothing is screened)."""
    chance = 1.0 / n_classes
    pairs = probes(space)
    informative = [(clean, probed) for clean, probed in results if clean > chance + 1e-9]
    kept: dict[str, list[float]] = {}
    for k, (group, _, _) in enumerate(pairs):
        share = (float(np.mean([(probed[k] - chance) / (clean - chance) for clean, probed in informative]))
                 if informative else 1.0)
        kept.setdefault(group, []).append(share)
    limits = {g: next((cap for cap, share in zip(LEVELS, shares) if share >= keep), 0.0) for g, shares in kept.items()}
    return Screen(limits, kept, [clean for clean, _ in results], task_ids)


def apply(space: SearchSpace, theta: np.ndarray, screen: Screen | None) -> np.ndarray | None:
    """The point with the screen's limits: each capped group's cap lowered to its limit, each failed group off.
    None when no group with mass is left (the point has nothing the screen lets through)."""
    if screen is None:
        return np.asarray(theta, float)
    point = np.asarray(theta, float)
    names = list(space.groups)
    for g, name in enumerate(names):
        if screen.limits.get(name) == 0 and space.masses(point)[g] > 0:
            if (space.masses(point) > 0).sum() == 1:
                return None
            point = space.without(point, g)
    mass, caps = space.masses(point), space.caps(point).copy()
    for g, name in enumerate(names):  # groups without mass keep their cap: a move that gives them mass is
        limit = screen.limits.get(name)  # screened again
        if limit and mass[g] > 0:
            caps[g] = min(caps[g], limit)
    return space.set_caps(point, caps)


def changes(space: SearchSpace, before: np.ndarray, after: np.ndarray) -> str:
    """What screening did to a point, in words: the groups it switched off and the caps it lowered."""
    was, now = space.masses(before), space.masses(after)
    caps_before, caps_after = space.caps(before), space.caps(after)
    words = [f"{g} off" for g, a, b in zip(space.groups, was, now) if a > 0 and b == 0]
    words += [f"{g} ≤ {c:g}" for g, m, c, old in zip(space.groups, now, caps_after, caps_before) if m > 0 and c < old]
    return ", ".join(words)
