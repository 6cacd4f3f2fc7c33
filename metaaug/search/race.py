"""The `race` method: round 0 races the references (TrivialAugment-Wide's and the anchors' points), each later
round races the local moves from the answer so far against it (metaaug.search.engine does the racing and the
deciding); an explorer replaces the answer only when confirmed on fresh tasks. docs/search.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from metaaug.search.engine import Entrant, Race, Verdict
from metaaug.search.registry import Context, register
from metaaug.search.space import anchor_points, moves, policy_key


@dataclass
class RaceState:
    """The race's own state: the answer so far (theta, its scores on racing tasks 0.., label, baseline) and the
    policies already raced (never raced twice)."""

    incumbent: dict | None = None
    tried: list[str] = field(default_factory=list)


def references(ctx: Context) -> list[Entrant]:
    """TA-Wide's point and the anchors' points that have an op in the space, as references."""
    named = [("trivialaugment", ctx.space.initial()), *anchor_points(ctx.space, ctx.cfg.anchors)]
    return [Entrant(point, f"{name}'s point", True, name) for name, point in named]


@register("race", tasks=lambda settings: settings.tasks, minimum=lambda cfg: 1 + len(cfg.anchors), state=RaceState)
def race(ctx: Context) -> None:
    """Rounds until one replaces nothing, every move has been raced, or the budget cannot pay for a round's
    first rung. The search stops at the first round whose contender is not confirmed, so under the null (no
    move better) it accepts wrongly at most with the first confirmation's level, confirm_alpha."""
    if ctx.state.generation == 0:
        entrants = references(ctx)
        ctx.budget.require(len(entrants), f"the {len(entrants)} references scored on one task each")
        end_round(ctx, entrants, Race(ctx).bracket(entrants, list(range(ctx.settings.tasks))))
    while not ctx.state.done:
        moves_round(ctx)


def moves_round(ctx: Context) -> None:
    """Race the moves from the incumbent not raced before, on the incumbent's tasks (its scores carried)."""
    state, own, cfg = ctx.state, ctx.state.own, ctx.settings
    inc = own.incumbent
    theta = np.array(inc["theta"])
    points = [(label, p) for label, p in moves(ctx.space, theta) if policy_key(ctx.space, p) not in own.tried]
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
    verdict = Race(ctx).bracket(entrants, list(range(cfg.tasks)), carried=inc["scores"])
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
