"""Policies: validation, fixed baselines, torch sampling, JSON and Albumentations export.

The frequency tests check that both sampling paths (torch ``sample_layer`` and the
exported Albumentations pipeline) apply each op as often as the policy says: a
chi-square goodness-of-fit test per path, with fixed seeds (deterministic).
"""

import json
import random

import numpy as np
import pytest
import torch
from scipy import stats

import metaaug  # noqa: F401  (sets NO_ALBUMENTATIONS_UPDATE)
import albumentations as A
from sklearn.datasets import load_digits

from metaaug.errors import MetaaugError
from metaaug.ops import OP_NAMES, OP_TABLE_VERSION, OPS
from metaaug.policies import (FIXED_POLICIES, POLICY_FORMAT_VERSION, TA_WIDE_OPS, Policy, export_albumentations,
                              fixed_policy, load_policy, sample_apply, sample_layer, save_policy, to_albumentations)

# Distinct weights and application probabilities; two ops share a class (Affine) so the
# Albumentations side must be read by position, not by class name.
SKEWED = Policy("skewed", ops=("Identity", "Rotate", "ShearX", "Posterize", "Equalize", "Cutout"),
                weights=(0.1, 0.25, 0.05, 0.3, 0.15, 0.15), prob=(1.0, 0.5, 1.0, 0.8, 0.3, 1.0),
                mag_low=(0.0, 0.2, 0.0, 0.0, 0.0, 0.1), mag_high=(0.0, 0.6, 1.0, 1.0, 0.0, 0.5), layers=2)
P_VALUE = 1e-3


def digits(channels, size=8, n=4):
    images = np.round(load_digits().images[:n * channels] * (255 / 16)).astype(np.uint8)
    images = images.reshape(n, channels, 8, 8).transpose(0, 2, 3, 1)
    if size != 8:
        images = np.repeat(np.repeat(images, size // 8, 1), size // 8, 2)
    return np.ascontiguousarray(images)


def expected_shares(policy):
    """Per non-Identity op: P(drawn and applied); the Identity category takes the rest."""
    shares = {op: w * p for op, w, p in zip(policy.ops, policy.weights, policy.prob) if op != "Identity"}
    return {"Identity": 1.0 - sum(shares.values()), **shares}


def assert_frequencies(counts: dict, policy):
    shares = expected_shares(policy)
    total = sum(counts.values())
    observed = np.array([counts.get(op, 0) for op in shares], dtype=float)
    expected = np.array([shares[op] * total for op in shares])
    assert set(counts) <= set(shares)
    _, p_value = stats.chisquare(observed, expected)
    assert p_value > P_VALUE, f"observed {dict(zip(shares, observed))} vs expected {dict(zip(shares, expected))}"


# --- the Policy spec ----------------------------------------------------------------------

def test_policy_validation_names_the_problem():
    with pytest.raises(MetaaugError, match=r"unknown op 'Blur'; known ops: Identity, ShearX"):
        Policy("p", ("Blur",), (1.0,), (1.0,), (0.0,), (0.0,))
    bad = [
        dict(weights=(0.5,)),                              # length
        dict(weights=(0.7, 0.7)),                          # sum
        dict(prob=(1.5, 1.0)),                             # range
        dict(mag_low=(0.6, 0.0), mag_high=(0.5, 1.0)),     # low > high
        dict(mag_high=(1.0, 1.2)),                         # > 1
        dict(layers=0),
        dict(ops=("Rotate", "Rotate")),
        dict(weights=(float("nan"), 1.0)),
    ]
    good = dict(name="p", ops=("Rotate", "Solarize"), weights=(0.5, 0.5), prob=(1.0, 1.0),
                mag_low=(0.0, 0.0), mag_high=(1.0, 1.0))
    Policy(**good)
    for change in bad:
        with pytest.raises(MetaaugError) as err:
            Policy(**{**good, **change})
        assert "\n" not in str(err.value)


def test_policy_coerces_lists_and_hashes_by_value():
    a = Policy("p", ["Rotate"], [1], [1], [0], [0.5])
    b = Policy("p", ("Rotate",), (1.0,), (1.0,), (0.0,), (0.5,))
    assert a == b and hash(a) == hash(b) and isinstance(a.weights, tuple)


# --- fixed policies -----------------------------------------------------------------------

def test_fixed_policies():
    assert FIXED_POLICIES == ("none", "handcrafted", "randaugment", "trivialaugment")
    ta = fixed_policy("trivialaugment", image_channels=3)
    assert ta.ops == TA_WIDE_OPS and ta.layers == 1 and set(ta.prob) == {1.0}
    assert set(ta.mag_low) == {0.0} and set(ta.mag_high) == {1.0} and len(set(ta.weights)) == 1
    assert "Color" not in fixed_policy("trivialaugment", image_channels=1).ops  # identity on grey

    ra = fixed_policy("randaugment", image_channels=3)
    assert ra.layers == 2 and ra.mag_low == ra.mag_high
    mag = dict(zip(ra.ops, ra.mag_low))
    # M=9 of 30 on RandAugment's scale, e.g. rotate 9 degrees, posterize 8 -> 7 bits.
    assert OPS["Rotate"].max_value * mag["Rotate"] == pytest.approx(9.0)
    assert round(OPS["Posterize"].max_value * mag["Posterize"]) == 1
    assert fixed_policy("randaugment", n=3, m=30).layers == 3

    hand = fixed_policy("handcrafted")
    assert hand.layers == 2 and set(hand.ops) == {"TranslateX", "TranslateY", "Rotate", "Scale"}
    top = {op: OPS[op].max_value * hi for op, hi in zip(hand.ops, hand.mag_high)}
    assert top["TranslateX"] <= 0.1 and top["Rotate"] <= 15 and top["Scale"] <= 0.1

    assert fixed_policy("none").ops == ("Identity",)
    with pytest.raises(MetaaugError, match="known: none, handcrafted, randaugment, trivialaugment"):
        fixed_policy("autoaugment")
    for args in (dict(name="randaugment", m=31), dict(name="handcrafted", rotate=500), dict(name="none", n=2),
                 dict(name="none", image_channels=2)):
        with pytest.raises(MetaaugError):
            fixed_policy(**args)


@pytest.mark.parametrize("name", FIXED_POLICIES)
@pytest.mark.parametrize("channels", [1, 3])
def test_fixed_policies_run_through_both_paths(name, channels, tmp_path):
    policy = fixed_policy(name, image_channels=channels)
    images = digits(channels, size=16)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    out = sample_apply(policy, x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype and 0 <= out.min() and out.max() <= 1
    assert torch.equal(out, sample_apply(policy, x, torch.Generator().manual_seed(0)))
    assert torch.equal(out, x) == (name == "none")

    export_albumentations(policy, tmp_path / "policy.albu.json")
    pipeline = A.load(tmp_path / "policy.albu.json")
    pipeline.set_random_state(np.random.default_rng(0), random.Random(0))
    for image in images:
        result = pipeline(image=image)["image"]
        assert result.shape == image.shape and result.dtype == np.uint8


def test_sample_apply_edge_cases():
    policy = fixed_policy("trivialaugment")
    empty = torch.zeros(0, 1, 8, 8)
    assert sample_apply(policy, empty, torch.Generator()).shape == empty.shape
    x = torch.rand(3, 1, 8, 8)
    assert sample_apply(policy, x).shape == x.shape  # default generator


# --- sampling frequencies -----------------------------------------------------------------

def test_torch_sampling_frequencies():
    generator = torch.Generator().manual_seed(0)
    ops, magnitude, sign = sample_layer(SKEWED, 20000, generator)
    names = [OP_NAMES[k] for k in ops.tolist()]
    assert_frequencies({op: names.count(op) for op in set(names)}, SKEWED)
    rotate = ops == OP_NAMES.index("Rotate")
    assert 0.2 <= magnitude[rotate].min() and magnitude[rotate].max() <= 0.6
    assert magnitude[rotate].mean() == pytest.approx(0.4, abs=0.01)
    assert (sign == 1).float().mean() == pytest.approx(0.5, abs=0.02)


def test_albumentations_export_frequencies(tmp_path):
    export_albumentations(SKEWED, tmp_path / "skewed.json")
    loaded = A.load(tmp_path / "skewed.json")
    replay = A.ReplayCompose(loaded.transforms)  # records which transform ran
    replay.set_random_state(np.random.default_rng(0), random.Random(0))
    image = digits(1)[0]
    counts, rotations = {}, []
    for _ in range(1500):
        tree = replay(image=image)["replay"]
        assert len(tree["transforms"]) == SKEWED.layers
        for layer in tree["transforms"]:  # OneOf; children are in policy.ops order
            ran = [k for k, child in enumerate(layer["transforms"]) if child["applied"]]
            assert len(ran) <= 1
            op = SKEWED.ops[ran[0]] if ran else "Identity"
            counts[op] = counts.get(op, 0) + 1
            if op == "Rotate":
                signs = layer["transforms"][ran[0]]["transforms"][0]["transforms"]
                rotations += [s["params"]["rotate"] for s in signs if s["applied"]]
    assert_frequencies(counts, SKEWED)
    degrees = np.array(rotations)
    assert np.all((np.abs(degrees) >= 0.2 * 135 - 1e-6) & (np.abs(degrees) <= 0.6 * 135 + 1e-6))
    assert 0.4 < (degrees > 0).mean() < 0.6


def test_to_albumentations_structure():
    compose = to_albumentations(SKEWED)
    assert isinstance(compose, A.Compose) and len(compose.transforms) == 2
    layer = compose.transforms[0]
    assert isinstance(layer, A.OneOf)
    assert layer.transforms_ps == pytest.approx(list(SKEWED.weights))
    inner = [child.transforms[0] for child in layer.transforms]
    assert [t.p for t in inner] == list(SKEWED.prob)
    assert isinstance(inner[1], A.OneOf) and len(inner[1].transforms) == 2  # Rotate: +-


# --- files --------------------------------------------------------------------------------

def test_policy_json_round_trip(tmp_path):
    path = tmp_path / "out" / "policy.json"
    provenance = {"git_commit": "abc123", "stage": "metatrain", "outer_steps": 40}
    save_policy(SKEWED, path, provenance)
    assert load_policy(path) == SKEWED
    doc = json.loads(path.read_text())
    assert doc["format_version"] == POLICY_FORMAT_VERSION and doc["op_table_version"] == OP_TABLE_VERSION
    assert doc["provenance"] == provenance and doc["policy"]["ops"] == list(SKEWED.ops)
    assert [p.name for p in path.parent.iterdir()] == ["policy.json"]  # no temp files left


def test_albumentations_export_round_trip(tmp_path):
    path = tmp_path / "policy.albu.json"
    export_albumentations(SKEWED, path)
    loaded = A.load(path)
    assert loaded.to_dict() == to_albumentations(SKEWED).to_dict()
    assert [p.name for p in tmp_path.iterdir()] == ["policy.albu.json"]


def write(tmp_path, content):
    path = tmp_path / f"policy{len(list(tmp_path.iterdir()))}.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_bad_policy_files_give_one_line_errors(tmp_path):
    good = {"format_version": 1, "op_table_version": OP_TABLE_VERSION, "provenance": {},
            "policy": {"name": "p", "ops": ["Rotate"], "weights": [1], "prob": [1], "mag_low": [0],
                       "mag_high": [1], "layers": 1}}
    assert load_policy(write(tmp_path, good)).ops == ("Rotate",)
    cases = {
        "not found": tmp_path / "missing.json",
        "not valid JSON": write(tmp_path, "{not json"),
        "newer than this metaaug": write(tmp_path, {**good, "format_version": 2}),
        "op table version": write(tmp_path, {**good, "op_table_version": OP_TABLE_VERSION + 1}),
        "unknown op 'Warp'": write(tmp_path, {**good, "policy": {**good["policy"], "ops": ["Warp"]}}),
        "must have keys": write(tmp_path, {**good, "policy": {"name": "p"}}),
        "'policy' object": write(tmp_path, [1, 2]),
        "sum to 1": write(tmp_path, {**good, "policy": {**good["policy"], "weights": [0.5]}}),
    }
    for message, path in cases.items():
        with pytest.raises(MetaaugError) as err:
            load_policy(path)
        text = str(err.value)
        assert message in text and str(path) in text and "\n" not in text, text


def test_save_policy_rejects_unserialisable_provenance(tmp_path):
    with pytest.raises(MetaaugError, match="provenance"):
        save_policy(SKEWED, tmp_path / "p.json", {"when": object()})
    assert not list(tmp_path.iterdir())


# --- preview ------------------------------------------------------------------------------

def test_preview_grid_writes_a_png(tmp_path):
    from metaaug.preview import preview_grid

    path = tmp_path / "preview.png"
    preview_grid(digits(3, size=16, n=5), fixed_policy("trivialaugment", 3), path, n_images=8, n_augmented=3)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["preview.png"]
    with pytest.raises(MetaaugError, match="uint8"):
        preview_grid(np.zeros((2, 8, 8, 1), np.float32), fixed_policy("none"), tmp_path / "bad.png")
