"""The Normalization field both widgets show: the engine's presets after the model's own setting."""

from __future__ import annotations

from typing import TYPE_CHECKING

from napari_msa.engine.catalog import NORMALIZATION_PRESETS

if TYPE_CHECKING:  # annotations only: importing this module must not load torch
    from napari.layers import Image

    from napari_msa.engine import Normalization

MODEL_DEFAULT = "model default"  # the normalisation the model was built (or tuned) with
CHOICES = (MODEL_DEFAULT, *NORMALIZATION_PRESETS)
TIP = ("How intensities become 8-bit for the encoder: the model's own setting, 'ct' (window 40/400 HU), "
       "'percentile' (0.5–99.5 %), 'limits' (the layer's contrast limits) or 'none'")


def normalization(choice: str, image: Image) -> Normalization | None:
    """The engine's Normalization for a choice (None: the model's own); 'limits' reads the layer's."""
    from napari_msa.engine import Normalization  # called once a model (and so torch) is there

    if choice == MODEL_DEFAULT:
        return None
    if choice == "limits":
        return Normalization("limits", limits=tuple(float(v) for v in image.contrast_limits))
    return Normalization(choice)
