"""tasks.protocol: full — the target is every class with all of its training images; test images never
enter meta-training; the whole pipeline runs and compares the arms over paired seeds."""

import numpy as np
import pytest
import torch

from conftest import tiny_config, tiny_params
from metaaug.search import scoring
from metaaug.cli import main
from metaaug.errors import MetaaugError
from helpers import atomic_dir
from metaaug.files import read_json
from metaaug.stages import metatrain
from metaaug.tasks import load_prepared, prepare


def unique_source(path, classes=4, per_class=14, size=8):
    """An npz whose images are all distinct (random pixels), so any image can be traced to its row."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (classes * per_class, size, size), dtype=np.uint8)
    assert len({im.tobytes() for im in images}) == len(images)
    np.savez(path, images=images, labels=np.arange(classes * per_class) % classes)
    return f"npz:{path}"


def full_config(tmp_path, **overrides):
    return tiny_config(**{"data.source": unique_source(tmp_path / "source.npz"), "tasks.protocol": "full",
                          "tasks.target_classes": None, "tasks.splits": 3, "tasks.shots": 2,
                          "metatrain.workers": 1, "metatrain.query_per_class": 3, **overrides})


def run_prepare(params, out):
    with atomic_dir(out) as tmp:
        prepare(params.data, params.tasks, params.seed, tmp)
    return load_prepared(out)


def as_bytes(x: torch.Tensor) -> set[bytes]:
    """Float (N, C, H, W) images in [0, 1] back to the uint8 rows they were made from."""
    rows = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    return {r.tobytes() for r in rows}


def test_full_target_is_every_class_and_meta_train_is_its_training_split(tmp_path):
    p = run_prepare(full_config(tmp_path), tmp_path / "prepared")
    m = p.manifest
    assert m["protocol"] == "full" and m["target"]["classes"] == m["meta"]["classes"] == ["0", "1", "2", "3"]
    test = np.asarray(m["test"])
    pool = np.setdiff1d(np.arange(len(p.target_labels)), test)
    assert [s["support"] for s in m["splits"]] == [pool.tolist()] * 3 and [s["seed"] for s in m["splits"]] == [0, 1, 2]
    assert np.array_equal(p.meta_images, np.asarray(p.target_images)[pool])  # all training images, nothing else
    assert np.array_equal(m["meta"]["target_rows"], pool)
    test_images = {im.tobytes() for im in np.asarray(p.target_images)[test]}
    assert test_images and not test_images & {im.tobytes() for im in np.asarray(p.meta_images)}


def test_full_prepare_is_byte_deterministic(tmp_path):
    from metaaug.files import dir_digest

    params = full_config(tmp_path)
    run_prepare(params, tmp_path / "a")
    run_prepare(params, tmp_path / "b")
    assert dir_digest(tmp_path / "a") == dir_digest(tmp_path / "b")


def test_test_images_never_reach_metatrain(tmp_path, monkeypatch):
    """Every image a proxy learner trains or is scored on during the search is a training-split image."""
    params = full_config(tmp_path)
    p = run_prepare(params, tmp_path / "prepared")
    test = {im.tobytes() for im in np.asarray(p.target_images)[p.manifest["test"]]}
    train = {im.tobytes() for im in np.asarray(p.meta_images)}
    seen, derived = set(), set()  # derived: the screen's augmented copies of images already seen (query images)
    train_population, predict, sample_apply = scoring.train_population, scoring.predict, scoring.sample_apply

    def spy_train(xs, *args, **kwargs):
        for x in xs:
            seen.update(as_bytes(x))
        return train_population(xs, *args, **kwargs)

    def spy_predict(model, x, *args, **kwargs):
        seen.update(as_bytes(x))
        return predict(model, x, *args, **kwargs)

    def spy_augment(policy, x, *args, **kwargs):
        seen.update(as_bytes(x))
        out = sample_apply(policy, x, *args, **kwargs)
        derived.update(as_bytes(out.clamp(0, 1)))
        return out

    monkeypatch.setattr(scoring, "sample_apply", spy_augment)
    monkeypatch.setattr(scoring, "train_population", spy_train)
    monkeypatch.setattr(scoring, "predict", spy_predict)
    metatrain.run(params, tmp_path / "prepared", tmp_path / "policy", tmp_path / "timing.json")
    assert (tmp_path / "policy" / "policy.json").exists()
    assert seen and seen - derived <= train and not seen & test


def test_full_pipeline_compares_the_arms_over_paired_seeds(tmp_path, monkeypatch):
    import yaml

    params = tiny_params(**{"data.source": unique_source(tmp_path / "source.npz"), "tasks.protocol": "full",
                            "tasks.target_classes": None, "tasks.splits": 3, "tasks.shots": 2,
                            "metatrain.workers": 1, "metatrain.query_per_class": 3})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    for args in (["prepare"], ["learner"], ["metatrain"], ["augment"], *(["train", "--arm", arm] for arm in
                 params["train"]["arms"]), ["train_learned"], ["evaluate"]):
        with pytest.raises(SystemExit) as exit:
            main(args)
        assert exit.value.code == 0, args
    metrics = read_json(tmp_path / "reports" / "evaluation.json")  # metrics.json is the compact headline
    assert {a: s["n"] for a, s in metrics["arms"].items()} == {"none": 3, "trivialaugment": 3, "learned": 3}
    assert metrics["paired"] and all(d["n"] == 3 for d in metrics["paired"].values())
    bank = np.load(tmp_path / "data" / "augmented" / "images.npy", mmap_mode="r")
    assert bank.shape[1] == len(read_json(tmp_path / "data" / "prepared" / "manifest.json")["splits"][0]["support"])


@pytest.mark.parametrize("overrides, fragment", [
    ({"tasks.target_classes": ["0", "x"]}, "tasks.target_classes names 'x'"),
    ({"tasks.target_classes": ["0"]}, "expected at least 2"),
    ({"tasks.shots": 6}, "tasks.shots = 6 but class '0' has only 7 training images"),
])
def test_impossible_full_requests_fail_in_one_line(tmp_path, overrides, fragment):
    with pytest.raises(MetaaugError, match=fragment) as err:
        run_prepare(full_config(tmp_path, **overrides), tmp_path / "prepared")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "prepared").exists()


@pytest.mark.parametrize("raw, message", [
    ({"tasks": {"protocol": "full", "splits": 2, "target_classes": None}},
     "tasks.splits = 2 is too few for tasks.protocol = 'full'"),
    ({"tasks": {"protocol": "full", "target_source": "digits"}}, "tasks.target_source = 'digits', but"),
])
def test_full_protocol_params_that_do_not_go_together(raw, message):
    from metaaug.config import validate

    with pytest.raises(MetaaugError, match=message):
        validate(raw)
