"""The cross-entropy method: each generation a bracket raced by the racing engine (metaaug.search.engine), on
fresh tasks, its mean and spread then moved to the elites."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from metaaug.search.engine import Entrant, Race
from metaaug.search import screen as screening
from metaaug.search.race import next_generation, run_screen
from metaaug.search.registry import Context, register
from metaaug.search.space import anchor_points, explorer_points, policy_key


@dataclass
class CemState:
    """CEM's own state: the screen's outcome and the sampling distribution (mean and spread per coordinate)."""

    screen: dict | None = None
    mean: list[float] | None = None
    std: list[float] | None = None


@register("cem", tasks=lambda settings: settings.tasks * settings.generations,
          minimum=lambda cfg: cfg.cem.candidates, state=CemState)
def cem(ctx: Context) -> None:
    """`generations` brackets (fewer when the budget cannot pay for the next one's first task); after each the
    mean and spread move to the elites (the `elite_fraction` best by mean score), the spread floored at 0.1.
    Each generation's confirmation runs at confirm_alpha / generations (Bonferroni over the search)."""
    cfg, state, own = ctx.settings, ctx.state, ctx.state.own
    ctx.budget.require(cfg.candidates, f"the first generation's {cfg.candidates} candidates on one task each")
    if own.mean is None:
        own.mean, own.std = list(ctx.space.initial()), [cfg.init_std] * ctx.space.dim
    affordable = lambda: ctx.budget.left(state.trainings) >= cfg.candidates  # noqa: E731  a first rung: one task each
    while state.generation < cfg.generations and (state.candidates or affordable()):
        bracket(ctx)
        n_elite = max(2, int(round(cfg.elite_fraction * cfg.candidates)))
        elites = np.array([state.candidates[i] for i in np.argsort(
            [-np.mean(s) if s else np.inf for s in state.scores])[:n_elite]])
        own.mean = list(map(float, elites.mean(0)))
        own.std = list(map(float, np.maximum(elites.std(0), 0.1)))
        next_generation(ctx)


def bracket(ctx: Context) -> None:
    """Race one generation's candidates around the mean and record the answer in `state.best`.

    Generation 0 offers the initialisation, the anchors' points and the pure moves; a later generation offers
    its mean, the initialisation and random-step explorers.
    """
    space, cfg, state = ctx.space, ctx.settings, ctx.state
    screen = run_screen(ctx)  # every candidate screened as the race's are (its clean learners are extra here)
    rng = np.random.default_rng([ctx.seed, state.generation])
    mean, std = np.array(state.own.mean), np.array(state.own.std)
    first = state.generation == 0
    named = (anchor_points(space, ctx.cfg.anchors) if first else
             [("trivialaugment", space.initial())])[:cfg.candidates - 1]
    entrants = [Entrant(mean, "trivialaugment's point" if first else "the CEM mean", True,
                        "trivialaugment" if first else None)]
    entrants += [Entrant(point, f"{name}'s point", True, name) for name, point in named]
    entrants += [Entrant(point, f"explorer: {label}", False) for label, point in explorer_points(
        mean, std, cfg.candidates - len(entrants), space, rng, moves_first=first,
        origin="TA-Wide" if first else "CEM mean")]
    entrants = [Entrant(point, e.label, e.reference,
                        e.baseline if policy_key(space, point) == policy_key(space, e.theta) else None)
                for e in entrants if (point := screening.apply(space, e.theta, screen)) is not None]
    start = state.generation * cfg.tasks
    verdict = Race(ctx).bracket(entrants, list(range(start, start + cfg.tasks)),
                                alpha=cfg.confirm_alpha / cfg.generations)
    state.best = list(map(float, state.candidates[verdict.chosen]))
    state.rounds.append({"round": state.generation, "candidates": len(entrants),
                         "chosen": entrants[verdict.chosen].label, "rule": verdict.explorer_rule.name,
                         "confirmed_on": verdict.confirmed_on, "trainings": state.trainings, "spent": state.spent})
