"""The augmentation policy search (the metatrain stage's job), as a package:

* `space` — the search space (op-group weights, magnitude caps, depth) and its moves;
* `tasks` — the few-shot meta-train tasks every candidate is scored on;
* `scoring` — proxy learners in populations and forked workers (`Scorer`);
* `paired` — the paired statistics every decision uses;
* `state` — the checkpointed search state;
* `registry` — the interface a method implements; `race` and `cem` — the methods.

The meta-objective: a policy is good if learners trained to the end of
their schedule on augmented support images score well on clean query images, averaged
over tasks from the meta-train classes. docs/search.md describes the method.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from metaaug import workers
from metaaug.config import MetatrainConfig, TrainConfig
from metaaug.distributed import World
from metaaug.errors import MetaaugError
from metaaug.population import population_size, populations
from metaaug.search import cem as _cem, race as _race  # noqa: F401  (register the methods)
from metaaug.search.budget import Budget, downstream_flops, proxy_budget, task_flops
from metaaug.search.engine import Entrant, Race, Rule, Verdict
from metaaug.search.registry import METHODS, BudgetSpent, Context, Method, register
from metaaug.search.scoring import Scorer, score, score_population
from metaaug.search.space import SearchSpace, anchor_points, explore, explorer_points, policy_summary
from metaaug.search.state import SearchState
from metaaug.search.tasks import MetaTasks, Task, meta_train_tasks, sample_tasks

__all__ = ["METHODS", "Budget", "BudgetSpent", "Context", "Entrant", "MetaTasks", "Method", "Race", "Rule", "Scorer",
           "SearchSpace", "SearchState", "Task", "Verdict", "anchor_points", "downstream_flops", "explore",
           "explorer_points", "meta_train_tasks", "policy_summary", "populations", "register",
           "sample_tasks", "score", "score_population", "search", "search_budget", "serve", "tasks_needed"]

# Confirmation tasks a search may draw, at most, per method's racing tasks: the pool after them (tasks are
# built lazily, so only the ones used cost anything).
MAX_CONFIRMATIONS = 256


def search_budget(tasks, cfg: MetatrainConfig, settings: TrainConfig, downstream: int | None = None) -> Budget:
    """The search's budget in proxy trainings (see `search`), or one line when `metatrain.budget` cannot pay for
    the least the method needs to give an answer: metatrain asks before any MLflow store or output, from the
    first meta-train task alone."""
    budget = proxy_budget(cfg.budget, task_flops(tasks[0], cfg.proxy_epochs, cfg.proxy_width, settings.model),
                          downstream or task_flops(tasks[0], settings.epochs, settings.width, settings.model))
    budget.require(METHODS[cfg.method].minimum(cfg), f"the least the {cfg.method} method needs to give an answer")
    return budget


def search(space: SearchSpace, tasks, cfg: MetatrainConfig, settings: TrainConfig, seed: int,
           checkpoint_path: Path, log: Callable[[dict], None] = lambda entry: None,
           downstream: int | None = None, world: World = World()) -> SearchState:
    """Run (or resume) the configured method; `state.best` is the chosen policy vector.

    It spends at most `metatrain.budget` units of one downstream training: `downstream` is the
    floating-point operations of one (budget.downstream_flops; by default the `settings` recipe on
    a task's support images), and each proxy training costs its own operations over that. The framework
    keeps the budget (`Context.score`): a method that asks for more is stopped there with its answer so far
    (TA-Wide's point when it has none), never with a traceback.

    Candidates are scored by proxy learners: the downstream recipe at `proxy_epochs` and
    `proxy_width`. Measured by bench/proxy_fidelity.py: 100 epochs at width 16 keep a full
    training's order none < handcrafted < TrivialAugment-Wide at 0.42 of its cost; 40 epochs
    erase the gap between none and TrivialAugment-Wide (augmentation pays off late in training).
    """
    method = METHODS[cfg.method]
    budget = search_budget(tasks, cfg, settings, downstream)
    settings = proxy_settings(cfg, settings)
    state = (SearchState.load(checkpoint_path, method.state) if checkpoint_path.exists()
             else SearchState(cfg.method, own=method.state()))
    if state.method != cfg.method:
        raise MetaaugError(f"{checkpoint_path}: checkpoint of method {state.method!r}, params ask for "
                           f"{cfg.method!r}; expected the same method (delete the checkpoint to restart)")
    save = lambda: state.save(checkpoint_path)  # noqa: E731
    with scorer(tasks, cfg, settings, world) as scorer_:
        ctx = Context(space, cfg, state, seed, save, log, budget, scorer_, method.tasks(cfg.settings))
        if not state.done:
            try:
                method.run(ctx)
                state.done = state.done or f"the {cfg.method} method finished"
            except BudgetSpent as stop:
                state.done = f"the framework stopped the method at its budget ({stop})"
        if state.best is None:
            state.best, state.finalists = list(map(float, space.initial())), []
            state.done += "; no answer within the budget: TrivialAugment-Wide's point kept"
        save()
    return state


def serve(tasks: list[Task], cfg: MetatrainConfig, settings: TrainConfig, world: World) -> None:
    """A rank other than 0 under `metatrain.distributed: shard`: score its share of what rank 0's `search`
    broadcasts, until the search ends."""
    with scorer(tasks, cfg, proxy_settings(cfg, settings), world) as scorer_:
        scorer_.serve()


def scorer(tasks: list[Task], cfg: MetatrainConfig, proxy: TrainConfig, world: World) -> Scorer:
    """The scorer of the `proxy` recipe's learners on `tasks`: `metatrain.population` learners a population
    (auto: metaaug.population.population_size), `metatrain.workers` processes, the ranks of `world`."""
    x = tasks[0].support_x
    size = population_size(cfg.population, x.shape[1], x.shape[-1], tasks[0].n_classes, proxy.width, proxy.model)
    return Scorer(tasks, proxy, workers.count(cfg.workers, world.device), size, world)


def proxy_settings(cfg: MetatrainConfig, settings: TrainConfig) -> TrainConfig:
    """The proxy learner's recipe: the downstream one at `proxy_epochs` and `proxy_width`."""
    return settings.model_copy(update={"epochs": cfg.proxy_epochs, "width": cfg.proxy_width})


def tasks_needed(cfg: MetatrainConfig) -> int:
    """How many meta-train tasks the configured method may score on: its racing tasks, then the confirmation
    pool (built lazily: only what the budget pays for is ever sampled)."""
    return METHODS[cfg.method].tasks(cfg.settings) + MAX_CONFIRMATIONS * cfg.settings.confirm_tasks
