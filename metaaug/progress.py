"""Progress bars for the long loops (meta-steps, epochs, augmentation), quiet where nobody watches.

Owns :func:`progress` only: a tqdm bar on stderr when stderr is a terminal, and
nothing at all in CI (env ``CI`` set), in logs and pipes (stderr not a TTY), or
when the user turns it off with ``METAAUG_PROGRESS=0``. DVC runs stage
commands with the user's terminal, so bars show during an interactive
``dvc repro`` and stay out of captured output.
"""

from __future__ import annotations

import os
import sys
from typing import Iterable, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def enabled() -> bool:
    """Bars only for a person at a terminal: not in CI, not when redirected, not when switched off."""
    if os.environ.get("METAAUG_PROGRESS", "").strip() == "0" or os.environ.get("CI"):
        return False
    return sys.stderr is not None and sys.stderr.isatty()


def progress(iterable: Iterable[T], desc: str | None = None, total: int | None = None) -> Iterable[T]:
    """`iterable`, with a bar when :func:`enabled`; the bar vanishes when the loop ends (its results print)."""
    if not enabled():
        return iterable
    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True, file=sys.stderr)
