"""train.model: auto — the paired learner trial (metaaug.learners): its rule, its determinism, its record."""

import numpy as np
import pytest
import torch
from conftest import tiny_config
from sklearn.datasets import load_digits

from metaaug import learners
from metaaug.learners import CHEAP, COSTLY, RUNGS
from metaaug.tasks import Prepared


@pytest.mark.parametrize("costly,cheap,final,expected", [
    ([0.62, 0.66, 0.61, 0.64], [0.50, 0.52, 0.51, 0.50], False, COSTLY),  # clearly better: CI above 0
    ([0.50, 0.52, 0.51, 0.50], [0.62, 0.66, 0.61, 0.64], False, CHEAP),  # clearly worse
    ([0.50, 0.60, 0.40, 0.49], [0.50, 0.50, 0.50, 0.50], False, CHEAP),  # behind on average: no more tasks
    ([0.60, 0.45, 0.58, 0.50], [0.50, 0.50, 0.50, 0.50], False, None),  # ahead, CI includes 0: score more
    ([0.60, 0.45, 0.58, 0.50], [0.50, 0.50, 0.50, 0.50], True, CHEAP),  # ... and at the last rung a tie
])
def test_the_resnet_only_when_clearly_better(costly, cheap, final, expected):
    chosen, rule = learners.decide({COSTLY: costly, CHEAP: cheap}, final)
    assert chosen == expected
    assert bool(rule) == (expected is not None)


def digits_prepared() -> Prepared:
    """Meta-train classes 0-4 (a third held back for meta-validation), target classes 5-9 with 3 shots."""
    d = load_digits()
    images = (d.images * (255 / 16)).astype(np.uint8)[..., None]
    meta, target = d.target < 5, d.target >= 5
    is_val = np.zeros(meta.sum(), bool)
    is_val[::3] = True
    support = [int(np.flatnonzero(d.target[target] == c)[i]) for c in range(5, 10) for i in range(3)]
    manifest = {"target": {"classes": [str(c) for c in range(5, 10)]}, "splits": [{"support": support, "seed": 0}]}
    return Prepared(images[meta], d.target[meta], is_val, images[target], d.target[target] - 5, manifest)


def test_trial_is_paired_deterministic_and_recorded(tmp_path):
    prepared = digits_prepared()
    params = tiny_config(**{"train.model": "auto", "train.width": 8, "train.epochs": 3})
    first = learners.choose(prepared, params, torch.device("cpu"), 2)
    assert first["model"] in (CHEAP, COSTLY) and first["rule"]
    assert first["ways"] == 5 and first["shots"] == 3 and first["image"] == [1, 8, 8]  # shaped like the target
    n = first["tasks"]
    assert n in RUNGS and len(first["scores"][CHEAP]) == len(first["scores"][COSTLY]) == n
    assert first["cost_ratio"] > 1  # the ResNet costs more operations a training
    assert set(first["seconds"]) == {CHEAP, COSTLY}
    again = learners.choose(prepared, params, torch.device("cpu"), 1)  # other worker count, same answer
    assert learners.recorded(again) == learners.recorded(first)

    learners.save(tmp_path, first)
    saved = (tmp_path / learners.FILE).read_text()
    assert "seconds" not in saved  # the output stays byte-identical run to run
    known = learners.choose(prepared, params, torch.device("cpu"), 1, tmp_path / learners.FILE)
    assert known == learners.recorded(first) and "seconds" not in known  # read back, not re-run

    other = params.model_copy(update={"train": params.train.model_copy(update={"epochs": 2})})
    rerun = learners.choose(prepared, other, torch.device("cpu"), 1, tmp_path / learners.FILE)
    assert rerun["key"] != first["key"] and "seconds" in rerun  # another recipe: the record does not apply


@pytest.mark.parametrize("forced", [CHEAP, COSTLY])
def test_a_forced_learner_skips_the_trial(forced, tmp_path):
    params = tiny_config(**{"train.model": forced})
    choice = learners.choose(digits_prepared(), params, torch.device("cpu"), 1, tmp_path / learners.FILE)
    assert choice == {"model": forced, "requested": forced, "rule": f"forced by train.model = {forced}"}
    assert learners.with_learner(params, choice).train.model == forced
    assert learners.markdown(choice) == [f"**Downstream learner: {forced}** (forced by train.model = {forced})."]


def test_the_evidence_reads_as_numbers():
    choice = {"model": CHEAP, "requested": "auto", "rule": "r", "tasks": 4, "ways": 5, "shots": 5, "image": [3, 32, 32],
              "mean_accuracy": {CHEAP: 45.6, COSTLY: 44.3}, "cost_ratio": 5.1, "seconds": {CHEAP: 3.0, COSTLY: 15.0},
              "difference": {"mean": -1.3, "ci_low": -2.5, "ci_high": -0.1}}
    text = " ".join(learners.markdown(choice))
    for part in ("small_cnn", "4 meta-train tasks", "5 classes x 5 images, 3x32x32", "small CNN 45.60 %",
                 "ResNet 44.30 %", "-1.30 points, 95 % CI [-2.50, -0.10]", "5.1x", "15.0 s against 3.0 s",
                 "train.model: small_cnn | resnet"):
        assert part in text
