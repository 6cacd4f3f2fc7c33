"""prepare: class split, meta-validation hold-out, few-shot splits, determinism, bad requests."""

import numpy as np
import pytest

from conftest import tiny_config
from metaaug.errors import MetaaugError
from helpers import atomic_dir
from metaaug.tasks import load_prepared, prepare
from metaaug.files import dir_digest


def run_prepare(tmp_path, **overrides):
    params = tiny_config(**overrides)
    out = tmp_path / "prepared"
    with atomic_dir(out) as tmp:
        prepare(params.data, params.tasks, params.seed, tmp)
    return load_prepared(out)


def test_default_split_keeps_target_classes_unseen(tmp_path):
    p = run_prepare(tmp_path, **{"tasks.splits": 3})
    assert p.manifest["meta"]["classes"] == ["0", "1", "2", "3", "4"]
    assert p.manifest["target"]["classes"] == ["5", "6", "7", "8", "9"]
    assert p.meta_images.shape[1:] == (8, 8, 1) and p.meta_images.dtype == np.uint8
    assert 0 < p.meta_is_val.mean() < 0.5
    test = set(p.manifest["test"])
    for i, split in enumerate(p.manifest["splits"]):
        support = np.asarray(split["support"])
        assert len(support) == 25 and not test & set(support.tolist())
        assert np.bincount(p.target_labels[support]).tolist() == [5] * 5
    supports = [tuple(s["support"]) for s in p.manifest["splits"]]
    assert len(set(supports)) == 3  # splits differ


def test_prepare_is_byte_deterministic(tmp_path):
    run_prepare(tmp_path / "a")
    run_prepare(tmp_path / "b")
    assert dir_digest(tmp_path / "a" / "prepared") == dir_digest(tmp_path / "b" / "prepared")


def test_other_target_source(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (60, 12, 12, 3), dtype=np.uint8)
    np.savez(tmp_path / "target.npz", images=images, labels=np.repeat([0, 1, 2], 20))
    p = run_prepare(tmp_path, **{"tasks.target_source": f"npz:{tmp_path / 'target.npz'}", "tasks.target_classes": None})
    assert len(p.manifest["meta"]["classes"]) == 10  # all digits classes are meta-train classes
    assert p.target_images.shape[1:] == (12, 12, 3) and p.meta_images.shape[1:] == (8, 8, 1)


def test_default_target_is_the_last_half_of_any_class_names(tmp_path):
    """Named classes (not digits): without tasks.target_classes the target is the last half in natural order."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("emu", "cat", "fox", "dog", "ant", "bee"):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 256, (8, 8), np.uint8)).save(tmp_path / "imgs" / name / f"{i}.png")
    p = run_prepare(tmp_path, **{"data.source": f"imagefolder:{tmp_path / 'imgs'}", "tasks.shots": 2,
                                 "tasks.splits": 1})
    assert p.manifest["target"]["classes"] == ["dog", "emu", "fox"]
    assert p.manifest["meta"]["classes"] == ["ant", "bee", "cat"]


@pytest.mark.parametrize("overrides, fragment", [
    ({"tasks.target_classes": ["5", "x"]}, "tasks.target_classes names 'x'"),
    ({"tasks.target_classes": ["5"]}, "expected at least 2"),
    ({"tasks.target_classes": [str(i) for i in range(9)]}, "only 1 class left for meta-training"),
    ({"tasks.shots": 500}, "tasks.shots = 500 but target class '5' has only"),
])
def test_impossible_requests_fail_in_one_line(tmp_path, overrides, fragment):
    with pytest.raises(MetaaugError, match=fragment) as err:
        run_prepare(tmp_path, **overrides)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "prepared").exists()  # nothing half-written
