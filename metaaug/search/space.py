"""The search space: a point is a weight logit and a magnitude cap per op group, and a depth.

A point maps to a Policy (`SearchSpace.policy`); the fixed baselines project to points
(`anchor_points`), and `explore` makes the one-move neighbours the race offers.
Groups keep the space low-dimensional enough for a handful of scored trainings to move it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from metaaug.errors import MetaaugError
from metaaug.ops import GROUPS, OPS
from metaaug.policies import Policy, drop_color, fixed_policy

SHARE = 0.75  # an explorer that boosts a group gives it this share of the op mass
# ... and the identity group this one: "augment 5 % of the images". Measured on tasks where augmentation
# destroys the label cue, augmenting even a quarter of the images costs nearly as much as augmenting all.
IDENTITY_SHARE = 0.95
OFF = -8.0  # the logit of a group that is off (e.g. one TrivialAugment-Wide lacks, at the start)
# Mass below this is exactly zero. Measured by bench/off_groups.py on intensity-coded classes: a policy
# of Identity plus 0.17 % full-strength TrivialAugment-Wide ops scored 1.4 points below no augmentation.
MIN_MASS = 1e-3
MAX_LAYERS = 2  # ops applied in sequence per image: 1 (TrivialAugment) or 2 (RandAugment's N=2)

def op_groups(ops: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """The groups restricted to the configured ops (empty groups dropped)."""
    groups = {g: tuple(op for op in OPS if op in ops and OPS[op].group == g) for g in GROUPS}
    return {g: members for g, members in groups.items() if members}


@dataclass(frozen=True)
class SearchSpace:
    """Maps a vector (logit per group, magnitude cap per group, depth) to a Policy.

    On grey images (`channels=1`) Color is left out: it is the identity there.
    """

    ops: tuple[str, ...]
    channels: int = 3
    groups: dict[str, tuple[str, ...]] = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "groups", op_groups(tuple(drop_color(self.ops, self.channels))))
        if not self.groups:
            raise MetaaugError(f"params.yaml: metatrain.ops {list(self.ops)} leaves no op for {self.channels}-channel "
                               "images; expected at least one op other than Color on grey images")

    @property
    def dim(self) -> int:
        return 2 * len(self.groups) + 1

    def initial(self) -> np.ndarray:
        """TrivialAugment-Wide: its ops equally likely, full ranges, one op per image.

        Ops of the space that TrivialAugment-Wide lacks (Scale, Cutout) start off
        (logit OFF) and are switched on only by candidates that explore them.
        """
        return self.project(fixed_policy("trivialaugment", image_channels=self.channels))

    def project(self, policy: Policy) -> np.ndarray | None:
        """The point of the space nearest a policy: each group gets the policy's mass on its ops
        (spread evenly inside it; groups without any are OFF), a cap twice the mean magnitude of
        those ops (so the range [0, cap] has the same mean), the policy's depth. None if the
        policy has no op in this space.
        """
        weight = dict(zip(policy.ops, policy.weights))
        middle = {op: (lo + hi) / 2 for op, lo, hi in zip(policy.ops, policy.mag_low, policy.mag_high)}
        masses = np.array([sum(weight.get(op, 0.0) for op in members) for members in self.groups.values()])
        if masses.max() <= 0:
            return None
        logits = [math.log(m / masses.max()) if m > 0 else OFF for m in masses]
        caps = []
        for members in self.groups.values():
            sized = [middle[op] for op in members if op in middle and OPS[op].has_magnitude]
            caps.append(min(1.0, 2 * float(np.mean(sized))) if sized else 1.0)
        return np.array([*logits, *caps, float(min(policy.layers, MAX_LAYERS))])

    def layers(self, theta: np.ndarray) -> int:
        return int(np.clip(np.rint(theta[-1]), 1, MAX_LAYERS))

    def masses(self, theta: np.ndarray) -> np.ndarray:
        """Softmax of the group logits; groups under MIN_MASS are switched off exactly."""
        logits = np.asarray(theta[:len(self.groups)], float)
        mass = np.exp(logits - logits.max())
        mass = np.where(mass / mass.sum() < MIN_MASS, 0.0, mass)
        return mass / mass.sum()

    def caps(self, theta: np.ndarray) -> np.ndarray:
        k = len(self.groups)
        return np.clip(np.asarray(theta[k:2 * k], float), 0.0, 1.0)

    def policy(self, theta: np.ndarray, name: str = "learned") -> Policy:
        ops, weights, highs = [], [], []
        for (group, members), m, cap in zip(self.groups.items(), self.masses(theta), self.caps(theta)):
            for op in members:
                ops.append(op)
                weights.append(float(m) / len(members))
                highs.append(float(cap) if OPS[op].has_magnitude else 1.0)
        return Policy(name=name, ops=tuple(ops), weights=tuple(weights), prob=(1.0,) * len(ops),
                      mag_low=(0.0,) * len(ops), mag_high=tuple(highs), layers=self.layers(theta))

    def describe(self, theta: np.ndarray) -> dict[str, float]:
        """Group masses, caps and depth, for MLflow curves."""
        out = {f"weight.{g}": float(m) for g, m in zip(self.groups, self.masses(theta))}
        out.update({f"cap.{g}": float(c) for g, c in zip(self.groups, self.caps(theta))})
        out["layers"] = float(self.layers(theta))
        return out


def anchor_points(space: SearchSpace, names: list[str]) -> list[tuple[str, np.ndarray]]:
    """(name, point) of the named fixed baselines (config.ANCHORS) that have an op in the space."""
    points = [(name, space.project(fixed_policy(name, image_channels=space.channels))) for name in names]
    return [(name, p) for name, p in points if p is not None]


def explorer_points(mean: np.ndarray, std: np.ndarray, count: int, space: SearchSpace, rng: np.random.Generator,
                    moves_first: bool, origin: str) -> list[tuple[str, np.ndarray]]:
    """`count` (label, point) explorers around `mean` (called `origin` in the labels). With `moves_first`
    the first ones are the pure moves, one per direction (no random step): every seed races the same
    candidates, so only the tasks vary between seeds, not what is on offer. The rest (and every explorer
    of a later CEM generation) add a random step.
    """
    moves = len(space.groups) + 2 if moves_first else 0
    return [(f"{origin}{'' if c < moves else ' + a random step'}, {move_name(mean, c, space)}",
             explore(mean, np.zeros_like(std) if c < moves else std, c, space, rng)) for c in range(count)]


def move_name(mean: np.ndarray, c: int, space: SearchSpace) -> str:
    """What `explore`'s direction c does, in words."""
    k = len(space.groups)
    direction = c % (k + 2)
    if direction < k:
        group = list(space.groups)[direction]
        return f"{group} ops at {100 * (IDENTITY_SHARE if group == 'identity' else SHARE):.0f} % of the mass"
    return "magnitude caps halved" if direction == k else f"{MAX_LAYERS + 1 - space.layers(mean)} op(s) per image"


def explore(mean: np.ndarray, std: np.ndarray, c: int, space: SearchSpace, rng: np.random.Generator) -> np.ndarray:
    """A random step around `mean` plus one move along direction c (cycled).

    Directions: give one op group SHARE of the mass (switching it on if it is off; the
    identity group IDENTITY_SHARE: augment almost nothing), halve every magnitude cap,
    or change the depth (one op per image <-> two). Isotropic noise
    alone rarely makes such moves within a handful of candidates; cycling them makes
    each a contender in every bracket.
    """
    theta = mean + std * rng.standard_normal(space.dim)
    k = len(space.groups)
    direction = c % (k + 2)
    if direction < k:
        share = IDENTITY_SHARE if list(space.groups)[direction] == "identity" else SHARE
        theta[direction] = np.logaddexp.reduce(np.delete(theta[:k], direction)) + math.log(share / (1 - share))
    elif direction == k:
        theta[k:2 * k] = 0.5 * space.caps(theta)
    else:
        theta[-1] = MAX_LAYERS + 1 - space.layers(mean)
    return theta


def policy_summary(policy: Policy) -> str:
    """One line: the heaviest ops (of those ever drawn) with their weight and magnitude cap."""
    order = [i for i in np.argsort(policy.weights)[::-1] if policy.weights[i] > 0]
    return ", ".join(f"{policy.ops[i]} {100 * policy.weights[i]:.0f}% ≤{policy.mag_high[i]:.2f}" for i in order[:6])




CAP_RAISE = 1.5  # a refinement move that raises every magnitude cap multiplies it by this (at most 1)


def moves(space: SearchSpace, theta: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """The local moves refinement races from a point: the pure moves of `explore` (each group given
    SHARE of the mass, every cap halved, the depth changed), each group that is on switched off (while
    another stays on), and every cap raised by CAP_RAISE. Deterministic: the same point gives the same
    moves on every seed, so seeds differ only in their tasks."""
    k, zero = len(space.groups), np.zeros(space.dim)
    out = [(move_name(theta, c, space), explore(theta, zero, c, space, np.random.default_rng(0)))
           for c in range(k + 2)]
    mass = space.masses(theta)
    for g, group in enumerate(space.groups):
        if mass[g] > 0 and (mass > 0).sum() > 1:
            point = np.array(theta, float)
            point[g] = np.delete(point[:k], g).max() + OFF
            out.append((f"{group} ops off", point))
    raised = np.array(theta, float)
    raised[k:2 * k] = np.minimum(1.0, CAP_RAISE * space.caps(theta))
    out.append((f"magnitude caps raised x{CAP_RAISE:g} (at most 1)", raised))
    return out


def policy_key(space: SearchSpace, theta: np.ndarray) -> str:
    """The policy a point stands for, rounded: two points with the same key are the same candidate."""
    p = space.policy(np.asarray(theta, float))
    return repr((p.ops, np.round(p.weights, 4).tolist(), np.round(p.mag_high, 4).tolist(), p.layers))
