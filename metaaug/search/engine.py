"""The racing engine every method shares: candidates scored on the same tasks rung by rung, the clearly worse
dropped, a reference chosen by paired evidence or the tie rule (the gentlest), and an explorer accepted only
when it beats that reference on FRESH confirmation tasks (a one-sided paired t test), never on the tasks that
chose it. `Race(ctx).bracket(...)` races one bracket; decisions are `Rule` values, the outcome a `Verdict`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np
import torch

from metaaug.search.paired import (SEPARATED, clearly_better, clearly_worse, confirmation, futile, paired_interval,
                                   paired_mean_se, within)
from metaaug.search.registry import Context
from metaaug.search.scoring import image_change
from metaaug.search.space import policy_summary


class Rule(enum.Enum):
    """Which rule decided a bracket: how its reference was chosen, then what became of the explorers."""

    ONLY = "the only reference"
    SEPARATED = "separated"
    TIE = "tie rule"
    BEST_MEAN = "best mean (budget), more than one paired standard error ahead"
    NO_EXPLORER = "no explorer"
    DROPPED = "every explorer dropped"
    NOT_SCREENED = "not screened"
    UNCONFIRMABLE = "no budget to confirm"
    NOT_CONFIRMED = "not confirmed"
    CONFIRMED = "confirmed"


class Dropped(enum.Enum):
    """Why the race dropped a candidate before its end."""

    WORSE = "clearly worse than the best reference"
    INDIFFERENT = "cannot beat the best reference by the indifference margin"
    FUTILE = "futile: trails the track to the screen"


@dataclass(frozen=True)
class Entrant:
    """A candidate of a bracket: its point, what it is for the user, the fixed baseline it is the point of."""

    theta: np.ndarray
    label: str
    reference: bool
    baseline: str | None = None


@dataclass(frozen=True)
class Verdict:
    """A bracket's outcome: the chosen candidate, the rules that decided, the sentence the verdict prints."""

    chosen: int
    reference_rule: Rule
    explorer_rule: Rule
    tasks: int
    confirmed_on: int  # fresh tasks the accepted explorer was confirmed on (0: none accepted)
    sentence: str


class Race:
    """The engine, built from a method's context: `ctx.settings` (a RaceConfig section) say how to race, the
    context's `score` keeps the budget, `ctx.state` holds the bracket under way (so a killed race resumes)."""

    def __init__(self, ctx: Context):
        self.ctx, self.cfg = ctx, ctx.settings
        self.state = ctx.state

    def bracket(self, entrants: list[Entrant], task_ids: list[int], carried: dict[int, list[float]] | None = None,
                alpha: float | None = None) -> Verdict:
        """Race `entrants` (references first) on `task_ids`; `carried`: scores already paid for, by entrant.
        An explorer replaces the chosen reference only when confirmed at level `alpha` (default confirm_alpha)
        on fresh tasks. Fills `state.finalists`; returns the verdict."""
        state, cfg = self.state, self.cfg
        if not state.candidates:
            state.candidates = [list(map(float, e.theta)) for e in entrants]
            state.scores = [list((carried or {}).get(i, [])) for i in range(len(entrants))]
        refs = [i for i, e in enumerate(entrants) if e.reference]
        explorers = [i for i, e in enumerate(entrants) if not e.reference]
        cap = min(cfg.tasks, len(task_ids))
        self.reserve = 2 * cfg.confirm_tasks if explorers else 0  # the confirmation is paid for before racing
        dropped: dict[int, tuple[int, Dropped]] = {}
        rung, n, stop = 0, 0, ""
        while True:
            wanted = self.rung_tasks(rung, refs + explorers, cap)
            if wanted <= n:
                stop = f"budget spent after {n} tasks"
                break
            n = wanted
            self.score([(i, task_ids[t]) for i in refs + explorers for t in range(len(state.scores[i]), n)])
            best_ref, leader = self.prune(refs, explorers, n, cap, dropped)
            self.record_rung(rung, n, leader, len(refs), len(explorers))
            rung += 1
            if n >= cap or len(refs) + len(explorers) == 1 or (len(refs) == 1 and leader in refs):
                break
            if not explorers and self.settled(refs, best_ref, n):
                stop = f"the references left are within the indifference margin of the best on {n} tasks"
                break
        if n == 0:
            raise RuntimeError("Race.bracket: the budget paid for no task")
        reference, rule, sentence = self.choose_reference(entrants, refs, n, stop, task_ids)
        verdict = self.judge(entrants, reference, rule, sentence, explorers, dropped, n, task_ids,
                             cfg.confirm_alpha if alpha is None else alpha)
        state.finalists = self.finalists(entrants, verdict, dropped)
        return verdict

    def score(self, jobs: list[tuple[int, int]]) -> None:
        """Score (candidate, task id) jobs through the context (which keeps the budget)."""
        values = self.ctx.score([(np.array(self.state.candidates[i]), t) for i, t in jobs])
        for (i, _), value in zip(jobs, values):
            self.state.scores[i].append(value)

    def rung_tasks(self, rung: int, alive: list[int], cap: int) -> int:
        """Tasks rung `rung` races on: `step` more (at most `cap`), fewer when the budget, less what a
        confirmation needs, pays for fewer whole tasks for every candidate alive (differences stay paired).
        A replayed rung keeps its count."""
        state = self.state
        if rung < len(state.rung_tasks):
            return state.rung_tasks[rung]
        n = min(cap, self.cfg.step * (rung + 1))
        left = self.ctx.budget.left(state.trainings) - self.reserve
        while n > 0 and sum(max(0, n - len(state.scores[i])) for i in alive) > left:
            n -= 1
        state.rung_tasks.append(n)
        return n

    def prune(self, refs: list[int], explorers: list[int], n: int, cap: int,
              dropped: dict[int, tuple[int, Dropped]]) -> tuple[int, int]:
        """Drop (in place) what the evidence on `n` tasks rules out; returns the best reference and the leader.
        A reference goes when clearly worse than the best one, unless provably within the indifference margin
        (the tie rule may keep it); an explorer also when it cannot beat the best reference by the margin, or
        when it is futile (bench/race_rules.py)."""
        cfg, scores = self.cfg, self.state.scores
        best_ref, leader = (max(group, key=lambda i: (np.mean(scores[i][:n]), -i))
                            for group in (refs, refs + explorers))
        delta = cfg.indifference / 100
        for group in (refs, explorers):
            for i in [i for i in group if i != best_ref]:
                mine, best = scores[i][:n], scores[best_ref][:n]
                if group is refs and within(best, mine, delta, cfg.confidence):
                    continue
                why = (Dropped.WORSE if clearly_worse(mine, best, cfg.confidence) else
                       Dropped.INDIFFERENT if group is explorers and within(mine, best, delta, cfg.confidence) else
                       Dropped.FUTILE if group is explorers and futile(mine, best, cap, cfg.screen_z, cfg.futility)
                       else None)
                if why:
                    dropped[i] = (n, why)
                    group.remove(i)
        return best_ref, leader

    def settled(self, refs: list[int], best: int, n: int) -> bool:
        """Are all the references left within the indifference margin of the best? Then stop paying to rank
        them: which is kept barely changes the result (indifference-zone selection)."""
        scores = self.state.scores
        return len(refs) > 1 and all(within(scores[best][:n], scores[i][:n], self.cfg.indifference / 100,
                                            self.cfg.confidence) for i in refs if i != best)

    def record_rung(self, rung: int, n: int, leader: int, refs: int, explorers: int) -> None:
        """A newly scored rung's entry in the history (the MLflow curve), then a checkpoint; a replayed one: nothing."""
        state = self.state
        if rung < state.rung:
            return
        entry = {"rung": len(state.history), "best_score": float(np.mean(state.scores[leader][:n])), "tasks": n,
                 "references_left": refs, "explorers_left": explorers, "trainings": state.trainings,
                 **self.ctx.space.describe(np.array(state.candidates[leader]))}
        state.history.append(entry)
        state.rung = rung + 1
        self.ctx.log(entry)
        self.ctx.checkpoint()

    def choose_reference(self, entrants: list[Entrant], refs: list[int], n: int, stop: str,
                         task_ids: list[int]) -> tuple[int, Rule, str]:
        """The reference kept: the one left; among several, the gentlest (TIE RULE: the policy that changes the
        meta-train support images least) of those in contention. Settled or unseparated at the cap, every
        reference left contends. When the budget ended the race on 2 tasks or more, the ONE-STANDARD-ERROR RULE
        of model selection (Breiman et al. 1984; Hastie et al., ESL 7.10: the simplest model within one standard
        error of the best), with the gentlest as the simplest: a reference contends when its mean trails the best
        mean by at most one standard error of their paired difference, a lead the evidence cannot tell from noise.
        The best mean is kept (BEST_MEAN) only when it leads every other by more. (The best mean alone followed the
        luck of 3-5 tasks: a 0.3-point lead at t = 0.3 lost 12.5 points on the target; docs/search.md.)"""
        mean = {i: float(np.mean(self.state.scores[i][:n])) for i in refs}
        if len(refs) == 1:
            only = len(entrants) == 1 or sum(e.reference for e in entrants) == 1
            return refs[0], (Rule.ONLY if only else Rule.SEPARATED), (
                "the only reference" if only else "every other reference was clearly worse (paired race)")
        contending, why = refs, f"{len(refs)} references not separated on {n} tasks{f' ({stop})' if stop else ''}"
        if stop.startswith("budget") and n >= 2:
            best, scores = max(refs, key=lambda i: (mean[i], -i)), self.state.scores
            trail = {i: paired_mean_se(scores[best][:n], scores[i][:n]) for i in refs}
            contending = [i for i in refs if trail[i][0] <= trail[i][1]]
            gaps = ", ".join(f"{entrants[i].label} {100 * mean[i]:.2f} %" + (
                f" (−{100 * trail[i][0]:.2f} ± {100 * trail[i][1]:.2f})" if i != best else "") for i in refs)
            if contending == [best]:
                return best, Rule.BEST_MEAN, (f"{stop}: {len(refs)} references not separated; the best mean kept, "
                                              f"more than one paired standard error above every other ({gaps})")
            why = (f"{stop}: {len(refs)} references not separated, {len(contending)} within one paired standard "
                   f"error of the best mean ({gaps})")
        chosen, change = self.gentlest(contending, task_ids)
        tied = ", ".join(f"{entrants[i].label} {change[i]:.3f}" for i in contending)
        return chosen, Rule.TIE, (f"tie rule: {why}; the gentlest kept (mean absolute pixel change on meta-train "
                                  f"support images: {tied})")

    def judge(self, entrants: list[Entrant], reference: int, rule: Rule, sentence: str, explorers: list[int],
              dropped: dict[int, tuple[int, Dropped]], n: int, task_ids: list[int], alpha: float) -> Verdict:
        """What becomes of the explorers: the contender (the gentlest of those above the reference and not
        separated from the best) must pass the screen (`screen_z` on the racing tasks), then beat the reference
        on `confirm_tasks` fresh tasks at one-sided level `alpha`. The racing tasks chose it, so only the fresh
        ones count as evidence."""
        scores, cfg = self.state.scores, self.cfg
        ref_name = entrants[reference].label
        raced = sum(not e.reference for e in entrants)
        verdict = lambda chosen, why, text, on=0: Verdict(chosen, rule, why, n, on, text)  # noqa: E731
        if not raced:
            return verdict(reference, Rule.NO_EXPLORER, f"{ref_name} kept: {sentence}")
        if not explorers:
            counts = {d: sum(1 for _, why in dropped.values() if why is d) for d in Dropped}
            return verdict(reference, Rule.DROPPED, f"{ref_name} kept ({sentence}): every explorer was dropped in "
                           f"the race ({counts[Dropped.INDIFFERENT]} by the indifference margin of "
                           f"{cfg.indifference:g} point(s), {counts[Dropped.WORSE]} as clearly worse, "
                           f"{counts[Dropped.FUTILE]} as futile)")
        mean = {i: float(np.mean(scores[i][:n])) for i in explorers}
        best = max(explorers, key=lambda i: (mean[i], -i))
        if not clearly_better(scores[best][:n], scores[reference][:n], cfg.screen_z):
            return verdict(reference, Rule.NOT_SCREENED, f"{ref_name} kept ({sentence}): no explorer passed the "
                           f"screen (the best, {entrants[best].label}, not {cfg.screen_z:g} paired standard errors "
                           f"above it on {n} tasks; {raced - len(explorers)} of {raced} dropped in the race)")
        eligible = [i for i in explorers if mean[i] > np.mean(scores[reference][:n])
                    and not clearly_worse(scores[i][:n], scores[best][:n], SEPARATED)]
        contender, change = self.gentlest(eligible, task_ids)
        if len(eligible) > 1:  # which explorer is best by a hair is noise: the tie rule names the contender
            sentence += (f"; the contender is the gentlest of the {len(eligible)} explorers above it and not "
                         "separated from the best (tie rule, mean absolute pixel change: " + ", ".join(
                             f"{entrants[i].label.removeprefix('explorer: ')} {change[i]:.3f}" for i in eligible) + ")")
        fresh = self.confirm(reference, contender)
        if fresh is None:
            return verdict(reference, Rule.UNCONFIRMABLE, f"{ref_name} kept ({sentence}): {entrants[contender].label}"
                           f" passed the screen on {n} tasks, but the budget left cannot pay for its "
                           f"{cfg.confirm_tasks} fresh confirmation tasks")
        diff, t, p = fresh
        test = (f"{diff:+.2f} points on {cfg.confirm_tasks} fresh tasks, one-sided paired t = {t:.2f}, "
                f"p = {p:.3f}")
        if p < alpha:
            return verdict(contender, Rule.CONFIRMED, f"explorer accepted: {entrants[contender].label} passed the "
                           f"screen on {n} tasks and was confirmed against {ref_name} on {cfg.confirm_tasks} fresh "
                           f"tasks that played no part in choosing it ({test} < {alpha:g}); {sentence}",
                           cfg.confirm_tasks)
        return verdict(reference, Rule.NOT_CONFIRMED, f"{ref_name} kept ({sentence}): {entrants[contender].label} "
                       f"passed the screen on {n} tasks but was not confirmed ({test}, not below {alpha:g})")

    def confirm(self, reference: int, contender: int) -> tuple[float, float, float] | None:
        """Score the reference and the contender on the next `confirm_tasks` tasks of the confirmation pool
        (after every racing task; never used twice in a search), or None when the budget cannot pay for them."""
        state, k = self.state, self.cfg.confirm_tasks
        if state.confirm is None:
            first = self.ctx.confirm_start + state.confirm_used
            if self.ctx.budget.left(state.trainings) < 2 * k or first + k > len(self.ctx.scorer.tasks):
                return None
            ids = list(range(first, first + k))
            state.confirm = {"reference": reference, "contender": contender, "tasks": ids, "scores": [[], []]}
            state.confirm_used += k
        c = state.confirm
        jobs = [(who, t) for who, mine in zip((reference, contender), c["scores"]) for t in c["tasks"][len(mine):]]
        values = self.ctx.score([(np.array(state.candidates[i]), t) for i, t in jobs]) if jobs else []
        for (who, _), value in zip(jobs, values):
            c["scores"][0 if who == reference else 1].append(value)
        self.ctx.checkpoint()
        return confirmation(c["scores"][1], c["scores"][0])

    def gentlest(self, candidates: list[int], task_ids: list[int]) -> tuple[int, dict[int, float]]:
        """The candidate whose policy changes the meta-train support images least (mean absolute pixel change
        on the first 4 tasks' support images, a fixed seed), and every candidate's change; ties by index."""
        if len(candidates) == 1:
            return candidates[0], {candidates[0]: float("nan")}
        space = self.ctx.space
        images = torch.cat([self.ctx.task(task_ids[t]).support_x for t in range(min(len(task_ids), 4))])
        change = {i: image_change(space.policy(np.array(self.state.candidates[i])), images) for i in candidates}
        return min(candidates, key=lambda i: (round(change[i], 6), i)), change

    def finalists(self, entrants: list[Entrant], verdict: Verdict,
                  dropped: dict[int, tuple[int, Dropped]]) -> list[dict]:
        """The evidence: every candidate scored, its paired difference to the chosen one (95 % t-interval,
        points) on the tasks both were scored on, and its status; the chosen one carries the decision."""
        state, chosen, space = self.state, verdict.chosen, self.ctx.space
        n_chosen = len(state.scores[chosen])
        others = sorted((i for i in range(len(entrants)) if i != chosen and state.scores[i]),
                        key=lambda i: (not entrants[i].reference, -np.mean(state.scores[i][:n_chosen])))
        out = []
        for i in [chosen] + others:
            n = min(len(state.scores[i]), len(state.scores[chosen]))
            diff, low, high = paired_interval(state.scores[i][:n], state.scores[chosen][:n])
            theta = np.array(state.candidates[i])
            status = ("chosen" if i == chosen else f"dropped after {dropped[i][0]} tasks: {dropped[i][1].value}"
                      if i in dropped else "reference, not chosen" if entrants[i].reference else
                      f"explorer, not accepted ({verdict.explorer_rule.value})")
            out.append({"candidate": entrants[i].label, "policy": policy_summary(space.policy(theta)),
                        "layers": space.layers(theta), "reference": entrants[i].reference,
                        "baseline": entrants[i].baseline, "score": float(np.mean(state.scores[i])),
                        "tasks": len(state.scores[i]), "paired_tasks": n, "diff_to_chosen": diff, "ci_low": low,
                        "ci_high": high, "status": status,
                        **({"decision": verdict.sentence, "rule": verdict.explorer_rule.name,
                            "reference_rule": verdict.reference_rule.name,
                            "confirmed_on": verdict.confirmed_on} if i == chosen else {})})
        return out
