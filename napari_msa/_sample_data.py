"""npe2 sample data: small medical images shipped with the package, loaded with no network.

Kept light on purpose (numpy + tifffile, no torch): napari imports it when it fills the File → Open
Sample menu. Spacing, contrast limits and label names come from ``samples.json`` beside the files.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

LayerData = tuple[np.ndarray, dict, str]

_CANDIDATES = (
    Path(__file__).resolve().parent / "sample_data",  # installed package (or the repo's symlink)
    Path(__file__).resolve().parent.parent / "sample_data",  # a source checkout without the symlink
)


def sample_dir() -> Path:
    """The folder holding the sample TIFFs; a clear error if the install lacks them."""
    for candidate in _CANDIDATES:
        if (candidate / "samples.json").is_file():
            return candidate
    raise FileNotFoundError(
        "napari-msa's sample data is missing (looked in " + ", ".join(str(c) for c in _CANDIDATES) + "); "
        "reinstall the package or run `python -m napari_msa.demo.samples` in a source checkout"
    )


@lru_cache(maxsize=1)
def _meta() -> dict:
    return json.loads((sample_dir() / "samples.json").read_text(encoding="utf-8"))


def read_sample(name: str) -> tuple[np.ndarray, dict]:
    """A sample file's array and its listing (name, source, licence, scale)."""
    import tifffile

    return tifffile.imread(sample_dir() / name), _meta()[name]


def _image(name: str, **extra) -> LayerData:
    data, meta = read_sample(name)
    kwargs = {"name": meta["name"], "metadata": {"source": meta["source"], "licence": meta["licence"]}}
    if "scale" in meta:
        kwargs["scale"] = tuple(meta["scale"])
        kwargs["units"] = meta.get("unit", "mm")
    if "contrast_limits" in meta:
        kwargs["contrast_limits"] = tuple(meta["contrast_limits"])
    if meta.get("rgb"):
        kwargs["rgb"] = True
    else:
        kwargs["colormap"] = "gray"
    kwargs.update(extra)
    return data, kwargs, "image"


def _labels(name: str, **extra) -> LayerData:
    data, meta = read_sample(name)
    kwargs = {"name": meta["name"], "metadata": {"source": meta["source"], "licence": meta["licence"],
                                                  "label_names": {int(k): v for k, v in meta["label_names"].items()}}}
    if "scale" in meta:
        kwargs["scale"] = tuple(meta["scale"])
        kwargs["units"] = meta.get("unit", "mm")
    kwargs.update(extra)
    return data, kwargs, "labels"


def ct_slice() -> list[LayerData]:
    """pydicom's CT_small.dcm in HU, and rule-based reference masks (spinal canal, aorta), hidden."""
    return [_image("ct_slice.tif"), _labels("ct_slice_reference.tif", visible=False, opacity=0.5)]


def mri_volume() -> list[LayerData]:
    """The first volume of nibabel's example4d.nii.gz, (Z, Y, X) with its voxel spacing."""
    return [_image("mri_volume.tif")]


def fundus() -> list[LayerData]:
    """scikit-image's retina() (CC0), RGB."""
    return [_image("fundus.tif")]


def phantom_volume() -> list[LayerData]:
    """The seeded synthetic abdominal CT phantom (HU) and its ground-truth labels, hidden."""
    return [_image("phantom_ct.tif"), _labels("phantom_labels.tif", visible=False, opacity=0.5)]
