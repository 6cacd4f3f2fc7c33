"""The cross-entropy method: each generation a bracket raced like the race's (metaaug.search.race), on fresh
tasks, its mean and spread then moved to the elites."""

from __future__ import annotations

import numpy as np

from metaaug.config import MetatrainConfig
from metaaug.search.race import next_generation, race_candidates
from metaaug.search.registry import Context, register
from metaaug.search.space import anchor_points, explorer_points


@register("cem", tasks=lambda cfg: cfg.race_tasks * cfg.generations)
def cem(ctx: Context) -> None:
    """`generations` brackets (fewer when the budget cannot pay for the next one's first task); after
    each the mean and spread move to the elites (the `elite_fraction` best by mean score), the spread
    floored at 0.1."""
    cfg, state = ctx.cfg, ctx.state
    ctx.budget.require(cfg.candidates, f"the first generation's {cfg.candidates} candidates on one task each")
    affordable = lambda: ctx.budget.left(state.trainings) >= cfg.candidates  # noqa: E731  a first rung: one task each
    while state.generation < cfg.generations and (state.candidates or affordable()):
        bracket(ctx)
        n_elite = max(2, int(round(cfg.elite_fraction * cfg.candidates)))
        elites = np.array([state.candidates[i] for i in np.argsort(
            [-np.mean(s) if s else np.inf for s in state.scores])[:n_elite]])
        state.mean = list(map(float, elites.mean(0)))
        state.std = list(map(float, np.maximum(elites.std(0), 0.1)))
        next_generation(ctx)


def bracket(ctx: Context) -> None:
    """Race one generation's candidates around `state.mean` and record the answer in `state.best`.

    Generation 0 offers the initialisation, the anchors' points and the pure moves; a later
    generation offers its mean, the initialisation and random-step explorers.
    """
    space, cfg, state = ctx.space, ctx.cfg, ctx.state
    init = space.initial()
    rng = np.random.default_rng([ctx.seed, state.generation])
    mean, std = np.array(state.mean), np.array(state.std)
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
                                labels=[label for label, _ in explorers], budget=ctx.budget)
    state.best = list(map(float, ranked[0]))


def task_ids_for_generation(n_tasks: int, generation: int, cfg: MetatrainConfig) -> list[int]:
    """Fresh tasks for each CEM generation (so elites are not fitted to one task sample)."""
    start = (generation * cfg.race_tasks) % max(1, n_tasks - cfg.race_tasks + 1)
    return list(range(start, min(n_tasks, start + cfg.race_tasks)))

