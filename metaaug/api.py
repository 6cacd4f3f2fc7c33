"""metaaug's Python API: use a learned policy in your own training code, or learn one from arrays.

The same code the pipeline runs, without DVC or MLflow:

* :func:`load_policy` reads a policy file (`models/policy/policy.json`, or its directory), or a registered
  one (`models:/metaaug-policy@current`, MLflow imported only then);
* :class:`PolicyTransform` applies it to one image, (C, H, W) uint8 or float, as a torch
  transform for your own ``Dataset``; :func:`augment_batch` to a batch (N, C, H, W) at once
  (the batched sampler the pipeline trains with, metaaug.policies.sample_apply);
* :func:`albumentations_pipeline` gives its Albumentations twin (same sampling distribution);
* :func:`learn_policy` searches a policy on few-shot tasks drawn from your labelled images,
  with a ``metatrain`` section of params (metaaug.config.MetatrainConfig), as the metatrain stage does.

Bad input raises :class:`metaaug.errors.MetaaugError` with one line saying what is wrong and what
is expected.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metaaug.config import MetatrainConfig, TrainConfig, validate
from metaaug.errors import MetaaugError
from metaaug.policies import Policy, sample_apply, to_albumentations
from metaaug.policies import load_policy as _load_policy_file

__all__ = ["Policy", "load_policy", "PolicyTransform", "augment_batch", "albumentations_pipeline", "learn_policy"]


def load_policy(path: str | Path) -> Policy:
    """A policy from metaaug's policy JSON, from a directory holding `policy.json` (the metatrain output), or
    from MLflow's model registry: `models:/<name>@<alias>` (e.g. `models:/metaaug-policy@current`, the newest
    policy metatrain registered; `@champion`, the newest evaluate did not find clearly worse than the best fixed
    arm) or `models:/<name>/<version>`, read from MLFLOW_REGISTRY_URI or MLFLOW_TRACKING_URI (default: the
    project root's `mlflow.db`; outside a project, one line) and checked against its recorded SHA-256. Only a `models:/` URI imports MLflow (metaaug/registry.py), so a core install
    (without the `pipeline` extra) loads files and gets one line saying what to install for a URI."""
    if str(path).startswith("models:/"):
        from metaaug import registry

        with tempfile.TemporaryDirectory() as tmp:
            return _load_policy_file(registry.download_registered_policy(str(path), Path(tmp)))
    path = Path(path)
    return _load_policy_file(path / "policy.json" if path.is_dir() else path)


def _as_float(images: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.dtype]:
    """(float images in [0, 1], the input dtype) of a uint8 or floating tensor."""
    if not isinstance(images, torch.Tensor):
        images = torch.as_tensor(np.asarray(images))
    if images.dtype == torch.uint8:
        return images.float().div_(255.0), images.dtype
    if not images.is_floating_point():
        raise MetaaugError(f"{what}: images of dtype {images.dtype}; expected uint8 (0-255) or float (0-1)")
    return images, images.dtype


def _back(out: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Clamp to [0, 1]; uint8 input comes back as uint8, rounded as the augment stage stores it."""
    out = out.clamp_(0, 1)
    return (out * 255).round_().to(torch.uint8) if dtype == torch.uint8 else out.to(dtype)


def augment_batch(policy: Policy, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Augment (N, C, H, W) images, C 1 or 3, uint8 or float in [0, 1]; returns the same shape and dtype.

    Each image draws its own ops and magnitudes; a seeded ``generator`` reproduces the batch.
    """
    x, dtype = _as_float(images, "augment_batch")
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise MetaaugError(f"augment_batch: images of shape {tuple(x.shape)}; expected (N, C, H, W) with C 1 or 3")
    return _back(sample_apply(policy, x, generator), dtype)


class PolicyTransform:
    """A per-sample torch transform: ``PolicyTransform(policy)(image)`` for a (C, H, W) image, uint8 or float.

    ``policy`` is a Policy or a path (file or directory). With ``seed=None`` draws come from
    torch's global generator (a DataLoader seeds it per worker); an integer seed gives the
    transform its own generator, so a single-process loop is reproducible.
    """

    def __init__(self, policy: Policy | str | Path, seed: int | None = None):
        self.policy = policy if isinstance(policy, Policy) else load_policy(policy)
        self.generator = None if seed is None else torch.Generator().manual_seed(seed)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        x, dtype = _as_float(image, "PolicyTransform")
        if x.dim() != 3 or x.shape[0] not in (1, 3):
            raise MetaaugError(f"PolicyTransform: an image of shape {tuple(x.shape)}; expected (C, H, W) with C 1 or 3")
        return _back(sample_apply(self.policy, x[None], self.generator)[0], dtype)

    def __repr__(self) -> str:
        return f"PolicyTransform({self.policy.name!r}, {len(self.policy.ops)} ops, {self.policy.layers} layer(s))"


def albumentations_pipeline(policy: Policy | str | Path):
    """The policy as an ``albumentations.Compose`` with the same sampling distribution (HWC uint8 numpy images)."""
    return to_albumentations(policy if isinstance(policy, Policy) else load_policy(policy))


def _section(value: Any, name: str, cls: type) -> Any:
    if value is None or isinstance(value, cls):
        return value or cls()
    if not isinstance(value, dict):
        raise MetaaugError(f"learn_policy: {name} is a {type(value).__name__}; expected a dict of params.{name} "
                           f"keys or a {cls.__name__}")
    return getattr(validate({name: value}, where="learn_policy"), name)


def learn_policy(images: np.ndarray, labels: np.ndarray, metatrain: MetatrainConfig | dict | None = None, *,
                 shots: int = 5, train: TrainConfig | dict | None = None, seed: int = 0) -> Policy:
    """Search an augmentation policy on few-shot tasks from these labelled images (the metatrain stage's search).

    ``images``: uint8 (N, H, W) or (N, H, W, C), C 1 or 3; ``labels``: (N,) integer class ids (at least
    two classes, each with more than ``shots`` images). ``metatrain``: the params.yaml ``metatrain``
    section (dict or MetatrainConfig; unset keys take their defaults), ``train``: the learner recipe the
    proxy learners use (``train`` section), ``shots``: support images per class in a task. Deterministic
    for a given seed. The checkpoint the stage keeps lives in a temporary directory here. ``metatrain.budget``
    counts in trainings of the ``train`` recipe on one task's support images (docs/search.md).
    """
    from metaaug.search import SearchSpace, sample_tasks, search, tasks_needed
    from metaaug.ops import OP_NAMES
    from metaaug.training import set_threads

    cfg = _section(metatrain, "metatrain", MetatrainConfig)
    recipe = _section(train, "train", TrainConfig)
    images, labels = np.asarray(images), np.asarray(labels)
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
        raise MetaaugError(f"learn_policy: images are {images.dtype} of shape {images.shape}; expected uint8 "
                           "(N, H, W) or (N, H, W, C) with C 1 or 3")
    if images.ndim == 3:
        images = images[..., None]
    if labels.shape != (len(images),) or labels.dtype.kind not in "iu":
        raise MetaaugError(f"learn_policy: labels are {labels.dtype} of shape {labels.shape}; expected "
                           f"({len(images)},) integer class ids, one per image")
    if len(np.unique(labels)) < 2:
        raise MetaaugError("learn_policy: labels name 1 class; expected at least 2")
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise MetaaugError(f"learn_policy: shots = {shots!r}; expected an integer >= 1")
    space = SearchSpace(tuple(cfg.ops or OP_NAMES), channels=images.shape[-1])
    threads = torch.get_num_threads()
    set_threads(images.shape[1])
    try:
        tasks = sample_tasks(images, labels, shots, cfg.ways, cfg.query_per_class, tasks_needed(cfg), seed)
        with tempfile.TemporaryDirectory() as tmp:
            state = search(space, tasks, cfg, recipe, seed, Path(tmp) / "checkpoint.json")
    finally:
        torch.set_num_threads(threads)
    return space.policy(np.array(state.best))
