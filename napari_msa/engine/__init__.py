"""The Qt-free engine: torch, numpy and segment_anything only.

Its public names load on first use, so ``engine.catalog`` (what the engine offers, torch-free) can be read by the
widgets and the command line before torch is imported. Beside the torch-free facts (catalog, file_checks, cancel) the
engine is in rooms that import one way: network -> files -> prompts -> model -> inference -> tuning (README, "Layout").
"""

from __future__ import annotations

import importlib

from .. import _triton_guard  # noqa: F401  (first: keeps triton out before torchvision loads; see the module)

_WHERE = {
    "AdapterConfig": "network.adapters", "inject_adapters": "network.adapters",
    "MODEL_REGISTRY": "network.architectures", "ModelConfig": "network.architectures",
    "build_sam": "network.architectures", "get_config": "network.architectures",
    "Normalization": "network.preprocessing",
    "Cancelled": "cancel", "CheckpointError": "file_checks", "DEMO_MODEL_FILE": "catalog",
    "pick_device": "model.devices", "load_model": "model.loading", "MSAModel": "model.msa_model",
    "Session": "inference.session", "TuneResult": "tuning.api", "tune": "tuning.api",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'napari_msa.engine' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
