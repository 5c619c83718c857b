"""Openly licensed real images that installed packages ship, for training the click adapter.

Every image here is allowed as training data. Held out (never listed): pydicom's CT and MR files
(``CT_small.dcm`` is the project's CT sample and its reference masks are ground truth for evaluation,
``MR_small.dcm`` and the rest are evaluation images too). Each loader returns 2D planes as 8-bit
grey or RGB, windowed by percentiles, so the model sees them as a user's layer would be shown.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from napari_msa.engine.network.preprocessing import Normalization, intensity_window, to_uint8_rgb

HELD_OUT_MODALITIES = ("CT", "MR")


@dataclass
class RealImage:
    name: str
    plane: np.ndarray  # (Y,X) or (Y,X,3) uint8
    source: str
    licence: str


def _percentile_uint8(plane: np.ndarray) -> np.ndarray:
    rgb = plane.ndim == 3
    window = intensity_window(plane, Normalization("percentile"), rgb=False) if not rgb else None
    out = to_uint8_rgb(plane, window)
    return out if rgb else out[..., 0]


def _mri_sample() -> list[RealImage]:
    from napari_msa._sample_data import read_sample

    volume, _ = read_sample("mri_volume.tif")
    out = []
    for z in range(3, volume.shape[0] - 3, 2):  # the outermost slices hold little brain
        out.append(RealImage(f"mri_volume z{z}", _percentile_uint8(volume[z]),
                             "nibabel example4d.nii.gz (the project's MRI sample)", "MIT (nibabel)"))
    return out


def _nibabel_anatomical() -> list[RealImage]:
    import os

    import nibabel
    from nibabel.testing import data_path

    data = np.asarray(nibabel.load(os.path.join(data_path, "anatomical.nii")).get_fdata(), dtype=np.float32)
    out = []
    for axis in range(3):
        n = data.shape[axis]
        for frac in (0.35, 0.5, 0.65):
            plane = np.take(data, int(n * frac), axis=axis)
            if plane.size and plane.max() > plane.min():
                out.append(RealImage(f"anatomical.nii axis{axis} {frac}", _percentile_uint8(np.rot90(plane)),
                                     "nibabel test data anatomical.nii", "MIT (nibabel)"))
    return out


def _skimage(name: str, licence: str) -> Callable[[], list[RealImage]]:
    def load() -> list[RealImage]:
        import skimage.data

        img = np.asarray(getattr(skimage.data, name)())
        if img.dtype == bool:  # the horse: a silhouette
            img = img.astype(np.uint8) * 255
        if name in ("retina", "hubble_deep_field"):
            img = img[::2, ::2]
        return [RealImage(f"skimage {name}", _percentile_uint8(np.asarray(img)), f"scikit-image data.{name}()",
                          licence)]

    return load


def _pydicom_ultrasound(frames_of_ybr: tuple[int, ...] = (0, 10, 20), others: bool = True) -> list[RealImage]:
    import pydicom
    from pydicom.data import get_testdata_file

    out = []
    files = [("examples_ybr_color.dcm", frames_of_ybr)]
    if others:
        files += [("examples_rgb_color.dcm", (None,)), ("examples_palette.dcm", (None,))]
    for fname, frames in files:
        try:
            ds = pydicom.dcmread(get_testdata_file(fname))
            if getattr(ds, "Modality", "") in HELD_OUT_MODALITIES:
                continue
            pixels = ds.pixel_array  # pydicom 3 returns YBR data already converted to RGB
            if ds.PhotometricInterpretation == "PALETTE COLOR":
                pixels = pydicom.pixels.apply_color_lut(pixels, ds)
                pixels = (pixels / max(1, pixels.max()) * 255).astype(np.uint8)
        except Exception:  # a decoder this machine lacks: skip the file, say so in the data list
            continue
        for f in frames:
            plane = pixels if f is None else pixels[f]
            out.append(RealImage(f"pydicom {fname}" + ("" if f is None else f" frame {f}"),
                                 _percentile_uint8(np.asarray(plane)), f"pydicom test file {fname}", "MIT (pydicom)"))
    return out


LOADERS: dict[str, Callable[[], list[RealImage]]] = {
    "mri_sample": _mri_sample,
    "nibabel_anatomical": _nibabel_anatomical,
    "fundus": _skimage("retina", "CC0 1.0 (Häggström 2014, Wikimedia Commons)"),
    "microaneurysms": _skimage("microaneurysms", "CC0 (Andreas Maier; Budai et al. 2013)"),
    "immunohistochemistry": _skimage("immunohistochemistry", "no known copyright restrictions (CMMI)"),
    "cell": _skimage("cell", "CC0 1.0"),
    "coins": _skimage("coins", "no known copyright restrictions (Brooklyn Museum)"),
    "ultrasound": _pydicom_ultrasound,
    # more of the allow-list (thirteenth session): scikit-image's photographs with a stated free licence, its
    # text (dark letters), its Shepp-Logan phantom, and the ultrasound clip's frames between those above
    "ultrasound_more_frames": lambda: _pydicom_ultrasound((5, 15, 25), others=False),
    "astronaut": _skimage("astronaut", "public domain (NASA)"),
    "camera": _skimage("camera", "CC0 (Lav Varshney)"),
    "chelsea": _skimage("chelsea", "CC0 (Stefan van der Walt)"),
    "coffee": _skimage("coffee", "CC0 (Rachel Michetti)"),
    "rocket": _skimage("rocket", "public domain (SpaceX)"),
    "clock": _skimage("clock", "public domain (Stefan van der Walt)"),
    "hubble_deep_field": _skimage("hubble_deep_field", "public domain (NASA)"),
    "text": _skimage("text", "public domain"),
    "horse": _skimage("horse", "CC0 (Andreas Preuss)"),
    "shepp_logan_phantom": _skimage("shepp_logan_phantom", "BSD-3-Clause (scikit-image; a mathematical phantom)"),
}


def load_real_images(names: list[str] | None = None) -> list[RealImage]:
    out: list[RealImage] = []
    for key in names or list(LOADERS):
        out.extend(LOADERS[key]())
    return out
