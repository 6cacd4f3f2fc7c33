"""The one interface a search method implements, and the registry `metatrain.method` names.

A method is a function `run(ctx: Context) -> None` registered under a name: it proposes
candidate points, has them scored through `ctx.scorer` (which holds the budget), decides with
the paired rules of metaaug.search.paired, and leaves its answer in `ctx.state.best` (and the
evidence in `ctx.state.finalists`), saving `ctx.state` through `ctx.checkpoint()` after every
scored rung so that a killed search resumes. docs/search.md: how to add one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from metaaug.config import MetatrainConfig
from metaaug.search.budget import Budget
from metaaug.search.scoring import Scorer
from metaaug.search.space import SearchSpace
from metaaug.search.state import SearchState


@dataclass
class Context:
    """What a method gets: the space, the settings, the scorer (its tasks and budget), the state to fill."""

    space: SearchSpace
    cfg: MetatrainConfig
    scorer: Scorer
    state: SearchState
    seed: int
    checkpoint: Callable[[], None]
    log: Callable[[dict], None]
    budget: Budget  # race_candidates keeps to it; a method that scores on its own must check `budget.left`


@dataclass(frozen=True)
class Method:
    run: Callable[[Context], None]
    tasks: Callable[[MetatrainConfig], int]  # how many meta-train tasks it may score on


METHODS: dict[str, Method] = {}


def register(name: str, tasks: Callable[[MetatrainConfig], int] = lambda cfg: cfg.race_tasks):
    """Decorator: make `run` the method `metatrain.method: name` selects (add the name to
    config.MetatrainConfig.method's choices too, so params.yaml is checked on load)."""
    def add(run: Callable[[Context], None]) -> Callable[[Context], None]:
        METHODS[name] = Method(run, tasks)
        return run
    return add
