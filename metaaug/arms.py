"""What each train arm augments its support images with.

`none` trains on the clean images; the fixed baselines and the learned policy
sample their policy on the fly (metaaug.policies.sample_apply); the learned arm,
by default, draws instead from the versioned bank the augment stage wrote
(`data/augmented/`, read row by row: metaaug.bank), so that what it trained on is exactly the
stored dataset.
The train stage and the report's sample figure use the same augmenters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from metaaug.bank import Bank
from metaaug.files import load_array
from metaaug.policies import fixed_policy, load_policy, sample_apply
from metaaug.training import Augment


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


def load_bank(augmented_dir: Path) -> tuple[Bank, dict[int, int]]:
    """data/augmented/ (metaaug.bank.Bank: rows read on demand) and target index -> row."""
    bank = Bank(augmented_dir)
    index = {int(j): r for r, j in enumerate(load_array(augmented_dir, "index"))}
    return bank, index


def bank_augment(bank: Bank, index: dict[int, int], support: np.ndarray) -> Augment:
    """Each epoch's copy of support image j is one of its K stored augmented copies, drawn at random.

    `train_learner` augments `x.repeat(n, ...)`, so batch row r is support image r % len(support).
    Only the drawn rows are read from disk and converted to float.
    """
    rows = np.array([index[int(j)] for j in support], dtype=np.int64)

    def draw(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        which = np.tile(rows, len(x) // len(rows))
        k = torch.randint(0, bank.copies, (len(x),), generator=gen, device=gen.device).cpu().numpy()
        return bank.rows(k, which).to(x.device)

    return draw
