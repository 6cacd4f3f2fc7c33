"""The one interface a search method implements, and the registry `metatrain.method` names.

A method is a function `run(ctx: Context) -> None` registered under a name with its own settings section
(a pydantic model under `metatrain.<name>`) and its own state (a dataclass, checkpointed with the search's).
It proposes candidate points and has them scored through `ctx.score`, which is where the budget is kept: a
batch the budget cannot pay for raises `BudgetSpent`, and the framework (metaaug.search.search) ends the
search there with the answer so far, so a method can neither overspend nor crash on a small budget.
Decisions go through the racing engine (metaaug.search.engine.Race), which leaves the answer in
`ctx.state.best`'s caller and the evidence in `ctx.state.finalists`. docs/search.md: how to add one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from metaaug.config import MetatrainConfig, RaceConfig
from metaaug.search.budget import Budget
from metaaug.search.space import SearchSpace
from metaaug.search.state import SearchState


class BudgetSpent(Exception):
    """A method asked for more proxy trainings than the budget has left: the framework stops the search."""


@dataclass
class Context:
    """What a method gets: the space, the common settings and its own (`settings`), the state to fill, and
    `score` (the only way to train proxies: it keeps the budget, the trainings count and the seconds)."""

    space: SearchSpace
    cfg: MetatrainConfig
    state: SearchState
    seed: int
    checkpoint: Callable[[], None]
    log: Callable[[dict], None]
    budget: Budget
    scorer: Any = field(repr=False)  # metaaug.search.scoring.Scorer; methods call `score`, not this
    confirm_start: int = 0  # the first task of the confirmation pool (after every task the method races on)

    @property
    def settings(self) -> RaceConfig:
        """The method's own section (`metatrain.<method>`)."""
        return self.cfg.settings

    def task(self, i: int):
        return self.scorer.tasks[i]

    def score(self, jobs: list[tuple[np.ndarray, int]]) -> list[float]:
        """Query accuracy of a proxy learner per (point, task id); refuses (BudgetSpent) a batch the budget
        cannot pay for in full, before training anything."""
        state = self.state
        if len(jobs) > self.budget.left(state.trainings):
            raise BudgetSpent(f"a batch of {len(jobs)} proxy trainings asked for with "
                              f"{self.budget.left(state.trainings)} left")
        results = self.scorer.map([(self.space.policy(np.asarray(theta, float)), t) for theta, t in jobs])
        self.pay(len(jobs), sum(seconds for _, seconds in results))
        return [value for value, _ in results]

    def probe(self, theta: np.ndarray, task_ids: list[int], probes: list) -> list[tuple[float, list[float]]]:
        """`score` of `theta` on these tasks, with each learner's accuracy on its query images augmented by each
        probe policy (the screen's evidence); paid like `score`."""
        if len(task_ids) > self.budget.left(self.state.trainings):
            raise BudgetSpent(f"a screen of {len(task_ids)} proxy trainings asked for with "
                              f"{self.budget.left(self.state.trainings)} left")
        results = self.scorer.probe([(self.space.policy(np.asarray(theta, float)), t) for t in task_ids], probes)
        self.pay(len(task_ids), sum(seconds for _, seconds, _ in results))
        return [(value, probed) for value, _, probed in results]

    def pay(self, trainings: int, seconds: float) -> None:
        state = self.state
        state.trainings += trainings
        state.seconds += seconds
        state.spent = self.budget.spent(state.trainings)


@dataclass(frozen=True)
class Method:
    run: Callable[[Context], None]
    tasks: Callable[[Any], int]  # how many meta-train tasks it races on, given its settings
    minimum: Callable[[MetatrainConfig], int]  # the fewest proxy trainings it needs to give an answer
    state: type  # its own state (a dataclass), checkpointed in SearchState.own


METHODS: dict[str, Method] = {}


def register(name: str, tasks: Callable[[Any], int], minimum: Callable[[MetatrainConfig], int], state: type):
    """Decorator: make `run` the method `metatrain.method: name` selects (add the name to
    config.MetatrainConfig.method's choices and its settings section `metatrain.<name>` too, so params.yaml
    is checked on load)."""
    def add(run: Callable[[Context], None]) -> Callable[[Context], None]:
        METHODS[name] = Method(run, tasks, minimum, state)
        return run
    return add
