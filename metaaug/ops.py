"""The augmentation op space: one table, each op's torch form beside its Albumentations twin.

This module owns :data:`OPS` (name -> :class:`Op`) and :func:`apply_ops`, the one batched
entry point that applies a different op, magnitude and sign to every image of a batch.
Policies (``metaaug.policies``) are a table of op names plus a sampling rule; they never
touch pixels themselves.

Conventions
-----------
* Images are float (N, C, H, W) in [0, 1], C in {1, 3}, on any device.
* A magnitude m in [0, 1] maps linearly to the op *value* ``m * max_value``; signed ops
  multiply it by a sign of +-1. Magnitude 0 is the identity for every op that has a value
  except Solarize, which (exactly as torchvision's TrivialAugment-Wide bin 0: threshold
  255 with ``>=``) inverts pure white even at magnitude 0. Identity, AutoContrast and
  Equalize ignore the magnitude (max_value 0).
* Geometry is a forward pixel-space affine map about the image centre ((W-1)/2, (H-1)/2),
  bilinear sampling, fill 0 outside the image -- Albumentations ``Affine``'s matrix,
  ``cv2.INTER_LINEAR`` and ``BORDER_CONSTANT`` fill 0. Translations are whole pixels,
  ``trunc(value * side)``, because ``Affine(translate_percent=...)`` truncates with int().
* Cutout fills with 0 (black), the same fill as the geometric ops' out-of-image area,
  so on dark-background data (the digits) it occludes part of the object.
* Colour ops are torchvision's blends (Albumentations ``ColorJitter`` ports them);
  Color is the identity on grey images; Equalize is OpenCV's ``equalizeHist`` per
  channel (Albumentations' default mode).

Ranges follow TrivialAugment-Wide (Mueller & Hutter 2021, "TrivialAugment: Tuning-free
Yet State-of-the-Art Data Augmentation", Table 1 "Wide"; torchvision
``TrivialAugmentWide._augmentation_space``), with translation expressed as a fraction of
the side so policies are resolution-independent: TA-Wide's 32 px were chosen for 32x32
CIFAR, i.e. 32/32 = 1.0 of the side (AutoAugment/RandAugment use 150/331 = 0.45).

Parity with Albumentations is tested per op in tests/test_ops.py on real images.
Where the Albumentations parameter is a non-linear function of the op value (Shear in
degrees = atan(v), the blur sigma of negative Sharpness, integer Posterize bits, Cutout's
independent height/width draws) the twin matches exactly at each value and range end,
but samples the in-between values with a slightly different distribution.

Why not kornia: its ``warp_affine``
costs ~0.3 ms of overhead per call (measured, 25 images of 8x8), more than the warp
itself, so the warp is ``grid_sample`` on a cached base grid (see :func:`_warp`); the colour
ops are one-line formulas whose kornia counterparts use different definitions (kornia's
``adjust_brightness`` adds, ``adjust_contrast`` does not subtract the mean,
``adjust_saturation`` works in HSV, ``sharpness`` keeps the border pixels) from
Albumentations' torchvision-style ``ColorJitter`` and ``cv2.filter2D`` with reflect-101.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

import metaaug  # noqa: F401  (sets NO_ALBUMENTATIONS_UPDATE before albumentations is imported)
import albumentations as A
import cv2

from metaaug.errors import MetaaugError

OP_TABLE_VERSION = 1

# ITU-R 601 luma, as cv2.COLOR_RGB2GRAY and torchvision's rgb_to_grayscale.
_LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class Op:
    """One augmentation: its value range, its search group, its torch form and its Albumentations twin.

    ``torch_fn(images, values, generator)`` applies the op with one value per image;
    ``albumentations_fn(value_low, value_high)`` builds the Albumentations transform (p=1)
    that draws the value uniformly from [low, high] (both of one sign for signed ops).
    ``group`` is the family the policy search moves as one (metaaug.search.SearchSpace):
    every op of the table belongs to one, so a new op joins the search with its row.
    """

    name: str
    max_value: float  # 0: the op has no magnitude (Identity, AutoContrast, Equalize)
    signed: bool
    group: str
    torch_fn: Callable
    albumentations_fn: Callable

    @property
    def has_magnitude(self) -> bool:
        return self.max_value > 0


# ---------------------------------------------------------------------------------------
# Geometry: centred pixel-space affine maps, warped with grid_sample
# ---------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=64)
def _base_grid(h, w, device, dtype):
    """Homogeneous normalised pixel coordinates (1, H*W, 3), as affine_grid(align_corners=True)."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h, dtype=dtype, device=device),
                            torch.linspace(-1, 1, w, dtype=dtype, device=device), indexing="ij")
    return torch.stack([xs, ys, torch.ones_like(xs)], -1).view(1, h * w, 3)


def _warp(images, theta):
    """Warp by grid_sample's inverse map theta (N, 2, 3) in normalised coordinates.

    The forward maps are those of Albumentations ``Affine`` + ``cv2.warpAffine``: pixel
    centres at integer coordinates, hence ``align_corners=True``, where the image centre
    is 0. The grid is one matmul with a cached base grid: ``F.affine_grid`` alone costs
    ~40 us per call on a small batch, more than the warp.
    """
    n, _, h, w = images.shape
    grid = torch.matmul(_base_grid(h, w, images.device, images.dtype), theta.transpose(1, 2))
    return F.grid_sample(images, grid.view(n, h, w, 2), mode="bilinear", padding_mode="zeros",
                         align_corners=True)


@functools.lru_cache(maxsize=256)
def _constant(values, device, dtype):
    """A small constant tensor, made once per device and dtype (creating one costs ~5 us)."""
    return torch.tensor(values, dtype=dtype, device=device)


def _theta(images, terms, identity=True):
    """theta = [I] + sum_k coef_k[:, None, None] * matrix_k, each matrix_k a constant 2x3."""
    theta = None
    for coef, matrix in terms:
        term = coef.view(-1, 1, 1) * _constant(matrix, images.device, images.dtype)
        theta = term if theta is None else theta + term
    if identity:
        theta = theta + _constant(((1, 0, 0), (0, 1, 0)), images.device, images.dtype)
    return theta


def _unit_ratio(images):
    """sx / sy, with (sx, sy) one pixel in normalised coordinates: 2/(W-1), 2/(H-1)."""
    return (images.shape[-2] - 1) / (images.shape[-1] - 1)


def _affine_twin(**kwargs):
    """Albumentations Affine with metaaug's conventions: bilinear, fill 0, same size."""
    return A.Affine(interpolation=cv2.INTER_LINEAR, border_mode=cv2.BORDER_CONSTANT, fill=0,
                    fit_output=False, p=1.0, **kwargs)


def _shear_x(images, values, generator=None):
    # torchvision/PIL ShearX(v): output(x, y) = input(x + v*y, y), i.e. forward x' = x - v*y.
    return _warp(images, _theta(images, [(values, ((0, _unit_ratio(images), 0), (0, 0, 0)))]))


def _shear_y(images, values, generator=None):
    return _warp(images, _theta(images, [(values, ((0, 0, 0), (1 / _unit_ratio(images), 0, 0)))]))


def _shear_twin(axis):
    # Albumentations negates the sampled shear angle and uses tan(angle) in the forward map:
    # degrees(atan(v)) gives exactly x' = x - v*y above.
    def twin(lo, hi):
        deg = (math.degrees(math.atan(lo)), math.degrees(math.atan(hi)))
        return _affine_twin(shear={axis: deg, "xy".replace(axis, ""): (0.0, 0.0)})
    return twin


def _translate_x(images, values, generator=None):
    # Forward x' = x + trunc(v * W) pixels; inverse shift in normalised units of 2/(W-1).
    w = images.shape[-1]
    return _warp(images, _theta(images, [(torch.trunc(values * w), ((0, 0, -2 / (w - 1)), (0, 0, 0)))]))


def _translate_y(images, values, generator=None):
    h = images.shape[-2]
    return _warp(images, _theta(images, [(torch.trunc(values * h), ((0, 0, 0), (0, 0, -2 / (h - 1))))]))


def _translate_twin(axis):
    def twin(lo, hi):
        return _affine_twin(translate_percent={axis: (lo, hi), "xy".replace(axis, ""): (0.0, 0.0)})
    return twin


def _rotate(images, values, generator=None):
    # Albumentations' forward map [[cos, sin], [-sin, cos]] (y down): counter-clockwise for
    # positive degrees, as torchvision. Its inverse is the transpose.
    rad = torch.deg2rad(values)
    r = _unit_ratio(images)
    return _warp(images, _theta(images, [(torch.cos(rad), ((1, 0, 0), (0, 1, 0))),
                                         (torch.sin(rad), ((0, -r, 0), (1 / r, 0, 0)))], identity=False))


def _scale(images, values, generator=None):
    # Forward zoom by 1 + v about the centre; inverse 1 / (1 + v).
    return _warp(images, _theta(images, [(1.0 / (1.0 + values) - 1.0, ((1, 0, 0), (0, 1, 0)))]))


# ---------------------------------------------------------------------------------------
# Colour: torchvision's blend formulas, which Albumentations' ColorJitter ports
# ---------------------------------------------------------------------------------------

def _gray(images):
    """(N, 1, H, W) luma; the image itself when it has one channel."""
    if images.shape[1] == 1:
        return images
    r, g, b = images.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def _col(v):
    return v.view(-1, 1, 1, 1)


def _brightness(images, values, generator=None):
    # factor = 1 + v; blend with black (torchvision adjust_brightness).
    return (images * _col(1.0 + values)).clamp(0, 1)


def _color(images, values, generator=None):
    # factor = 1 + v; blend with the grey image (torchvision adjust_saturation); grey stays grey.
    if images.shape[1] == 1:
        return images
    f = _col(1.0 + values)
    return (f * images + (1 - f) * _gray(images)).clamp(0, 1)


def _contrast(images, values, generator=None):
    # factor = 1 + v; blend with the mean luma of the image (torchvision adjust_contrast).
    f = _col(1.0 + values)
    mean = _gray(images).mean(dim=(1, 2, 3), keepdim=True)
    return (f * images + (1 - f) * mean).clamp(0, 1)


def _jitter_twin(which):
    def twin(lo, hi):
        factors = {"brightness": (1.0, 1.0), "contrast": (1.0, 1.0), "saturation": (1.0, 1.0)}
        factors[which] = (1.0 + lo, 1.0 + hi)
        return A.ColorJitter(**factors, hue=(0.0, 0.0), p=1.0)
    return twin


def _sharpness_kernel(values):
    """Centre, edge-neighbour and corner weights of the 3x3 kernel for each value.

    v >= 0 sharpens: PIL/torchvision's blend with SMOOTH ([[1,1,1],[1,5,1],[1,1,1]]/13) at
    factor 1 + v equals identity + (v/13) * Laplacian, which is Albumentations
    ``Sharpen(alpha=v/13, lightness=1)``. v < 0 blurs: Albumentations cannot blend with a
    blur, so this is a 3x3 Gaussian (``GaussianBlur``) whose centre weight equals that of
    PIL's blend at factor 1 - |v|, i.e. (1 - 2a)^2 = 1 - 8|v|/13 with a the 1-D side weight.
    One of alpha and a is 0, so the two kernels simply add.
    """
    alpha = values.clamp_min(0) / 13.0
    side = 1.0 - torch.sqrt(1.0 - (-values).clamp_min(0) * (8.0 / 13.0))  # 2a
    mid = 1.0 - side  # 1 - 2a
    return mid * mid + 8.0 * alpha, 0.5 * side * mid - alpha, 0.25 * side * side - alpha


def _sharpness(images, values, generator=None):
    # Border as cv2.filter2D / sepFilter2D's default BORDER_REFLECT_101 == torch "reflect".
    centre, edge, corner = (_col(w) for w in _sharpness_kernel(values))
    p = F.pad(images, (1, 1, 1, 1), mode="reflect")
    edges = p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:]
    corners = p[..., :-2, :-2] + p[..., :-2, 2:] + p[..., 2:, :-2] + p[..., 2:, 2:]
    return (centre * images + edge * edges + corner * corners).clamp(0, 1)


def _blur_sigma(v):
    """The Gaussian sigma whose 3-tap kernel has side weight a(v) (see _sharpness_kernel)."""
    a = (1.0 - math.sqrt(1.0 - 8.0 * abs(v) / 13.0)) / 2.0
    ratio = a / (1.0 - 2.0 * a)  # = exp(-1 / (2 sigma^2))
    return max(1.0 / math.sqrt(-2.0 * math.log(ratio)), 1e-3) if ratio > 0 else 1e-3


def _sharpness_twin(lo, hi):
    if lo >= 0:
        return A.Sharpen(alpha=(lo / 13.0, hi / 13.0), lightness=(1.0, 1.0), method="kernel", p=1.0)
    if hi <= 0:
        return A.GaussianBlur(blur_limit=(3, 3), sigma_limit=(_blur_sigma(hi), _blur_sigma(lo)), p=1.0)
    raise ValueError(f"Sharpness value range [{lo}, {hi}] must not cross 0; export each sign separately")


# ---------------------------------------------------------------------------------------
# Piecewise-constant ops
# ---------------------------------------------------------------------------------------

def _levels(images):
    """The uint8 level of each pixel, as an exact float."""
    return torch.round(images * 255.0).clamp(0, 255)


def _posterize(images, values, generator=None):
    # value = bits removed, bits = 8 - round(value) (torchvision TA-Wide: 8 -> 2 bits);
    # keeps the top bits of the uint8 level, as Albumentations' LUT ``level & ~(2^k - 1)``.
    step = _col(2.0 ** torch.round(values.detach()))
    hard = torch.floor(_levels(images) / step) * step / 255.0
    return hard


def _posterize_twin(lo, hi):
    return A.Posterize(num_bits=(8 - round(hi), 8 - round(lo)), p=1.0)


def _solarize(images, values, generator=None):
    # value = 1 - threshold; invert pixels >= threshold (torchvision, Albumentations).
    threshold = _col(1.0 - values.detach())
    hard = torch.where(images >= threshold, 1.0 - images, images)
    return hard


def _solarize_twin(lo, hi):
    return A.Solarize(threshold_range=(1.0 - hi, 1.0 - lo), p=1.0)


def _autocontrast(images, values=None, generator=None):
    # Per channel, stretch [min, max] to [0, 1]; constant channels unchanged
    # (Albumentations AutoContrast(method="pil", cutoff=0); torchvision autocontrast).
    lo = images.amin(dim=(2, 3), keepdim=True)
    hi = images.amax(dim=(2, 3), keepdim=True)
    stretched = ((images - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)
    hard = torch.where(hi > lo, stretched, images)
    return hard


def _equalize(images, values=None, generator=None):
    """Per-channel histogram equalisation: ``cv2.equalizeHist``, i.e. Albumentations
    ``Equalize(mode="cv")`` (its "pil" mode overwrites (H, W, 1) uint8 inputs in place).

    On the uint8 histogram h with lowest level present i0: lut[i] =
    round((cumsum(h)[i] - h[i0]) * (255 / (sum(h) - h[i0]))) in float32, as OpenCV;
    a constant channel is left unchanged.
    """
    n, c, hgt, wid = images.shape
    q = _levels(images).detach().long().reshape(n * c, hgt * wid)
    hist = torch.zeros(n * c, 256, dtype=torch.long, device=images.device)
    hist.scatter_add_(1, q, torch.ones_like(q))
    lowest = hist.gather(1, (hist > 0).long().argmax(1, keepdim=True))
    rest = hgt * wid - lowest
    # float32 division as OpenCV's (255.f / n); `255.0 / t` would multiply by a rounded reciprocal.
    scale = torch.full(rest.shape, 255.0, device=images.device) / rest.clamp_min(1).float()
    lut = torch.round((hist.cumsum(1) - lowest).float() * scale).clamp(0, 255)
    equalised = lut.gather(1, q).view(n, c, hgt, wid).to(images.dtype) / 255.0
    hard = torch.where((rest > 0).view(n, c, 1, 1), equalised, images)
    return hard


def _cutout(images, values, generator=None):
    """Zero one hole of trunc(v*H) x trunc(v*W) pixels placed uniformly inside the image.

    Same size rule and placement as Albumentations ``CoarseDropout`` with one hole and
    fractional sizes (the position itself comes from ``generator``, so it differs).
    """
    n, _, hgt, wid = images.shape
    hole_h = torch.trunc(values.detach() * hgt)
    hole_w = torch.trunc(values.detach() * wid)
    # Drawn on the generator's device (a CPU generator may drive images on a GPU).
    u = torch.rand(n, 2, generator=generator, device=generator.device if generator is not None else images.device)
    u = u.to(images.device, images.dtype)
    top = torch.floor(u[:, 0] * (hgt - hole_h + 1))
    left = torch.floor(u[:, 1] * (wid - hole_w + 1))
    ys = torch.arange(hgt, device=images.device, dtype=images.dtype).view(1, -1, 1)
    xs = torch.arange(wid, device=images.device, dtype=images.dtype).view(1, 1, -1)
    hole = ((ys >= top.view(-1, 1, 1)) & (ys < (top + hole_h).view(-1, 1, 1))
            & (xs >= left.view(-1, 1, 1)) & (xs < (left + hole_w).view(-1, 1, 1)))
    hard = images * (~hole).unsqueeze(1).to(images.dtype)
    return hard


def _cutout_twin(lo, hi):
    return A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=(lo, hi),
                           hole_width_range=(lo, hi), fill=0, p=1.0)


def _identity(images, values=None, generator=None):
    return images


def _no_value(twin):
    return lambda lo=0.0, hi=0.0: twin()


# ---------------------------------------------------------------------------------------
# The table. Insertion order is the op index order (Identity first: "not applied").
# ---------------------------------------------------------------------------------------

OPS: dict[str, Op] = {op.name: op for op in [
    Op("Identity", 0.0, False, "identity", _identity, _no_value(lambda: A.NoOp(p=1.0))),
    # Shear factor (tan of the angle) up to 0.99: TA-Wide.
    Op("ShearX", 0.99, True, "geometric", _shear_x, _shear_twin("x")),
    Op("ShearY", 0.99, True, "geometric", _shear_y, _shear_twin("y")),
    # Fraction of the side up to 1.0: TA-Wide's 32 px on 32 px CIFAR images.
    Op("TranslateX", 1.0, True, "geometric", _translate_x, _translate_twin("x")),
    Op("TranslateY", 1.0, True, "geometric", _translate_y, _translate_twin("y")),
    # Degrees up to 135: TA-Wide.
    Op("Rotate", 135.0, True, "geometric", _rotate, lambda lo, hi: _affine_twin(rotate=(lo, hi))),
    # Enhancement factor 1 +- v, v up to 0.99: TA-Wide.
    Op("Brightness", 0.99, True, "colour", _brightness, _jitter_twin("brightness")),
    Op("Color", 0.99, True, "colour", _color, _jitter_twin("saturation")),
    Op("Contrast", 0.99, True, "colour", _contrast, _jitter_twin("contrast")),
    Op("Sharpness", 0.99, True, "colour", _sharpness, _sharpness_twin),
    # Bits removed up to 6 (8 -> 2 bits): TA-Wide.
    Op("Posterize", 6.0, False, "histogram", _posterize, _posterize_twin),
    # 1 - threshold up to 1 (threshold 255 -> 0): TA-Wide.
    Op("Solarize", 1.0, False, "histogram", _solarize, _solarize_twin),
    Op("AutoContrast", 0.0, False, "histogram", _autocontrast,
       _no_value(lambda: A.AutoContrast(cutoff=0, method="pil", p=1.0))),
    # OpenCV's equalisation (Albumentations' default mode; its "pil" mode is not PIL's either).
    Op("Equalize", 0.0, False, "histogram", _equalize,
       _no_value(lambda: A.Equalize(mode="cv", by_channels=True, p=1.0))),
    # Square side up to 0.5 of the image: DeVries & Taylor 2017 (16 px on 32 px CIFAR-10).
    Op("Cutout", 0.5, False, "cutout", _cutout, _cutout_twin),
    # Zoom factor 1 +- v, v up to 0.25 (metaaug's, for the handcrafted policy; not in TA).
    Op("Scale", 0.25, True, "scale", _scale, lambda lo, hi: _affine_twin(scale=(1.0 + lo, 1.0 + hi),
                                                                     keep_ratio=True)),
]}
OP_NAMES: tuple[str, ...] = tuple(OPS)
# The op groups in the order the policy search lays them out (metaaug.search.SearchSpace).
GROUPS: tuple[str, ...] = ("geometric", "scale", "colour", "histogram", "cutout", "identity")
assert {op.group for op in OPS.values()} <= set(GROUPS), "every op's group must be one of GROUPS"
_IDENTITY = OP_NAMES.index("Identity")


def apply_ops(images, op_index, magnitude, sign, generator=None):
    """Apply op ``op_index[i]`` with ``magnitude[i]`` and ``sign[i]`` to image i.

    Images are grouped by op, one kernel call per op present, and returned in their
    original order. ``generator`` drives the only random choice left, Cutout's
    position.
    """
    counts = _check_batch(images, op_index, magnitude, sign)
    present = [k for k, c in enumerate(counts) if c]
    if not present:  # empty batch
        return images
    max_value, signed = _op_constants(images.device, magnitude.dtype)
    values = magnitude * max_value[op_index] * torch.where(signed[op_index], sign.to(magnitude.dtype), 1.0)
    values = values.to(images.dtype)  # ops compute in the images' dtype
    if len(present) == 1:  # one op for the whole batch: no regrouping
        return _apply_one(present[0], images, values, generator)
    order = torch.argsort(op_index, stable=True)
    out, start = torch.empty_like(images), 0
    for k in present:
        idx = order[start:start + counts[k]]
        start += counts[k]
        out.index_copy_(0, idx, _apply_one(k, images[idx], values[idx], generator))
    return out


def _apply_one(k, images, values, generator):
    return images if k == _IDENTITY else OPS[OP_NAMES[k]].torch_fn(images, values, generator)


@functools.lru_cache(maxsize=16)
def _op_constants(device, dtype):
    """Per op index: max_value and whether the op is signed, as tensors."""
    return (torch.tensor([op.max_value for op in OPS.values()], dtype=dtype, device=device),
            torch.tensor([op.signed for op in OPS.values()], device=device))


def _check_batch(images, op_index, magnitude, sign):
    """Validate shapes; return the number of images per op (one bincount, no extra syncs)."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise MetaaugError(f"apply_ops: images must be (N, C, H, W) with C in {{1, 3}}, got {tuple(images.shape)}")
    if min(images.shape[2:]) < 2:
        raise MetaaugError(f"apply_ops: images must be at least 2x2 pixels, got {tuple(images.shape)}")
    n = images.shape[0]
    for name, t in (("op_index", op_index), ("magnitude", magnitude), ("sign", sign)):
        if t.shape != (n,):
            raise MetaaugError(f"apply_ops: {name} must have shape ({n},), got {tuple(t.shape)}")
    if op_index.dtype != torch.long:
        raise MetaaugError(f"apply_ops: op_index must be int64, got {op_index.dtype}")
    try:
        counts = torch.bincount(op_index, minlength=len(OPS)).tolist()
    except RuntimeError:  # negative index
        counts = []
    if len(counts) != len(OPS):
        raise MetaaugError(f"apply_ops: op_index must be in [0, {len(OPS)}), the indices of OP_NAMES")
    return counts
