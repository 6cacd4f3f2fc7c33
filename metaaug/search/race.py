"""The race: candidates scored on the same tasks rung by rung, the clearly worse dropped, the answer
decided by paired evidence (metaaug.search.paired) and the tie rule (the gentlest).

`race_candidates` races one bracket of candidates; the `race` method races the references,
then refines the answer round by round with local moves, within the budget (docs/search.md).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from metaaug.config import MetatrainConfig
from metaaug.search.budget import Budget
from metaaug.search.paired import SEPARATED, clearly_better, clearly_worse, futile, paired_interval, within
from metaaug.search.registry import Context, register
from metaaug.search.scoring import Scorer, image_change
from metaaug.search.space import SearchSpace, anchor_points, moves, policy_key, policy_summary
from metaaug.search.state import SearchState


@register("race")
def race(ctx: Context) -> None:
    """Round 0 races the references (TA-Wide and the anchors' points); each later round races the
    local moves from the answer so far (`moves`) against it, on the same tasks, and an explorer
    replaces it only on clear evidence (`decide`). Refinement stops when a round replaces nothing,
    when every move has been raced, or when the budget cannot pay for a round's first rung."""
    state = ctx.state
    if state.generation == 0:
        references_round(ctx)
    while not state.done:
        moves_round(ctx)


def references_round(ctx: Context) -> None:
    """Race TA-Wide and the anchors' points; the answer becomes the incumbent."""
    space, state = ctx.space, ctx.state
    named = [("trivialaugment", space.initial()), *anchor_points(space, ctx.cfg.anchors)]
    ctx.budget.require(len(named), f"the {len(named)} references scored on one task each")
    ranked, _ = race_candidates(space, [p for _, p in named], list(range(len(ctx.scorer.tasks))), ctx.cfg, ctx.scorer,
                                state, ctx.checkpoint, ctx.log, references=len(named),
                                names=[name for name, _ in named], budget=ctx.budget)
    chosen = next(i for i, (_, p) in enumerate(named) if np.array_equal(p, ranked[0]))
    end_round(ctx, chosen, [policy_key(space, p) for _, p in named])


def moves_round(ctx: Context) -> None:
    """Race the moves from the incumbent not raced before; an accepted one becomes the incumbent."""
    space, state, cfg = ctx.space, ctx.state, ctx.cfg
    inc = state.incumbent
    theta = np.array(inc["theta"])
    points = [(label, p) for label, p in moves(space, theta) if policy_key(space, p) not in state.tried]
    points = list({policy_key(space, p): (label, p) for label, p in points}.values())  # the same policy once
    first_rung = sum(max(0, min(cfg.race_step, cfg.race_tasks) - (len(inc["scores"]) if i == 0 else 0))
                     for i in range(len(points) + 1))
    if not state.candidates and (not points or ctx.budget.left(state.trainings) < first_rung):
        state.done = ("every local move from the answer has been raced" if not points else
                      f"the budget left ({ctx.budget.left(state.trainings)} proxy trainings) cannot pay for the "
                      f"next round's first rung ({first_rung})")
        ctx.checkpoint()
        return
    ranked, _ = race_candidates(space, [theta, *(p for _, p in points)], list(range(len(ctx.scorer.tasks))), cfg,
                                ctx.scorer, state, ctx.checkpoint, ctx.log, references=1, names=[inc["baseline"]],
                                labels=[f"{inc['label']} + {label}" for label, _ in points], budget=ctx.budget,
                                carried=inc["scores"], incumbent=inc["label"])
    chosen = next(i for i, t in enumerate(state.candidates) if np.array_equal(t, ranked[0]))
    tried = [policy_key(space, p) for _, p in points]
    if chosen == 0:
        state.done = f"round {state.generation} replaced nothing: no move clearly better than the answer"
    end_round(ctx, chosen, tried)


def end_round(ctx: Context, chosen: int, tried: list[str]) -> None:
    """Make the round's answer the incumbent, note the round, and start the next (checkpointed)."""
    state = ctx.state
    f = state.finalists[0]
    state.incumbent = {"theta": state.candidates[chosen], "scores": state.scores[chosen],
                       "label": f["candidate"].removeprefix("explorer: "), "baseline": f["baseline"]}
    state.best = list(map(float, state.candidates[chosen]))
    state.tried += [k for k in tried if k not in state.tried]
    state.rounds.append({"round": state.generation, "candidates": len(state.candidates), "chosen": f["candidate"],
                         "decision": f["decision"], "trainings": state.trainings, "spent": state.spent})
    next_generation(ctx)


def next_generation(ctx: Context) -> None:
    """Close a generation (a round): the next starts with no candidates, checkpointed."""
    ctx.state.generation += 1
    ctx.state.rung, ctx.state.candidates, ctx.state.scores, ctx.state.rung_tasks = 0, [], [], []
    ctx.checkpoint()


def race_candidates(space: SearchSpace, thetas: list[np.ndarray], task_ids: list[int], cfg: MetatrainConfig,
                    scorer: Scorer, state: SearchState, checkpoint: Callable[[], None],
                    log: Callable[[dict], None], references: int = 1, names: list[str | None] | None = None,
                    labels: list[str] | None = None, budget: Budget | None = None,
                    carried: list[float] | None = None,
                    incumbent: str | None = None) -> tuple[list[np.ndarray], list[float]]:
    """Race every candidate on the same tasks; returns the candidates, the chosen one first.

    Rung r scores every candidate still in the race on the first `race_step * (r + 1)` tasks (at
    most `race_tasks`), so all differences are paired; a rung the `budget` cannot pay for in full
    is cut to the whole tasks it pays for, and the race ends when it pays for none. The first
    `references` candidates are the incumbent (its scores so far `carried` over, not paid again)
    and the fixed baselines' points (named by `names`), the rest explorers (described by `labels`).
    After each rung a candidate clearly worse than the best reference is dropped (`prune`), and so
    is an explorer that cannot beat it by the indifference margin or trails the track to `accept_z`.
    Explorers are not pruned against each other: on `position` a close rival dropped on 4 tasks'
    luck changed the answer between seeds; `decide` compares them at the end, on all the tasks.
    The race ends at `race_tasks`, when one candidate is left, when the references left are all
    within the margin of the best (`settled`), or when the references are decided and the one left
    leads every explorer (nothing to accept).
    """
    if not state.candidates:
        state.candidates = [list(map(float, t)) for t in thetas]
        state.scores = [list(carried or [])] + [[] for _ in thetas[1:]]
    names = list(names or []) + [None] * (len(state.candidates) - len(names or []))
    labels = candidate_labels(names, references, labels or [])
    labels[0] = incumbent or labels[0]
    refs = list(range(min(references, len(state.candidates))))
    explorers = list(range(len(refs), len(state.candidates)))
    cap = min(cfg.race_tasks, len(task_ids))
    dropped: dict[int, tuple[int, str]] = {}  # candidate -> (tasks it had when it was dropped, why)
    rung, n, stop = 0, 0, ""
    while True:
        wanted = rung_tasks(rung, refs + explorers, state, cap, cfg, budget)
        if wanted <= n:
            stop = f"budget spent after {n} tasks"
            break
        n = wanted
        score_rung(space, scorer, state, [(i, t) for i in refs + explorers for t in range(len(state.scores[i]), n)],
                   task_ids, budget)
        best_ref, leader = prune(refs, explorers, state, n, cap, cfg, dropped)
        record_rung(space, state, rung, n, leader, len(refs), len(explorers), log, checkpoint)
        rung += 1
        if n >= cap or len(refs) + len(explorers) == 1 or (len(refs) == 1 and leader in refs):
            break
        if not explorers and settled(refs, best_ref, state, n, cfg):
            stop = f"the references left are within the indifference margin of the best on {n} tasks"
            break
    if n == 0:
        raise RuntimeError("race_candidates: the budget paid for no task")
    chosen, rule, eligible = decide(space, refs, explorers, state, scorer, task_ids, labels, cfg, n, stop)
    if references == 1 and chosen == 0:
        rule = "the only reference (nothing to race)" if len(state.candidates) == 1 else (
            f"kept: no explorer beat it by accept_z = {cfg.accept_z:g} paired standard errors ({len(explorers)} "
            f"raced to {n} tasks, {len(dropped)} dropped on the way)")
    state.finalists = finalist_entries(space, state, chosen, rule, references, dropped, eligible, names, labels, cfg)
    order = [chosen] + sorted((i for i in range(len(state.candidates)) if i != chosen and state.scores[i]),
                              key=lambda i: -np.mean(state.scores[i]))
    return [np.array(state.candidates[i]) for i in order], [float(np.mean(state.scores[i])) for i in order]


def rung_tasks(rung: int, alive: list[int], state: SearchState, cap: int, cfg: MetatrainConfig,
               budget: Budget | None) -> int:
    """How many tasks rung `rung` races on: `race_step` more (at most `race_tasks`), fewer when the budget
    pays for fewer (whole tasks for every candidate alive, so every difference stays paired). A rung
    already scored (a resumed search replays its rungs) keeps the count it was scored with."""
    if rung < len(state.rung_tasks):
        return state.rung_tasks[rung]
    n = min(cap, cfg.race_step * (rung + 1))
    if budget is not None:
        left = budget.left(state.trainings)
        while n > 0 and sum(max(0, n - len(state.scores[i])) for i in alive) > left:
            n -= 1
    state.rung_tasks.append(n)
    return n


def score_rung(space: SearchSpace, scorer: Scorer, state: SearchState, jobs: list[tuple[int, int]],
               task_ids: list[int], budget: Budget | None) -> None:
    """Score (candidate, task) jobs and add them to the state (the budget's guard checks the count)."""
    results = scorer.map([(space.policy(np.array(state.candidates[i])), task_ids[t]) for i, t in jobs])
    for (i, _), (value, seconds) in zip(jobs, results):
        state.scores[i].append(value)
        state.seconds += seconds
        state.trainings += 1
    if budget is not None:
        budget.check(state.trainings)
        state.spent = budget.spent(state.trainings)


def prune(refs: list[int], explorers: list[int], state: SearchState, n: int, cap: int, cfg: MetatrainConfig,
          dropped: dict[int, tuple[int, str]]) -> tuple[int, int]:
    """Drop (in place) the candidates the evidence on `n` tasks rules out; returns the best reference and
    the leader. A reference goes when clearly worse than the best reference, unless it is provably within
    the indifference margin of it (then the tie rule may still keep it); an explorer also when its
    one-sided bound cannot reach the best reference plus the indifference margin (even if it is better,
    it is not better by enough to matter), or when it is `futile`."""
    best_ref, leader = (max(group, key=lambda i: (np.mean(state.scores[i][:n]), -i))
                        for group in (refs, refs + explorers))
    delta = cfg.indifference / 100
    for group in (refs, explorers):
        for i in [i for i in group if i != best_ref]:
            mine, best = state.scores[i][:n], state.scores[best_ref][:n]
            if group is refs and within(best, mine, delta, cfg.race_confidence):
                continue  # indifferent to the best: kept for the tie rule, however sure the (small) gap is
            if clearly_worse(mine, best, cfg.race_confidence):
                why = (f"clearly worse than the best reference (one-sided {cfg.race_confidence:g} paired t-bound "
                       "below 0)")
            elif group is explorers and within(mine, best, delta, cfg.race_confidence):
                why = (f"cannot beat the best reference by the indifference margin {cfg.indifference:g} point(s) "
                       f"(one-sided {cfg.race_confidence:g} paired t-bound below it)")
            elif group is explorers and futile(mine, best, cap, cfg.accept_z, cfg.futility):
                why = (f"futile: its paired z against the best reference trails the track to accept_z = "
                       f"{cfg.accept_z:g} by more than {cfg.futility:g}")
            else:
                continue
            dropped[i] = (n, why)
            group.remove(i)
    return best_ref, leader


def settled(refs: list[int], best: int, state: SearchState, n: int, cfg: MetatrainConfig) -> bool:
    """Are all the references left within the indifference margin of the best (its one-sided bound over
    each below the margin)? Then which of them is kept barely changes the result: stop paying to rank
    them, and let the tie rule pick (indifference-zone selection)."""
    return len(refs) > 1 and all(within(state.scores[best][:n], state.scores[i][:n], cfg.indifference / 100,
                                         cfg.race_confidence) for i in refs if i != best)


def record_rung(space: SearchSpace, state: SearchState, rung: int, n: int, leader: int, refs: int, explorers: int,
                log: Callable[[dict], None], checkpoint: Callable[[], None]) -> None:
    """A newly scored rung's entry in the history (the MLflow curve), then a checkpoint; a replayed one: nothing."""
    if rung < state.rung:
        return
    entry = {"rung": len(state.history), "best_score": float(np.mean(state.scores[leader][:n])), "tasks": n,
             "references_left": refs, "explorers_left": explorers, "trainings": state.trainings,
             **space.describe(np.array(state.candidates[leader]))}
    state.history.append(entry)
    state.rung = rung + 1
    log(entry)
    checkpoint()


def candidate_labels(names: list[str | None], references: int, explorers: list[str]) -> list[str]:
    """What each candidate is, for the user: a baseline's point, the incumbent, or an explorer's move."""
    return [f"{name}'s point" if name else "the incumbent" if i < references else
            f"explorer: {explorers[i - references]}" if i - references < len(explorers) else f"explorer {i}"
            for i, name in enumerate(names)]


def decide(space: SearchSpace, refs: list[int], explorers: list[int], state: SearchState, scorer: Scorer,
           task_ids: list[int], labels: list[str], cfg: MetatrainConfig, n: int,
           stop: str = "") -> tuple[int, str, list[int]]:
    """The race's answer, how it was reached, and the explorers that were eligible to replace the reference.

    The chosen reference is the one left, or, when several could not be separated, the gentlest of
    them (TIE RULE: the policy that changes the meta-train support images least): when the race
    ended at `race_tasks` or with the ones left within the indifference margin. When the budget
    ended it earlier (on 2 tasks or more), the evidence has not reached that zone and the best mean is
    kept instead (the natural selection rule of ranking and selection: the best guess on the evidence
    there is); on a single task there is no spread to judge a mean by, and the tie rule applies. Explorers replace
    it only if the best explorer left beats it by more than `accept_z` paired standard errors; then
    the answer is the gentlest of the *eligible* explorers: above the reference on average and not
    separated from the best one (`SEPARATED`: its 95 % interval reaches 0) — the tie rule again.
    Which explorer is best by a hair is noise; whether the best clears the reference is evidence.
    """
    mean = {i: float(np.mean(state.scores[i][:n])) for i in refs + explorers}
    chosen, change = gentlest(space, refs, state, scorer, task_ids)
    if len(refs) == 1:
        rule = "separated: every other reference was clearly worse (paired race)"
    elif stop.startswith("budget") and n >= 2:
        chosen = max(refs, key=lambda i: (mean[i], -i))
        rule = (f"{stop}: {len(refs)} references not separated nor within the indifference margin; the best mean "
                "kept (" + ", ".join(f"{labels[i]} {100 * mean[i]:.2f} %" for i in refs) + ")")
    else:
        tied = ", ".join(f"{labels[i]} {change[i]:.3f}" for i in refs)
        rule = (f"tie rule: {len(refs)} references not separated on {n} tasks{f' ({stop})' if stop else ''}; "
                f"the gentlest kept (mean absolute pixel change on meta-train support images: {tied})")
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
                      "not separated from the chosen reference (the budget ended the race: best mean kept)"
                      if rule.startswith("budget") else "not separated from the chosen reference (tie rule)")
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
