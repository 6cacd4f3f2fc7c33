"""Data: load a labelled image set from a spec string (``digits``, ``imagefolder:<dir>``, ...).

One module per source kind (digits, imagefolder, idx, cifar, npz), found by metaaug.data.registry;
base holds what they share, pixels the one rule that brings any bit depth to uint8.
"""

from metaaug.data.base import Dataset
from metaaug.data.registry import check_source, load_source, same_source

__all__ = ["Dataset", "check_source", "load_source", "same_source"]
