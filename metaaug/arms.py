"""What each train arm augments its support images with.

`none` trains on the clean images; the fixed baselines and the learned policy
sample their policy on the fly (metaaug.policies.sample_apply); the learned arm,
by default, draws instead from the versioned bank the augment stage wrote
(`data/augmented/`), so that what it trained on is exactly the stored dataset.
The train stage and the report's sample figure use the same augmenters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from metaaug.errors import MetaaugError
from metaaug.policies import fixed_policy, load_policy, sample_apply
from metaaug.training import Augment, to_tensor


def arm_augmenter(arm: str, channels: int, learned_source: str, policy_dir: Path | None,
                  augmented_dir: Path | None) -> Callable[[np.ndarray], Augment | None]:
    """For a train arm: support indices -> its augmentation (None for `none`)."""
    if arm == "none":
        return lambda support: None
    if arm == "learned" and learned_source == "augmented":
        bank, index = load_bank(augmented_dir)
        return lambda support: bank_augment(bank, index, support)
    policy = load_policy(policy_dir / "policy.json") if arm == "learned" else fixed_policy(arm, image_channels=channels)
    return lambda support: (lambda x, gen: sample_apply(policy, x, gen))


def load_bank(augmented_dir: Path) -> tuple[torch.Tensor, dict[int, int]]:
    """data/augmented/ as a (K, N, C, H, W) float tensor and target index -> row."""
    if not (augmented_dir / "images.npy").exists():
        raise MetaaugError(f"{augmented_dir}: no augmented dataset (images.npy missing); expected the output of "
                           "`metaaug augment`, or train.learned_source: on_the_fly")
    images = np.load(augmented_dir / "images.npy")
    k, n = images.shape[:2]
    bank = to_tensor(images.reshape(k * n, *images.shape[2:]))
    index = {int(j): r for r, j in enumerate(np.load(augmented_dir / "index.npy"))}
    return bank.reshape(k, n, *bank.shape[1:]), index


def bank_augment(bank: torch.Tensor, index: dict[int, int], support: np.ndarray) -> Augment:
    """Each epoch's copy of support image j is one of its K stored augmented copies, drawn at random.

    `train_learner` augments `x.repeat(n, ...)`, so batch row r is support image r % len(support).
    """
    rows = torch.tensor([index[int(j)] for j in support])

    def draw(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        which = rows.repeat(len(x) // len(rows))
        k = torch.randint(0, bank.shape[0], (len(x),), generator=gen, device=gen.device).cpu()
        return bank[k, which].to(x.device)

    return draw
