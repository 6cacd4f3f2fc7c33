"""metaaug's Python API (metaaug/api.py): the README example runs, transforms keep shape and dtype
and draw what the batched sampler draws, bad input is one line."""

import re

import numpy as np
import pytest
import torch

import metaaug
from conftest import REPO
from metaaug.errors import MetaaugError
from metaaug.policies import fixed_policy, save_policy


def test_readme_example_runs():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Python API", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "README.md (Python API)", "exec"), {"__name__": "readme"})


@pytest.fixture
def policy():
    return fixed_policy("trivialaugment", image_channels=3)


def test_per_sample_transform_keeps_dtype_and_draws_what_the_batch_sampler_draws(policy):
    image = torch.randint(0, 256, (3, 12, 12), dtype=torch.uint8)
    out = metaaug.PolicyTransform(policy, seed=3)(image)
    assert out.shape == image.shape and out.dtype == torch.uint8
    same = metaaug.augment_batch(policy, image[None], torch.Generator().manual_seed(3))[0]
    assert torch.equal(out, same)
    as_float = metaaug.PolicyTransform(policy, seed=3)(image.float() / 255)
    assert as_float.dtype == torch.float32 and 0 <= as_float.min() and as_float.max() <= 1
    assert torch.equal((as_float * 255).round().to(torch.uint8), out)


def test_policy_loads_from_file_or_directory(tmp_path, policy):
    save_policy(policy, tmp_path / "policy.json", {})
    assert metaaug.load_policy(tmp_path) == metaaug.load_policy(tmp_path / "policy.json") == policy
    assert metaaug.PolicyTransform(tmp_path).policy == policy
    assert len(metaaug.albumentations_pipeline(tmp_path / "policy.json").transforms) == policy.layers


@pytest.mark.parametrize("call,message", [
    (lambda p: metaaug.PolicyTransform(p)(torch.zeros(5, 8, 8)), r"expected \(C, H, W\) with C 1 or 3"),
    (lambda p: metaaug.augment_batch(p, torch.zeros(3, 8, 8, dtype=torch.uint8)), r"expected \(N, C, H, W\)"),
    (lambda p: metaaug.augment_batch(p, torch.zeros(1, 1, 8, 8, dtype=torch.int32)), "expected uint8"),
    (lambda p: metaaug.learn_policy(np.zeros((4, 8, 8)), np.arange(4)), "expected uint8"),
    (lambda p: metaaug.learn_policy(np.zeros((4, 8, 8), np.uint8), np.arange(3)), r"expected \(4,\) integer"),
    (lambda p: metaaug.learn_policy(np.zeros((4, 8, 8), np.uint8), np.zeros(4, int)), "at least 2"),
    (lambda p: metaaug.learn_policy(np.zeros((4, 8, 8), np.uint8), np.arange(4) % 2, {"cem": {"candidates": 1}}),
     r"^learn_policy: metatrain.cem.candidates = 1 is out of range; expected an integer in \[2, 4096\]$"),
    (lambda p: metaaug.learn_policy(np.zeros((4, 8, 8), np.uint8), np.arange(4) % 2, {"nope": 1}),
     "unknown key metatrain.nope"),
    (lambda p: metaaug.learn_policy(np.zeros((4, 8, 8), np.uint8), np.arange(4) % 2),
     "has 2 images; expected more than tasks.shots = 5"),
])
def test_bad_input_is_one_line(policy, call, message):
    with pytest.raises(MetaaugError, match=message) as err:
        call(policy)
    assert "\n" not in str(err.value)
