"""The search's contracts that need no proxy training: baselines fixed by name, budgets refused up front, one op
group without NaN, tasks built lazily."""

import dataclasses
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from conftest import tiny_params
from metaaug import learners
from metaaug.config import validate
from metaaug.errors import MetaaugError
from metaaug.ops import OP_NAMES, OPS
from metaaug.policies import RANDAUGMENT_OPS, TA_WIDE_OPS, fixed_policy
from metaaug.search import SearchSpace, meta_train_tasks, sample_tasks, search_budget
from metaaug.search.space import moves
from metaaug.stages.metatrain import one_downstream_training
from metaaug.tasks import load_prepared

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


def test_a_budget_too_small_for_the_method_is_refused_before_any_store_or_output(tmp_path):
    """metatrain's first check, from the first meta-train task alone (after the learner trial, which writes
    nothing): one line naming the params file and the least budget that pays for the learner the trial chose, exit
    code 2, no MLflow run or output written; a budget just above it is taken."""
    params = tiny_params()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    command = [sys.executable, "-m", "metaaug"]
    subprocess.run([*command, "prepare"], cwd=tmp_path, check=True, capture_output=True)
    store = (tmp_path / "mlflow.db").read_bytes()
    params["metatrain"]["budget"] = 0.05
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(params))
    done = subprocess.run([*command, "metatrain", "--params", "small.yaml"], cwd=tmp_path, capture_output=True,
                          text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    match = re.fullmatch(r"error: small.yaml: metatrain.budget = 0.05 pays for 0 proxy trainings \(\S+ downstream "
                         r"trainings each\); expected at least 4 \(the least the race method needs to give an "
                         r"answer\): metatrain.budget >= (\S+)\n", done.stderr)
    assert match, done.stderr
    assert (tmp_path / "mlflow.db").read_bytes() == store and not (tmp_path / "models").exists()
    least = float(match.group(1))
    cfg = validate({**params, "metatrain": {**params["metatrain"], "budget": least}})
    prepared = load_prepared(tmp_path / "data" / "prepared")
    cfg = learners.with_learner(cfg, learners.choose(prepared, cfg, torch.device("cpu"), 1))  # as metatrain does
    tasks = meta_train_tasks(prepared, cfg.tasks.shots, cfg.metatrain, 1, cfg.seed)
    assert search_budget(tasks, cfg.metatrain, cfg.train, one_downstream_training(prepared, cfg)).trainings >= 4


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
