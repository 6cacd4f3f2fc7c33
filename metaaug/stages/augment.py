"""Stage `augment`: K augmented copies of every target training-pool image, a versioned dataset
(`data/augmented/`: `images.npy`, `index.npy`, `manifest.json` with SHA-256 digests).

The bank is written one copy at a time straight to disk (metaaug.bank), so memory holds one copy
of the pool, not all of them."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from metaaug import ownership, runner, tracking
from metaaug.bank import write_bank
from metaaug.config import Params, load_params
from metaaug.declaration import Declaration, Output
from metaaug.files import check_free_space, dir_digest
from metaaug.publish import write_json
from metaaug.policies import load_policy
from metaaug.preview import preview_grid
from metaaug.progress import progress
from metaaug.stages import PARAMS
from metaaug.tasks import load_prepared
from metaaug.training import pick_device, set_threads, to_tensor

# train.device: where the copies are drawn (the generator's device decides the draws)
DECLARATION = Declaration(
    "augment", inputs={"prepared": ("prepare", "data/prepared"), "policy": ("metatrain", "models/policy")},
    outputs={"out": Output("data/augmented", "augment")}, params=("seed", "augment", "train.device"))


def run(params: Params, prepared_dir: Path, policy_dir: Path, out: Path) -> None:
    ownership.verify_inputs({"prepare": prepared_dir, "metatrain": policy_dir})  # before anything is read (stage_run reuses the digests)
    prepared = load_prepared(prepared_dir)
    policy = load_policy(policy_dir / "policy.json")
    test = set(prepared.manifest["test"])
    pool = np.array([i for i in range(len(prepared.target_labels)) if i not in test])
    copies = params.augment.copies
    device = pick_device(params.train.device)
    set_threads(prepared.target_images.shape[1])
    logged = {"augment": params.augment.model_dump(), "seed": params.seed, "train.device": params.train.device}
    check_free_space(out, copies * len(pool) * int(np.prod(prepared.target_images.shape[1:])),
                     f"augment ({copies} copies of {len(pool)} images of {list(prepared.target_images.shape[1:])})",
                     "fewer augment.copies or a smaller data.image_size")
    paths = {"prepared": prepared_dir, "policy": policy_dir, "out": out}
    with runner.stage_run(DECLARATION, logged, params.tracking.experiment, paths) as stage:
        x = to_tensor(np.asarray(prepared.target_images)[pool]).to(device)
        gen = torch.Generator(device=device).manual_seed(params.seed)
        tmp = stage.output(out)
        start = time.perf_counter()
        # one copy of the pool in memory at a time, appended to the file (metaaug.bank)
        digest = write_bank(tmp / "images.npy", policy, x, copies, gen,
                            lambda r: progress(r, desc="augment copies"))
        seconds = time.perf_counter() - start
        np.save(tmp / "index.npy", pool, allow_pickle=False)
        write_json(tmp / "manifest.json", {"copies": copies, "images": len(pool),
                                           "shape": [*x.shape[2:], x.shape[1]], "sha256": digest,
                                           "policy_sha256": dir_digest(policy_dir / "policy.json")})
        del x
        with tempfile.TemporaryDirectory() as d:
            preview_grid(np.asarray(prepared.target_images)[pool], policy, Path(d) / "augment_preview.png")
            tracking.log_artifacts(Path(d) / "augment_preview.png")
        tracking.log_metrics({"augment.images_per_second": copies * len(pool) / max(seconds, 1e-9)})
        tracking.set_tags({"augment.sha256": digest})
        print(f"augment: {copies} copies of {len(pool)} images -> {out} (sha256 {digest[:12]})")


def command(params: Path = PARAMS, prepared: Path = DECLARATION.option("prepared"),
            policy: Path = DECLARATION.option("policy", "The policy to apply (any metaaug policy directory)."),
            out: Path = DECLARATION.option("out")):
    """Apply a policy (any metaaug policy directory: no further search) to the target training images."""
    run(load_params(params), prepared, policy, out)
