"""napari-msa: Segment Anything with Medical SAM Adapters, in napari and on the command line."""

from __future__ import annotations

import importlib

__version__ = "0.1.0"
__all__ = ["AdapterConfig", "CheckpointError", "MSAModel", "Normalization", "Session", "load_model", "__version__"]


def __getattr__(name: str):
    """Import the engine (and torch) on first use of its API, so napari's menus and samples load without torch.

    Importing torch after Qt is safe; what crashed napari was triton under torchvision, which the engine now keeps
    out (see ``napari_msa._triton_guard``).
    """
    if name in __all__:
        value = getattr(importlib.import_module("napari_msa.engine"), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'napari_msa' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
