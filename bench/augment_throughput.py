"""Throughput of the batched torch augmentation path against the exported Albumentations pipeline.

Same images (scikit-learn digits; RGB = three digits as channels), same policy
(TrivialAugment-Wide), both measured in this run: metaaug's ``sample_apply`` on whole
batches of float tensors versus the policy's Albumentations export (``A.load`` of
``export_albumentations``) applied image by image to uint8 arrays, as a user's per-image
data loader would. Also times the small call the training loop makes (25 images of 8x8).
Target (batches, not images, are the unit of work): batched >= 5x Albumentations
at 28x28 on 2 CPU cores.

    python bench/augment_throughput.py [--batch 1024] [--repeats 5] [--device cpu|cuda] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import metaaug  # noqa: F401  (sets NO_ALBUMENTATIONS_UPDATE before albumentations is imported)
import albumentations as A
import cv2
from sklearn.datasets import load_digits

from metaaug.policies import export_albumentations, fixed_policy, sample_apply

CONFIGS = [("8x8 gray", 8, 1), ("28x28 gray", 28, 1), ("32x32 RGB", 32, 3)]


def make_images(n: int, size: int, channels: int) -> np.ndarray:
    """n uint8 (size, size, channels) images from the digits, resized with cv2."""
    digits = np.round(load_digits().images * (255 / 16)).astype(np.uint8)
    picks = np.arange(n * channels) % len(digits)
    resized = np.stack([d if size == 8 else cv2.resize(d, (size, size), interpolation=cv2.INTER_LINEAR)
                        for d in digits[picks]])
    return np.ascontiguousarray(resized.reshape(n, channels, size, size).transpose(0, 2, 3, 1))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(fn, device: torch.device) -> float:
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def torch_run(policy, images: np.ndarray, device: torch.device):
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255).to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    return lambda: sample_apply(policy, x, generator)


def albumentations_run(policy, images: np.ndarray):
    with tempfile.TemporaryDirectory() as tmp:
        export_albumentations(policy, Path(tmp) / "policy.json")
        pipeline = A.load(Path(tmp) / "policy.json")
    pipeline.set_random_state(np.random.default_rng(0), random.Random(0))

    def run():
        for image in images:
            pipeline(image=image)

    return run


def rates(policy, images: np.ndarray, device: torch.device, repeats: int) -> tuple[float, float]:
    """Images/s of both paths: runs interleaved (so background load hits both alike), best of each."""
    ours, theirs = torch_run(policy, images, device), albumentations_run(policy, images)
    ours(), theirs()  # warm-up
    best = [min(pair) for pair in zip(*[(seconds(ours, device), seconds(theirs, torch.device("cpu")))
                                        for _ in range(repeats)])]
    return len(images) / best[0], len(images) / best[1]


def small_call_us(device: torch.device, repeats: int = 200) -> float:
    """Microseconds per sample_apply call on 25 8x8 grey images (one training-loop batch)."""
    policy = fixed_policy("trivialaugment", image_channels=1)
    x = torch.from_numpy(make_images(25, 8, 1)).permute(0, 3, 1, 2).float().div(255).to(device)
    generator = torch.Generator(device=device).manual_seed(0)

    def run():
        for _ in range(repeats):
            sample_apply(policy, x, generator)

    run()
    return min(seconds(run, device) for _ in range(3)) / repeats * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    print(f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | "
          f"{os.cpu_count()} CPUs | torch {torch.__version__}, {torch.get_num_threads()} threads | "
          f"albumentations {A.__version__} | device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    print(f"policy: TrivialAugment-Wide; {args.batch} images; best of {args.repeats} interleaved runs each\n")
    print(f"{'images':<12}{'torch batched img/s':>22}{'Albumentations img/s':>24}{'ratio':>9}")
    ratios = {}
    for label, size, channels in CONFIGS:
        policy = fixed_policy("trivialaugment", image_channels=channels)
        images = make_images(args.batch, size, channels)
        ours, theirs = rates(policy, images, device, args.repeats)
        ratios[label] = ours / theirs
        print(f"{label:<12}{ours:>22,.0f}{theirs:>24,.0f}{ratios[label]:>8.1f}x")
    print(f"\nsample_apply on 25 images of 8x8 (one training-loop batch): {small_call_us(device):.0f} us per call")
    verdict = "met" if ratios["28x28 gray"] >= 5 else "NOT met"
    print(f"target batched >= 5x Albumentations at 28x28: {verdict} ({ratios['28x28 gray']:.1f}x)")


if __name__ == "__main__":
    main()
