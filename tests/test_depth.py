"""Pixel depth: every source kind reads every bit depth and mode in full fidelity (metaaug.data.pixels' rule),
or refuses it with one line; images are made here, in each mode Pillow and numpy can give."""

import gzip
import struct

import cv2
import numpy as np
import pytest
from PIL import Image

from metaaug.data import load_source
from metaaug.data.pixels import to_uint8, value_range
from metaaug.errors import MetaaugError

TWELVE_BIT = (np.arange(4096, dtype=np.uint16) % 4096).reshape(64, 64)  # every 12-bit level once


def two_class_folder(root, images: dict) -> str:
    """An image folder: {class: [(file name, PIL image)...]} saved as PNG."""
    for name, items in images.items():
        (root / name).mkdir(parents=True)
        for file, image in items:
            image.save(root / name / file)
    return f"imagefolder:{root}"


def test_twelve_bit_png_keeps_its_levels(tmp_path):
    """A 16-bit PNG holding 12-bit data spreads its 4096 levels over all 256, not the top byte's 16."""
    deep = Image.fromarray(TWELVE_BIT)
    assert deep.mode == "I;16"
    ds = load_source(two_class_folder(tmp_path, {"a": [("x.png", deep)], "b": [("y.png", deep)]}))
    assert len(np.unique(ds.images)) == 256
    assert ds.images[0, ..., 0].tolist() == np.rint(TWELVE_BIT * (255 / 4095)).astype(np.uint8).tolist()


def test_one_scale_for_the_whole_folder(tmp_path):
    """A dark image stays darker than a bright one: the scale is the folder's, not each image's."""
    dark, bright = (TWELVE_BIT // 4).astype(np.uint16), TWELVE_BIT
    ds = load_source(two_class_folder(tmp_path, {"a": [("d.png", Image.fromarray(dark))],
                                                 "b": [("b.png", Image.fromarray(bright))]}))
    assert ds.images[0].max() == 64 and ds.images[1].max() == 255


@pytest.mark.parametrize("make, expected", [
    (lambda: Image.fromarray(TWELVE_BIT).convert("I;16B"), 255),  # big-endian 16-bit
    (lambda: Image.fromarray(np.full((64, 64), 200, np.uint16)), 200),  # 8-bit data in a 16-bit container
    (lambda: Image.fromarray(np.arange(4096, dtype=np.uint8).reshape(64, 64) > 0), 255),  # mode 1
    (lambda: Image.fromarray(np.full((64, 64, 2), 77, np.uint8), "LA"), 77),  # gray + alpha: alpha dropped
], ids=["I;16B", "8-bit-in-16", "1", "LA"])
def test_gray_modes(make, expected, tmp_path):
    image = make()
    ds = load_source(two_class_folder(tmp_path, {"a": [("x.png", image)], "b": [("y.png", image)]}))
    assert ds.images.shape[-1] == 1 and ds.images.max() == expected


@pytest.mark.parametrize("mode", ["RGBA", "CMYK", "P"])
def test_colour_modes(mode, tmp_path):
    rgb = Image.fromarray(np.stack([np.full((8, 8), v, np.uint8) for v in (10, 120, 250)], -1))
    image = rgb.convert(mode) if mode != "P" else rgb.quantize(4)
    suffix = "jpg" if mode == "CMYK" else "png"  # PNG has no CMYK
    ds = load_source(two_class_folder(tmp_path, {"a": [(f"x.{suffix}", image)], "b": [(f"y.{suffix}", image)]}))
    assert ds.images.shape[-1] == 3 and np.abs(ds.images[0, 4, 4].astype(int) - [10, 120, 250]).max() <= 6


def test_sixteen_bit_colour_png_is_read_whole(tmp_path):
    """Pillow reads a 48-bit RGB PNG as 8-bit RGB (its top bytes); the source reads every bit."""
    rgb = np.stack([TWELVE_BIT, TWELVE_BIT // 2, np.zeros_like(TWELVE_BIT)], -1)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        cv2.imwrite(str(tmp_path / name / "x.png"), rgb[..., ::-1])  # OpenCV writes BGR
    assert Image.open(tmp_path / "a" / "x.png").mode == "RGB"
    ds = load_source(f"imagefolder:{tmp_path}")
    assert ds.images.shape == (2, 64, 64, 3) and len(np.unique(ds.images[0, ..., 0])) == 256
    assert ds.images[0, ..., 1].max() == 127  # half the red's range, on the red's scale


def test_mixed_depths_are_refused(tmp_path):
    spec = two_class_folder(tmp_path, {"a": [("x.png", Image.fromarray(TWELVE_BIT))],
                                       "b": [("y.png", Image.fromarray(np.zeros((64, 64), np.uint8)))]})
    with pytest.raises(MetaaugError, match=r"y.png: is 8-bit but .*x.png is 16- or 32-bit integer; expected one bit"):
        load_source(spec)


def test_deep_images_resize_before_scaling(tmp_path):
    spec = two_class_folder(tmp_path, {"a": [("x.png", Image.fromarray(TWELVE_BIT))],
                                       "b": [("y.png", Image.fromarray(TWELVE_BIT))]})
    ds = load_source(spec, image_size=16)
    small = np.asarray(Image.fromarray(TWELVE_BIT.astype(np.float32), "F").resize((16, 16), Image.BILINEAR))
    assert ds.images[0, ..., 0].tolist() == np.rint(np.rint(small) * (255 / 4095)).astype(np.uint8).tolist()


@pytest.mark.parametrize("mode", ["I", "F"])
def test_32_bit_modes_are_read_in_their_units(mode, tmp_path):
    """Pillow writes modes I and F only as TIFF, which the folder source does not list; the decoder reads them."""
    from metaaug.data.imagefolder import read_image

    Image.fromarray(TWELVE_BIT.astype(np.int32 if mode == "I" else np.float32), mode).save(tmp_path / "x.tif")
    image = read_image(tmp_path / "x.tif", None)
    assert image.shape == (64, 64, 1) and image.max() == 4095 and to_uint8(image, "x").max() == 255


@pytest.mark.parametrize("array, expected", [
    (TWELVE_BIT[None], np.rint(TWELVE_BIT * (255 / 4095))),
    (TWELVE_BIT[None].astype(np.int32), np.rint(TWELVE_BIT * (255 / 4095))),
    (TWELVE_BIT[None].astype(np.uint32) * 16, np.rint(TWELVE_BIT * 16 * (255 / 65535))),  # full 16-bit
    (TWELVE_BIT[None].astype(np.float64) / 4095, np.rint(TWELVE_BIT / 4095 * 255)),  # normalised floats
    (TWELVE_BIT[None].astype(np.int16) - 2048, np.rint(TWELVE_BIT * (255 / 4095))),  # signed: [min, max]
    (TWELVE_BIT[None] % 2 == 1, (TWELVE_BIT % 2) * 255),  # bool
], ids=["uint16", "int32", "uint32", "float", "int16-signed", "bool"])
def test_npz_dtypes(array, expected, tmp_path):
    images = np.concatenate([array, array])
    np.savez(tmp_path / "d.npz", images=images, labels=np.array([0, 1]))
    ds = load_source(f"npz:{tmp_path / 'd.npz'}")
    assert ds.images[0, ..., 0].tolist() == expected.astype(np.uint8).tolist()


@pytest.mark.parametrize("code, dtype", [(0x0B, ">i2"), (0x0C, ">i4"), (0x0D, ">f4"), (0x0E, ">f8")])
def test_idx_dtypes(code, dtype, tmp_path):
    images = np.stack([TWELVE_BIT, TWELVE_BIT]).astype(dtype)
    header = struct.pack(">HBB3I", 0, code, 3, *images.shape)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + images.tobytes()))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(struct.pack(">HBBI", 0, 8, 1, 2) + bytes([0, 1]))
    ds = load_source(f"idx:{tmp_path}")
    assert len(np.unique(ds.images[0])) == 256 and ds.images.max() == 255


def test_idx_float_labels_are_refused(tmp_path):
    images = np.zeros((2, 3, 3), np.uint8)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(struct.pack(">HBB3I", 0, 8, 3, 2, 3, 3) + images.tobytes())
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(struct.pack(">HBBI", 0, 0x0D, 1, 2) + bytes(8))
    with pytest.raises(MetaaugError, match="float32 labels; expected integers"):
        load_source(f"idx:{tmp_path}")


def test_the_rule_itself():
    assert value_range(0, 255, False) == (0, 255) and value_range(0, 256, False) == (0, 511)
    assert value_range(0, 0.5, True) == (0, 1) and value_range(-5, 5, False) == (-5, 5)
    assert to_uint8(np.full((2, 2), 7, np.int64), "x").tolist() == [[7, 7], [7, 7]]  # 8-bit in a wide type
    assert to_uint8(np.full((2, 2), -3, np.int8), "x").tolist() == [[0, 0], [0, 0]]  # constant signed
    with pytest.raises(MetaaugError, match="x: images hold NaN or inf; expected finite"):
        to_uint8(np.array([[np.nan]]), "x")
