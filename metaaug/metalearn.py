"""Meta-learning the augmentation policy across tasks (black-box, long horizon).

The meta-objective is DESIGN §4's: a policy is good if learners trained *to the
end of their schedule* on augmented support images score well on *clean* query
images, averaged over tasks sampled from the meta-train classes. Short-horizon
hypergradients and strength bonuses both optimise something else (measured:
worse than no augmentation), so the policy is scored by real trainings:

* **Search space** — the configured op space with TrivialAugment-Wide's maximum
  ranges. A point is a weight logit and a magnitude cap per op *group*
  (geometric, scale, colour, histogram, cutout, identity) and a depth (1 or 2
  ops per image): op weights are the group's mass shared evenly inside it, each
  op's magnitude range is [0, cap]. The initialisation is TrivialAugment-Wide
  itself (its ops equally likely, full ranges, one op per image; Scale and
  Cutout start off); groups keep the search low-dimensional enough for a
  handful of scored trainings to move it.
* **Scoring** — every candidate of a rung is trained on the *same* tasks and
  initialisations (common random numbers), so candidates are compared by
  paired differences, not by split luck.
* **Methods** — `race`: the initialisation, the fixed baselines' points in the
  space (`anchors`) and explorers around the initialisation: first the pure moves,
  one per direction (see `explore`), the same for every seed, then (when `candidates`
  asks for more) moves plus a random step. `cem`: the cross-entropy method, each
  generation raced the same way, its mean moved to the elites.
* **Decision rule** (`race_candidates`, `decide`) — every candidate is **raced** on the
  same tasks, `race_step` more per rung up to `race_tasks`. After each rung a candidate
  is dropped when it is *clearly worse* than the best *reference* (the initialisation
  and the anchors): the one-sided `race_confidence` upper t-bound of its paired
  difference is below 0; an explorer also when it is *futile*, its paired z trailing
  the track to `accept_z` (see `futile`). The race ends at `race_tasks`, when one candidate is left, or
  when one reference is left and it leads every explorer. The chosen reference is the
  one left, or, among references not separated, the gentlest. **Tie rule**: among
  candidates the evidence cannot separate, the one whose policy changes the meta-train
  support images least (mean absolute pixel change, fixed seed; none < handcrafted <
  RandAugment < TA-Wide on the digits), never whichever mean came out higher. Reason:
  when the meta-train tasks cannot tell the candidates apart, they give no reason to
  transform images more, and a transformation can rewrite a label cue that the target
  relies on and the meta-train classes do not show (the intensity and position tasks of
  bench/adaptivity.py), while the gentler choice is a deterministic function of the
  candidates, so reseeding does not flip it. *Explorers* replace the chosen reference
  only if the best of them beats it by more than `accept_z` paired standard errors —
  without that guard the search drifts to whatever got lucky on a few tasks (the
  winner's curse); the answer is then the gentlest of the explorers above the reference
  and not clearly worse than the best one on all the tasks (the tie rule again).
  History (issue 18): references halved by their mean on 2 then 4 tasks flipped one
  default seed in five (a 1.3-point gap, per-task spread 2.1); explorers that were
  random points, halved by mean, gave a different policy in each seed on `position`;
  explorers pruned against each other on 4 tasks still flipped some seeds there.
  `SearchState.finalists` carries the evidence: every candidate with its paired
  difference to the chosen policy (95 % t-interval, points), its tasks, the fixed
  baseline whose point it is, and its status; the chosen one carries the decision.
* **Populations** — the proxy learners of a rung are trained `population` at a time as
  one grouped network (metaaug.population), in `workers` forked processes.

Checkpoints: after every scored rung the full search state (candidates,
scores, RNG states) is written atomically; a rerun resumes from it.
"""

from __future__ import annotations

import functools
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch._dynamo  # noqa: F401  torch.optim imports it on first use (~1.7 s): here, before scoring
# processes fork, so they inherit it instead of each paying for it

from metaaug.config import MetatrainConfig, TrainConfig
from metaaug.errors import MetaaugError
from metaaug.io import read_json, write_json
from metaaug.ops import GROUPS, OPS
from metaaug.policies import Policy, drop_color, fixed_policy, sample_apply
from metaaug.progress import progress
from metaaug.stats import t_interval
from metaaug.training import predict, train_population

SHARE = 0.75  # an explorer that boosts a group gives it this share of the op mass
# ... and the identity group this one: "augment 5 % of the images". Measured on tasks where augmentation
# destroys the label cue, augmenting even a quarter of the images costs nearly as much as augmenting all.
IDENTITY_SHARE = 0.95
OFF = -8.0  # the logit of a group that is off (e.g. one TrivialAugment-Wide lacks, at the start)
# Mass below this is exactly zero. Measured by bench/off_groups.py on intensity-coded classes: a policy
# of Identity plus 0.17 % full-strength TrivialAugment-Wide ops scored 1.4 points below no augmentation.
MIN_MASS = 1e-3
MAX_LAYERS = 2  # ops applied in sequence per image: 1 (TrivialAugment) or 2 (RandAugment's N=2)
# An explorer is separated from the best explorer when the 95 % t-interval of their paired difference
# (the interval the evidence prints) excludes 0, i.e. its one-sided 97.5 % bound lies below 0. The best is
# picked as the maximum, so its lead is biased upward: at 90 % one equal explorer in ten was declared worse.
SEPARATED = 0.975


@dataclass(frozen=True)
class Task:
    """A few-shot task: augmented training happens on support, the score on clean query images."""

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: np.ndarray
    n_classes: int
    seed: int


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


def sample_tasks(images: np.ndarray, labels: np.ndarray, shots: int, ways: int, query_per_class: int,
                 n_tasks: int, seed: int) -> list[Task]:
    """`n_tasks` few-shot tasks from these images; task t is a pure function of (seed, t)."""
    from metaaug.training import to_tensor

    classes = np.unique(labels)
    ways = min(ways, len(classes))
    tasks = []
    for t in range(n_tasks):
        rng = np.random.default_rng([seed, t])
        chosen = rng.choice(classes, ways, replace=False)
        sup, qry = [], []
        for c in chosen:
            idx = rng.permutation(np.flatnonzero(labels == c))
            if len(idx) < shots + 1:
                raise MetaaugError(f"meta-train class {c} has {len(idx)} images; expected more than "
                                   f"tasks.shots = {shots} for support plus query")
            sup.append(idx[:shots])
            qry.append(idx[shots:shots + query_per_class])
        relabel = {c: i for i, c in enumerate(chosen)}
        sup_i, qry_i = np.concatenate(sup), np.concatenate(qry)
        tasks.append(Task(to_tensor(images[sup_i]), torch.tensor([relabel[c] for c in labels[sup_i]]),
                          to_tensor(images[qry_i]), np.array([relabel[c] for c in labels[qry_i]]),
                          ways, int(rng.integers(2**31))))
    return tasks


def meta_train_tasks(prepared, shots: int, cfg: MetatrainConfig, n_tasks: int, seed: int) -> list[Task]:
    """The tasks a search under `seed` scores on: sampled from the prepared meta-train images that are
    not held back for meta-validation (the metatrain stage's call; benchmarks replay it)."""
    train = np.flatnonzero(~np.asarray(prepared.meta_is_val))
    return sample_tasks(np.asarray(prepared.meta_images)[train], np.asarray(prepared.meta_labels)[train], shots,
                        cfg.ways, cfg.query_per_class, n_tasks, seed)


def score(policy: Policy | None, task: Task, settings: TrainConfig) -> float:
    """Clean query accuracy of a learner trained on the task's support, augmented by `policy`."""
    return score_population([(policy, task)], settings)[0]


def score_population(jobs: list[tuple[Policy | None, Task]], settings: TrainConfig) -> list[float]:
    """`score` of every (policy, task), their learners trained together as one population."""
    augments = [None if policy is None else functools.partial(sample_apply, policy) for policy, _ in jobs]
    learners = train_population([t.support_x for _, t in jobs], [t.support_y for _, t in jobs], jobs[0][1].n_classes,
                                settings, [t.seed for _, t in jobs], augments)
    return [float(np.mean(predict(model, t.query_x) == t.query_y)) for (model, _), (_, t) in zip(learners, jobs)]


_WORKER: dict = {}  # a forked scoring process's tasks and settings (inherited, never pickled)


def _init_worker(tasks: list[Task], settings: TrainConfig, parent: int) -> None:
    _die_with(parent)
    torch.set_num_threads(1)
    _WORKER.update(tasks=tasks, settings=settings)


def _die_with(parent: int) -> None:
    """Have the kernel SIGKILL this worker when its parent dies (Linux prctl PR_SET_PDEATHSIG).

    Otherwise a SIGKILLed metatrain leaves its workers behind for good: each waits on a job
    pipe whose write end its sibling inherited, holding the tasks in memory.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)


def _timed_population(jobs: list[tuple[Policy, int]]) -> list[tuple[float, float]]:
    """(score, seconds) per job; a population's wall time is shared evenly by its members."""
    start = time.perf_counter()
    values = score_population([(policy, _WORKER["tasks"][t]) for policy, t in jobs], _WORKER["settings"])
    seconds = (time.perf_counter() - start) / len(jobs)
    return [(value, seconds) for value in values]


def populations(n_jobs: int, size: int) -> list[range]:
    """Consecutive near-equal slices of at most `size` jobs: a function of the jobs alone, so
    scores do not depend on how many processes share the work."""
    n = math.ceil(n_jobs / size)
    bounds = np.linspace(0, n_jobs, n + 1).round().astype(int)
    return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


class Scorer:
    """Scores (policy, task index) jobs, `population` learners trained at once (metaaug.population),
    populations shared among `workers` forked processes when more than one.

    A score is a function of (policy, task, settings) — the task fixes the learner's seed — and
    of the population's composition only through float rounding; populations are cut from the
    job list alone, so results do not depend on the number of workers or their scheduling.
    """

    def __init__(self, tasks: list[Task], settings: TrainConfig, workers: int, population: int = 1):
        self.tasks, self.settings, self.workers, self.population, self.pool = tasks, settings, workers, population, None

    def __enter__(self) -> "Scorer":
        _WORKER.update(tasks=self.tasks, settings=self.settings)
        if self.workers > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self.pool = ProcessPoolExecutor(self.workers, multiprocessing.get_context("fork"),
                                            initializer=_init_worker, initargs=(self.tasks, self.settings, os.getpid()))
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)

    def map(self, jobs: list[tuple[Policy, int]]) -> list[tuple[float, float]]:
        """(score, seconds) per job, in order."""
        groups = [jobs[r.start:r.stop] for r in populations(len(jobs), self.population)]
        done = map(_timed_population, groups) if self.pool is None else self.pool.map(_timed_population, groups)
        # a bar per rung, one step per population trained (silent off a terminal)
        return [result for group in progress(done, desc="metatrain rung", total=len(groups)) for result in group]


@dataclass
class SearchState:
    """Everything a search needs to resume: written after every scored rung."""

    method: str
    rung: int = 0
    generation: int = 0
    mean: list[float] | None = None
    std: list[float] | None = None
    candidates: list[list[float]] = field(default_factory=list)
    scores: list[list[float]] = field(default_factory=list)  # per candidate, per task scored so far
    history: list[dict] = field(default_factory=list)  # one entry per rung: the curve MLflow shows
    best: list[float] | None = None
    # the evidence behind the answer: the chosen policy first, then every reference and the last explorers,
    # each with its paired difference to the chosen one (95 % t-interval), tasks, baseline name and status
    finalists: list[dict] = field(default_factory=list)
    trainings: int = 0
    seconds: float = 0.0

    def save(self, path: Path) -> None:
        write_json(path, self.__dict__)

    @classmethod
    def load(cls, path: Path) -> "SearchState":
        """A saved search; a damaged checkpoint stops with one line saying how to restart."""
        expected = "a checkpoint metaaug wrote (delete it to restart the search)"
        doc = read_json(path, expected)
        try:
            return cls(**doc)
        except TypeError:
            raise MetaaugError(f"{path}: does not hold a search state; expected {expected}") from None


def race_candidates(space: SearchSpace, thetas: list[np.ndarray], task_ids: list[int], cfg: MetatrainConfig,
                    scorer: Scorer, state: SearchState, checkpoint: Callable[[], None],
                    log: Callable[[dict], None], references: int = 1, names: list[str | None] | None = None,
                    labels: list[str] | None = None) -> tuple[list[np.ndarray], list[float]]:
    """Race every candidate on the same tasks; returns the candidates, the chosen one first.

    Rung r scores every candidate still in the race on the first `race_step * (r + 1)` tasks (at
    most `race_tasks`), so all differences are paired. The first `references` candidates are the
    incumbent and the fixed baselines' points (named by `names`), the rest explorers (described by
    `labels`). After each rung any candidate clearly worse than the best reference (`clearly_worse`)
    is dropped: a reference because a better one is known, an explorer because it can no longer
    replace the reference; so is an explorer that trails the track to `accept_z` (`futile`).
    Explorers are not pruned against each other in the race: on `position` a close rival dropped
    on 4 tasks' luck changed the answer between seeds; `decide` compares them at the end, on all
    the tasks. The race ends at `race_tasks`, when one candidate is left, or
    when the references are decided and the one left leads every explorer (nothing to accept).
    """
    if not state.candidates:
        state.candidates = [list(map(float, t)) for t in thetas]
        state.scores = [[] for _ in thetas]
    names = list(names or []) + [None] * (len(state.candidates) - len(names or []))
    labels = candidate_labels(names, references, labels or [])
    refs = list(range(min(references, len(state.candidates))))
    explorers = list(range(len(refs), len(state.candidates)))
    cap = min(cfg.race_tasks, len(task_ids))
    dropped: dict[int, tuple[int, str]] = {}  # candidate -> (tasks it had when it was dropped, why)
    rung = 0
    while True:
        n = min(cap, cfg.race_step * (rung + 1))
        jobs = [(i, t) for i in refs + explorers for t in range(len(state.scores[i]), n)]
        results = scorer.map([(space.policy(np.array(state.candidates[i])), task_ids[t]) for i, t in jobs])
        for (i, _), (value, seconds) in zip(jobs, results):
            state.scores[i].append(value)
            state.seconds += seconds
            state.trainings += 1
        best_ref, leader = (max(group, key=lambda i: (np.mean(state.scores[i][:n]), -i))
                            for group in (refs, refs + explorers))
        for group in (refs, explorers):
            for i in [i for i in group if i != best_ref]:
                mine, best = state.scores[i][:n], state.scores[best_ref][:n]
                if clearly_worse(mine, best, cfg.race_confidence):
                    dropped[i] = (n, f"clearly worse than the best reference (one-sided {cfg.race_confidence:g} "
                                     "paired t-bound below 0)")
                elif group is explorers and futile(mine, best, cap, cfg.accept_z, cfg.futility):
                    dropped[i] = (n, f"futile: its paired z against the best reference trails the track to "
                                     f"accept_z = {cfg.accept_z:g} by more than {cfg.futility:g}")
                else:
                    continue
                group.remove(i)
        if rung >= state.rung:
            entry = {"rung": len(state.history), "best_score": float(np.mean(state.scores[leader][:n])), "tasks": n,
                     "references_left": len(refs), "explorers_left": len(explorers),
                     "trainings": state.trainings, **space.describe(np.array(state.candidates[leader]))}
            state.history.append(entry)
            state.rung = rung + 1
            log(entry)
            checkpoint()
        rung += 1
        if n >= cap or len(refs) + len(explorers) == 1 or (len(refs) == 1 and leader in refs):
            break
    chosen, rule, eligible = decide(space, refs, explorers, state, scorer, task_ids, labels, cfg)
    if references == 1 and chosen == 0:
        rule = "the only reference (nothing to race)"
    state.finalists = finalist_entries(space, state, chosen, rule, references, dropped, eligible, names, labels, cfg)
    order = [chosen] + sorted((i for i in range(len(state.candidates)) if i != chosen and state.scores[i]),
                              key=lambda i: -np.mean(state.scores[i]))
    return [np.array(state.candidates[i]) for i in order], [float(np.mean(state.scores[i])) for i in order]


def candidate_labels(names: list[str | None], references: int, explorers: list[str]) -> list[str]:
    """What each candidate is, for the user: a baseline's point, the incumbent, or an explorer's move."""
    return [f"{name}'s point" if name else "the incumbent" if i < references else
            f"explorer: {explorers[i - references]}" if i - references < len(explorers) else f"explorer {i}"
            for i, name in enumerate(names)]


def decide(space: SearchSpace, refs: list[int], explorers: list[int], state: SearchState, scorer: Scorer,
           task_ids: list[int], labels: list[str], cfg: MetatrainConfig) -> tuple[int, str, list[int]]:
    """The race's answer, how it was reached, and the explorers that were eligible to replace the reference.

    The chosen reference is the one left, or, when several could not be separated, the gentlest of
    them (TIE RULE: the policy that changes the meta-train support images least). Explorers replace
    it only if the best explorer left beats it by more than `accept_z` paired standard errors; then
    the answer is the gentlest of the *eligible* explorers: above the reference on average and not
    separated from the best one (`SEPARATED`: its 95 % interval reaches 0) — the tie rule again.
    Which explorer is best by a hair is noise; whether the best clears the reference is evidence.
    """
    chosen, change = gentlest(space, refs, state, scorer, task_ids)
    n = len(state.scores[chosen])
    if len(refs) == 1:
        rule = "separated: every other reference was clearly worse (paired race)"
    else:
        tied = ", ".join(f"{labels[i]} {change[i]:.3f}" for i in refs)
        rule = (f"tie rule: {len(refs)} references not separated on {n} tasks; the gentlest kept "
                f"(mean absolute pixel change on meta-train support images: {tied})")
    mean = {i: float(np.mean(state.scores[i][:n])) for i in refs + explorers}
    best = max(explorers, key=lambda i: (mean[i], -i), default=None)
    if best is None or not clearly_better(state.scores[best][:n], state.scores[chosen][:n], cfg.accept_z):
        return chosen, rule, []
    eligible = [i for i in explorers if mean[i] > mean[chosen] and not clearly_worse(
        state.scores[i][:n], state.scores[best][:n], SEPARATED)]
    reference = labels[chosen]
    chosen, change = gentlest(space, eligible, state, scorer, task_ids)
    why = (f"explorer accepted: the best explorer beats the chosen reference ({reference}) by more than "
           f"accept_z = {cfg.accept_z:g} paired standard errors on {n} tasks")
    if len(eligible) > 1:
        why += (f"; of the {len(eligible)} explorers above the reference and not separated from the best, the "
                "gentlest kept (tie rule, mean absolute pixel change: "
                + ", ".join(f"{labels[i].removeprefix('explorer: ')} {change[i]:.3f}" for i in eligible) + ")")
    return chosen, why, eligible


def gentlest(space: SearchSpace, candidates: list[int], state: SearchState, scorer: Scorer,
             task_ids: list[int]) -> tuple[int, dict[int, float]]:
    """The candidate whose policy changes the meta-train support images least (mean absolute pixel change
    on the first 4 tasks' support images, a fixed seed), and every candidate's change; ties by index."""
    if len(candidates) == 1:
        return candidates[0], {candidates[0]: float("nan")}
    images = torch.cat([scorer.tasks[task_ids[t]].support_x for t in range(min(len(task_ids), 4))])
    change = {i: image_change(space.policy(np.array(state.candidates[i])), images) for i in candidates}
    return min(candidates, key=lambda i: (round(change[i], 6), i)), change


def image_change(policy: Policy, images: torch.Tensor, copies: int = 8, seed: int = 0) -> float:
    """Mean absolute pixel change the policy makes to these images (clamped to [0, 1]; a fixed seed,
    so a pure function of the policy and the images)."""
    gen = torch.Generator().manual_seed(seed)
    x = images.repeat(copies, *([1] * (images.dim() - 1)))
    return float((sample_apply(policy, x, gen).clamp(0, 1) - x).abs().mean())


def paired_interval(a: list[float], b: list[float]) -> tuple[float, float | None, float | None]:
    """Mean of a - b in points with its 95 % t-interval (a[i], b[i] on the same task); no interval
    below two tasks (no spread to judge by)."""
    d = 100.0 * (np.asarray(a, float) - np.asarray(b, float))
    if len(d) < 2:
        return (float(d.mean()) if len(d) else 0.0), None, None
    low, high = t_interval(d)
    return float(d.mean()), low, high


def futile(explorer: list[float], reference: list[float], cap: int, accept_z: float, margin: float) -> bool:
    """Can this explorer no longer be accepted? Its paired z against the reference trails the track to
    `accept_z` at `cap` tasks (z grows with the square root of the tasks: `accept_z * sqrt(n / cap)`) by
    more than `margin` (metatrain.futility; the README's replays of bench/race_rules.py). Without it an
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


def finalist_entries(space: SearchSpace, state: SearchState, chosen: int, rule: str, references: int,
                     dropped: dict[int, tuple[int, str]], eligible: list[int], names: list[str | None],
                     labels: list[str], cfg: MetatrainConfig) -> list[dict]:
    """The evidence behind the answer: every candidate scored, each with its paired difference to the
    chosen policy (95 % t-interval, points) on the tasks both were scored on, and its status."""
    out = []
    others = sorted((i for i in range(len(state.candidates)) if i != chosen and state.scores[i]),
                    key=lambda i: (i >= references, -np.mean(state.scores[i][:len(state.scores[chosen])])))
    for i in [chosen] + others:
        n = min(len(state.scores[i]), len(state.scores[chosen]))
        diff, low, high = paired_interval(state.scores[i][:n], state.scores[chosen][:n])
        theta = np.array(state.candidates[i])
        reference = i < references
        if i == chosen:
            status = "chosen"
        elif i in dropped:
            status = f"dropped after {dropped[i][0]} tasks: {dropped[i][1]}"
        elif reference:
            status = ("reference, beaten by the accepted explorer" if chosen >= references else
                      "not separated from the chosen reference (tie rule)")
        elif i in eligible:
            status = "explorer above the reference, not separated from the best one, not the gentlest (tie rule)"
        elif chosen >= references:
            status = "explorer, below the reference or clearly worse than the best explorer"
        else:
            status = f"explorer, not clearly better than the chosen reference (accept_z = {cfg.accept_z:g})"
        out.append({"candidate": labels[i], "policy": policy_summary(space.policy(theta)),
                    "layers": space.layers(theta), "reference": reference, "baseline": names[i],
                    "score": float(np.mean(state.scores[i])), "tasks": len(state.scores[i]), "paired_tasks": n,
                    "diff_to_chosen": diff, "ci_low": low, "ci_high": high, "status": status,
                    **({"decision": rule} if i == chosen else {})})
    return out


def clearly_better(challenger: list[float], incumbent: list[float], z: float) -> bool:
    """Does the challenger beat the incumbent on the same tasks by more than `z` standard errors?

    The best of several noisy scores is biased upward (the winner's curse); without
    this test the search drifts to whatever got lucky on a few tasks.
    """
    mean, se = paired_mean_se(challenger, incumbent)
    return bool(mean > 0 and mean > z * se)


def search(space: SearchSpace, tasks: list[Task], cfg: MetatrainConfig, settings: TrainConfig, seed: int,
           checkpoint_path: Path, log: Callable[[dict], None] = lambda entry: None) -> SearchState:
    """Run (or resume) the configured search; `state.best` is the chosen policy vector.

    Candidates are scored by proxy learners: the downstream recipe at `proxy_epochs` and
    `proxy_width`. Measured by bench/proxy_fidelity.py: 100 epochs at width 16 keep a full
    training's order none < handcrafted < TrivialAugment-Wide at 0.42 of its cost; 40 epochs
    erase the gap between none and TrivialAugment-Wide (augmentation pays off late in training).
    """
    settings = settings.model_copy(update={"epochs": cfg.proxy_epochs, "width": cfg.proxy_width})
    state = SearchState.load(checkpoint_path) if checkpoint_path.exists() else SearchState(cfg.method)
    if state.method != cfg.method:
        raise MetaaugError(f"{checkpoint_path}: checkpoint of method {state.method!r}, params ask for "
                           f"{cfg.method!r}; expected the same method (delete the checkpoint to restart)")
    init = space.initial()
    generations = cfg.generations if cfg.method == "cem" else 1
    if state.mean is None:
        state.mean, state.std = list(init), [cfg.init_std] * space.dim
    with Scorer(tasks, settings, cfg.workers or os.cpu_count() or 1, cfg.population) as scorer:
        while state.generation < generations:
            rng = np.random.default_rng([seed, state.generation])
            mean, std = np.array(state.mean), np.array(state.std)
            # generation 0 starts at the initialisation; later ones keep it in the race
            named = (anchor_points(space, cfg.anchors) if state.generation == 0 else
                     [("trivialaugment", init)])[:cfg.candidates - 1]
            fixed = [point for _, point in named]
            first = state.generation == 0
            explorers = explorer_points(mean, std, cfg.candidates - 1 - len(fixed), space, rng, moves_first=first,
                                        origin="TA-Wide" if first else "CEM mean")
            ranked, _ = race_candidates(space, [mean, *fixed, *(point for _, point in explorers)],  # mean first
                                        task_ids_for_generation(len(tasks), state.generation, cfg),
                                        cfg, scorer, state, lambda: state.save(checkpoint_path), log,
                                        references=1 + len(fixed),
                                        names=[("trivialaugment" if first else None), *(name for name, _ in named)],
                                        labels=[label for label, _ in explorers])
            state.best = list(map(float, ranked[0]))
            if cfg.method == "cem":
                n_elite = max(2, int(round(cfg.elite_fraction * cfg.candidates)))
                elites = np.array([state.candidates[i] for i in np.argsort(
                    [-np.mean(s) if s else np.inf for s in state.scores])[:n_elite]])
                state.mean = list(map(float, elites.mean(0)))
                state.std = list(map(float, np.maximum(elites.std(0), 0.1)))
            state.generation += 1
            state.rung, state.candidates, state.scores = 0, [], []
            state.save(checkpoint_path)
    return state


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


def task_ids_for_generation(n_tasks: int, generation: int, cfg: MetatrainConfig) -> list[int]:
    """Fresh tasks for each CEM generation (so elites are not fitted to one task sample)."""
    start = (generation * cfg.race_tasks) % max(1, n_tasks - cfg.race_tasks + 1)
    return list(range(start, min(n_tasks, start + cfg.race_tasks)))


def tasks_needed(cfg: MetatrainConfig) -> int:
    return cfg.race_tasks * (cfg.generations if cfg.method == "cem" else 1)


def policy_summary(policy: Policy) -> str:
    """One line: the heaviest ops (of those ever drawn) with their weight and magnitude cap."""
    order = [i for i in np.argsort(policy.weights)[::-1] if policy.weights[i] > 0]
    return ", ".join(f"{policy.ops[i]} {100 * policy.weights[i]:.0f}% ≤{policy.mag_high[i]:.2f}" for i in order[:6])


