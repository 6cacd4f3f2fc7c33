"""Meta-learning: the objective ranks policies sensibly, the search finds a known answer, it resumes."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import tiny_params
from metaaug.data import load_source
from metaaug.config import ANCHORS, MetatrainConfig, TrainConfig
from metaaug.metalearn import SearchSpace, Task, policy_summary, sample_tasks, score, search
from metaaug.ops import OP_NAMES, OPS, apply_ops
from metaaug.policies import Policy
from metaaug.training import to_tensor

SETTINGS = TrainConfig(epochs=40)


@pytest.fixture(scope="module")
def digits():
    torch.set_num_threads(1)  # small learners: one thread is faster (and much faster on a busy machine)
    ds = load_source("digits")
    keep = ds.labels < 5
    return ds.images[keep], ds.labels[keep]


def one_op(name: str, magnitude: float) -> Policy:
    return Policy(name=name, ops=(name,), weights=(1.0,), prob=(1.0,), mag_low=(magnitude,), mag_high=(magnitude,))


def test_space_initialisation_is_trivialaugment_wide():
    from metaaug.policies import TA_WIDE_OPS, fixed_policy

    for channels in (1, 3):
        policy = SearchSpace(OP_NAMES, channels=channels).policy(SearchSpace(OP_NAMES, channels=channels).initial())
        ta = fixed_policy("trivialaugment", image_channels=channels)
        weight = dict(zip(policy.ops, policy.weights))
        assert np.allclose([weight[op] for op in ta.ops], 1 / len(ta.ops), rtol=1e-3)
        assert all(weight[op] < 1e-3 for op in policy.ops if op not in TA_WIDE_OPS)  # Scale, Cutout start off
        assert all(h == 1.0 for h in policy.mag_high) and all(lo == 0.0 for lo in policy.mag_low)
        assert policy.layers == 1 and ("Color" in policy.ops) == (channels == 3)


def test_every_explored_direction_moves_the_policy():
    """Boosting a group (even one that starts off), halving caps and changing depth each change the policy."""
    from metaaug.metalearn import explore

    space = SearchSpace(OP_NAMES, channels=1)
    init, k = space.initial(), len(space.groups)
    zero = np.zeros(space.dim)
    for c, group in enumerate(space.groups):
        mass = space.masses(explore(init, zero, c, space, np.random.default_rng(0)))
        assert mass[c] > space.masses(init)[c] + 0.1, group
    assert np.allclose(space.caps(explore(init, zero, k, space, np.random.default_rng(0))), 0.5)
    assert space.layers(explore(init, zero, k + 1, space, np.random.default_rng(0))) == 2


def test_parallel_scoring_gives_the_same_search_as_one_process(digits, tmp_path):
    tasks = sample_tasks(*digits, shots=3, ways=3, query_per_class=5, n_tasks=2, seed=0)
    cfg = MetatrainConfig(candidates=3, rungs=2, tasks_first_rung=1, proxy_epochs=2, workers=1)
    one = search(SearchSpace(OP_NAMES), tasks, cfg, TrainConfig(epochs=2), 0, tmp_path / "one.json")
    two = search(SearchSpace(OP_NAMES), tasks, cfg.model_copy(update={"workers": 2}), TrainConfig(epochs=2), 0, tmp_path / "two.json")
    assert one.history == two.history and one.best == two.best and one.trainings == two.trainings
    assert one.trainings == 3 + 2  # three references (TA-Wide, 2 anchors): the better 2 go on to the second task


def test_user_op_space_is_respected():
    space = SearchSpace(("Identity", "Rotate", "TranslateX", "Brightness"))
    assert set(space.policy(space.initial()).ops) == {"Identity", "Rotate", "TranslateX", "Brightness"}


def test_destructive_policy_scores_below_no_augmentation(digits):
    """Solarize at full strength inverts dark-background digits: the meta-objective must punish it."""
    tasks = sample_tasks(*digits, shots=5, ways=5, query_per_class=30, n_tasks=3, seed=0)
    clean = np.mean([score(None, t, SETTINGS) for t in tasks])
    for destroyer in (one_op("Solarize", 1.0), one_op("Equalize", 1.0)):
        destroyed = np.mean([score(destroyer, t, SETTINGS) for t in tasks])
        if destroyer.ops == ("Solarize",):
            assert destroyed < clean - 0.2, (destroyed, clean)
        else:
            assert destroyed <= clean + 0.02, (destroyed, clean)


def shifted_query_tasks(digits, n_tasks: int) -> list[Task]:
    """Tasks whose query images are rotated and shifted: geometric augmentation is the known answer."""
    tasks = sample_tasks(*digits, shots=5, ways=5, query_per_class=30, n_tasks=n_tasks, seed=1)
    gen = torch.Generator().manual_seed(0)
    out = []
    for t in tasks:
        q = t.query_x
        n = len(q)
        rot = apply_ops(q, torch.full((n,), OP_NAMES.index("Rotate")), 0.8 + 0.2 * torch.rand(n, generator=gen),
                        torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0), gen)
        shifted = apply_ops(rot, torch.full((n,), OP_NAMES.index("TranslateX")), torch.full((n,), 0.2),
                            torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0), gen)
        out.append(Task(t.support_x, t.support_y, shifted, t.query_y, t.n_classes, t.seed))
    return out


def test_search_learns_geometry_when_queries_are_rotated_and_shifted(digits, tmp_path):
    """Queries rotated by 24-30 degrees and shifted: geometric augmentation is the known answer."""
    space = SearchSpace(("Identity", "Rotate", "TranslateX", "TranslateY", "Brightness", "Contrast", "Sharpness"),
                        channels=1)
    # accept_z=0: this checks where the search moves; the guard against noise is tested on its own below.
    cfg = MetatrainConfig(method="sh_random", candidates=8, rungs=2, tasks_first_rung=4, proxy_epochs=40, init_std=0.3,
                       accept_z=0.0, workers=2)
    state = search(space, shifted_query_tasks(digits, 8), cfg, SETTINGS, 0, tmp_path / "ckpt.json")
    policy = space.policy(np.array(state.best))
    weight = dict(zip(policy.ops, policy.weights))
    geometric = np.mean([weight[op] for op in ("Rotate", "TranslateX", "TranslateY")])
    colour = np.mean([weight[op] for op in ("Brightness", "Contrast", "Sharpness")])
    assert geometric > 3 * colour, (geometric, colour)
    assert state.trainings == 8 * 4 + (2 + 2) * 4  # rung 2: the better halves of the 4 references and 4 explorers
    assert len(state.history) == 2


def test_incumbent_is_kept_unless_clearly_beaten():
    from metaaug.metalearn import clearly_better

    noisy = [0.10, -0.08, 0.05, -0.04]  # mean +0.0075, standard error ~0.04
    assert not clearly_better([0.6 + d for d in noisy], [0.6] * 4, z=1.0)
    assert clearly_better([0.65, 0.66, 0.64, 0.67], [0.60, 0.61, 0.60, 0.62], z=1.0)
    assert not clearly_better([0.59] * 4, [0.60] * 4, z=0.0)


def test_cem_runs_generations_and_keeps_initialisation_in_the_race(digits, tmp_path):
    tasks = sample_tasks(*digits, shots=3, ways=3, query_per_class=5, n_tasks=4, seed=0)
    cfg = MetatrainConfig(method="cem", candidates=4, rungs=1, tasks_first_rung=2, generations=2, proxy_epochs=2,
                          workers=1)
    state = search(SearchSpace(OP_NAMES), tasks, cfg, TrainConfig(epochs=2), 0, tmp_path / "ckpt.json")
    assert state.generation == 2 and state.trainings == 2 * 4 * 2
    assert len(state.best) == SearchSpace(OP_NAMES).dim


def session_members(session: int) -> list[int]:
    """Live processes of a session (Linux /proc; zombies count as gone)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session and fields[0] != "Z":  # after "(comm)": state, ppid, pgrp, session
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow
def test_metatrain_resumes_after_being_killed(tmp_path):
    """SIGKILL metatrain after its first checkpoint; the rerun resumes and ends as an uninterrupted run does."""
    params = tiny_params(**{"metatrain.candidates": 4, "metatrain.rungs": 3, "metatrain.proxy_epochs": 30,
                            "metatrain.tasks_first_rung": 2})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = [sys.executable, "-m", "metaaug"]
    subprocess.run([*cmd, "prepare"], cwd=tmp_path, check=True, capture_output=True)
    proc = subprocess.Popen([*cmd, "metatrain"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    checkpoints = []
    while time.time() < deadline and not checkpoints:
        checkpoints = list((tmp_path / "models").glob(".policy.checkpoint-*.json")) if (tmp_path / "models").exists() else []
        time.sleep(0.05)
    assert checkpoints, "metatrain wrote no checkpoint"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "models/policy").exists()  # nothing half-written
    deadline = time.time() + 10
    while session_members(proc.pid) and time.time() < deadline:
        time.sleep(0.1)
    assert not session_members(proc.pid), "the scoring workers outlived the killed metatrain"
    partial = yaml.safe_load(checkpoints[0].read_text())
    assert 0 < partial["rung"] < 3
    resumed = subprocess.run([*cmd, "metatrain"], cwd=tmp_path, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    search_log = yaml.safe_load((tmp_path / "models/policy/search.json").read_text())
    reference = tmp_path / "reference"
    subprocess.run([*cmd, "metatrain", "--out", str(reference)], cwd=tmp_path, check=True, capture_output=True)
    uninterrupted = yaml.safe_load((reference / "search.json").read_text())
    assert search_log["trainings"] == uninterrupted["trainings"]  # no scored training lost or repeated
    assert search_log["theta"] == uninterrupted["theta"]
    assert (tmp_path / "models/policy/policy.json").read_bytes() != b""
    assert [h["rung"] for h in search_log["history"]] == [0, 1, 2]
    assert not list((tmp_path / "models").glob(".policy.checkpoint-*.json"))


def test_baselines_project_to_their_points_in_the_space():
    from metaaug.metalearn import anchors
    from metaaug.policies import fixed_policy

    space = SearchSpace(OP_NAMES, channels=1)
    none = space.policy(space.project(fixed_policy("none")))
    assert dict(zip(none.ops, none.weights))["Identity"] == 1.0  # the other groups exactly off, not nearly
    ra, ra_policy = space.policy(space.project(fixed_policy("randaugment"))), fixed_policy("randaugment")
    assert ra.layers == 2
    ra_weight = dict(zip(ra.ops, ra.weights))
    assert all(abs(ra_weight[op] - w) < 1e-3 for op, w in zip(ra_policy.ops, ra_policy.weights))
    for group, members in space.groups.items():  # the learned range [0, cap] keeps RandAugment's mean magnitude
        sized = [m for op, m in zip(ra_policy.ops, ra_policy.mag_high) if op in members and op != "Identity"]
        if sized and group != "histogram":  # AutoContrast/Equalize: magnitude-free, counted at 0 by RandAugment
            assert abs(space.caps(space.project(ra_policy))[list(space.groups).index(group)] / 2 - np.mean(sized)) < 1e-6
    assert len(anchors(space, ANCHORS)) == 3
    no_identity = SearchSpace(("Rotate", "Brightness"), channels=1)
    assert no_identity.project(fixed_policy("none")) is None and len(anchors(no_identity, ANCHORS)) == 2


def test_search_drops_the_ops_that_rewrite_the_label_cue(tmp_path):
    """Classes coded by stroke intensity: TrivialAugment-Wide's colour and histogram ops rewrite the cue
    (it scores ~20 points below no augmentation); the first bracket's baselines without them must win."""
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(0)
    strokes = load_digits().images[:600] / 16.0
    labels = rng.integers(0, 5, len(strokes))
    images = np.clip(strokes * (0.1 + 0.09 * labels)[:, None, None] + rng.normal(0, 0.01, strokes.shape), 0, 1)
    tasks = sample_tasks((images[..., None] * 255).round().astype(np.uint8), labels, shots=5, ways=5,
                         query_per_class=20, n_tasks=4, seed=0)
    cfg = MetatrainConfig(candidates=4, rungs=1, tasks_first_rung=4, proxy_epochs=40, workers=2)
    space = SearchSpace(OP_NAMES, channels=1)
    state = search(space, tasks, cfg, SETTINGS, 0, tmp_path / "ckpt.json")
    policy = space.policy(np.array(state.best))
    weight = dict(zip(policy.ops, policy.weights))
    # the search log shows the final rung: all four references on the same 4 tasks, the answer first
    assert [f["reference"] for f in state.finalists] == [True] * 4 and {f["tasks"] for f in state.finalists} == {4}
    assert state.finalists[0]["policy"] == policy_summary(policy)
    assert state.finalists[0]["score"] == max(f["score"] for f in state.finalists)
    assert sum(w for op, w in weight.items() if OPS[op].group in ("colour", "histogram")) < 0.1, \
        policy_summary(policy)
