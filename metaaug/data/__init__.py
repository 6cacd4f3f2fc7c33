"""Data: load a labelled image set from a spec string (``digits``, ``imagefolder:<dir>``, ...)."""

from metaaug.data.sources import Dataset, load_source

__all__ = ["Dataset", "load_source"]
