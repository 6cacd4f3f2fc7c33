"""Figures for MLflow and the plot files DVC reads (`dvc plots show`)."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
# Class names and file names go into titles and labels as they are: a `$` in one must not start the math
# parser (an unbalanced one crashes it). report.py and preview.py import this module, so it holds for them too.
matplotlib.rcParams["text.parse_math"] = False
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402



def show_image(ax, image: np.ndarray) -> None:
    """One uint8 (H, W, C) image on an axis, gray or RGB, without ticks."""
    ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=255)
    ax.set_xticks([])
    ax.set_yticks([])


def class_grid(images: np.ndarray, labels: np.ndarray, classes: list[str], per_class: int = 8):
    """A figure with one row per class and its first `per_class` images."""
    fig, axes = plt.subplots(len(classes), per_class, figsize=(per_class, len(classes)), squeeze=False)
    for c, name in enumerate(classes):
        idx = np.flatnonzero(np.asarray(labels) == c)[:per_class]
        for j, ax in enumerate(axes[c]):
            if j < len(idx):
                show_image(ax, np.asarray(images[idx[j]]))
            else:
                ax.axis("off")
        axes[c][0].set_ylabel(name)
    fig.tight_layout()
    plt.close(fig)
    return fig


def policy_figure(policy, title: str):
    """Per op of a metaaug.policies.Policy: probability of being drawn (and applied), and its normalised magnitude
    range (the report's and the metatrain run's picture of the policy)."""
    ops = list(policy.ops)
    y = np.arange(len(ops))
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 0.3 * len(ops) + 1.4), sharey=True)
    left.barh(y, np.multiply(policy.weights, policy.prob), color="C1", label="drawn and applied")
    if min(policy.prob) < 1:
        left.barh(y, policy.weights, color="C1", alpha=0.35, label="drawn")
        left.legend(fontsize=8, loc="lower right")
    left.set_xlabel(f"probability per layer ({policy.layers} layer{'s' * (policy.layers > 1)})")
    width = np.maximum(np.subtract(policy.mag_high, policy.mag_low), 0.01)  # a fixed magnitude stays visible
    colours = [(0.17, 0.63, 0.17, 1.0 if w > 0 else 0.2) for w in policy.weights]  # faint: an op never drawn
    right.barh(y, width, left=policy.mag_low, color=colours, height=0.5)
    right.set_xlim(0, 1.01)
    right.set_xlabel("magnitude range (1 = the op's maximum)")
    left.set_yticks(y, ops)
    left.invert_yaxis()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


CURVE_POINTS = 30  # points per arm in plots/curves.csv: the shape of a curve, in a diff a reader can follow


def write_csv(path: Path, header: list[str], rows) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def write_dvc_plots(out: Path, accuracy: dict[str, np.ndarray], results: dict, confusion: dict, classes: list[str]):
    """The files dvc.yaml's plots read (templates in .dvc/plots/), git-tracked and so kept small (a sweep's diff
    stays a few hundred lines): accuracy.csv (test accuracy, %, per arm and split: a dot per split and a tick at
    each arm's mean), curves.csv (mean training loss and accuracy over splits, every k-th epoch and the last, one
    line per arm), confusion/<arm>.csv (test images per true and predicted class, pooled over splits)."""
    write_csv(out / "accuracy.csv", ["arm", "split", "accuracy"],
              ([arm, i, f"{100 * float(a):.2f}"] for arm, accs in accuracy.items() for i, a in enumerate(accs)))
    rows = []
    for arm, runs in results["arms"].items():
        loss = np.mean([r["curves"]["loss"] for r in runs], axis=0)
        acc = np.mean([r["curves"]["train_acc"] for r in runs], axis=0)
        epochs = sorted({*range(0, len(loss), -(-len(loss) // CURVE_POINTS)), len(loss) - 1})
        rows += [[e + 1, arm, f"{loss[e]:.4f}", f"{acc[e]:.4f}"] for e in epochs]
    write_csv(out / "curves.csv", ["epoch", "arm", "train_loss", "train_acc"], rows)
    (out / "confusion").mkdir()
    for arm, (actual, predicted) in confusion.items():
        counts = np.zeros((len(classes), len(classes)), dtype=int)
        np.add.at(counts, (np.asarray(actual), np.asarray(predicted)), 1)
        write_csv(out / "confusion" / f"{arm}.csv", ["actual", "predicted", "count"],
                  ([classes[a], classes[p], counts[a, p]] for a in range(len(classes)) for p in range(len(classes))))
