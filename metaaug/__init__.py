"""metaaug: meta-learned image augmentation, proven in a DVC + MLflow pipeline.

The Python API is re-exported here, imported on first use so that `import metaaug` stays light:
load_policy, PolicyTransform, augment_batch, albumentations_pipeline, learn_policy, Policy
(metaaug/api.py), and tracking_uri (metaaug/store.py: the project's MLflow store, as the stages and
load_policy find it, to hand to MLflow's own loaders).
"""

import importlib
import os

# Albumentations checks PyPI for updates on import; metaaug never touches the network.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"

_API = {**dict.fromkeys(("Policy", "load_policy", "PolicyTransform", "augment_batch", "albumentations_pipeline",
                          "learn_policy"), "metaaug.api"), "tracking_uri": "metaaug.store"}


def __getattr__(name: str):
    # Lazy, by module name: the pipeline's stages never use these names, so metaaug/api.py is no dvc.yaml dep of theirs.
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'metaaug' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_API])
