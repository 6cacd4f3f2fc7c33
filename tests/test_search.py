"""The search's contracts that need no proxy training: baselines fixed by name, budgets refused up front, one op
group without NaN, tasks built lazily."""

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import yaml

from conftest import tiny_params
from metaaug.config import validate
from metaaug.errors import MetaaugError
from metaaug.ops import OP_NAMES, OPS
from metaaug.policies import RANDAUGMENT_OPS, TA_WIDE_OPS, fixed_policy
from metaaug.search import SearchSpace, minimum_budget, sample_tasks
from metaaug.search.space import moves

# The published op lists (torchvision TrivialAugmentWide / RandAugment._augmentation_space). A baseline's point
# in the search space is fixed by these names alone: it moves only when its definition does.
TORCHVISION_TA_WIDE = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
                       "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize")


def test_the_baselines_definitions_are_their_published_op_lists():
    why = ("{} is defined by name ({}, metaaug/policies.py), after torchvision; this test fails only when that "
           "definition changes. If the change is meant, update TORCHVISION_TA_WIDE here and the docs that quote the "
           "baselines; adding an op to the op table or to a group never needs it.")
    assert TA_WIDE_OPS == TORCHVISION_TA_WIDE, why.format("TrivialAugment-Wide", "TA_WIDE_OPS")
    assert RANDAUGMENT_OPS == TORCHVISION_TA_WIDE, why.format("RandAugment", "RANDAUGMENT_OPS")


@pytest.mark.parametrize("group", ["geometric", "colour", "histogram"])
def test_adding_an_op_to_a_group_leaves_every_baselines_point_where_it_was(monkeypatch, group):
    """A new op in an existing group (the most common extension) starts off in every baseline's point: the
    policies the references stand for keep their ops, weights, magnitudes and depth."""
    model = next(op for op in OPS.values() if op.group == group and op.has_magnitude) if group != "histogram" \
        else OPS["Posterize"]
    before = {name: policy_of(name) for name in ("trivialaugment", "randaugment", "handcrafted", "none")}
    monkeypatch.setitem(OPS, "NewOp", dataclasses.replace(model, name="NewOp"))
    for name, (ops, weights, highs, layers) in before.items():
        new_ops, new_weights, new_highs, new_layers = policy_of(name, (*OP_NAMES, "NewOp"))
        kept = {op: (w, h) for op, w, h in zip(new_ops, new_weights, new_highs) if op != "NewOp"}
        assert "NewOp" in new_ops and dict(zip(new_ops, new_weights))["NewOp"] == 0.0, name
        assert kept == {op: (w, h) for op, w, h in zip(ops, weights, highs)} and new_layers == layers, name


def policy_of(name: str, ops=OP_NAMES):
    space = SearchSpace(tuple(ops), channels=3)
    p = space.policy(space.project(fixed_policy(name, image_channels=3)))
    return p.ops, tuple(round(w, 9) for w in p.weights), tuple(round(h, 9) for h in p.mag_high), p.layers


def test_one_op_group_gives_finite_moves_and_policies():
    """metatrain.ops restricted to one group: no share move (there is no other mass), every other move and
    every policy finite."""
    space = SearchSpace(("Rotate", "ShearX", "TranslateX"), channels=1)
    assert list(space.groups) == ["geometric"]
    labels = [label for label, _ in moves(space, space.initial())]
    assert not any("of the mass" in label for label in labels) and labels
    for _, point in moves(space, space.initial()):
        policy = space.policy(point)
        assert np.isfinite(point).all() and np.isfinite(policy.weights).all()
        assert sum(policy.weights) == pytest.approx(1.0)


def test_a_budget_too_small_for_the_method_is_refused_when_params_are_validated():
    params = tiny_params()
    params["metatrain"]["budget"] = 0.05
    least = minimum_budget(validate(tiny_params()))
    with pytest.raises(MetaaugError, match=rf"^params.yaml: metatrain.budget = 0.05 cannot pay for the least the "
                                           rf"race method needs to give an answer; expected metatrain.budget >= "
                                           rf"{least:.2f} \(docs/search.md, the budget\)$"):
        validate(params)
    params["metatrain"]["budget"] = round(least + 0.01, 2)
    assert validate(params).metatrain.budget > least


def test_the_refusal_comes_before_any_stage_or_mlflow_store(tmp_path):
    params = tiny_params()
    params["metatrain"]["budget"] = 0.05
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    done = subprocess.run([sys.executable, "-m", "metaaug", "metatrain"], cwd=tmp_path, capture_output=True,
                          text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: params.yaml: metatrain.budget = 0.05 cannot pay for")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # no store, no output


def test_meta_train_tasks_are_built_only_when_used():
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 255, (60, 8, 8, 1), dtype=np.uint8), np.repeat(np.arange(6), 10)
    tasks = sample_tasks(images, labels, shots=2, ways=3, query_per_class=3, n_tasks=10**9, seed=4)
    assert len(tasks) == 10**9 and tasks.built == {}
    again = sample_tasks(images, labels, shots=2, ways=3, query_per_class=3, n_tasks=5, seed=4)
    assert np.array_equal(tasks[3].support_x, again[3].support_x) and tasks[3].seed == again[3].seed
    assert list(tasks.built) == [3]
    with pytest.raises(MetaaugError, match="meta-train class 5 has 2 images; expected more than tasks.shots = 2"):
        sample_tasks(images[:52], labels[:52], shots=2, ways=3, query_per_class=3, n_tasks=5, seed=4)


def test_the_screen_caps_or_switches_off_what_destroys_the_class_signal():
    """Shares measured as the screen measures them: a group that keeps < screen_keep at every cap goes off, one
    that keeps it from cap 1/2 on is capped there; every point the race offers is screened the same way, and a
    group without mass keeps its cap (a move that gives it mass is screened again)."""
    from metaaug.search import screen as screening

    space = SearchSpace(OP_NAMES, channels=1)
    probes = screening.probes(space)
    wanted = {"geometric": [0.4, 0.7, 0.9, 1.0], "histogram": [0.45, 0.5, 0.5, 0.5]}
    accuracy = [0.2 + 0.6 * wanted.get(group, [1.0] * 4)[screening.LEVELS.index(cap)] for group, cap, _ in probes]
    screen = screening.judge(space, [(0.8, accuracy)] * 3, n_classes=5, keep=0.6, task_ids=[0, 1, 2])
    assert screen.limits == {"geometric": 0.5, "scale": 1.0, "colour": 1.0, "histogram": 0.0, "cutout": 1.0}
    ta = space.initial()
    screened = screening.apply(space, ta, screen)
    assert screening.changes(space, ta, screened) == "histogram off, geometric ≤ 0.5"
    assert space.caps(screened)[list(space.groups).index("cutout")] == 1.0  # no mass: left for a move to screen
    only_histogram = space.project(dataclasses.replace(fixed_policy("none"), ops=("Equalize",)))
    assert screening.apply(space, only_histogram, screen) is None
