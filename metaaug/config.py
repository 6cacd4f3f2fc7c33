"""params.yaml: the single source of configuration, validated on load.

The schema below is the only place a parameter is declared: its type, its
allowed values and its default. Loading merges the file over the defaults and
stops at the first unknown key or bad value with one line naming the key
(``train.epochs``) and what is allowed. Each stage reads only its own section.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from metaaug.errors import MetaaugError


@dataclass(frozen=True)
class Param:
    """One parameter: its default and what values are allowed."""

    default: Any
    kind: type | tuple[type, ...]
    low: float | None = None
    high: float | None = None
    choices: tuple | None = None
    nullable: bool = False
    item_choices: tuple | None = None  # for lists: allowed items

    def check(self, key: str, value: Any) -> Any:
        if value is None:
            if self.nullable:
                return None
            raise MetaaugError(f"params.yaml: {key} is empty; expected {self.expected()}")
        kinds = self.kind if isinstance(self.kind, tuple) else (self.kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            raise MetaaugError(f"params.yaml: {key} = {value!r} has the wrong type; expected {self.expected()}")
        if isinstance(value, float) and not math.isfinite(value):
            raise MetaaugError(f"params.yaml: {key} = {value!r}; expected a finite number")
        out_of_range = (self.low is not None and value < self.low) or (self.high is not None and value > self.high)
        if out_of_range or (self.choices is not None and value not in self.choices):
            raise MetaaugError(f"params.yaml: {key} = {value!r} is out of range; expected {self.expected()}")
        if isinstance(value, list):
            value = [str(v) for v in value]
            if self.item_choices is not None:
                bad = [v for v in value if v not in self.item_choices]
                if bad:
                    raise MetaaugError(f"params.yaml: {key} contains {bad[0]!r}; expected items from {list(self.item_choices)}")
            if len(set(value)) != len(value):
                raise MetaaugError(f"params.yaml: {key} lists an item twice; expected distinct items")
        return value

    def expected(self) -> str:
        if self.choices is not None:
            text = f"one of {list(self.choices)}"
        else:
            names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list"}
            kinds = self.kind if isinstance(self.kind, tuple) else (self.kind,)
            text = " or ".join(names.get(k, k.__name__) for k in kinds)
            if self.low is not None and self.high is not None:
                text += f" in [{self.low}, {self.high}]"
            elif self.low is not None:
                text += f" >= {self.low}"
        return text + (" or null" if self.nullable else "")


ARMS = ("none", "handcrafted", "randaugment", "trivialaugment", "learned")
DEVICES = ("auto", "cpu", "cuda")
DISTRIBUTED = ("none", "shard", "ddp")  # metaaug/distributed.py
ANCHORS = ("none", "handcrafted", "randaugment")  # fixed baselines metatrain can start from (metalearn.anchors)

SCHEMA: dict[str, Any] = {
    "seed": Param(0, int, low=0),
    "data": {
        # Where meta-training classes come from: digits | imagefolder:<dir> | idx:<dir> | cifar:<path> | npz:<file>
        "source": Param("digits", str),
        # Resize every image to image_size x image_size (null: keep the source's size).
        "image_size": Param(None, int, low=4, high=1024, nullable=True),
    },
    "tasks": {
        # The target task's source; null means the same source as data.source, with held-out classes.
        "target_source": Param(None, str, nullable=True),
        # Class names held out as the target task (with target_source set, null = all its classes).
        "target_classes": Param(["5", "6", "7", "8", "9"], list, nullable=True),
        "shots": Param(5, int, low=1, high=10000),  # labelled training images per target class
        "splits": Param(20, int, low=1, high=1000),  # target splits: shot sample + initialisation
        "test_fraction": Param(0.5, float, low=0.05, high=0.95),  # target images held out for testing
        "meta_val_fraction": Param(0.3, float, low=0.05, high=0.95),  # meta-train images kept for meta-validation
    },
    "train": {
        "arms": Param(list(ARMS), list, item_choices=ARMS),
        "epochs": Param(150, int, low=1, high=100000),
        "batch_size": Param(25, int, low=1, high=65536),
        "lr": Param(0.05, float, low=1e-6, high=10.0),  # one-cycle peak learning rate
        "momentum": Param(0.9, float, low=0.0, high=0.999),
        "weight_decay": Param(5e-4, float, low=0.0, high=1.0),
        "width": Param(32, int, low=4, high=1024),  # channels of the first conv layer
        "device": Param("auto", str, choices=DEVICES),
        # under torchrun: shard the arm x split runs over ranks, or one DDP learner over all ranks (README)
        "distributed": Param("none", str, choices=DISTRIBUTED),
        # learned arm: draw from data/augmented/ (the versioned copies) or sample the policy on the fly
        "learned_source": Param("augmented", str, choices=("augmented", "on_the_fly")),
    },
    "metatrain": {
        "method": Param("sh_random", str, choices=("sh_random", "cem")),
        # The op space the policy learns in (null: every op in the table); e.g. drop Solarize for medical images.
        "ops": Param(None, list, nullable=True),
        # fixed baselines whose points in the space the first bracket scores beside TA-Wide ([] for none)
        "anchors": Param(list(ANCHORS), list, item_choices=ANCHORS),
        "candidates": Param(10, int, low=2, high=4096),  # policies per generation / halving bracket
        "rungs": Param(3, int, low=1, high=12),  # successive-halving rungs (tasks double each rung)
        "tasks_first_rung": Param(2, int, low=1, high=1000),
        "generations": Param(2, int, low=1, high=1000),  # cem only
        "elite_fraction": Param(0.25, float, low=0.01, high=1.0),
        "init_std": Param(0.6, float, low=0.0, high=10.0),
        "proxy_epochs": Param(100, int, low=1, high=100000),  # learner epochs when scoring a candidate
        "proxy_width": Param(16, int, low=1, high=1024),  # learner width when scoring a candidate
        "workers": Param(0, int, low=0, high=1024),  # scoring processes, one thread each; 0 = one per CPU core
        "population": Param(9, int, low=1, high=4096),  # proxy learners trained at once as one grouped network
        # an explorer replaces the chosen reference only if better by this many paired standard errors; 2.0 keeps
        # false acceptance near 5 % when no explorer is better (tests: 1.0 accepted one in four such searches)
        "accept_z": Param(2.0, float, low=0.0, high=10.0),
        # the references (TA-Wide and the anchors) are raced: scored on reference_step more tasks per rung, up to
        # reference_tasks, a reference dropped once clearly worse than the best one (one-sided paired t-bound at
        # race_confidence); references still not separated at reference_tasks go to the tie rule (the gentlest)
        "reference_tasks": Param(16, int, low=1, high=10000),
        "reference_step": Param(4, int, low=1, high=10000),
        "race_confidence": Param(0.9, float, low=0.5, high=0.9999),
        "ways": Param(5, int, low=2, high=1000),
        "query_per_class": Param(100, int, low=1, high=100000),
    },
    "augment": {
        "copies": Param(150, int, low=1, high=10000),  # augmented copies of every target training image
    },
    "tracking": {
        "experiment": Param("metaaug", str),
    },
}


def _validate(schema: dict, given: Any, prefix: str) -> dict:
    """Merge `given` over the schema's defaults, checking every key and value."""
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise MetaaugError(f"params.yaml: {prefix.rstrip('.') or 'the file'} must be a mapping of keys to values, "
                           f"got {given!r}; expected indented `key: value` lines")
    unknown = sorted(set(given) - set(schema))
    if unknown:
        key = prefix + str(unknown[0])
        raise MetaaugError(f"params.yaml: unknown key {key}; expected one of {[prefix + k for k in schema]}")
    out = {}
    for key, spec in schema.items():
        if isinstance(spec, dict):
            out[key] = _validate(spec, given.get(key), f"{prefix}{key}.")
        else:
            out[key] = spec.check(prefix + key, given.get(key, spec.default))
    return out


def defaults() -> dict:
    """The full default configuration."""
    return _validate(SCHEMA, {}, "")


def validate(params: dict) -> dict:
    """Validate a params mapping (as read from YAML) and fill in defaults."""
    return _validate(SCHEMA, params, "")


def load_params(path: str | Path = "params.yaml") -> dict:
    """Read and validate params.yaml; a missing file means all defaults."""
    path = Path(path)
    if not path.exists():
        return defaults()
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise MetaaugError(f"{path}: not valid YAML{where}; expected a mapping of parameters") from None
    return validate(raw)
