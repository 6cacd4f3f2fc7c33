"""Data sources: every format is written as a tiny real file and loaded back; every bad input is one line."""

import io
import pickle
import struct

import numpy as np
import pytest
from PIL import Image

from helpers import CIFAR10_NAMES, CIFAR100_NAMES, cifar_files, idx_bytes, write_cifar_tar, write_idx
from metaaug.data import Dataset, load_source
from metaaug.errors import MetaaugError

RNG = np.random.default_rng(0)


def expect_error(spec: str, names: str, image_size: int | None = None) -> str:
    """Loading fails with a one-line MetaaugError that names ``names`` (a file, folder or param)."""
    with pytest.raises(MetaaugError) as info:
        load_source(spec, image_size)
    message = str(info.value)
    assert "\n" not in message and names in message, message
    return message


def check_dataset(ds: Dataset, shape: tuple, classes: tuple) -> None:
    assert ds.images.shape == shape and ds.images.dtype == np.uint8 and ds.images.flags.c_contiguous
    assert ds.labels.shape == (shape[0],) and ds.labels.dtype == np.int64
    assert ds.classes == classes
    assert set(ds.labels.tolist()) == set(range(len(classes)))


# --- digits -----------------------------------------------------------------


def test_digits():
    ds = load_source("digits")
    check_dataset(ds, (1797, 8, 8, 1), tuple(str(d) for d in range(10)))
    assert ds.source == "digits" and ds.images.max() == 255 and ds.images.min() == 0


def test_digits_resized():
    assert load_source("digits", image_size=16).images.shape == (1797, 16, 16, 1)


# --- image folder -----------------------------------------------------------


def write_image(path, array):
    Image.fromarray(array).save(path)
    return array


def test_imagefolder_gray_png_round_trips(tmp_path):
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
    cat = write_image(tmp_path / "cat" / "a.png", RNG.integers(0, 256, (5, 6), np.uint8))
    dog = write_image(tmp_path / "dog" / "b.PNG", RNG.integers(0, 256, (5, 6), np.uint8))
    (tmp_path / "dog" / ".DS_Store").write_bytes(b"\0junk")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    ds = load_source(f"imagefolder:{tmp_path}")
    check_dataset(ds, (2, 5, 6, 1), ("cat", "dog"))
    assert (ds.images[0, ..., 0] == cat).all() and (ds.images[1, ..., 0] == dog).all()
    assert ds.source == f"imagefolder:{tmp_path}"


def test_imagefolder_one_colour_image_makes_all_rgb(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    gray = write_image(tmp_path / "a" / "g.png", RNG.integers(0, 256, (4, 4), np.uint8))
    rgb = write_image(tmp_path / "b" / "c.png", RNG.integers(0, 256, (4, 4, 3), np.uint8))
    Image.fromarray(np.full((4, 4, 3), 200, np.uint8)).save(tmp_path / "b" / "d.JPEG", quality=95)
    ds = load_source(f"imagefolder:{tmp_path}")
    check_dataset(ds, (3, 4, 4, 3), ("a", "b"))
    assert (ds.images[0] == gray[..., None]).all() and (ds.images[1] == rgb).all()
    assert abs(int(ds.images[2].mean()) - 200) <= 3  # JPEG is lossy


def test_imagefolder_mixed_sizes_need_image_size(tmp_path):
    for name, size in (("a", (5, 7)), ("b", (9, 3))):
        (tmp_path / name).mkdir()
        write_image(tmp_path / name / "x.jpg", RNG.integers(0, 256, size, np.uint8))
    expect_error(f"imagefolder:{tmp_path}", "data.image_size")
    ds = load_source(f"imagefolder:{tmp_path}", image_size=6)
    check_dataset(ds, (2, 6, 6, 1), ("a", "b"))


def test_resize_keeps_a_flat_image_flat(tmp_path):
    for name, value in (("a", 10), ("b", 250)):
        (tmp_path / name).mkdir()
        write_image(tmp_path / name / "x.png", np.full((12, 20, 3), value, np.uint8))
    ds = load_source(f"imagefolder:{tmp_path}", image_size=4)
    assert (ds.images[0] == 10).all() and (ds.images[1] == 250).all()


def two_classes(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        write_image(tmp_path / name / "ok.png", np.zeros((4, 4), np.uint8))
    return tmp_path


def test_imagefolder_corrupt_and_truncated_images(tmp_path):
    two_classes(tmp_path)
    buffer = io.BytesIO()
    Image.fromarray(RNG.integers(0, 256, (64, 64, 3), np.uint8)).save(buffer, "PNG")
    (tmp_path / "a" / "truncated.png").write_bytes(buffer.getvalue()[:300])
    expect_error(f"imagefolder:{tmp_path}", "truncated.png")
    (tmp_path / "a" / "truncated.png").unlink()
    (tmp_path / "b" / "garbage.jpg").write_bytes(b"definitely not a jpeg")
    expect_error(f"imagefolder:{tmp_path}", "garbage.jpg")


def test_imagefolder_empty_class(tmp_path):
    two_classes(tmp_path)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "readme.txt").write_text("no images here")
    expect_error(f"imagefolder:{tmp_path}", str(tmp_path / "c"))


def test_imagefolder_needs_two_classes(tmp_path):
    (tmp_path / "only").mkdir()
    write_image(tmp_path / "only" / "x.png", np.zeros((4, 4), np.uint8))
    assert "at least 2" in expect_error(f"imagefolder:{tmp_path}", str(tmp_path))


def test_missing_paths(tmp_path):
    for kind in ("imagefolder", "idx", "cifar", "npz"):
        expect_error(f"{kind}:{tmp_path / 'nope'}", str(tmp_path / "nope"))
        expect_error(f"{kind}:", kind)


def test_unknown_kind_lists_known_ones():
    message = expect_error("parquet:/x", "parquet")
    assert all(kind in message for kind in ("digits", "imagefolder", "idx", "cifar", "npz"))


@pytest.mark.parametrize("size", [3, 0, -8, 4.5, "32", True])
def test_bad_image_size(size):
    expect_error("digits", "data.image_size", image_size=size)


# --- IDX --------------------------------------------------------------------


def test_idx_raw_and_gz_pairs_concatenate_in_sorted_order(tmp_path):
    train = RNG.integers(0, 256, (3, 5, 4), np.uint8)
    test = RNG.integers(0, 256, (2, 5, 4), np.uint8)
    write_idx(tmp_path, "train", train, np.array([7, 3, 7], np.uint8), gz=True)
    write_idx(tmp_path, "t10k", test, np.array([3, 9], np.uint8), gz=False)
    ds = load_source(f"idx:{tmp_path}")
    check_dataset(ds, (5, 5, 4, 1), ("3", "7", "9"))
    assert (ds.images[..., 0] == np.concatenate([test, train])).all()  # "t10k" sorts before "train"
    assert ds.labels.tolist() == [0, 2, 1, 0, 1]


def test_idx_truncated_bad_magic_and_mismatch(tmp_path):
    images = RNG.integers(0, 256, (4, 3, 3), np.uint8)
    write_idx(tmp_path, "train", images, np.array([0, 1, 0, 1], np.uint8), gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(idx_bytes(images)[:-5])
    assert "truncated" in expect_error(f"idx:{tmp_path}", str(path))
    path.write_bytes(b"\x08\x03" + idx_bytes(images)[2:])
    expect_error(f"idx:{tmp_path}", str(path))
    path.write_bytes(struct.pack(">HBB", 0, 0x0A, 3) + idx_bytes(images)[4:])  # no IDX type has code 0x0a
    assert "0x0a is unknown" in expect_error(f"idx:{tmp_path}", str(path))
    path.write_bytes(idx_bytes(images[:3]))
    expect_error(f"idx:{tmp_path}", "train-labels-idx1-ubyte")
    path.with_name("train-labels-idx1-ubyte").unlink()
    expect_error(f"idx:{tmp_path}", str(path))


def test_idx_corrupt_gzip(tmp_path):
    write_idx(tmp_path, "train", np.zeros((2, 3, 3), np.uint8), np.array([0, 1], np.uint8), gz=True)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:10])
    expect_error(f"idx:{tmp_path}", str(path))


def test_idx_folder_without_pairs(tmp_path):
    expect_error(f"idx:{tmp_path}", str(tmp_path))


# --- CIFAR ------------------------------------------------------------------



@pytest.mark.parametrize("hundred", [False, True])
@pytest.mark.parametrize("as_tar", [False, True])
def test_cifar_archive_and_folder(tmp_path, hundred, as_tar):
    folder, files, images, labels = cifar_files(hundred)
    if as_tar:
        path = tmp_path / "cifar.tar.gz"
        write_cifar_tar(path, folder, files)
    else:
        path = tmp_path / folder
        path.mkdir()
        for name, data in files.items():
            (path / name).write_bytes(data)
    names = CIFAR100_NAMES if hundred else CIFAR10_NAMES
    ds = load_source(f"cifar:{path}")
    check_dataset(ds, (len(images), 32, 32, 3), tuple(n.decode() for n in names))
    assert (ds.images == images).all() and ds.labels.tolist() == labels
    assert load_source(f"cifar:{path}", image_size=8).images.shape == (len(images), 8, 8, 3)


def test_cifar_folder_around_the_extracted_one(tmp_path):
    folder, files, images, _ = cifar_files(hundred=False)
    (tmp_path / folder).mkdir()
    for name, data in files.items():
        (tmp_path / folder / name).write_bytes(data)
    assert (load_source(f"cifar:{tmp_path}").images == images).all()


def test_cifar_truncated_archive(tmp_path):
    folder, files, _, _ = cifar_files(hundred=False)
    path = tmp_path / "cifar-10-python.tar.gz"
    write_cifar_tar(path, folder, files)
    path.write_bytes(path.read_bytes()[:-400])
    expect_error(f"cifar:{path}", str(path))


def test_cifar_missing_batch_corrupt_pickle_and_bad_data(tmp_path):
    folder, files, _, _ = cifar_files(hundred=True)
    path = tmp_path / folder
    path.mkdir()
    for name, data in files.items():
        (path / name).write_bytes(data)
    (path / "test").write_bytes(files["test"][:50])
    expect_error(f"cifar:{path}", "test")
    (path / "test").write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"fine_labels": [0, 1]}))
    assert "3072" in expect_error(f"cifar:{path}", str(path / "test"))
    (path / "test").unlink()
    expect_error(f"cifar:{path}", str(path / "test"))
    (path / "meta").unlink()
    expect_error(f"cifar:{path}", str(path))


def test_cifar_refuses_pickles_that_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "cifar-100-python"
    path.mkdir()
    (path / "meta").write_bytes(pickle.dumps(Evil()))
    assert "builtins.print" in expect_error(f"cifar:{path}", str(path / "meta"))


# --- npz --------------------------------------------------------------------


def test_npz_uint8_gray_with_remapped_labels(tmp_path):
    images = RNG.integers(0, 256, (4, 5, 5), np.uint8)
    np.savez(tmp_path / "d.npz", images=images, labels=np.array([10, -2, 10, 4]))
    ds = load_source(f"npz:{tmp_path / 'd.npz'}")
    check_dataset(ds, (4, 5, 5, 1), ("-2", "4", "10"))
    assert (ds.images[..., 0] == images).all() and ds.labels.tolist() == [2, 0, 2, 1]


def test_npz_float_unit_range_and_class_names(tmp_path):
    images = RNG.random((3, 4, 4, 3)).astype(np.float32)
    np.savez(tmp_path / "d.npz", images=images, labels=np.array([0, 1, 1]), classes=np.array(["cat", "dog"]))
    ds = load_source(f"npz:{tmp_path / 'd.npz'}")
    check_dataset(ds, (3, 4, 4, 3), ("cat", "dog"))
    assert (ds.images == np.rint(images * 255)).all()


def test_npz_float_and_int_pixel_range(tmp_path):
    images = np.array([[[0.0, 2.0]], [[254.6, 17.0]]])  # max > 1: already 0..255
    np.savez(tmp_path / "f.npz", images=images, labels=np.array([0, 1]))
    assert load_source(f"npz:{tmp_path / 'f.npz'}").images[..., 0].tolist() == [[[0, 2]], [[255, 17]]]
    np.savez(tmp_path / "i.npz", images=images.astype(np.int32), labels=np.array([0, 1]))
    assert load_source(f"npz:{tmp_path / 'i.npz'}").images[..., 0].tolist() == [[[0, 2]], [[254, 17]]]


@pytest.mark.parametrize("images, labels, hint", [
    (np.array([[[0.5, np.nan]], [[0.1, 0.2]]]), [0, 1], "NaN"),
    (np.array([[[0.5, np.inf]], [[0.1, 0.2]]]), [0, 1], "NaN"),
    (np.array([[[1j]], [[2j]]]), [0, 1], "expected numbers"),
    (np.array([[["a"]], [["b"]]]), [0, 1], "expected numbers"),
    (np.zeros((2, 3, 3, 2), np.uint8), [0, 1], "C 1 or 3"),
    (np.zeros((2, 3), np.uint8), [0, 1], "(N,H,W)"),
    (np.zeros((3, 3, 3), np.uint8), [0, 1], "one per image"),
    (np.zeros((2, 3, 3), np.uint8), [[0, 1]], "one per image"),
    (np.zeros((2, 3, 3), np.uint8), [0.0, 1.0], "integers"),
    (np.zeros((2, 3, 3), np.uint8), [1, 1], "at least 2"),
    (np.zeros((0, 3, 3), np.uint8), np.zeros(0, int), "no images"),
])
def test_npz_bad_arrays(tmp_path, images, labels, hint):
    np.savez(tmp_path / "bad.npz", images=images, labels=np.array(labels))
    assert hint in expect_error(f"npz:{tmp_path / 'bad.npz'}", str(tmp_path / "bad.npz"))


def test_npz_bad_classes(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, images=np.zeros((2, 3, 3), np.uint8), labels=np.array([0, 2]), classes=np.array(["a", "b"]))
    expect_error(f"npz:{path}", str(path))  # label 2 has no name
    np.savez(path, images=np.zeros((2, 3, 3), np.uint8), labels=np.array([0, 0]), classes=np.array(["a", "b"]))
    assert "without images: b" in expect_error(f"npz:{path}", str(path))


def test_npz_not_an_npz(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, pixels=np.zeros((2, 3, 3)))
    expect_error(f"npz:{path}", str(path))
    path.write_bytes(b"PK\x03\x04 broken zip")
    expect_error(f"npz:{path}", str(path))
    np.save(tmp_path / "a.npy", np.zeros((2, 3, 3)))
    expect_error(f"npz:{tmp_path / 'a.npy'}", str(tmp_path / "a.npy"))
    np.savez(path, images=np.zeros((2, 3, 3)), labels=np.array([0, 1], dtype=object))
    expect_error(f"npz:{path}", str(path))


def test_imagefolder_palette_pngs(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    Image.fromarray(np.array([[0, 1, 255]], np.uint8)).save(tmp_path / "a" / "gray.png")
    palette = Image.new("P", (3, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putdata([0, 1, 0])
    palette.save(tmp_path / "b" / "pal.png", transparency=1)
    ds = load_source(f"imagefolder:{tmp_path}")
    check_dataset(ds, (2, 1, 3, 3), ("a", "b"))
    assert ds.images[0, 0, :, 0].tolist() == [0, 1, 255]  # gray, replicated over RGB
    assert ds.images[1, 0].tolist() == [[255, 0, 0], [0, 0, 255], [255, 0, 0]]


def test_a_new_source_is_one_module(tmp_path):
    """Adding a source is adding its module, as docs/contributing.md says: a copy of the package with one more
    module in metaaug/data/ loads the new kind, and lists it in the unknown-kind error."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import metaaug

    shutil.copytree(Path(metaaug.__file__).parent, tmp_path / "metaaug", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "metaaug" / "data" / "ramp.py").write_text('''"""The `ramp` source: a test's own kind."""
import numpy as np
from metaaug.data.base import stack
from metaaug.data.pixels import to_uint8

KIND = "ramp"
EXPECTED = None


def load(arg, image_size, classes=None):
    images = np.arange(4 * 16, dtype=np.uint16).reshape(4, 4, 4, 1) * 64
    return stack(to_uint8(images, "ramp"), image_size), np.array([0, 1, 0, 1]), ["a", "b"]
''')
    code = ("from metaaug.data import load_source\nds = load_source('ramp')\nprint(ds.images.shape, ds.images.max())\n"
            "try:\n    load_source('nope')\nexcept Exception as exc:\n    print(exc)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)},
                         capture_output=True, text=True, check=True).stdout
    assert out.startswith("(4, 4, 4, 1) 251\n") and "ramp" in out.splitlines()[1]
