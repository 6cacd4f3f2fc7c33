"""params.yaml: the one typed configuration, validated on load and consumed directly.

Each section of params.yaml is a frozen pydantic model; the code takes the section
it needs (`params.train` is the training recipe, `params.metatrain` the search's
settings) instead of looking keys up by string. The models are the only place a
parameter is declared: its type, its range and its default. Loading rejects, with
one line naming the key (``train.epochs``) and what is allowed, an unknown key, a
duplicate key, a wrong type, a value out of range, and a value that would only fail
stages later (an empty arm list, a seed torch cannot take, CUDA where there is none).
"""

from __future__ import annotations

import hashlib
import re
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, NamedTuple, get_args, get_origin

import yaml
from annotated_types import Ge, Le
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError,
                      field_validator, model_validator)
from pydantic_core import PydanticCustomError

from metaaug.errors import MetaaugError
from metaaug.reading import MAX_DEPTH, MAX_PARAMS_BYTES, read_text

FIXED_ARMS = ("none", "handcrafted", "randaugment", "trivialaugment")  # train.arms: what learned is compared with
LEARNED = "learned"  # always trained (its own DVC stage, train_learned), after the fixed arms
ARMS = (*FIXED_ARMS, LEARNED)
ANCHORS = ("none", "handcrafted", "randaugment")  # fixed baselines metatrain can start from (metaaug.search.space.anchor_points)
MAX_SEED = 2**63 - 1  # torch.manual_seed and numpy's SeedSequence both take it
MAX_MOMENTUM = 0.999  # train.momentum, and the top of its one-cycle swing (metaaug.training.OneCycleSGD)


def _distinct(items: list) -> list:
    if len(set(items)) != len(items):
        raise PydanticCustomError("duplicate", "lists an item twice")
    return items


def _fixed_arms(arms: list) -> list:
    if LEARNED in arms:
        raise PydanticCustomError("unknown_item", f"lists '{LEARNED}', which is always trained (stage train_learned); "
                                             f"expected only fixed arms ({', '.join(FIXED_ARMS)})")
    return arms


def _as_text(item: Any) -> Any:
    """YAML reads class names like 5 as numbers; a name is text."""
    return str(item) if isinstance(item, (int, float)) and not isinstance(item, bool) else item


Name = Annotated[str, BeforeValidator(_as_text)]


class Section(BaseModel):
    """A params.yaml section: unknown keys and wrong types are errors, values are read-only."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class DataConfig(Section):
    # Where meta-training classes come from: digits | imagefolder:<dir> | idx:<dir> | cifar:<path> | npz:<file>
    source: str = "digits"
    # Resize every image to image_size x image_size (null: keep the source's size).
    image_size: Annotated[int, Ge(4), Le(1024)] | None = None


class TasksConfig(Section):
    # few_shot: the target is held-out classes, trained on `splits` few-shot samples of `shots` images a class.
    # full: the target is every class of data.source (or target_classes) with all of its labelled training
    # images; metatrain samples its tasks from that training split alone (never the test split), and the
    # arms are compared over `splits` (>= 3) paired seeds (metaaug/tasks.py, prepare_full).
    protocol: Literal["few_shot", "full"] = "few_shot"
    # The target task's source; null means the same source as data.source, with held-out classes.
    target_source: str | None = None
    # Class names held out as the target task. null: the last half of the source's classes in natural
    # order (digits: 5-9), or, with target_source set, all of its classes.
    target_classes: Annotated[list[Name], AfterValidator(_distinct)] | None = None
    shots: Annotated[int, Ge(1), Le(10000)] = 5  # labelled training images per target class
    splits: Annotated[int, Ge(1), Le(1000)] = 20  # target splits: shot sample + initialisation
    test_fraction: Annotated[float, Ge(0.05), Le(0.95)] = 0.5  # target images held out for testing
    meta_val_fraction: Annotated[float, Ge(0.05), Le(0.95)] = 0.3  # meta-train images kept for meta-validation

    @model_validator(mode="after")
    def _full_protocol(self) -> "TasksConfig":
        if self.protocol == "full" and self.target_source is not None:
            raise PydanticCustomError("conflict", f"tasks.target_source = {self.target_source!r}, but tasks.protocol "
                                      "= 'full' meta-trains on the target's own training split; expected null "
                                      "(the target is data.source)")
        if self.protocol == "full" and self.splits < 3:
            raise PydanticCustomError("conflict", f"tasks.splits = {self.splits} is too few for tasks.protocol = "
                                      "'full' (its paired seeds); expected at least 3")
        return self


class TrainConfig(Section):
    """The downstream learner's recipe (SGD-Nesterov, one-cycle schedule) and the train stage's arms."""

    # the fixed arms, each its own DVC stage (train@<arm>, a `matrix:`), so that a new policy retrains only the
    # learned arm; the learned arm is always trained (stage train_learned)
    arms: Annotated[list[Literal[ARMS]], Field(min_length=1), AfterValidator(_distinct),
                    AfterValidator(_fixed_arms)] = list(FIXED_ARMS)
    epochs: Annotated[int, Ge(1), Le(100000)] = 150
    batch_size: Annotated[int, Ge(1), Le(65536)] = 25
    lr: Annotated[float, Ge(1e-6), Le(10.0)] = 0.05  # one-cycle peak learning rate
    # the one-cycle momentum's mid-point: it falls from momentum + 0.05 to momentum - 0.05 as the lr rises, and back
    momentum: Annotated[float, Ge(0.0), Le(MAX_MOMENTUM)] = 0.9
    weight_decay: Annotated[float, Ge(0.0), Le(1.0)] = 5e-4
    width: Annotated[int, Ge(4), Le(1024)] = 32  # channels of the first conv layer
    # the learner: auto (small_cnn unless a paired trial finds resnet clearly better: metaaug/learners.py),
    # small_cnn or resnet (metaaug/models.py)
    model: Literal["auto", "small_cnn", "resnet"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # under torchrun: shard the arm x split runs over ranks, or one DDP learner over all ranks (docs/scaling.md)
    distributed: Literal["none", "shard", "ddp"] = "none"
    workers: Annotated[int, Ge(0), Le(1024)] = 0  # training processes, one thread each; 0 = one per CPU core
    # learners trained at once as one grouped network; 0 = 9 where a learner is dispatch-bound, else 1
    population: Annotated[int, Ge(0), Le(4096)] = 0
    # learned arm: draw from data/augmented/ (the versioned copies) or sample the policy on the fly
    learned_source: Literal["augmented", "on_the_fly"] = "augmented"

    @field_validator("device")
    @classmethod
    def _device_exists(cls, device: str) -> str:
        if device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise PydanticCustomError("unavailable", "= 'cuda', but torch sees no CUDA device on this machine; "
                                                         "expected 'auto' or 'cpu' here")
        return device


class RaceConfig(Section):
    """The racing engine's settings (metaaug.search.engine), and the `race` method's: every method that races
    has its own copy in its own section, so changing one never reruns another's searches."""

    # every candidate is raced: scored on `step` more tasks per rung, up to `tasks`, and dropped once clearly
    # worse than the best reference (one-sided paired t-bound at `confidence`); references still not separated
    # at the end go to the tie rule (the gentlest)
    tasks: Annotated[int, Ge(1), Le(10000)] = 18
    step: Annotated[int, Ge(1), Le(10000)] = 3
    confidence: Annotated[float, Ge(0.5), Le(0.9999)] = 0.9
    # a screen, not the acceptance: only an explorer that beats the reference by this many paired standard
    # errors on the racing tasks goes on to confirmation
    screen_z: Annotated[float, Ge(0.0), Le(10.0)] = 2.0
    # an explorer replaces the reference only if it beats it on this many FRESH tasks (never used to choose
    # it), one-sided paired t test at level confirm_alpha (docs/search.md: the false-acceptance rate)
    confirm_tasks: Annotated[int, Ge(2), Le(10000)] = 6
    confirm_alpha: Annotated[float, Ge(0.0001), Le(0.5)] = 0.05
    # an explorer is dropped as futile when its paired z against the best reference trails the track to
    # screen_z at `tasks` (screen_z * sqrt(n / tasks)) by more than this; 100 = never
    futility: Annotated[float, Ge(0.0), Le(100.0)] = 1.5
    # indifference margin (points of meta-task query accuracy): candidates whose paired one-sided bound puts
    # them within it of the best are not raced further; the tie rule picks among them (docs/search.md)
    indifference: Annotated[float, Ge(0.0), Le(100.0)] = 1.0
    # the screen before the race (metaaug/search/screen.py): clean learners on `screen_tasks` tasks (they are
    # `none`'s first scores) read query images augmented by each op group alone; a group keeps the largest
    # magnitude cap at which they keep this share of their accuracy above chance, else it is off. 0: no screen
    screen_keep: Annotated[float, Ge(0.0), Le(1.0)] = 0.6
    screen_tasks: Annotated[int, Ge(1), Le(10000)] = 3


class CemConfig(RaceConfig):
    """The cross-entropy method's settings: its generations, and the racing engine's for each bracket."""

    candidates: Annotated[int, Ge(2), Le(4096)] = 12  # raced per generation: its mean, anchors, explorers
    generations: Annotated[int, Ge(1), Le(1000)] = 2
    elite_fraction: Annotated[float, Ge(0.01), Le(1.0)] = 0.25
    init_std: Annotated[float, Ge(0.0), Le(10.0)] = 0.6  # random step of explorers beyond the one-move ones


class MetatrainConfig(Section):
    """The search's common settings (what every method uses); each method's own are in its section."""

    # the key whose value names the one section of its choices that is read (declaration.Declaration.dvc_params:
    # metatrain depends on `metatrain.${metatrain.method}`, so another method's settings rerun nothing)
    SELECTOR: ClassVar[str] = "method"
    method: Literal["race", "cem"] = "race"
    # The op space the policy learns in (null: every op in the table); e.g. drop Solarize for medical images.
    ops: Annotated[list[Name], Field(min_length=1), AfterValidator(_distinct)] | None = None
    # fixed baselines whose points in the space the first bracket scores beside TA-Wide ([] for none)
    anchors: Annotated[list[Literal[ANCHORS]], AfterValidator(_distinct)] = list(ANCHORS)
    proxy_epochs: Annotated[int, Ge(1), Le(100000)] = 100  # learner epochs when scoring a candidate
    proxy_width: Annotated[int, Ge(1), Le(1024)] = 16  # learner width when scoring a candidate
    workers: Annotated[int, Ge(0), Le(1024)] = 0  # scoring processes, one thread each; 0 = one per CPU core
    # proxy learners trained at once as one grouped network; 0 = 9 where a learner is dispatch-bound, else 1
    population: Annotated[int, Ge(0), Le(4096)] = 0
    # under torchrun: share every rung's proxy trainings among the ranks (docs/scaling.md)
    distributed: Literal["none", "shard"] = "none"
    # the search's limit, in units of one downstream training (a proxy training's floating-point operations over
    # one downstream training's: metaaug/search/budget.py); the framework stops a method at it
    # (docs/search.md: the default, measured on the frontier)
    budget: Annotated[float, Ge(0.01), Le(100000.0)] = 3.0
    ways: Annotated[int, Ge(2), Le(1000)] = 5
    query_per_class: Annotated[int, Ge(1), Le(100000)] = 100
    race: RaceConfig = RaceConfig()  # method `race`
    cem: CemConfig = CemConfig()  # method `cem`

    @property
    def settings(self) -> RaceConfig:
        """The selected method's own section."""
        return getattr(self, self.method)

    @field_validator("ops")
    @classmethod
    def _known_ops(cls, ops: list[str] | None) -> list[str] | None:
        from metaaug.ops import OP_NAMES

        unknown = [op for op in ops or [] if op not in OP_NAMES]
        if unknown:
            raise PydanticCustomError("unknown_item", f"names unknown op {unknown[0]!r}; expected ops from "
                                                      f"{list(OP_NAMES)}")
        return ops


class AugmentConfig(Section):
    copies: Annotated[int, Ge(1), Le(10000)] = 150  # augmented copies of every target training image


def _experiment_name(name: str) -> str:
    """An experiment name MLflow takes (at most 500 characters) that is safe wherever a name becomes a path
    segment, a tag or a log line: printable, no path separator, no leading dot (`..`), no blank at either end."""
    if (len(name) > 500 or not name.isprintable() or "/" in name or "\\" in name or name.startswith(".")
            or name != name.strip()):
        raise PydanticCustomError("bad_name", "is not a safe experiment name; expected 1-500 printable characters, "
                                  "no `/` or `\\`, no leading dot, no blank at either end")
    return name


MODEL_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,199}$"  # what MLflow's registry takes, and no path can escape with


class TrackingConfig(Section):
    experiment: Annotated[str, Field(min_length=1), AfterValidator(_experiment_name)] = "metaaug"
    # The MLflow registered model metatrain registers each policy under (null: `<experiment>-policy`);
    # alias `current` moves to its newest version (metaaug/registry.py, register_policy).
    policy_model: Annotated[str, Field(min_length=1, max_length=200, pattern=MODEL_NAME)] | None = None

    @property
    def policy_model_name(self) -> str:
        """The registered model's name: policy_model, or the experiment's name made one MLflow takes + `-policy`;
        where that changed the name (`my exp`), a hash of the exact name is added, so that no two experiments'
        default names meet (`my_exp-policy`, `my_exp-1f3a9c-policy`); the registry refuses what still does."""
        if self.policy_model:
            return self.policy_model
        safe = re.sub(r"[^\w.\-]", "_", self.experiment)[:186]
        tail = "" if safe == self.experiment else "-" + hashlib.sha256(self.experiment.encode()).hexdigest()[:6]
        return f"{safe}{tail}-policy"


class Params(Section):
    """The whole of params.yaml."""

    seed: Annotated[int, Ge(0), Le(MAX_SEED)] = 0
    data: DataConfig = DataConfig()
    tasks: TasksConfig = TasksConfig()
    train: TrainConfig = TrainConfig()
    metatrain: MetatrainConfig = MetatrainConfig()
    augment: AugmentConfig = AugmentConfig()
    tracking: TrackingConfig = TrackingConfig()


def defaults() -> Params:
    """The full default configuration."""
    return Params()


def validate(raw: Any, where: str = "params.yaml") -> Params:
    """Validate a params mapping (as read from YAML) and fill in defaults; bad input is one line."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise MetaaugError(f"{where}: the file must be a mapping of keys to values, got {raw!r}; "
                           "expected indented `key: value` lines")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise MetaaugError(f"{where}: {describe_error(err.errors()[0])}") from None


def describe_error(error: dict) -> str:
    """One pydantic error as `key = value ...; expected ...`."""
    names = [str(part) for part in error["loc"] if isinstance(part, str)]
    key, value, kind = ".".join(names), error["input"], error["type"]
    if kind == "extra_forbidden":
        parent = field_at(names[:-1])
        keys = [".".join([*names[:-1], k]) for k in (parent.annotation.model_fields if parent else Params.model_fields)]
        return f"unknown key {key}; expected one of {keys}"
    field = field_at(names)
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return (f"{key} must be a mapping of keys to values, got {value!r}; expected indented `key: value` lines")
    if value is None or kind in ("too_short", "string_too_short"):
        return f"{key} is empty; expected {expected(field)}" + (", at least one" if kind == "too_short" else "")
    if kind == "finite_number":
        return f"{key} = {value!r}; expected a finite number"
    if kind == "duplicate":
        return f"{key} lists an item twice; expected distinct items"
    if kind == "conflict":  # keys that do not go together: the message names them
        return error["msg"]
    if kind in ("unknown_item", "unavailable"):
        return f"{key} {error['msg']}" + ("" if "expected" in error["msg"] else f"; expected {expected(field)}")
    if any(isinstance(part, int) for part in error["loc"]):  # an item of a list
        return f"{key} contains {value!r}; expected items from {list(spec(field).choices)}"
    if kind in ("string_pattern_mismatch", "string_too_long"):  # a name MLflow would refuse
        return (f"{key} = {value!r} is not a name MLflow takes; expected 1-200 ASCII letters, digits, `_`, `.` or "
                "`-`, starting with a letter, digit or `_`")
    if kind == "bad_name":
        return f"{key} = {value!r} {error['msg']}"
    if kind in ("greater_than_equal", "less_than_equal", "literal_error", "too_short"):
        return f"{key} = {value!r} is out of range; expected {expected(field)}"
    return f"{key} = {value!r} has the wrong type; expected {expected(field)}"


def field_at(names: list[str]):
    """The FieldInfo of a dotted key (None for the root)."""
    model, field = Params, None
    for name in names:
        field = model.model_fields[name]
        model = field.annotation
    return field


class Spec(NamedTuple):
    """What one parameter allows, read off its annotation: the words of error messages, and tests' cases."""

    kind: Any  # int, float, str, bool, list or Literal[...]
    low: float | None
    high: float | None
    choices: tuple | None  # of a Literal, or of a list's Literal items
    nullable: bool


def spec(field) -> Spec:
    annotation, nullable = field.annotation, False
    if type(None) in get_args(annotation):
        nullable = True
        annotation = next(a for a in get_args(annotation) if a is not type(None))
    metadata = list(field.metadata)
    while get_origin(annotation) is Annotated:
        annotation, *extra = get_args(annotation)
        metadata += extra
    low = next((m.ge for m in metadata if isinstance(m, Ge)), None)
    high = next((m.le for m in metadata if isinstance(m, Le)), None)
    if get_origin(annotation) is Literal:
        return Spec(Literal, low, high, get_args(annotation), nullable)
    if get_origin(annotation) is list:
        item = get_args(annotation)[0]
        while get_origin(item) is Annotated:
            item = get_args(item)[0]
        return Spec(list, low, high, get_args(item) if get_origin(item) is Literal else None, nullable)
    return Spec(annotation, low, high, None, nullable)


def expected(field) -> str:
    """What a field allows, in words: `an integer in [1, 100000]`, `one of ['auto', 'cpu']`."""
    s = spec(field)
    if s.kind is Literal:
        text = f"one of {list(s.choices)}"
    elif s.kind is list:
        text = "a list" + (f" of items from {list(s.choices)}" if s.choices else "")
    else:
        text = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(s.kind, "a value")
        if s.low is not None and s.high is not None:
            text += f" in [{s.low}, {s.high}]"
        elif s.low is not None:
            text += f" >= {s.low}"
    return text + (" or null" if s.nullable else "")


def leaf_fields(model: type[BaseModel] = Params, prefix: str = ""):
    """(dotted key, FieldInfo) of every parameter."""
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield from leaf_fields(field.annotation, f"{prefix}{name}.")
        else:
            yield prefix + name, field


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error, not a silent overwrite,
    and that aliases (`*name`) are refused: nested aliases expand a few hundred bytes into gigabytes (a
    "billion laughs"), and params.yaml needs none."""

    depth = 0  # levels of nesting being composed: a deep document stops at MAX_DEPTH, not at Python's stack

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise MetaaugError(f"alias *{str(event.anchor)[:40]} at line {event.start_mark.line + 1}; expected "
                               "plain values (YAML aliases are not accepted)")
        if self.depth >= MAX_DEPTH:
            raise MetaaugError(f"nests lists or mappings more than {MAX_DEPTH} levels deep at line "
                               f"{self.peek_event().start_mark.line + 1}; expected `section: key: value` (two levels)")
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise MetaaugError(f"key {key!r} appears twice at line {key_node.start_mark.line + 1}; "
                                   "expected each key once")
            seen.add(key)
        return super().construct_mapping(node, deep)


_PARAMS_FILE: ContextVar[str] = ContextVar("params_file", default="params.yaml")


def params_file() -> str:
    """The params file the running command loaded, as it was given (`--params other.yaml`): what an error
    about a parameter found later (against the data, say) names."""
    return _PARAMS_FILE.get()


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file; a missing file is an error (never silently all defaults). The file is
    read up to MAX_PARAMS_BYTES, and every message names it as it was given."""
    expected = "a params YAML file (the repository's params.yaml is the documented default)"
    text = read_text(path, MAX_PARAMS_BYTES, expected)
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except MetaaugError as err:
        raise MetaaugError(f"{path}: {err}") from None
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise MetaaugError(f"{path}: not valid YAML{where}; expected a mapping of parameters") from None
    params = validate(raw, str(path))
    _PARAMS_FILE.set(str(path))
    return params
