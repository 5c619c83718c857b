"""napari-msa: Segment Anything with Medical SAM Adapters, in napari and on the command line."""

from __future__ import annotations

import importlib

__version__ = "0.1.0"
__all__ = ["AdapterConfig", "CheckpointError", "MSAModel", "Normalization", "Session", "load_model", "__version__"]


def __getattr__(name: str):
    """Import the engine (and torch) only when its API is used, so napari's sample menu stays light."""
    if name in __all__:
        return getattr(importlib.import_module("napari_msa.engine"), name)
    raise AttributeError(f"module 'napari_msa' has no attribute {name!r}")
