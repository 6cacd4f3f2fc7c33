"""The learned policy as an MLflow pyfunc model: a batch of images in, the same batch augmented out.

MLflow's "models from code": metaaug/registry.py (register_policy) logs this file by path, MLflow
copies it into the model, and loading the model (`mlflow.pyfunc.load_model("models:/<name>@current")`)
runs it, so no pickled metaaug object is stored in the registry. The model is self-contained: the metaaug
modules this file imports are in its `code/` and their third-party distributions, pinned, in its
`requirements.txt` (metaaug/policy_bundle.py), so it loads in an environment MLflow builds from the model
alone; the artifacts beside it are `policy.json`, the Albumentations export and the search evidence. Its
imports sit at the top so that policy_bundle finds them. No metaaug module imports this one
(tests/test_structure.py checks it): with the MLflow modules (store, tracking, datasets, registry) it is the only code that touches MLflow.

Input: uint8 images, (N, H, W, C) with C 1 or 3 (numpy's and Albumentations' layout). Output: the same
shape and dtype, each image augmented with its own draw of ops and magnitudes (metaaug.augment_batch).
Param `seed` (default 0) seeds the draws: the same seed and batch give the same output.
"""

import mlflow
import numpy as np
import torch

from metaaug.api import augment_batch, load_policy
from metaaug.errors import MetaaugError


class PolicyModel(mlflow.pyfunc.PythonModel):
    """Applies the policy in artifact `policy` (metaaug's policy.json) to a batch."""

    def load_context(self, context):
        self.policy = load_policy(context.artifacts["policy"])

    def predict(self, context, model_input: np.ndarray, params: dict | None = None) -> np.ndarray:
        # np.ndarray: MLflow validates nothing from the hint (the logged signature does), and warns of nothing
        images = np.asarray(model_input)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise MetaaugError(f"metaaug policy model: images are {images.dtype} of shape {images.shape}; "
                               "expected uint8 (N, H, W, C) with C 1 or 3")
        seed = int((params or {}).get("seed", 0))
        batch = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        out = augment_batch(self.policy, batch, torch.Generator().manual_seed(seed))
        return out.permute(0, 2, 3, 1).contiguous().numpy()


mlflow.models.set_model(PolicyModel())
