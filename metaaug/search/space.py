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
    """Maps a vector (a weight logit per op, a magnitude cap per op group, depth) to a Policy.

    Weights are per op so that a baseline's point is fixed by the ops it names: adding an op to a group
    leaves TrivialAugment-Wide's and RandAugment's points as they were (the new op starts OFF), and moves
    act on a group's mass as a whole. On grey images (`channels=1`) Color is left out: it is the identity there.
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
    def op_list(self) -> tuple[str, ...]:
        """The space's ops, group by group (the order of the weight logits)."""
        return tuple(op for members in self.groups.values() for op in members)

    @property
    def dim(self) -> int:
        return len(self.op_list) + len(self.groups) + 1

    def members(self, g: int) -> slice:
        """Where group g's op logits lie in a point."""
        sizes = [len(m) for m in self.groups.values()]
        return slice(sum(sizes[:g]), sum(sizes[:g + 1]))

    def initial(self) -> np.ndarray:
        """TrivialAugment-Wide: its ops equally likely, full ranges, one op per image.

        Ops of the space that TrivialAugment-Wide lacks (Scale, Cutout, any op added later) start off
        (logit OFF) and are switched on only by candidates that explore them.
        """
        return self.project(fixed_policy("trivialaugment", image_channels=self.channels))

    def project(self, policy: Policy) -> np.ndarray | None:
        """The point of the space nearest a policy: each op the policy names gets its weight (the ops it does
        not name are OFF), each group a cap twice the mean magnitude of the policy's ops in it (so the range
        [0, cap] has the same mean), the policy's depth. None if the policy has no op in this space.
        """
        weight = dict(zip(policy.ops, policy.weights))
        middle = {op: (lo + hi) / 2 for op, lo, hi in zip(policy.ops, policy.mag_low, policy.mag_high)}
        w = np.array([weight.get(op, 0.0) for op in self.op_list])
        if w.max() <= 0:
            return None
        logits = [math.log(m / w.max()) if m > 0 else OFF for m in w]
        caps = []
        for members in self.groups.values():
            sized = [middle[op] for op in members if op in middle and OPS[op].has_magnitude]
            caps.append(min(1.0, 2 * float(np.mean(sized))) if sized else 1.0)
        return np.array([*logits, *caps, float(min(policy.layers, MAX_LAYERS))])

    def layers(self, theta: np.ndarray) -> int:
        return int(np.clip(np.rint(theta[-1]), 1, MAX_LAYERS))

    def op_masses(self, theta: np.ndarray) -> np.ndarray:
        """Softmax of the op logits; ops under MIN_MASS are switched off exactly."""
        logits = np.asarray(theta[:len(self.op_list)], float)
        mass = np.exp(logits - logits.max())
        mass = np.where(mass / mass.sum() < MIN_MASS, 0.0, mass)
        return mass / mass.sum()

    def masses(self, theta: np.ndarray) -> np.ndarray:
        """Each group's share of the op mass."""
        mass = self.op_masses(theta)
        return np.array([mass[self.members(g)].sum() for g in range(len(self.groups))])

    def caps(self, theta: np.ndarray) -> np.ndarray:
        n = len(self.op_list)
        return np.clip(np.asarray(theta[n:n + len(self.groups)], float), 0.0, 1.0)

    def set_caps(self, theta: np.ndarray, caps: np.ndarray) -> np.ndarray:
        out = np.array(theta, float)
        n = len(self.op_list)
        out[n:n + len(self.groups)] = caps
        return out

    def policy(self, theta: np.ndarray, name: str = "learned") -> Policy:
        cap = {op: c for members, c in zip(self.groups.values(), self.caps(theta)) for op in members}
        ops = self.op_list
        return Policy(name=name, ops=ops, weights=tuple(float(m) for m in self.op_masses(theta)),
                      prob=(1.0,) * len(ops), mag_low=(0.0,) * len(ops),
                      mag_high=tuple(float(cap[op]) if OPS[op].has_magnitude else 1.0 for op in ops),
                      layers=self.layers(theta))

    def describe(self, theta: np.ndarray) -> dict[str, float]:
        """Group masses, caps and depth, for MLflow curves."""
        out = {f"weight.{g}": float(m) for g, m in zip(self.groups, self.masses(theta))}
        out.update({f"cap.{g}": float(c) for g, c in zip(self.groups, self.caps(theta))})
        out["layers"] = float(self.layers(theta))
        return out

    def with_share(self, theta: np.ndarray, g: int, share: float) -> np.ndarray:
        """Group g given `share` of the op mass: its ops that are on scaled together (all of them, evenly,
        when none is on), the other groups' ops unchanged relative to each other."""
        out = np.array(theta, float)
        n, where = len(self.op_list), self.members(g)
        on = self.op_masses(theta)[where] > 0
        inside = out[where]
        if not on.any():
            inside, on = np.zeros_like(inside), np.ones_like(on)
        others = np.delete(out[:n], np.arange(n)[where])
        target = np.logaddexp.reduce(others) + math.log(share / (1 - share))
        inside[on] += target - np.logaddexp.reduce(inside[on])
        out[where] = np.where(on, inside, np.minimum(inside, target + OFF))
        return out

    def without(self, theta: np.ndarray, g: int) -> np.ndarray:
        """Group g switched off (its ops OFF below the strongest other op)."""
        out = np.array(theta, float)
        n, where = len(self.op_list), self.members(g)
        out[where] = np.delete(out[:n], np.arange(n)[where]).max() + OFF
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
        if k == 1:
            return theta  # one group holds all the mass: there is no share to give it
        share = IDENTITY_SHARE if list(space.groups)[direction] == "identity" else SHARE
        theta = space.with_share(theta, direction, share)
    elif direction == k:
        theta = space.set_caps(theta, 0.5 * space.caps(theta))
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
           for c in range(k + 2) if k > 1 or c >= k]  # one group alone: no share to move
    mass = space.masses(theta)
    for g, group in enumerate(space.groups):
        if mass[g] > 0 and (mass > 0).sum() > 1:
            out.append((f"{group} ops off", space.without(theta, g)))
    out.append((f"magnitude caps raised x{CAP_RAISE:g} (at most 1)",
                space.set_caps(theta, np.minimum(1.0, CAP_RAISE * space.caps(theta)))))
    return out


def policy_key(space: SearchSpace, theta: np.ndarray) -> str:
    """The policy a point stands for, rounded: two points with the same key are the same candidate."""
    p = space.policy(np.asarray(theta, float))
    return repr((p.ops, np.round(p.weights, 4).tolist(), np.round(p.mag_high, 4).tolist(), p.layers))
