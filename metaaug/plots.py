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

from metaaug.io import write_json  # noqa: E402


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


def write_dvc_plots(out: Path, accuracy: dict[str, np.ndarray], results: dict, confusion: dict, classes: list[str]):
    """The files dvc.yaml's plots read (templates in .dvc/plots/): accuracy.json (test accuracy, %, per arm and
    split: one panel, a dot per split and a tick at each arm's mean), curves.csv (mean training loss and
    accuracy per epoch, one line per arm on one panel), confusion/<arm>.json (pooled over splits)."""
    write_json(out / "accuracy.json", [{"arm": arm, "split": i, "accuracy": round(100 * float(a), 4)}
                                       for arm, accs in accuracy.items() for i, a in enumerate(accs)])
    with open(out / "curves.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["epoch", "arm", "train_loss", "train_acc"])
        for arm, runs in results["arms"].items():
            loss = np.mean([r["curves"]["loss"] for r in runs], axis=0)
            acc = np.mean([r["curves"]["train_acc"] for r in runs], axis=0)
            writer.writerows([e, arm, f"{l:.6f}", f"{a:.6f}"] for e, (l, a) in enumerate(zip(loss, acc)))
    (out / "confusion").mkdir()
    for arm, (actual, predicted) in confusion.items():
        write_json(out / "confusion" / f"{arm}.json",
                   [{"actual": classes[a], "predicted": classes[p]} for a, p in zip(actual, predicted)])
