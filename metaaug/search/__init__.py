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
from metaaug.search.registry import METHODS, Context, register
from metaaug.search.scoring import Scorer, score, score_population
from metaaug.search.space import SearchSpace, anchor_points, explore, explorer_points, policy_summary
from metaaug.search.state import SearchState
from metaaug.search.tasks import Task, meta_train_tasks, sample_tasks

__all__ = ["METHODS", "Budget", "Context", "downstream_flops", "Scorer", "SearchSpace", "SearchState", "Task",
           "anchor_points", "explore",
           "explorer_points", "meta_train_tasks", "policy_summary", "populations", "register", "sample_tasks",
           "score", "score_population", "search", "serve", "tasks_needed"]


def search(space: SearchSpace, tasks: list[Task], cfg: MetatrainConfig, settings: TrainConfig, seed: int,
           checkpoint_path: Path, log: Callable[[dict], None] = lambda entry: None,
           downstream: int | None = None, world: World = World()) -> SearchState:
    """Run (or resume) the configured method; `state.best` is the chosen policy vector.

    It spends at most `metatrain.budget` units of one downstream training: `downstream` is the
    floating-point operations of one (budget.downstream_flops; by default the `settings` recipe on
    a task's support images), and each proxy training costs its own operations over that.

    Candidates are scored by proxy learners: the downstream recipe at `proxy_epochs` and
    `proxy_width`. Measured by bench/proxy_fidelity.py: 100 epochs at width 16 keep a full
    training's order none < handcrafted < TrivialAugment-Wide at 0.42 of its cost; 40 epochs
    erase the gap between none and TrivialAugment-Wide (augmentation pays off late in training).
    """
    budget = proxy_budget(cfg.budget, task_flops(tasks[0], cfg.proxy_epochs, cfg.proxy_width, settings.model),
                          downstream or task_flops(tasks[0], settings.epochs, settings.width, settings.model))
    settings = proxy_settings(cfg, settings)
    state = SearchState.load(checkpoint_path) if checkpoint_path.exists() else SearchState(cfg.method)
    if state.method != cfg.method:
        raise MetaaugError(f"{checkpoint_path}: checkpoint of method {state.method!r}, params ask for "
                           f"{cfg.method!r}; expected the same method (delete the checkpoint to restart)")
    if state.mean is None:
        state.mean, state.std = list(space.initial()), [cfg.init_std] * space.dim
    with scorer(tasks, cfg, settings, world) as scorer_:
        METHODS[cfg.method].run(Context(space, cfg, scorer_, state, seed, lambda: state.save(checkpoint_path), log,
                                        budget))
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
    """How many meta-train tasks the configured method may score on."""
    return METHODS[cfg.method].tasks(cfg)
