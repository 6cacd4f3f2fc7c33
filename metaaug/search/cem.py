"""The cross-entropy method: each generation raced as a bracket (metaaug.search.race), its mean moved to the elites."""

from __future__ import annotations

import numpy as np

from metaaug.search.race import bracket, next_generation
from metaaug.search.registry import Context, register


@register("cem", tasks=lambda cfg: cfg.race_tasks * cfg.generations)
def cem(ctx: Context) -> None:
    """`generations` brackets on fresh tasks; after each the mean and spread move to the elites
    (the `elite_fraction` best by mean score), the spread floored at 0.1."""
    cfg, state = ctx.cfg, ctx.state
    while state.generation < cfg.generations:
        bracket(ctx)
        n_elite = max(2, int(round(cfg.elite_fraction * cfg.candidates)))
        elites = np.array([state.candidates[i] for i in np.argsort(
            [-np.mean(s) if s else np.inf for s in state.scores])[:n_elite]])
        state.mean = list(map(float, elites.mean(0)))
        state.std = list(map(float, np.maximum(elites.std(0), 0.1)))
        next_generation(ctx)
