"""Stage `train_learned`: the learned arm on every target split (`models/downstream/learned/`).

The same training as every fixed arm (metaaug/stages/train.py), as its own stage because it alone reads the
policy and its augmented bank: a new policy reruns this stage, and no train@<arm>.
"""

from __future__ import annotations

from pathlib import Path

from metaaug.config import LEARNED, Params, load_params
from metaaug.declaration import Declaration, Output
from metaaug.stages import PARAMS, train

# train.learned_source: whether it draws from data/augmented/ or samples the policy on the fly
DECLARATION = Declaration(
    "train_learned", inputs={**train.DECLARATION.inputs, "policy": ("metatrain", "models/policy"),
                             "augmented": ("augment", "data/augmented")},
    outputs={"out": Output(f"models/downstream/{LEARNED}", "train_learned")},
    params=(*train.PARAMS_OF_AN_ARM, "train.learned_source"), reads=train.READS, timing=True, splits=True)


def run(params: Params, prepared_dir: Path, learner_dir: Path, out: Path, policy_dir: Path,
        augmented_dir: Path | None = None, timing: Path | None = None) -> None:
    train.run(params, LEARNED, prepared_dir, learner_dir, out, policy_dir, augmented_dir, timing, DECLARATION)


def command(params: Path = PARAMS, prepared: Path = DECLARATION.option("prepared"),
            learner: Path = DECLARATION.option("learner"), policy: Path = DECLARATION.option("policy"),
            augmented: Path = DECLARATION.option("augmented"), out: Path = DECLARATION.option("out"),
            timing: Path = DECLARATION.option("timing")):
    """Train the downstream learner under the learned policy on every target split."""
    run(load_params(params), prepared, learner, out, policy, augmented, timing)
