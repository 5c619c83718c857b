"""One volume read from a medical file: its display-order array, geometry, name, and what napari needs to show it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .geometry import GEOMETRY_KEY, Geometry


@dataclass
class MedicalImage:
    """A volume in display order (see ``geometry``) with the geometry that maps it back to its file."""

    data: np.ndarray
    geometry: Geometry
    name: str
    is_labels: bool = False
    rgb: bool = False
    contrast_limits: tuple[float, float] | None = None  # e.g. the DICOM window; None: napari's own
    inverted: bool = False  # DICOM MONOCHROME1: low values are white

    def layer_data(self) -> tuple[np.ndarray, dict, str]:
        """napari's (data, kwargs, layer_type) tuple: scale and translate in mm, the geometry in metadata."""
        kwargs: dict = {"name": self.name, "metadata": {GEOMETRY_KEY: self.geometry.to_metadata()}}
        kwargs.update(self.geometry.layer_placement())
        lead = self.geometry.n_leading
        kwargs["units"] = ("pixel",) * lead + ("mm",) * (len(kwargs["scale"]) - lead)
        if self.is_labels:
            return self.data, kwargs, "labels"
        if self.rgb:
            kwargs["rgb"] = True
        else:
            kwargs["colormap"] = "gray_r" if self.inverted else "gray"
            if self.contrast_limits is not None:
                kwargs["contrast_limits"] = self.contrast_limits
        return self.data, kwargs, "image"


def smallest_int_dtype(low: float, high: float) -> np.dtype:
    """The narrowest integer dtype holding [low, high] (unsigned when low >= 0)."""
    kinds = ("uint8", "uint16", "uint32") if low >= 0 else ("int8", "int16", "int32", "int64")
    for name in kinds:
        info = np.iinfo(name)
        if info.min <= low and high <= info.max:
            return np.dtype(name)
    return np.dtype("int64")
