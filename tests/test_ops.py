"""The op table: torch/Albumentations parity on real images, gradients, batching.

Parity data: scikit-learn's digits (real handwriting, bundled) as uint8, upscaled to
28x28 grey, and a 32x32 RGB composite whose channels are three different digits (so
colour ops have real colour to work on), also cropped to 24x32 (non-square). Albumentations gets the uint8 images, as a user
would; torch gets them as float in [0, 1]. Differences are measured in uint8 levels.
"""

import cv2
import numpy as np
import pytest
import torch

import metaaug  # noqa: F401  (sets NO_ALBUMENTATIONS_UPDATE)
import albumentations as A
from sklearn.datasets import load_digits

from metaaug.errors import MetaaugError
from metaaug.ops import OP_NAMES, OPS, apply_ops

MAGNITUDES = (0.1, 0.5, 0.9)


def op_value(name: str, magnitude: float, sign: float = 1.0) -> float:
    """The op value a normalised magnitude (and sign, for signed ops) maps to."""
    op = OPS[name]
    return magnitude * op.max_value * (sign if op.signed else 1.0)

# (mean, max) absolute difference in uint8 levels, per op, and why it is not 0:
# Albumentations returns uint8 (rounding: <= 0.5 level) and computes some intermediates in
# uint8 too (cv2 RGB2GRAY luma, the contrast mean, LUTs; cv2.warpAffine's bilinear weights
# are fixed point on a 1/32-pixel grid). Integer-valued ops (whole-pixel translations,
# bit masks, thresholds, histogram LUTs) agree exactly.
TOLERANCE = {
    "Identity": (0.0, 0.0),
    "ShearX": (0.5, 1.0), "ShearY": (0.5, 1.0), "Rotate": (0.5, 1.0), "Scale": (0.5, 1.0),
    "TranslateX": (0.0, 0.0), "TranslateY": (0.0, 0.0),
    "Brightness": (1.0, 1.5), "Color": (1.0, 1.5), "Contrast": (1.0, 1.5),
    "Sharpness": (0.5, 1.0),
    "Posterize": (0.0, 0.0), "Solarize": (0.0, 0.0), "Equalize": (0.0, 0.0),
    "AutoContrast": (0.5, 2.0),  # Albumentations' LUT rounds (i - lo) * 255 / (hi - lo)
}
TA_WIDE = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness",
           "Color", "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize")


def _digits_uint8():
    return np.round(load_digits().images * (255 / 16)).astype(np.uint8)


DIGITS = _digits_uint8()
GRAY = np.stack([cv2.resize(d, (28, 28), interpolation=cv2.INTER_LINEAR) for d in DIGITS[:6]])[..., None]
RGB = np.stack([np.stack([cv2.resize(DIGITS[i + c], (32, 32), interpolation=cv2.INTER_LINEAR)
                          for c in range(3)], -1) for i in range(0, 18, 3)])
WIDE = np.ascontiguousarray(RGB[:, 4:28])  # 24 x 32: catches x/y mix-ups in the warps


def to_torch(images_nhwc):
    return torch.from_numpy(images_nhwc).permute(0, 3, 1, 2).float() / 255.0


def to_levels(images_nchw):
    return images_nchw.detach().permute(0, 2, 3, 1).numpy() * 255.0


def torch_apply(images_nhwc, name, magnitude, sign=1.0, generator=None):
    x = to_torch(images_nhwc)
    n = len(x)
    k = torch.full((n,), OP_NAMES.index(name))
    return apply_ops(x, k, torch.full((n,), magnitude), torch.full((n,), float(sign)), generator)


def albumentations_apply(images_nhwc, name, magnitude, sign=1.0):
    value = op_value(name, magnitude, sign)
    transform = OPS[name].albumentations_fn(value, value)
    return np.stack([transform(image=im)["image"].reshape(im.shape) for im in images_nhwc])


def parity_cases():
    for name in OP_NAMES:
        if name == "Cutout":
            continue  # random position: tested separately
        for m in MAGNITUDES:
            for sign in ((1, -1) if OPS[name].signed else (1,)):
                yield pytest.param(name, m, sign, id=f"{name}-{m}-{'+' if sign > 0 else '-'}")


@pytest.mark.parametrize("images", [GRAY, RGB, WIDE], ids=["gray28", "rgb32", "rgb24x32"])
@pytest.mark.parametrize("name,magnitude,sign", list(parity_cases()))
def test_torch_matches_albumentations(images, name, magnitude, sign):
    ours = to_levels(torch_apply(images, name, magnitude, sign))
    theirs = albumentations_apply(images, name, magnitude, sign).astype(np.float64)
    assert ours.shape == theirs.shape == images.shape
    diff = np.abs(ours - theirs)
    mean_tol, max_tol = TOLERANCE[name]
    assert diff.mean() <= mean_tol + 1e-3, f"{name} m={magnitude} sign={sign}: mean diff {diff.mean():.3f} levels"
    assert diff.max() <= max_tol + 1e-3, f"{name} m={magnitude} sign={sign}: max diff {diff.max():.3f} levels"
    # The comparison means something only if the op changed the image. Identity does not;
    # nor does Color on grey, nor AutoContrast on digits that already span 0..255.
    if name not in ("Identity", "AutoContrast") and not (name == "Color" and images.shape[-1] == 1):
        assert np.abs(ours - images).max() >= 1, f"{name} m={magnitude} did nothing"


@pytest.mark.parametrize("magnitude", MAGNITUDES)
def test_cutout_matches_albumentations_hole(magnitude):
    # On a white image the hole is the set of zeros: same square size on both sides.
    white = np.full((1, 28, 28, 1), 255, np.uint8)
    generator = torch.Generator().manual_seed(0)
    ours = to_levels(torch_apply(white, "Cutout", magnitude, generator=generator))[0, ..., 0] == 0
    theirs = albumentations_apply(white, "Cutout", magnitude)[0, ..., 0] == 0
    side = int(op_value("Cutout", magnitude) * 28)
    for hole in (ours, theirs):
        rows, cols = np.nonzero(hole)
        assert hole.sum() == side * side
        assert rows.max() - rows.min() + 1 == side and cols.max() - cols.min() + 1 == side
    # On real data the op zeroes exactly that square and leaves the rest untouched.
    real = to_levels(torch_apply(GRAY[:1], "Cutout", magnitude, generator=torch.Generator().manual_seed(0)))
    np.testing.assert_array_equal(real[0, ..., 0][ours], 0)
    np.testing.assert_allclose(real[0, ..., 0][~ours], GRAY[0, ..., 0][~ours], atol=1e-3)


def test_equalize_edge_cases_match_opencv():
    # A constant channel is left alone; a two-level channel maps to 0 and 255; a digit whose
    # channels differ is equalised per channel -- all exactly as cv2.equalizeHist.
    constant = np.full((1, 8, 8, 1), 77, np.uint8)
    two_level = np.where(DIGITS[:1, ..., None] > 100, 200, 17).astype(np.uint8)
    mixed = np.concatenate([DIGITS[:1, ..., None], constant, two_level], -1)
    for images in (constant, two_level, mixed):
        ours = to_levels(torch_apply(images, "Equalize", 0.0))
        np.testing.assert_array_equal(ours.round(), albumentations_apply(images, "Equalize", 0.0))
        np.testing.assert_allclose(ours, ours.round(), atol=1e-3)


def test_albumentations_twins_leave_the_input_untouched():
    for images in (GRAY, RGB):
        for name in OP_NAMES:
            before = images.copy()
            albumentations_apply(images, name, 0.7)
            assert np.array_equal(images, before), name


def test_cutout_position_comes_from_generator():
    x = to_torch(GRAY)
    k = torch.full((6,), OP_NAMES.index("Cutout"))
    m, s = torch.full((6,), 0.5), torch.ones(6)
    a = apply_ops(x, k, m, s, torch.Generator().manual_seed(3))
    b = apply_ops(x, k, m, s, torch.Generator().manual_seed(3))
    c = apply_ops(x, k, m, s, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_table_shape():
    assert OP_NAMES[0] == "Identity" and set(TA_WIDE) <= set(OP_NAMES)
    assert {"Cutout", "Scale"} <= set(OP_NAMES) and len(OP_NAMES) == len(set(OP_NAMES))
    for name, op in OPS.items():
        lo = hi = op_value(name, 0.5)
        transform = op.albumentations_fn(lo, hi)
        assert isinstance(transform, A.BasicTransform) and transform.p == 1.0, name
        if op.signed:
            assert isinstance(op.albumentations_fn(-hi, -lo), A.BasicTransform), name


def test_magnitude_zero_is_identity():
    x = to_torch(RGB)
    for name in OP_NAMES:
        if OPS[name].max_value == 0 or name == "Solarize":
            continue
        out = torch_apply(RGB, name, 0.0)
        assert torch.allclose(out, x, atol=1e-5), name
    # Solarize at magnitude 0 is threshold 1.0: like torchvision, only pure white flips.
    out = torch_apply(RGB, "Solarize", 0.0)
    assert torch.equal(out, torch.where(x >= 1.0, 1.0 - x, x))


def test_grayscale_color_is_identity():
    assert torch.equal(torch_apply(GRAY, "Color", 0.9, -1), to_torch(GRAY))


def test_mixed_batch_keeps_order_and_matches_single_op_calls():
    x = to_torch(RGB[:4]).repeat(4, 1, 1, 1)  # 16 images
    names = ["Rotate", "Equalize", "Identity", "Sharpness", "Posterize", "ShearY", "Contrast", "TranslateX"] * 2
    k = torch.tensor([OP_NAMES.index(n) for n in names])
    m = torch.linspace(0.1, 0.9, 16)
    s = torch.tensor([1.0, -1.0] * 8)
    out = apply_ops(x, k, m, s)
    for i in range(16):
        single = apply_ops(x[i:i + 1], k[i:i + 1], m[i:i + 1], s[i:i + 1])
        assert torch.allclose(out[i], single[0], atol=1e-6), names[i]


def test_bad_inputs_raise_one_line_errors():
    x = torch.rand(2, 1, 8, 8)
    k, m, s = torch.zeros(2, dtype=torch.long), torch.zeros(2), torch.ones(2)
    bad = [
        (torch.rand(2, 8, 8), k, m, s),
        (torch.rand(2, 2, 8, 8), k, m, s),
        (x, k[:1], m, s),
        (x, k.float(), m, s),
        (x, torch.tensor([0, len(OP_NAMES)]), m, s),
        (x, torch.tensor([0, -1]), m, s),
    ]
    for args in bad:
        with pytest.raises(MetaaugError) as err:
            apply_ops(*args)
        assert "\n" not in str(err.value)


# --- the op table and the search ------------------------------------------------------------


def test_every_op_belongs_to_a_search_group():
    from metaaug.ops import GROUPS
    from metaaug.search import SearchSpace

    assert {op.group for op in OPS.values()} <= set(GROUPS)
    space = SearchSpace(OP_NAMES, channels=3)  # a new op joins the search with its row: none is left out
    assert sorted(op for members in space.groups.values() for op in members) == sorted(OP_NAMES)
