"""The `race` method: a screen of the op groups, then round 0 races the references (TrivialAugment-Wide's and
the anchors' points, screened), each later round races the local moves from the answer so far against it
(metaaug.search.engine does the racing and the deciding); an explorer replaces the answer only when confirmed
on fresh tasks. docs/search.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from metaaug.policies import fixed_policy
from metaaug.search import screen as screening
from metaaug.search.engine import Entrant, Race, Verdict
from metaaug.search.registry import Context, register
from metaaug.search.space import anchor_points, moves, policy_key


@dataclass
class RaceState:
    """The race's own state: the screen's outcome, the answer so far (theta, its scores on racing tasks 0..,
    label, baseline) and the policies already raced (never raced twice)."""

    screen: dict | None = None
    incumbent: dict | None = None
    tried: list[str] = field(default_factory=list)


@register("race", tasks=lambda settings: settings.tasks, minimum=lambda cfg: 1 + len(cfg.anchors), state=RaceState)
def race(ctx: Context) -> None:
    """The screen, then rounds until one replaces nothing, every move has been raced, or the budget cannot pay
    for a round's first rung and a confirmation. The search stops at the first round whose contender is not
    confirmed, so under the null (no move better) it accepts wrongly at most with the first confirmation's
    level, confirm_alpha."""
    if ctx.state.generation == 0:
        entrants, carried = references(ctx)
        ctx.budget.require(len(entrants), f"the {len(entrants)} references scored on one task each")
        end_round(ctx, entrants, Race(ctx).bracket(entrants, list(range(ctx.settings.tasks)), carried))
    while not ctx.state.done:
        moves_round(ctx)


def references(ctx: Context) -> tuple[list[Entrant], dict[int, list[float]]]:
    """TA-Wide's point and the anchors' points, screened (a point the screen changed is no longer its baseline's
    and is labelled so; two that became one policy are raced once), with the scores the screen paid for."""
    screen = run_screen(ctx)
    named = [("trivialaugment", ctx.space.initial()), *anchor_points(ctx.space, ctx.cfg.anchors)]
    entrants, seen = [], {}
    for name, point in sorted(named, key=lambda item: changed(ctx, item[1], screen)):  # unchanged ones first
        kept = screening.apply(ctx.space, point, screen)
        key = policy_key(ctx.space, kept) if kept is not None else None
        if key is None or key in seen:
            continue
        seen[key] = name
        what = screening.changes(ctx.space, point, kept) if changed(ctx, point, screen) else ""
        entrants.append(Entrant(kept, f"{name}'s point" + (f", screened ({what})" if what else ""), True,
                                None if what else name))
    order = [n for n, _ in named]
    entrants.sort(key=lambda e: order.index(seen[policy_key(ctx.space, e.theta)]))
    clean = ctx.space.project(fixed_policy("none", image_channels=ctx.space.channels))
    carried = {i: list(screen.clean) for i, e in enumerate(entrants)
               if screen is not None and policy_key(ctx.space, e.theta) == policy_key(ctx.space, clean)}
    return entrants, carried


def changed(ctx: Context, point: np.ndarray, screen) -> bool:
    kept = screening.apply(ctx.space, point, screen)
    return kept is None or policy_key(ctx.space, kept) != policy_key(ctx.space, point)


def run_screen(ctx: Context) -> screening.Screen | None:
    """The screen (metaaug.search.screen), once per search (checkpointed): None when switched off, when the
    space has no Identity for a clean learner, or when the budget cannot pay for it and the references' first
    rung."""
    own, cfg = ctx.state.own, ctx.settings
    if own.screen is not None:
        return screening.Screen(**own.screen) if own.screen else None
    clean = ctx.space.project(fixed_policy("none", image_channels=ctx.space.channels))
    refs = 1 + len(ctx.cfg.anchors)
    first_rung = cfg.screen_tasks + refs * min(cfg.step, cfg.tasks) - min(cfg.screen_tasks, cfg.step)
    if cfg.screen_keep == 0 or clean is None or ctx.budget.left(ctx.state.trainings) < first_rung:
        own.screen = {}
        return None
    ids = list(range(min(cfg.screen_tasks, cfg.tasks)))
    result = screening.judge(ctx.space, ctx.probe(clean, ids, [p for _, _, p in screening.probes(ctx.space)]),
                             ctx.task(0).n_classes, cfg.screen_keep, ids)
    own.screen = result.__dict__
    ctx.checkpoint()
    return result


def moves_round(ctx: Context) -> None:
    """Race the moves from the incumbent not raced before (screened), on the incumbent's tasks (its scores
    carried)."""
    state, own, cfg = ctx.state, ctx.state.own, ctx.settings
    inc = own.incumbent
    theta = np.array(inc["theta"])
    screen = screening.Screen(**own.screen) if own.screen else None
    points = [(label, screening.apply(ctx.space, p, screen)) for label, p in moves(ctx.space, theta)]
    done = {*own.tried, policy_key(ctx.space, theta)}
    points = [(label, p) for label, p in points if p is not None and policy_key(ctx.space, p) not in done]
    points = list({policy_key(ctx.space, p): (label, p) for label, p in points}.values())  # the same policy once
    first_rung = sum(max(0, min(cfg.step, cfg.tasks) - (len(inc["scores"]) if i == 0 else 0))
                     for i in range(len(points) + 1)) + 2 * cfg.confirm_tasks  # and what a confirmation needs
    if not state.candidates and (not points or ctx.budget.left(state.trainings) < first_rung):
        state.done = ("every local move from the answer has been raced" if not points else
                      f"the budget left ({ctx.budget.left(state.trainings)} proxy trainings) cannot pay for the "
                      f"next round's first rung and a confirmation ({first_rung})")
        ctx.checkpoint()
        return
    entrants = [Entrant(theta, inc["label"], True, inc["baseline"])]
    entrants += [Entrant(p, f"explorer: {inc['label']} + {label}", False) for label, p in points]
    verdict = Race(ctx).bracket(entrants, list(range(cfg.tasks)), carried={0: inc["scores"]})
    if verdict.chosen == 0:
        state.done = f"round {state.generation} replaced nothing ({verdict.explorer_rule.value})"
    end_round(ctx, entrants, verdict)


def end_round(ctx: Context, entrants: list[Entrant], verdict: Verdict) -> None:
    """Make the round's answer the incumbent, note the round, and start the next (checkpointed)."""
    state, own = ctx.state, ctx.state.own
    chosen = entrants[verdict.chosen]
    own.incumbent = {"theta": state.candidates[verdict.chosen], "scores": state.scores[verdict.chosen],
                     "label": chosen.label.removeprefix("explorer: "), "baseline": chosen.baseline}
    state.best = list(map(float, state.candidates[verdict.chosen]))
    own.tried += [k for k in (policy_key(ctx.space, e.theta) for e in entrants) if k not in own.tried]
    state.rounds.append({"round": state.generation, "candidates": len(entrants), "chosen": chosen.label,
                         "reference_rule": verdict.reference_rule.name,
                         "rule": verdict.explorer_rule.name, "confirmed_on": verdict.confirmed_on,
                         "trainings": state.trainings, "spent": state.spent})
    next_generation(ctx)


def next_generation(ctx: Context) -> None:
    """Close a generation (a round): the next starts with no candidates, checkpointed."""
    state = ctx.state
    state.generation += 1
    state.rung, state.candidates, state.scores, state.rung_tasks, state.confirm = 0, [], [], [], None
    ctx.checkpoint()
