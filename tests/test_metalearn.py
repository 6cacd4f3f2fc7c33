"""Meta-learning: the objective ranks policies sensibly, the search finds a known answer, it resumes."""

import math
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
from metaaug.config import ANCHORS, CemConfig, MetatrainConfig, RaceConfig, TrainConfig
from metaaug.search import SearchSpace, Task, policy_summary, sample_tasks, score, search
from metaaug.ops import OP_NAMES, OPS, apply_ops
from metaaug.policies import Policy

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
    from metaaug.search import explore

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
    cfg = MetatrainConfig(race=RaceConfig(tasks=2, step=2), proxy_epochs=2, workers=1, budget=3.0)
    one = search(SearchSpace(OP_NAMES), tasks, cfg, TrainConfig(epochs=2), 0, tmp_path / "one.json")
    two = search(SearchSpace(OP_NAMES), tasks, cfg.model_copy(update={"workers": 2}), TrainConfig(epochs=2), 0, tmp_path / "two.json")
    assert one.history == two.history and one.best == two.best and one.trainings == two.trainings
    assert one.trainings == 4 * 2  # the four references (TA-Wide, 3 anchors), raced on both tasks there are


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
    cfg = MetatrainConfig(method="race", race=RaceConfig(tasks=8, step=4, screen_z=0.0, confirm_tasks=4,
                                                         confirm_alpha=0.25), proxy_epochs=40, workers=2, budget=40.0)
    state = search(space, shifted_query_tasks(digits, 16), cfg, SETTINGS, 0, tmp_path / "ckpt.json")
    policy = space.policy(np.array(state.best))
    weight = dict(zip(policy.ops, policy.weights))
    geometric = np.mean([weight[op] for op in ("Rotate", "TranslateX", "TranslateY")])
    colour = np.mean([weight[op] for op in ("Brightness", "Contrast", "Sharpness")])
    assert geometric > 3 * colour, (geometric, colour)
    # round 0: the 4 references on 4 tasks, then those not clearly worse on 4 more; then rounds of moves
    assert state.rounds[0]["candidates"] == 4 and len(state.rounds) >= 2 and state.done
    assert state.spent <= cfg.budget and len(state.history) >= 2


def test_incumbent_is_kept_unless_clearly_beaten():
    from metaaug.search.paired import clearly_better

    noisy = [0.10, -0.08, 0.05, -0.04]  # mean +0.0075, standard error ~0.04
    assert not clearly_better([0.6 + d for d in noisy], [0.6] * 4, z=1.0)
    assert clearly_better([0.65, 0.66, 0.64, 0.67], [0.60, 0.61, 0.60, 0.62], z=1.0)
    assert not clearly_better([0.59] * 4, [0.60] * 4, z=0.0)


def test_cem_runs_generations_and_keeps_initialisation_in_the_race(digits, tmp_path):
    tasks = sample_tasks(*digits, shots=3, ways=3, query_per_class=5, n_tasks=4, seed=0)
    cfg = MetatrainConfig(method="cem", cem=CemConfig(candidates=4, generations=2, tasks=2, step=2, confirm_tasks=2),
                          proxy_epochs=2, workers=1, budget=100.0)
    state = search(SearchSpace(OP_NAMES), tasks, cfg, TrainConfig(epochs=2), 0, tmp_path / "ckpt.json")
    assert state.generation == 2 and state.trainings >= 2 * 4 * 2 and len(state.rounds) == 2
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
    # proxies of 30 epochs cost ~2 of tiny_params' 4-epoch downstream trainings: a budget for a few rounds
    params = tiny_params(**{"metatrain.race.tasks": 6, "metatrain.race.step": 2, "metatrain.proxy_epochs": 30,
                            "metatrain.budget": 120.0})
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
    assert 0 < partial["trainings"]  # killed after something was scored (the screen or a rung)
    resumed = subprocess.run([*cmd, "metatrain"], cwd=tmp_path, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    search_log = yaml.safe_load((tmp_path / "models/policy/search.json").read_text())
    reference = tmp_path / "reference"
    subprocess.run([*cmd, "metatrain", "--out", str(reference)], cwd=tmp_path, check=True, capture_output=True)
    uninterrupted = yaml.safe_load((reference / "search.json").read_text())
    assert search_log["trainings"] == uninterrupted["trainings"]  # no scored training lost or repeated
    assert search_log["theta"] == uninterrupted["theta"]
    assert (tmp_path / "models/policy/policy.json").read_bytes() != b""
    assert partial["rung"] < len(search_log["history"])
    assert [h["rung"] for h in search_log["history"]] == list(range(len(uninterrupted["history"])))
    assert search_log["finalists"] == uninterrupted["finalists"]
    assert not list((tmp_path / "models").glob(".policy.checkpoint-*.json"))


def test_baselines_project_to_their_points_in_the_space():
    from metaaug.search import anchor_points
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
    assert [name for name, _ in anchor_points(space, ANCHORS)] == list(ANCHORS)
    no_identity = SearchSpace(("Rotate", "Brightness"), channels=1)
    assert no_identity.project(fixed_policy("none")) is None and len(anchor_points(no_identity, ANCHORS)) == 2


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
    from metaaug.search.budget import task_flops

    # a budget that pays for the 4 references on the 4 tasks (16 proxy trainings) and no round of moves
    per_training = task_flops(tasks[0], 40, 16, "auto") / task_flops(tasks[0], SETTINGS.epochs, SETTINGS.width, "auto")
    cfg = MetatrainConfig(race=RaceConfig(tasks=4, step=4), proxy_epochs=40, workers=2, budget=16.5 * per_training)
    space = SearchSpace(OP_NAMES, channels=1)
    state = search(space, tasks, cfg, SETTINGS, 0, tmp_path / "ckpt.json")
    policy = space.policy(np.array(state.best))
    weight = dict(zip(policy.ops, policy.weights))
    # the search log shows the final rung: all four references on the same 4 tasks, the answer first
    assert [f["reference"] for f in state.finalists] == [True] * 4 and {f["tasks"] for f in state.finalists} == {4}
    assert state.trainings == 16 and state.done.startswith("the budget left (0 proxy trainings)")
    assert state.finalists[0]["policy"] == policy_summary(policy)
    # the budget ended the race: the best mean when it leads every other reference by more than one paired
    # standard error; otherwise a tie, the gentlest of the references within one standard error of the best mean
    chosen = state.finalists[0]
    if chosen["reference_rule"] == "BEST_MEAN":
        assert chosen["score"] == max(f["score"] for f in state.finalists)
        assert "more than one paired standard error above every other" in chosen["decision"]
    else:
        assert chosen["reference_rule"] == "TIE" and "the gentlest kept" in chosen["decision"]
    assert state.own.screen["limits"]["histogram"] == 0.0  # the screen saw histogram ops rewrite the cue
    assert sum(w for op, w in weight.items() if OPS[op].group in ("colour", "histogram")) < 0.1, \
        policy_summary(policy)


# --- the decision rule, with a fake scorer (no training) -----------------------------------------------------

class FakeScorer:
    """Scores (policy, task) from a table: candidate k's score on task t is `table[k](t)`."""

    def __init__(self, space: SearchSpace, thetas: list[np.ndarray], table: list, n_tasks: int = 32):
        self.key = {self.policy_key(space.policy(np.array(t))): k for k, t in enumerate(thetas)}
        self.table, self.calls = table, []
        self.tasks = [Task(torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(t)), torch.zeros(6),
                           torch.zeros(1, 1, 8, 8), np.zeros(1), 2, t) for t in range(n_tasks)]

    @staticmethod
    def policy_key(p: Policy) -> tuple:
        return p.ops, tuple(np.round(p.weights, 9)), tuple(np.round(p.mag_high, 9)), p.layers

    def map(self, jobs):
        out = []
        for policy, t in jobs:
            k = self.key[self.policy_key(policy)]
            self.calls.append((k, t))
            out.append((float(self.table[k](t)), 0.0))
        return out


def context(scorer, budget: float = 1000.0, per_training: float = 0.18, state=None, checkpoint=lambda: None,
            method: str = "race", **race):
    """A method's context on a fake scorer: `budget` units at `per_training` units a proxy training."""
    from metaaug.search import METHODS, Budget, Context, SearchState

    space = SearchSpace(OP_NAMES, channels=1)
    settings = {"tasks": 16, "step": 4, "confidence": 0.9, "screen_keep": 0.0, **race}  # the screen: test_search.py
    cfg = MetatrainConfig(method=method, budget=budget, **{method: settings})
    state = state or SearchState(method, own=METHODS[method].state())
    return Context(space, cfg, state, 0, checkpoint, lambda e: None, Budget(budget, per_training), scorer,
                   confirm_start=cfg.settings.tasks)


def race(table, n_refs: int, names=None, explorers=None, labels=None, **race_settings):
    """Race one bracket of candidates 0..len(table)-1 (the first n_refs references, then `explorers`, random
    points by default) with fake scores; tasks 0-15 race, the confirmation pool starts at task 16."""
    from metaaug.search import Entrant, Race, anchor_points

    space = SearchSpace(OP_NAMES, channels=1)
    init = space.initial()
    refs = [init, *(point for _, point in anchor_points(space, ANCHORS))][:n_refs]
    rng = np.random.default_rng(0)
    if explorers is None:
        explorers = [init + 0.3 * rng.standard_normal(space.dim) for _ in range(len(table) - n_refs)]
    names = names or ["trivialaugment", "none", "handcrafted", "randaugment"][:n_refs]
    labels = labels or [f"{k}" for k in range(len(explorers))]
    scorer = FakeScorer(space, refs + list(explorers), table)
    ctx = context(scorer, **race_settings)
    entrants = ([Entrant(p, f"{n}'s point", True, n) for p, n in zip(refs, names)]
                + [Entrant(p, f"explorer: {label}", False) for p, label in zip(explorers, labels)])
    verdict = Race(ctx).bracket(entrants, list(range(16)))
    return verdict.chosen, ctx.state, scorer


def noise(seed: int, sd: float):
    rng = np.random.default_rng(seed)
    values = rng.normal(0, sd, 64)
    return lambda t: values[t]


def test_references_separated_by_a_clear_paired_margin():
    """Two references 1.3 points apart with a per-task spread of 2.1 and a shared task effect: the race
    keeps the better one, drops the other with its tasks recorded, and stops scoring it."""
    task = noise(1, 0.05)
    a, b = noise(2, 0.015), noise(3, 0.015)
    table = [lambda t: 0.90 + task(t) + a(t), lambda t: 0.913 + task(t) + b(t)]
    chosen, state, scorer = race(table, n_refs=2, names=["trivialaugment", "randaugment"])
    assert chosen == 1
    final = state.finalists
    assert final[0]["baseline"] == "randaugment" and final[0]["status"] == "chosen"
    assert final[0]["reference_rule"] == "SEPARATED"
    assert "every other reference was clearly worse" in final[0]["decision"]
    loser = final[1]
    assert loser["baseline"] == "trivialaugment" and loser["status"].startswith("dropped after")
    assert loser["diff_to_chosen"] < 0 and loser["ci_high"] is not None and loser["ci_low"] < loser["diff_to_chosen"]
    assert loser["paired_tasks"] == loser["tasks"] <= 16
    assert len(state.scores[0]) == loser["tasks"]  # no task scored after the drop


def test_references_that_cannot_be_separated_go_to_the_stated_tie_rule():
    """Identical expected scores: no reference is dropped on 16 tasks, and the gentlest is kept (`none`:
    it changes no pixel), whatever the means say."""
    task = noise(1, 0.05)
    table = [lambda t: 0.90 + task(t) + noise(2, 0.02)(t), lambda t: 0.899 + task(t) + noise(3, 0.02)(t)]
    chosen, state, _ = race(table, n_refs=2, names=["trivialaugment", "none"])
    assert state.finalists[0]["baseline"] == "none" and chosen == 1
    assert state.finalists[0]["reference_rule"] == "TIE" and "tie rule" in state.finalists[0]["decision"]
    other = state.finalists[1]
    assert other["tasks"] == 16 and other["status"] == "reference, not chosen"
    assert other["ci_low"] < 0 < other["ci_high"]


def test_tie_rule_does_not_depend_on_which_mean_came_out_higher():
    task = noise(1, 0.05)
    for seed in range(4):
        table = [lambda t, s=seed: 0.90 + task(t) + noise(10 + s, 0.02)(t),
                 lambda t, s=seed: 0.90 + task(t) + noise(20 + s, 0.02)(t)]
        chosen, state, _ = race(table, n_refs=2, names=["trivialaugment", "none"])
        if state.finalists[0]["reference_rule"] == "TIE":
            assert chosen == 1


def test_a_lead_within_one_standard_error_when_the_budget_ends_the_race_is_a_tie():
    """The budget pays for 2 references on 3 tasks only, too few to separate them or show them equivalent (the
    paired difference's standard error is 3.49 points). TrivialAugment-Wide's point leading none's by 1.35 points,
    within one standard error, is a tie: the gentlest (none) is kept, though the best mean (and a margin of δ =
    1 point on the means) would keep TA-Wide. Leading by 4.35 points (1.25 standard errors) it is kept."""
    task, a, b = noise(1, 0.05), noise(2, 0.03), noise(3, 0.03)
    for gap, kept, rule in ((0.02, 1, "TIE"), (0.05, 0, "BEST_MEAN")):
        table = [lambda t, g=gap: 0.90 + g + task(t) + a(t), lambda t: 0.90 + task(t) + b(t)]
        chosen, state, _ = race(table, n_refs=2, names=["trivialaugment", "none"], budget=1.1)
        final = {f["candidate"]: f for f in state.finalists}
        lead = 100 * (final["trivialaugment's point"]["score"] - final["none's point"]["score"])
        assert {f["tasks"] for f in state.finalists} == {3} and lead == pytest.approx(100 * gap - 0.65, abs=0.01)
        assert chosen == kept and state.finalists[0]["reference_rule"] == rule
        assert f"(−{abs(lead):.2f} ± 3.49)" in state.finalists[0]["decision"]
        assert state.finalists[0]["decision"].startswith((
            "none's point kept: tie rule: budget spent after 3 tasks: 2 references not separated, 2 within one "
            "paired standard error of the best mean", "trivialaugment's point kept: budget spent after 3 tasks: 2 "
            "references not separated; the best mean kept, more than one paired standard error above every other"))


def test_explorer_with_a_lucky_small_margin_is_not_accepted():
    """An explorer 0.3 points above the references on average with a spread of 3 points: not clearly better."""
    task = noise(1, 0.05)
    table = [lambda t: 0.90 + task(t)] + [lambda t, k=k: 0.85 + task(t) + noise(k, 0.01)(t) for k in range(7)] \
        + [lambda t: 0.903 + task(t) + noise(99, 0.03)(t)]
    chosen, state, _ = race(table, n_refs=1, names=["trivialaugment"])
    assert chosen == 0
    explorers = [f for f in state.finalists if not f["reference"]]
    assert len(explorers) == 8 and all(f["baseline"] is None for f in explorers)
    assert state.finalists[0]["rule"] == "NOT_SCREENED"
    assert "no explorer passed the screen" in state.finalists[0]["decision"]
    lucky = [f for f in explorers if f["status"] == "explorer, not accepted (not screened)"]
    assert len(lucky) == 1 and lucky[0]["tasks"] == 16 and lucky[0]["ci_low"] < 0 < lucky[0]["ci_high"]
    assert all(f["status"].startswith("dropped after") for f in explorers if f is not lucky[0])


def test_an_explorer_lucky_on_the_tasks_that_chose_it_is_not_confirmed_on_fresh_ones():
    """The winner's curse, made certain: an explorer 5 points up on every racing task (0-15) and level with the
    reference on every other task passes the screen, is confirmed against the reference on fresh tasks only
    (16-21), and is not accepted; the verdict says which rule decided."""
    task = noise(1, 0.05)
    table = [lambda t: 0.90 + task(t)] + [lambda t: 0.90 + task(t) + (0.05 if t < 16 else 0) + noise(9, 0.01)(t)]
    chosen, state, scorer = race(table, n_refs=1, names=["trivialaugment"])
    assert chosen == 0 and state.finalists[0]["rule"] == "NOT_CONFIRMED"
    assert state.confirm["tasks"] == list(range(16, 22)) and {t for _, t in scorer.calls} == set(range(22))
    decision = state.finalists[0]["decision"]
    assert decision.startswith("trivialaugment's point kept") and "passed the screen on 16 tasks but was not " \
        "confirmed" in decision and "on 6 fresh tasks, one-sided paired t" in decision, decision


def test_explorer_with_clear_evidence_replaces_the_reference():
    task = noise(1, 0.05)
    table = [lambda t: 0.90 + task(t)] + [lambda t, k=k: 0.85 + task(t) + noise(k, 0.01)(t) for k in range(7)] \
        + [lambda t: 0.95 + task(t) + noise(99, 0.005)(t)]
    chosen, state, _ = race(table, n_refs=1, names=["trivialaugment"])
    assert chosen == 8 and state.finalists[0]["decision"].startswith("explorer accepted")
    assert state.finalists[0]["rule"] == "CONFIRMED" and state.finalists[0]["confirmed_on"] == 6
    assert "confirmed against trivialaugment's point on 6 fresh tasks" in state.finalists[0]["decision"]
    assert state.confirm["tasks"] == list(range(16, 22))  # the pool after the racing tasks
    ref = next(f for f in state.finalists if f["reference"])
    assert ref["baseline"] == "trivialaugment" and ref["ci_high"] < 0 and ref["paired_tasks"] == 16


def test_race_with_anchors_and_explorers_stays_within_its_training_budget():
    """Default shape (4 references, 8 explorers): a clearly worse `none` is dropped early; the count of
    trainings is what docs/method.md's cost figures assume."""
    task = noise(1, 0.05)
    table = [lambda t: 0.90 + task(t) + noise(2, 0.01)(t), lambda t: 0.80 + task(t) + noise(3, 0.01)(t),
             lambda t: 0.88 + task(t) + noise(4, 0.01)(t), lambda t: 0.913 + task(t) + noise(5, 0.01)(t)] \
        + [lambda t, k=k: 0.85 + task(t) + noise(10 + k, 0.02)(t) for k in range(8)]
    chosen, state, scorer = race(table, n_refs=4)
    assert chosen == 3 and len(state.scores[1]) == 4  # none: dropped on the first look
    assert state.trainings == len(scorer.calls) == len(set(scorer.calls))  # nothing scored twice
    assert {f["baseline"] for f in state.finalists if f["reference"]} == {"trivialaugment", "none", "handcrafted",
                                                                          "randaugment"}
    # all twelve on 4 tasks; then the three references left to at most 16, the explorers (clearly worse) gone
    assert state.trainings <= 12 * 4 + 3 * 12 and all(f["tasks"] == 4 for f in state.finalists if not f["reference"])


def test_a_lone_reference_without_explorers_is_still_scored():
    chosen, state, _ = race([lambda t: 0.9], n_refs=1, names=["trivialaugment"])
    assert chosen == 0 and len(state.finalists) == 1 and state.finalists[0]["tasks"] == 4
    assert state.finalists[0]["rule"] == "NO_EXPLORER" and state.finalists[0]["reference_rule"] == "ONLY"
    assert state.finalists[0]["decision"] == "trivialaugment's point kept: the only reference"


def test_explorers_no_better_than_the_references_are_rarely_accepted():
    """Null brackets (every candidate the same in expectation, a shared task effect, a per-task spread of the
    paired difference of ~2 points): the best explorer passes a screen of z = 1 on the tasks that chose it in
    about a third of the brackets (the winner's curse), but the fresh confirmation tasks let at most about
    confirm_alpha of all brackets through; confirm_alpha = 0.5 lets several times more through."""
    passed, accepted = 0, {0.05: 0, 0.5: 0}  # (indifference 0: explorers reach the screen, the rule under test)
    for rep in range(60):
        rng = np.random.default_rng(rep)
        task, own = rng.normal(0, 0.05, 64), rng.normal(0, 0.015, (10, 64))
        table = [lambda t, k=k: 0.9 + task[t] + own[k, t] for k in range(10)]
        for alpha in accepted:
            chosen, state, _ = race(table, n_refs=4, screen_z=1.0, confirm_alpha=alpha, indifference=0.0)
            accepted[alpha] += chosen >= 4
        passed += state.finalists[0]["rule"] in ("CONFIRMED", "NOT_CONFIRMED")
    assert accepted[0.05] <= 5 and accepted[0.5] > accepted[0.05] and passed >= 10, (passed, accepted)


def test_explorers_are_the_same_moves_for_every_seed():
    """What is raced does not depend on the seed (only the tasks do); extra explorers add a random step."""
    from metaaug.search import explorer_points

    space = SearchSpace(OP_NAMES, channels=1)
    init, moves = space.initial(), len(space.groups) + 2
    a, b = (explorer_points(init, np.full(space.dim, 0.6), moves + 2, space, np.random.default_rng(seed), True,
                            "TA-Wide") for seed in (0, 1))
    assert all(la == lb and np.array_equal(pa, pb) for (la, pa), (lb, pb) in zip(a[:moves], b[:moves]))
    assert not np.array_equal(a[moves][1], b[moves][1]) and "random step" in a[moves][0]
    assert [label for label, _ in a[:3]] == ["TA-Wide, geometric ops at 75 % of the mass",
                                              "TA-Wide, scale ops at 75 % of the mass",
                                              "TA-Wide, colour ops at 75 % of the mass"]


def test_close_explorers_are_decided_by_the_tie_rule_not_by_the_luckier_mean():
    """Two explorers equally good (3 points above the reference): whichever has the higher mean on a
    seed's tasks, the gentler one is the answer, and neither was dropped against the other on 4 tasks."""
    from metaaug.search import explorer_points
    from metaaug.search.scoring import image_change

    space = SearchSpace(OP_NAMES, channels=1)
    labels, points = zip(*explorer_points(space.initial(), np.zeros(space.dim), 8, space,
                                          np.random.default_rng(0), True, "TA-Wide"))
    colour, cutout = list(space.groups).index("colour"), list(space.groups).index("cutout")
    leaders = set()
    for seed in range(5):
        task = noise(seed, 0.05)
        good = {colour: noise(100 + seed, 0.02), cutout: noise(200 + seed, 0.02)}
        table = [lambda t: 0.90 + task(t)] + [
            (lambda t, k=k: 0.93 + task(t) + good[k](t)) if k in good else (lambda t: 0.86 + task(t))
            for k in range(8)]
        chosen, state, scorer = race(table, n_refs=1, names=["trivialaugment"], explorers=points, labels=labels)
        images = torch.cat([scorer.tasks[t].support_x for t in range(4)])
        change = {k: image_change(space.policy(points[k]), images) for k in good}
        assert chosen - 1 == min(good, key=change.get), state.finalists[0]["decision"]
        assert "the contender is the gentlest of the 2 explorers" in state.finalists[0]["decision"]
        assert {len(state.scores[1 + k]) for k in good} == {16}
        leaders.add(max(good, key=lambda k: np.mean(state.scores[1 + k])))
        assert state.finalists[0]["candidate"] == f"explorer: {labels[chosen - 1]}"
    assert leaders == set(good)  # the higher mean changed between seeds; the answer did not


def test_race_stops_when_the_reference_is_decided_and_leads_every_explorer():
    task = noise(1, 0.05)
    table = [lambda t: 0.85 + task(t) + noise(2, 0.01)(t), lambda t: 0.84 + task(t) + noise(3, 0.01)(t),
             lambda t: 0.85 + task(t) + noise(4, 0.01)(t), lambda t: 0.95 + task(t) + noise(5, 0.01)(t)] \
        + [lambda t, k=k: 0.90 + task(t) + noise(10 + k, 0.01)(t) for k in range(8)]
    chosen, state, _ = race(table, n_refs=4)
    assert chosen == 3 and state.trainings == 12 * 4 and state.finalists[0]["reference_rule"] == "SEPARATED"


def test_an_explorer_that_cannot_reach_accept_z_is_dropped_as_futile():
    """0.1 points below the reference with a small spread: not clearly worse (its t-bound stays above 0),
    but far off the track to accept_z, so it is not raced to the end."""
    task = noise(1, 0.05)
    table = [lambda t: 0.90 + task(t), lambda t: 0.899 + task(t) + noise(7, 0.01)(t)]
    chosen, state, _ = race(table, n_refs=1, names=["trivialaugment"], indifference=0.0)  # the rule on its own
    explorer = state.finalists[1]
    assert chosen == 0 and explorer["tasks"] < 16, explorer
    assert explorer["status"].startswith(f"dropped after {explorer['tasks']} tasks: futile"), explorer["status"]
    assert state.finalists[0]["rule"] == "DROPPED" and "0 by the indifference margin of 0 point(s), 0 as clearly worse, 1 as futile" in state.finalists[0]["decision"]


# --- the budget, with a fake scorer whose scores are a known function of the policy ---------------------------

class LandscapeScorer:
    """Scores any policy: a shared task effect, the policy's true value (`value(policy)`), and per-(policy, task)
    noise of `sd`; counts every training it is asked for."""

    def __init__(self, value, sd: float = 0.01, n_tasks: int = 80):
        import zlib

        self.value, self.sd, self.crc, self.calls = value, sd, zlib.crc32, []
        self.tasks = [Task(torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(t)), torch.zeros(6),
                           torch.zeros(1, 1, 8, 8), np.zeros(1), 2, t) for t in range(n_tasks)]
        self.effect = np.random.default_rng(0).normal(0, 0.05, n_tasks)

    def map(self, jobs):
        out = []
        for policy, t in jobs:
            self.calls.append((FakeScorer.policy_key(policy), t))
            key = self.crc(repr(FakeScorer.policy_key(policy)).encode())
            out.append((0.9 + self.effect[t] + self.value(policy) + self.sd * np.random.default_rng([key, t]).normal(),
                        0.0))
        return out


def geometric_value(policy: Policy) -> float:
    """Geometric ops help (4 points at full mass), Identity is neutral, every other op hurts as much:
    handcrafted's point (3/4 geometric, 1/4 Scale) is the best reference, worth 2 points."""
    weight = dict(zip(policy.ops, policy.weights))
    geometric = sum(weight.get(op, 0.0) for op in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"))
    return 0.04 * geometric - 0.04 * (1 - geometric - weight.get("Identity", 0.0))


def run_race(scorer, budget: float, per_training: float = 0.18, state=None, checkpoint=lambda: None, **race):
    """The race method on a fake scorer, `budget` units at `per_training` units a proxy training (the default
    racing settings)."""
    from metaaug.search import METHODS

    ctx = context(scorer, budget, per_training, state, checkpoint, **{"tasks": 18, "step": 3, **race})
    METHODS["race"].run(ctx)
    return ctx.space, ctx.state


def test_the_search_never_spends_more_than_its_budget():
    """Every budget, from barely enough for the references to plenty: the trainings scored (counted by the
    scorer) cost at most the budget, and the state's accounting agrees with the scorer's count."""
    for budget in (0.8, 1, 3, 10, 30):
        scorer = LandscapeScorer(geometric_value)
        _, state = run_race(scorer, budget)
        assert len(scorer.calls) == state.trainings == len(set(scorer.calls))
        assert state.trainings <= math.floor(budget / 0.18 + 1e-9) and state.spent <= budget + 1e-9, budget
        assert state.spent == pytest.approx(state.trainings * 0.18) and state.done


def test_a_budget_too_small_for_the_references_is_a_one_line_config_error():
    from metaaug.errors import MetaaugError

    with pytest.raises(MetaaugError, match=r"^params.yaml: metatrain.budget = 0.5 pays for 2 proxy trainings.*"
                                           r"expected at least 4 .*metatrain.budget >= 0.72$"):
        run_race(LandscapeScorer(geometric_value), 0.5)


def test_more_budget_moves_the_answer_only_uphill():
    """Geometric ops are worth up to 4 points: the references alone cannot find that; refinement from the
    answer (local moves, accepted on clear evidence) climbs, and more budget never ends lower."""
    truth = []
    for budget in (3, 10, 30, 100):
        space, state = run_race(LandscapeScorer(geometric_value), budget)
        truth.append(geometric_value(space.policy(np.array(state.best))))
    assert truth == sorted(truth) and truth[0] == pytest.approx(0.02) and truth[-1] > 0.035, truth


def test_references_within_the_indifference_margin_stop_early_and_go_to_the_tie_rule():
    """All policies equal up to tiny noise: the references are settled (within 1 point) long before
    race_tasks, the gentlest (none) is kept, and the budget is not spent on the tie."""
    _, state = run_race(LandscapeScorer(lambda p: 0.0, sd=0.001), 30)
    first = state.rounds[0]
    assert first["chosen"] == "none's point" and first["reference_rule"] == "TIE"
    assert first["trainings"] == 4 * 3  # one rung: 4 references on 3 tasks
    assert state.done == "round 1 replaced nothing (every explorer dropped)"


def test_an_interrupted_budgeted_search_resumes_to_the_same_answer(tmp_path):
    """Kill the search at each checkpoint in turn (a rung cut short by the budget included); the resumed
    search ends with the same answer, trainings and rounds as the uninterrupted one."""
    from metaaug.search import SearchState
    from metaaug.search.race import RaceState

    _, whole = run_race(LandscapeScorer(geometric_value), 12)
    path = tmp_path / "ckpt.json"
    for stop_at in (1, 2, 3, 5):
        saved = [0]

        def checkpoint(state_ref=[None]):
            saved[0] += 1
            state_ref[0].save(path)
            if saved[0] == stop_at:
                raise KeyboardInterrupt
        state = SearchState("race", own=RaceState())
        checkpoint.__defaults__[0][0] = state
        try:
            run_race(LandscapeScorer(geometric_value), 12, state=state, checkpoint=checkpoint)
        except KeyboardInterrupt:
            pass
        resumed = SearchState.load(path, RaceState)
        _, resumed = run_race(LandscapeScorer(geometric_value), 12, state=resumed)
        assert (resumed.best, resumed.trainings, resumed.rounds) == (whole.best, whole.trainings, whole.rounds)


def test_every_registered_method_is_a_configurable_choice_with_its_own_section():
    from typing import get_args

    from metaaug.search import METHODS

    assert set(get_args(MetatrainConfig.model_fields["method"].annotation)) == set(METHODS)
    for name in METHODS:  # each method's settings are its own section, and its state its own dataclass
        assert isinstance(MetatrainConfig(method=name).settings, RaceConfig)
        assert MetatrainConfig(method=name).settings is getattr(MetatrainConfig(method=name), name)
    assert "candidates" not in MetatrainConfig.model_fields and "candidates" not in RaceConfig.model_fields


def test_a_method_that_forgets_the_budget_is_stopped_at_it_not_crashed(digits, tmp_path, monkeypatch):
    """A new method that scores forever without looking at the budget: the framework refuses the batch the
    budget cannot pay for, before training it, and the search ends with the method's answer so far."""
    from metaaug.search import METHODS, Method

    def greedy(ctx):
        theta = ctx.space.initial()
        for t in range(10 ** 6):
            ctx.score([(theta, t % 4), (theta, (t + 1) % 4)])
            ctx.state.best = list(map(float, theta))
    monkeypatch.setitem(METHODS, "race", Method(greedy, tasks=lambda s: 4, minimum=lambda cfg: 1,
                                               state=METHODS["race"].state))
    tasks = sample_tasks(*digits, shots=3, ways=3, query_per_class=5, n_tasks=4, seed=0)
    cfg = MetatrainConfig(proxy_epochs=2, workers=1, budget=1.0)
    state = search(SearchSpace(OP_NAMES, channels=1), tasks, cfg, TrainConfig(epochs=2), 0, tmp_path / "c.json")
    per_training = state.spent / state.trainings
    assert state.trainings == 2 * math.floor(math.floor(1.0 / per_training + 1e-9) / 2) and state.spent <= 1.0
    assert state.done.startswith("the framework stopped the method at its budget (a batch of 2 proxy trainings")
    assert state.best == list(map(float, SearchSpace(OP_NAMES, channels=1).initial()))
