"""The augmented bank on disk (`data/augmented/images.npy`), written and read in bounded memory.

The augment stage stores K augmented copies of the N target training-pool images as one uint8
(K, N, H, W, C) `.npy`. :func:`write_bank` augments one copy at a time (the same
:func:`metaaug.policies.sample_apply` call per copy, in the same generator order, as the
all-in-memory path it replaces, so the file is byte-identical) and appends its bytes to the file
behind an `np.save` header, hashing them as they go: memory holds one copy of the pool, never K.
:class:`Bank` reads back only the rows a training draws (one positioned read each) and makes
only those float, so a training's resident memory does not grow with the bank either.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from metaaug.errors import MetaaugError
from metaaug.policies import Policy, sample_apply

IMAGES = "images.npy"


def npy_header(shape: tuple[int, ...], dtype=np.uint8) -> bytes:
    """The header `np.save` writes for a C-ordered array of this shape and dtype (format 1.0, or 2.0 if needed)."""
    import io

    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(shape)}
    buf = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(buf, header)
    except ValueError:  # header longer than format 1.0 allows: np.save switches to 2.0 as well
        buf = io.BytesIO()
        np.lib.format.write_array_header_2_0(buf, header)
    return buf.getvalue()


def augment_copy(policy: Policy, x: torch.Tensor, gen: torch.Generator) -> np.ndarray:
    """One augmented copy of float (N, C, H, W) images in [0, 1] as uint8 (N, H, W, C)."""
    out = sample_apply(policy, x, gen).clamp_(0, 1)
    return (out * 255).round_().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def write_bank(path: Path, policy: Policy, x: torch.Tensor, copies: int, gen: torch.Generator,
               loop: Callable[[Iterable[int]], Iterable[int]] = iter) -> str:
    """Write `copies` augmented copies of `x` (float (N, C, H, W) in [0, 1]) to the uint8 .npy `path`.

    Returns the file's digest as :func:`metaaug.files.dir_digest` computes it for one file
    (SHA-256 of its name, a NUL byte, its bytes). `loop` wraps the range of copies (a progress bar).
    """
    n, c, h, w = x.shape
    digest = hashlib.sha256(path.name.encode() + b"\0")
    with open(path, "wb") as fh:
        header = npy_header((copies, n, h, w, c))
        fh.write(header)
        digest.update(header)
        for _ in loop(range(copies)):
            block = augment_copy(policy, x, gen).tobytes()
            fh.write(block)
            digest.update(block)
    return digest.hexdigest()


class Bank:
    """A written bank on disk: `rows(k, j)` reads copy k[i] of pool image j[i] as float (M, C, H, W).

    Rows are read with one positioned read each (os.preadv), not through a memory map: a mapped
    file's pages count as resident memory, and the kernel maps neighbouring pages with every page
    a row touches, so a random draw of a few thousand rows would map hundreds of MiB.
    """

    def __init__(self, augmented_dir: Path):
        self.path = path = Path(augmented_dir) / IMAGES
        if not path.exists():
            raise MetaaugError(f"{augmented_dir}: no augmented dataset ({IMAGES} missing); expected the output of "
                               "`metaaug augment`, or train.learned_source: on_the_fly")
        try:
            mapped = np.load(path, mmap_mode="r", allow_pickle=False)  # parses the header, checks the size
        except ValueError as err:
            raise MetaaugError(f"{path}: not a readable .npy ({err}); expected the output of `metaaug augment`") \
                from None
        if mapped.dtype != np.uint8 or mapped.ndim != 5:
            raise MetaaugError(f"{path}: a {mapped.dtype} array of shape {mapped.shape}; expected uint8 "
                               "(copies, images, H, W, C), the output of `metaaug augment`")
        self.shape, self.offset = mapped.shape, mapped.offset
        del mapped
        self.copies = self.shape[0]
        self.fd = os.open(path, os.O_RDONLY)

    def __del__(self):
        if getattr(self, "fd", None) is not None:
            os.close(self.fd)
            self.fd = None

    def rows(self, k: np.ndarray, j: np.ndarray) -> torch.Tensor:
        """Float (M, C, H, W) in [0, 1] of copies k of pool rows j (the same values a float bank would hold)."""
        row = int(np.prod(self.shape[2:]))
        flat = np.asarray(k, dtype=np.int64) * self.shape[1] + np.asarray(j, dtype=np.int64)
        out = np.empty((len(flat), *self.shape[2:]), dtype=np.uint8)
        view = memoryview(out.reshape(-1))
        for i, r in enumerate(flat.tolist()):
            if os.preadv(self.fd, [view[i * row:(i + 1) * row]], self.offset + r * row) != row:
                raise MetaaugError(f"{self.path}: ends before row {r}; expected the complete output of "
                                   "`metaaug augment` (rerun it)")
        return torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255.0)
