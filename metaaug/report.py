"""The evaluate stage's self-contained report: `reports/report.md` and the PNGs it links.

Owns the report's figures and its markdown: accuracy per arm with 95 % confidence
intervals, learning curves per arm, the learned policy (op probabilities and
magnitude ranges), augmented samples per arm, confusion matrices of the best and
the worst arm, and the search cost. Everything is computed from what evaluate
already holds (test accuracies, the train stage's curves, the policy directory),
so the report is regenerated with the metrics and never disagrees with them.
The PNG links are relative: the directory renders anywhere, on its own.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from metaaug.arms import arm_augmenter  # noqa: E402
from metaaug.publish import write_json  # noqa: E402
from metaaug.learners import markdown as learner_markdown  # noqa: E402
from metaaug.plots import policy_figure, show_image  # noqa: E402
from metaaug.policies import BASELINE_TITLES, load_policy, what_it_is  # noqa: E402
from metaaug.stats import BOOTSTRAP_FROM, best_fixed  # noqa: E402
from metaaug.training import to_tensor  # noqa: E402

SAMPLE_IMAGES = 8  # support images shown per arm
SAMPLE_DRAWS = 2  # augmented draws of them per arm


def save(fig, path: Path) -> None:
    """PNG without the matplotlib version stamp, so equal figures give equal bytes across upgrades."""
    fig.savefig(path, format="png", dpi=90, metadata={"Software": None})
    plt.close(fig)


def mean_ci(summary: dict) -> tuple[float, float]:
    """Mean accuracy and the half-width of its 95 % t-interval over splits (points)."""
    return summary["mean"], (summary["ci_high"] - summary["ci_low"]) / 2


def accuracy_figure(metrics: dict, accuracy: dict[str, np.ndarray]):
    """Left: mean test accuracy per arm, bars from 0 (a bar's length is its value) with the 95 % CI and a dot
    per split. Right: what decides, the learned arm's paired difference to each other arm with its 95 % CI,
    around a line at 0; the gaps are read there, on their own scale, not from clipped bars."""
    arms = list(metrics["arms"])
    pairs = {p.removeprefix("learned-"): d for p, d in metrics["paired"].items() if p.startswith("learned-")}
    fig, axes = plt.subplots(1, 2 if pairs else 1, figsize=(11 if pairs else 6, 0.6 * len(arms) + 1.6),
                             squeeze=False)
    left = axes[0][0]
    for y, arm in enumerate(arms):
        mean, half = mean_ci(metrics["arms"][arm])
        left.barh(y, mean, xerr=half, color="C0", alpha=0.6, capsize=4)
        points = 100 * np.asarray(accuracy[arm])
        left.plot(points, y + np.linspace(-0.25, 0.25, len(points)), ".", color="k", alpha=0.5, ms=3)
    left.set_xlim(0, 100)
    left.set_yticks(range(len(arms)), arms)
    left.invert_yaxis()
    left.set_title("test accuracy per arm", fontsize=10)
    left.set_xlabel("test accuracy (%): mean, 95 % CI (t), a dot per split")
    if pairs:
        right = axes[0][1]
        names = list(pairs)
        for y, arm in enumerate(names):
            d = pairs[arm]
            right.errorbar(d["mean"], y, xerr=[[d["mean"] - d["ci_low"]], [d["ci_high"] - d["mean"]]], fmt="o",
                           color="C3" if d["ci_high"] < 0 else "C2" if d["ci_low"] > 0 else "C7", capsize=4)
        right.axvline(0, color="k", lw=0.8)
        right.set_yticks(range(len(names)), [f"learned − {a}" for a in names])
        right.invert_yaxis()
        right.set_title("learned − each arm: green better, red worse, grey tied", fontsize=10)
        right.set_xlabel("paired difference (points), 95 % CI over the splits")
    fig.tight_layout()
    return fig


def curves_figure(results: dict):
    """Training loss and training accuracy per epoch, mean over splits, one line per arm."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for arm, runs in results["arms"].items():
        for ax, key in zip(axes, ("loss", "train_acc")):
            ax.plot(np.mean([r["curves"][key] for r in runs], axis=0), label=arm)
    axes[0].set_ylabel("training loss")
    axes[1].set_ylabel("training accuracy")
    for ax in axes:
        ax.set_xlabel("epoch")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def augmented_samples(images: np.ndarray, arms: list[str], policy_dir: Path | None, n_draws: int = SAMPLE_DRAWS,
                      seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Per arm but `none`, `n_draws` augmented versions of `images` (uint8 NHWC), each from its own seeded generator.

    Uses the train stage's own augmenters. The learned arm samples its policy on the
    fly: the same distribution its stored copies (data/augmented/) were drawn from.
    """
    x = to_tensor(images)
    draws = {}
    for arm in arms:
        augment = arm_augmenter(arm, x.shape[1], "on_the_fly", policy_dir, None)(np.arange(len(images)))
        if augment is None:
            continue
        gen = torch.Generator().manual_seed(seed)
        draws[arm] = [(augment(x, gen).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
                      for _ in range(n_draws)]
    return draws


def samples_figure(images: np.ndarray, draws: dict[str, list[np.ndarray]]):
    """Top row: the original support images; then each arm's draws of the same images, labelled by arm."""
    rows = [("original", images)] + [(arm, d) for arm, ds in draws.items() for d in ds]
    fig, axes = plt.subplots(len(rows), len(images), figsize=(len(images), len(rows)), squeeze=False)
    for r, (label, batch) in enumerate(rows):
        for j, image in enumerate(batch):
            show_image(axes[r][j], image)
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    return fig


def confusion_figure(confusion: dict, classes: list[str], arms: list[str]):
    """Row-normalised confusion matrices (% of each true class), pooled over splits, one panel per arm."""
    fig, axes = plt.subplots(1, len(arms), figsize=(4.2 * len(arms), 4), squeeze=False)
    for ax, arm in zip(axes[0], arms):
        actual, predicted = confusion[arm]
        counts = np.zeros((len(classes), len(classes)))
        np.add.at(counts, (actual, predicted), 1)
        percent = 100 * counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        ax.imshow(percent, cmap="Blues", vmin=0, vmax=100)
        for (i, j), value in np.ndenumerate(percent):
            ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=7,
                    color="white" if value > 50 else "black")
        ax.set_xticks(range(len(classes)), classes)
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("actual")
        ax.set_title(arm)
    fig.tight_layout()
    return fig


def best_and_worst(metrics: dict) -> list[str]:
    """The arms with the highest and the lowest mean accuracy (one arm if there is only one)."""
    ranked = sorted(metrics["arms"], key=lambda arm: metrics["arms"][arm]["mean"])
    return list(dict.fromkeys([ranked[-1], ranked[0]]))


def search_markdown(search: dict | None) -> list[str]:
    """The metatrain budget as a table: method and proxy trainings (their wall time: `metaaug results`)."""
    if search is None:
        return ["No search log (models/policy/search.json) was given to evaluate."]
    rows = [("method", search["method"]),
            ("proxy trainings", f"{search['trainings']} × {search['proxy_epochs']} epochs, width {search['proxy_width']}")]
    return (["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows] +
            ["", "Its wall time as a multiple of one downstream training depends on the machine, so it is kept "
                 "out of this report: `metaaug results` prints it from `timings/`."])


def accuracy_tables(metrics: dict) -> str:
    """Markdown: accuracy per arm, then the paired differences with their bootstrap CIs."""
    lines = ["| arm | test accuracy (mean ± std over splits) |", "|---|---|"]
    lines += [f"| {arm} | {s['mean']:.2f} ± {s['std']:.2f} (n={s['n']}) |" for arm, s in metrics["arms"].items()]
    lines += ["", "| paired difference | mean (points) | 95 % CI | wins/losses |", "|---|---|---|---|"]
    lines += [f"| {pair} | {d['mean']:+.2f} | [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}] | {d['wins']}/{d['losses']} |"
              for pair, d in metrics["paired"].items()]
    return "\n".join(lines)


def results_markdown(evaluation: dict, cost: dict | str | None) -> str:
    """The README's results section, from reports/evaluation.json and the timings (`metaaug results`); `cost`
    is search_cost's answer (a string: why there is none to show)."""
    lines = [evaluation["verdict"], "", accuracy_tables(evaluation), ""]
    if isinstance(cost, str):
        lines.append(f"Search cost: not shown: {cost}.")
    elif cost is not None:
        lines.append(f"Search cost: metatrain took {cost['search_cost']:.1f}× one downstream training run "
                     f"({cost['downstream_run_seconds']:.2f} s) in wall time with {cost['workers']} scoring "
                     f"process(es); its proxy trainings alone, summed over processes, {cost['search_cost_one_core']:.1f}×.")
        lines.append(f"Timed on: {cost['machine']}.")
    else:
        lines.append("Search cost: no timings/metatrain.json and timings/train.json (run the pipeline to write them).")
    return "\n".join(lines)


def _ci(d: dict) -> str:
    return f"{d['mean']:+.2f} points [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}]"


def _compared(d: dict, a: str, b: str) -> str:
    """`a` against `b` in words, from the paired difference's 95 % CI."""
    if d["ci_low"] > 0:
        return f"{a} is better than {b}: {_ci(d)}"
    if d["ci_high"] < 0:
        return f"{a} is worse than {b}: {_ci(d)}"
    return f"{a} and {b} cannot be told apart on these splits ({_ci(d)}, a 95 % CI that includes 0)"


def verdict(metrics: dict, baseline: str | None, search: dict | None) -> str:
    """Which augmentation to use, by how much it beats the others and how sure that is, in a paragraph
    generated from the metrics (report, evaluate run description, `metaaug results`)."""
    arms, paired = metrics["arms"], metrics["paired"]
    n = next(iter(arms.values()))["n"]
    best = best_fixed(arms)
    if "learned" not in arms or best is None:
        best = max(arms, key=lambda a: arms[a]["mean"])
        return (f"**Verdict:** {best} has the highest mean test accuracy, {arms[best]['mean']:.2f} % over {n} "
                "splits (the learned arm and a fixed arm are needed for a recommendation).")
    learned = "the learned policy" + (f" ({what_it_is(baseline)})" if baseline else "")
    d = paired[f"learned-{best}"]
    if d["ci_high"] < 0:
        use = f"use {best}: it beats {learned} by {-d['mean']:.2f} points [{-d['ci_high']:.2f}, {-d['ci_low']:.2f}]"
    elif d["ci_low"] > 0:
        use = f"use {learned}: " + _compared(d, "it", f"the best fixed arm, {best},")
    elif baseline == best:  # the learned policy is this baseline's point: its ops, its mean strength
        use = (f"use {learned} or {BASELINE_TITLES[best]} itself: they cannot be told apart on these splits "
               f"({_ci(d)}), as expected of the same ops at the same mean strength")
    else:  # tied: say so, and which one the pipeline's own evidence points to
        use = (f"no clear winner: {learned} and the best fixed arm, {best}, cannot be told apart on these splits "
               f"({_ci(d)}, a 95 % CI that includes 0); either is a sound choice, and the learned one is what the "
               "search chose on the meta-train tasks")
    lines = [f"**Verdict: {use}.** Test accuracy over {n} splits: learned {arms['learned']['mean']:.2f} %, "
             f"{best} {arms[best]['mean']:.2f} %."]
    if "trivialaugment" in arms and best != "trivialaugment":
        lines.append(_compared(paired["learned-trivialaugment"], "Learned", "TrivialAugment-Wide") + ".")
    if n < BOOTSTRAP_FROM:
        lines.append(f"Only {n} splits: the intervals are t-intervals and wide; raise `tasks.splits` "
                     f"(≥ {BOOTSTRAP_FROM}) before relying on them.")
    if search and search.get("finalists"):
        lines.append(search_confidence(search))
    return " ".join(lines)


def search_confidence(search: dict) -> str:
    """The search's own evidence, in a sentence: how it decided, and its closest competitor's paired
    difference to the chosen policy on the meta-train tasks (proxy learners)."""
    chosen, *others = search["finalists"]
    text = f"On its meta-train tasks ({search['trainings']} proxy trainings) the search decided: {chosen['decision']}"
    f = closest_rival(others)
    if f:
        name = f.get("candidate") or f"{f['baseline']}'s point"
        text += (f"; the closest other candidate, {name}, scored {f['diff_to_chosen']:+.2f} points "
                 f"[{f['ci_low']:+.2f}, {f['ci_high']:+.2f}] against it on {f['paired_tasks']} tasks")
    return text + "."


def closest_rival(others: list[dict]) -> dict | None:
    """The candidate closest to the chosen one among those still in the race at its end (else among all):
    one dropped early has a wide interval on few tasks and no say in the answer."""
    scored = [f for f in others if f.get("ci_low") is not None]
    kept = [f for f in scored if not f["status"].startswith("dropped")] or scored
    return max(kept, key=lambda f: f["diff_to_chosen"], default=None)


def write_report(out: Path, metrics: dict, summary: str, accuracy: dict[str, np.ndarray], results: dict,
                 confusion: dict, prepared, policy_dir: Path | None, baseline: str | None, search: dict | None,
                 inputs: dict[str, str]) -> None:
    """Write report.md, its PNGs and evaluation.json (every figure of the comparison, with the verdict and
    `inputs`, the digests of the outputs compared: `metaaug results` matches the timings to them) into `out`
    (an empty directory; the caller makes it atomic)."""
    manifest = prepared.manifest
    classes = manifest["target"]["classes"]
    support = np.asarray(manifest["splits"][0]["support"])[:SAMPLE_IMAGES]
    images = np.asarray(prepared.target_images)[support]
    extremes = best_and_worst(metrics)
    save(accuracy_figure(metrics, accuracy), out / "accuracy.png")
    save(curves_figure(results), out / "learning_curves.png")
    save(samples_figure(images, augmented_samples(images, list(metrics["arms"]), policy_dir)), out / "samples.png")
    save(confusion_figure(confusion, classes, extremes), out / "confusion.png")
    has_policy = policy_dir is not None and (policy_dir / "policy.json").exists()
    if has_policy:
        save(policy_figure(load_policy(policy_dir / "policy.json"), "learned policy: " + what_it_is(baseline)),
             out / "policy.png")
    write_json(out / "evaluation.json", {**metrics, "verdict": summary, "inputs": inputs})
    lines = ["# metaaug report", "",
             f"Target classes {', '.join(classes)} ({manifest['target']['source']}), "
             f"{len(manifest['splits'])} splits, {len(manifest['test'])} test images. Written by the `evaluate` stage.",
             "", summary, "",
             "## Accuracy per arm", "", "![test accuracy per arm](accuracy.png)", "", accuracy_tables(metrics), "",
             "## Downstream learner", "",
             *(learner_markdown(results["learner"]) if "learner" in results else
               [f"{results['model'].get('model', 'small_cnn')} (results.json from before the learner trial)."]), "",
             "## Learning curves", "", "Mean over splits of each arm's per-epoch training loss and accuracy.", "",
             "![learning curves](learning_curves.png)", "",
             "## Learned policy", ""]
    lines += (["![learned policy](policy.png)", ""] if has_policy else ["No policy.json was given to evaluate.", ""])
    lines += ["## Augmented samples", "",
              f"Target support images of split 0; each arm's augmentation, {SAMPLE_DRAWS} draws from a fixed seed "
              "(the learned arm samples its policy, the distribution of its stored copies).", "",
              "![augmented samples per arm](samples.png)", "",
              "## Confusion matrices", "",
              f"Best and worst arm by mean accuracy ({' and '.join(extremes)}), pooled over splits, "
              "% of each true class.", "", "![confusion matrices](confusion.png)", "",
              "## Search", ""] + search_markdown(search)
    (out / "report.md").write_text("\n".join(lines) + "\n")
