"""The race: candidates scored on the same tasks rung by rung, the clearly worse dropped, the answer
decided by paired evidence (metaaug.search.paired) and the tie rule (the gentlest).

`race_candidates` races one bracket; `bracket` builds one (the initialisation, the fixed
baselines' points, explorers) and records its answer; the `race` method is one bracket.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from metaaug.config import MetatrainConfig
from metaaug.search.paired import SEPARATED, clearly_better, clearly_worse, futile, paired_interval
from metaaug.search.registry import Context, register
from metaaug.search.scoring import Scorer, image_change
from metaaug.search.space import SearchSpace, anchor_points, explorer_points, policy_summary
from metaaug.search.state import SearchState


@register("race")
def race(ctx: Context) -> None:
    """TA-Wide, the anchors and one-move explorers around TA-Wide, raced once (see the module docstring)."""
    while ctx.state.generation < 1:
        bracket(ctx)
        next_generation(ctx)


def bracket(ctx: Context) -> None:
    """Race one generation's candidates around `state.mean` and record the answer in `state.best`.

    Generation 0 offers the initialisation, the anchors' points and the pure moves; a later
    (CEM) generation offers its mean, the initialisation and random-step explorers.
    """
    space, cfg, state = ctx.space, ctx.cfg, ctx.state
    init = space.initial()
    rng = np.random.default_rng([ctx.seed, state.generation])
    mean, std = np.array(state.mean), np.array(state.std)
    # generation 0 starts at the initialisation; later ones keep it in the race
    named = (anchor_points(space, cfg.anchors) if state.generation == 0 else
             [("trivialaugment", init)])[:cfg.candidates - 1]
    fixed = [point for _, point in named]
    first = state.generation == 0
    explorers = explorer_points(mean, std, cfg.candidates - 1 - len(fixed), space, rng, moves_first=first,
                                origin="TA-Wide" if first else "CEM mean")
    ranked, _ = race_candidates(space, [mean, *fixed, *(point for _, point in explorers)],  # mean first
                                task_ids_for_generation(len(ctx.scorer.tasks), state.generation, cfg),
                                cfg, ctx.scorer, state, ctx.checkpoint, ctx.log, references=1 + len(fixed),
                                names=[("trivialaugment" if first else None), *(name for name, _ in named)],
                                labels=[label for label, _ in explorers])
    state.best = list(map(float, ranked[0]))


def next_generation(ctx: Context) -> None:
    """Close a generation: the next starts with no candidates (its tasks are fresh), checkpointed."""
    ctx.state.generation += 1
    ctx.state.rung, ctx.state.candidates, ctx.state.scores = 0, [], []
    ctx.checkpoint()


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


def task_ids_for_generation(n_tasks: int, generation: int, cfg: MetatrainConfig) -> list[int]:
    """Fresh tasks for each CEM generation (so elites are not fitted to one task sample)."""
    start = (generation * cfg.race_tasks) % max(1, n_tasks - cfg.race_tasks + 1)
    return list(range(start, min(n_tasks, start + cfg.race_tasks)))

