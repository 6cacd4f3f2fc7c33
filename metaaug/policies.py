"""Augmentation policies: a small, complete, serialisable spec plus one sampling rule.

This module owns :class:`Policy` (which ops, how likely, how strong, how many in a row),
:func:`sample_apply` (the batched torch sampler), the fixed baselines
(:func:`fixed_policy`: none, handcrafted, RandAugment, TrivialAugment-Wide), metaaug's
policy JSON (:func:`save_policy` / :func:`load_policy`) and the Albumentations export
(:func:`to_albumentations` / :func:`export_albumentations`). Pixels are the business of
``metaaug.ops``; a policy only names ops and their normalised magnitude ranges.

Sampling rule, per image and per layer (``layers`` = RandAugment's N): draw one op with
probability ``weights``, apply it with probability ``prob`` (else Identity), with a
magnitude uniform in [``mag_low``, ``mag_high``] and, for signed ops, a random sign.
The Albumentations export draws from the same distribution (see :func:`to_albumentations`).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, fields

import torch

import metaaug  # noqa: F401  (sets NO_ALBUMENTATIONS_UPDATE before albumentations is imported)
import albumentations as A

from metaaug.errors import MetaaugError
from metaaug.publish import atomic_file
from metaaug.ops import OP_NAMES, OP_TABLE_VERSION, OPS, apply_ops
from metaaug.reading import load_json

POLICY_FORMAT_VERSION = 1
MAX_POLICY_LAYERS = 16  # ops in a row per image: each costs a pass over the batch; the search uses at most 2

FIXED_POLICIES: tuple[str, ...] = ("none", "handcrafted", "randaugment", "trivialaugment")

# TrivialAugment-Wide's and RandAugment's op lists (torchvision TrivialAugmentWide /
# RandAugment._augmentation_space; Cubuk et al. 2020, RandAugment, Sec. 3).
TA_WIDE_OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness",
               "Color", "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize")
RANDAUGMENT_OPS = TA_WIDE_OPS

# RandAugment's strongest values (magnitude 30 of 30), in each op's value units:
# torchvision RandAugment._augmentation_space (shear 0.3, translate 150/331 of the side,
# rotate 30 degrees, enhance 0.9, posterize 8 -> 4 bits, solarize threshold 255 -> 0).
RANDAUGMENT_MAX_VALUE = {
    "ShearX": 0.3, "ShearY": 0.3, "TranslateX": 150 / 331, "TranslateY": 150 / 331, "Rotate": 30.0,
    "Brightness": 0.9, "Color": 0.9, "Contrast": 0.9, "Sharpness": 0.9, "Posterize": 4.0, "Solarize": 1.0,
}


@dataclass(frozen=True)
class Policy:
    """Per layer: op k with probability weights[k], applied with probability prob[k], at a
    magnitude uniform in [mag_low[k], mag_high[k]] (normalised: 1 = the op's max_value)."""

    name: str
    ops: tuple[str, ...]
    weights: tuple[float, ...]
    prob: tuple[float, ...]
    mag_low: tuple[float, ...]
    mag_high: tuple[float, ...]
    layers: int = 1

    def __post_init__(self):
        # Coerce lists (e.g. from JSON) to tuples so that policies compare and hash by value.
        for f in ("ops", "weights", "prob", "mag_low", "mag_high"):
            value = getattr(self, f)
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
                raise MetaaugError(f"policy {self.name!r}: {f} must be a list, got {value!r}")
            object.__setattr__(self, f, tuple(value) if f == "ops" else tuple(_number(self, f, v) for v in value))
        _validate(self)


def _number(policy, field, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MetaaugError(f"policy {policy.name!r}: {field} must hold finite numbers, got {value!r}")
    return float(value)


def _validate(p: Policy) -> None:
    where = f"policy {p.name!r}"
    if not isinstance(p.name, str) or not p.name:
        raise MetaaugError(f"policy name must be a non-empty string, got {p.name!r}")
    for op in p.ops:
        if op not in OPS:
            raise MetaaugError(f"{where}: unknown op {op!r}; known ops: {', '.join(OP_NAMES)}")
    if not p.ops:
        raise MetaaugError(f"{where}: needs at least one op")
    if len(set(p.ops)) != len(p.ops):
        raise MetaaugError(f"{where}: ops must not repeat, got {list(p.ops)}")
    for f in ("weights", "prob", "mag_low", "mag_high"):
        if len(getattr(p, f)) != len(p.ops):
            raise MetaaugError(f"{where}: {f} has {len(getattr(p, f))} entries, expected one per op ({len(p.ops)})")
    if any(w < 0 for w in p.weights) or abs(sum(p.weights) - 1.0) > 1e-6:
        raise MetaaugError(f"{where}: weights must be >= 0 and sum to 1, got {list(p.weights)}")
    for k, op in enumerate(p.ops):
        if not 0.0 <= p.prob[k] <= 1.0:
            raise MetaaugError(f"{where}: prob of {op} must be in [0, 1], got {p.prob[k]}")
        if not 0.0 <= p.mag_low[k] <= p.mag_high[k] <= 1.0:
            raise MetaaugError(f"{where}: magnitude range of {op} must satisfy 0 <= low <= high <= 1, "
                               f"got [{p.mag_low[k]}, {p.mag_high[k]}]")
    if isinstance(p.layers, bool) or not isinstance(p.layers, int) or not 1 <= p.layers <= MAX_POLICY_LAYERS:
        raise MetaaugError(f"{where}: layers is {p.layers!r}; expected an integer in [1, {MAX_POLICY_LAYERS}]")


BASELINE_TITLES = {"none": "no augmentation", "handcrafted": "the handcrafted policy", "randaugment": "RandAugment",
                   "trivialaugment": "TrivialAugment-Wide"}


def what_it_is(baseline: str | None) -> str:
    """A policy named by what it is: a fixed baseline's point in the search space, or a searched one."""
    return (f"{BASELINE_TITLES[baseline]}'s point in the search space" if baseline
            else "a searched policy (no fixed baseline's point)")


def describe(policy: Policy, baseline: str | None = None) -> list[str]:
    """The whole policy in lines a person reads: what it is, its depth, then every op that is ever drawn
    with its share of the draws and its magnitude range (1 = the op's maximum)."""
    lines = [f"{what_it_is(baseline)}; {policy.layers} op(s) per image"]
    order = sorted(range(len(policy.ops)), key=lambda k: -policy.weights[k])
    for k in (k for k in order if policy.weights[k] > 0):
        magnitude = "no magnitude" if not OPS[policy.ops[k]].has_magnitude else \
            f"magnitude [{policy.mag_low[k]:.2f}, {policy.mag_high[k]:.2f}]"
        applied = "" if policy.prob[k] == 1 else f", applied with p={policy.prob[k]:.2f}"
        lines.append(f"{policy.ops[k]:13s} {100 * policy.weights[k]:5.1f} % of draws, {magnitude}{applied}")
    return lines


# ---------------------------------------------------------------------------------------
# Sampling in torch
# ---------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=32)
def _policy_tensors(policy: Policy, device: torch.device):
    op_index = torch.tensor([OP_NAMES.index(op) for op in policy.ops], device=device)
    return (op_index, *(torch.tensor(getattr(policy, f), dtype=torch.float32, device=device)
                        for f in ("weights", "prob", "mag_low", "mag_high")))


def sample_layer(policy: Policy, n: int, generator: torch.Generator | None = None, device=None):
    """One layer's draws for n images: (op_index into OP_NAMES, magnitude, sign), each (n,).

    An op drawn but not applied (probability 1 - prob) comes back as Identity. Draws are
    made on the generator's device (else ``device``, else the CPU).
    """
    device = generator.device if generator is not None else torch.device(device or "cpu")
    op_index, weights, prob, low, high = _policy_tensors(policy, device)
    choice = torch.multinomial(weights, n, replacement=True, generator=generator)
    u = torch.rand(3, n, generator=generator, device=device)
    ops = torch.where(u[0] < prob[choice], op_index[choice], OP_NAMES.index("Identity"))
    magnitude = low[choice] + (high[choice] - low[choice]) * u[1]
    sign = torch.where(u[2] < 0.5, -1.0, 1.0)
    return ops, magnitude, sign


def sample_apply(policy: Policy, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Augment a batch: per image and layer, draw op, application, magnitude and sign.

    One :func:`metaaug.ops.apply_ops` call per layer. Random draws come from ``generator``
    (on its own device; the images may live elsewhere), so a seeded generator reproduces
    the batch exactly.
    """
    if images.shape[0] == 0:
        return images
    for _ in range(policy.layers):
        draws = sample_layer(policy, images.shape[0], generator, images.device)
        images = apply_ops(images, *(t.to(images.device) for t in draws), generator)
    return images


# ---------------------------------------------------------------------------------------
# Fixed baselines
# ---------------------------------------------------------------------------------------

def _uniform(name, ops, mag_low, mag_high, layers, prob=1.0):
    n = len(ops)
    return Policy(name, tuple(ops), (1.0 / n,) * n, (prob,) * n, tuple(mag_low), tuple(mag_high), layers)


def drop_color(ops, image_channels):
    # Color is the identity on grey images: keeping it would silently add a second Identity.
    return [op for op in ops if not (op == "Color" and image_channels == 1)]


def fixed_policy(name: str, image_channels: int = 1, **kwargs) -> Policy:
    """A baseline policy by name (see FIXED_POLICIES); keyword arguments tune it.

    * ``none``: Identity.
    * ``handcrafted``: 2 layers, uniform over TranslateX/TranslateY/Rotate/Scale, always
      applied, magnitudes uniform up to ``translate=0.1`` (of the side), ``rotate=15``
      (degrees), ``scale=0.1`` (zoom factor 1 +- 0.1): mild geometry suited to digits.
    * ``randaugment``: ``n=2`` layers, uniform over RandAugment's 14 ops, always applied,
      fixed magnitude ``m=9`` of 30 on RandAugment's own scale (torchvision
      ``RandAugment(num_ops=2, magnitude=9)``): the normalised magnitude of op k is
      (m / 30) * RANDAUGMENT_MAX_VALUE[k] / OPS[k].max_value.
    * ``trivialaugment``: TrivialAugment-Wide: 1 layer, uniform over its 14 ops, always
      applied, magnitude uniform over the full range [0, 1] (TA draws one of 31 bins).

    On grey images (``image_channels=1``) Color, a no-op there, is left out.
    """
    if image_channels not in (1, 3):
        raise MetaaugError(f"fixed_policy: image_channels must be 1 or 3, got {image_channels!r}")
    allowed = {"none": {}, "handcrafted": {"translate": 0.1, "rotate": 15.0, "scale": 0.1},
               "randaugment": {"n": 2, "m": 9}, "trivialaugment": {}}
    if name not in allowed:
        raise MetaaugError(f"unknown fixed policy {name!r}; known: {', '.join(FIXED_POLICIES)}")
    unknown = set(kwargs) - set(allowed[name])
    if unknown:
        raise MetaaugError(f"fixed policy {name!r}: unknown option(s) {', '.join(sorted(unknown))}; "
                           f"known: {', '.join(allowed[name]) or 'none'}")
    opts = {**allowed[name], **kwargs}
    if name == "none":
        return Policy("none", ("Identity",), (1.0,), (1.0,), (0.0,), (0.0,), 1)
    if name == "handcrafted":
        limits = {"TranslateX": opts["translate"], "TranslateY": opts["translate"],
                  "Rotate": opts["rotate"], "Scale": opts["scale"]}
        high = [_normalised("handcrafted", op, value) for op, value in limits.items()]
        return _uniform("handcrafted", limits, [0.0] * 4, high, layers=2)
    if name == "randaugment":
        n, m = opts["n"], opts["m"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise MetaaugError(f"fixed policy 'randaugment': n must be an integer >= 1, got {n!r}")
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 <= m <= 30:
            raise MetaaugError(f"fixed policy 'randaugment': m must be in [0, 30], got {m!r}")
        ops = drop_color(RANDAUGMENT_OPS, image_channels)
        mags = [m / 30 * RANDAUGMENT_MAX_VALUE[op] / OPS[op].max_value if op in RANDAUGMENT_MAX_VALUE else 0.0
                for op in ops]
        return _uniform(f"randaugment-n{n}-m{m:g}", ops, mags, mags, layers=n)
    ops = drop_color(TA_WIDE_OPS, image_channels)
    return _uniform("trivialaugment", ops, [0.0] * len(ops), [1.0] * len(ops), layers=1)


def _normalised(policy_name, op, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= OPS[op].max_value:
        raise MetaaugError(f"fixed policy {policy_name!r}: {op} limit must be in [0, {OPS[op].max_value:g}], "
                           f"got {value!r}")
    return value / OPS[op].max_value


# ---------------------------------------------------------------------------------------
# metaaug JSON
# ---------------------------------------------------------------------------------------

def policy_to_dict(policy: Policy) -> dict:
    """The spec as plain JSON types (the 'policy' object of the policy file)."""
    return {f.name: list(v) if isinstance(v := getattr(policy, f.name), tuple) else v for f in fields(policy)}


def save_policy(policy: Policy, path, provenance: dict) -> None:
    """Write metaaug's policy JSON (format and op-table versions, the spec, provenance)."""
    doc = {"format_version": POLICY_FORMAT_VERSION, "op_table_version": OP_TABLE_VERSION,
           "policy": policy_to_dict(policy), "provenance": provenance}
    try:
        text = json.dumps(doc, indent=2, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise MetaaugError(f"policy file {path}: provenance is not JSON-serialisable ({err})") from None
    with atomic_file(path) as tmp:
        tmp.write_text(text + "\n")


def load_policy(path) -> Policy:
    """Read a policy JSON; every problem is one MetaaugError line naming the file."""
    return read_policy(path)[0]


def read_policy(path) -> tuple[Policy, dict]:
    """A policy JSON's policy and its provenance (e.g. `baseline_point`: the fixed baseline it is the
    point of); every problem is one MetaaugError line naming the file."""
    where = f"policy file {path}"
    doc = load_json(path, "a policy JSON written by metaaug metatrain")
    if not isinstance(doc, dict) or not isinstance(doc.get("policy"), dict):
        raise MetaaugError(f"{where}: expected a JSON object with a 'policy' object (metaaug policy format)")
    version = doc.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise MetaaugError(f"{where}: missing integer 'format_version'")
    if version > POLICY_FORMAT_VERSION:
        raise MetaaugError(f"{where}: format_version {version} is newer than this metaaug reads; expected "
                           f"<= {POLICY_FORMAT_VERSION} (upgrade metaaug to read it)")
    if doc.get("op_table_version") != OP_TABLE_VERSION:
        raise MetaaugError(f"{where}: written for op table version {doc.get('op_table_version')!r}, "
                           f"this metaaug has {OP_TABLE_VERSION}; ops would not mean the same")
    spec = doc["policy"]
    expected = {f.name for f in fields(Policy)}
    required = expected - {"layers"}
    if not required <= set(spec) or not set(spec) <= expected:
        raise MetaaugError(f"{where}: policy must have keys {sorted(required)} (+ optional 'layers'), "
                           f"got {sorted(spec)}")
    try:
        return Policy(**spec), doc.get("provenance") or {}
    except MetaaugError as err:
        raise MetaaugError(f"{where}: {err}") from None


# ---------------------------------------------------------------------------------------
# Albumentations export
# ---------------------------------------------------------------------------------------

def _op_transform(policy: Policy, k: int):
    """Op k's Albumentations transform, applied with probability prob[k].

    Signed ops become OneOf(+[lo, hi], -[lo, hi]) with equal weights: a random sign.
    """
    op = OPS[policy.ops[k]]
    lo, hi = policy.mag_low[k] * op.max_value, policy.mag_high[k] * op.max_value
    if op.signed:
        return A.OneOf([op.albumentations_fn(lo, hi), op.albumentations_fn(-hi, -lo)], p=policy.prob[k])
    transform = op.albumentations_fn(lo, hi)
    transform.p = policy.prob[k]
    return transform


def to_albumentations(policy: Policy) -> A.Compose:
    """The policy as an Albumentations pipeline with the same sampling distribution.

    ``layers`` OneOf blocks in sequence. OneOf uses its children's ``p`` as choice weights
    and runs the chosen child with force_apply=True (albumentations/core/composition.py),
    so each op sits in a ``Sequential(p=weights[k])`` whose inner transform keeps its own
    ``p=prob[k]``. Ops of weight 0 are left out.

    To seed the result reproducibly use ``set_random_state(np.random.default_rng(s),
    random.Random(s))``: ``Compose(seed=s)`` / ``set_random_seed(s)`` gives every block its
    own copy of the same stream, so identical layers would always draw the same op.
    """
    def layer():
        return A.OneOf([A.Sequential([_op_transform(policy, k)], p=policy.weights[k])
                        for k in range(len(policy.ops)) if policy.weights[k] > 0], p=1.0)
    return A.Compose([layer() for _ in range(policy.layers)], p=1.0)


def export_albumentations(policy: Policy, path) -> None:
    """Write the Albumentations pipeline (``A.save`` JSON) that ``A.load(path)`` reads back."""
    compose = to_albumentations(policy)
    with atomic_file(path) as tmp:
        A.save(compose, tmp, data_format="json")
