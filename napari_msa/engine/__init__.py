"""The Qt-free engine: torch, numpy and segment_anything only."""

from .. import _triton_guard  # noqa: F401  (first: keeps triton out before torchvision loads; see the module)
from .adapters import AdapterConfig, inject_adapters
from .cancel import Cancelled
from .checkpoints import CheckpointError
from .devices import pick_device
from .loading import load_model
from .model import MSAModel
from .model_files import DEMO_MODEL_FILE
from .models import MODEL_REGISTRY, ModelConfig, build_sam, get_config
from .preprocessing import Normalization
from .session import Session
from .tuning import TuneResult, tune

__all__ = [
    "AdapterConfig", "Cancelled", "CheckpointError", "DEMO_MODEL_FILE", "MODEL_REGISTRY", "MSAModel",
    "ModelConfig", "Normalization", "Session", "build_sam", "get_config", "inject_adapters", "load_model",
    "pick_device", "tune", "TuneResult",
]
