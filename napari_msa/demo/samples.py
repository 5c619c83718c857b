"""Write napari-msa's sample images from sources installed with pip (no network) and a seeded phantom.

Run in a source checkout (needs the ``data`` extra: pydicom, nibabel, scikit-image)::

    python -m napari_msa.demo.samples            # rewrites sample_data/*.tif and samples.json

Every output is reproducible: the real images are conversions of files bundled with pydicom,
nibabel and scikit-image; the phantom comes from ``napari_msa.demo.phantoms`` with a fixed seed.
``samples.json`` records, per file, what napari needs to show it right (voxel spacing as layer
``scale``, contrast limits, label names) and where it came from.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage

from .phantoms import SAMPLE_SEED, phantom_volume

HERE = Path(__file__).resolve().parent.parent / "sample_data"  # the repository's sample_data/ (linked)
PHANTOM_SHAPE = (32, 224, 224)
PHANTOM_SPACING = (5.0, 1.6, 1.6)  # mm (z, y, x): a ~36 cm wide abdomen, 5 mm slices


def _write(name: str, data: np.ndarray) -> None:
    tmp = HERE / f".{name}.tmp"
    tifffile.imwrite(tmp, data, compression="zlib", predictor=data.dtype != np.uint8)
    os.replace(tmp, HERE / name)
    print(f"{name}: {data.shape} {data.dtype}, {(HERE / name).stat().st_size / 1e3:.0f} kB")


def ct_slice() -> tuple[np.ndarray, tuple[float, float]]:
    """pydicom's CT_small.dcm in Hounsfield units (stored value * RescaleSlope + RescaleIntercept)."""
    import pydicom
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm", download=False)
    if path is None:
        raise SystemExit("pydicom's bundled test file CT_small.dcm was not found")
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    return np.round(hu).astype(np.int16), tuple(float(s) for s in ds.PixelSpacing)


def _component_at(mask: np.ndarray, seed: tuple[int, int]) -> np.ndarray:
    comp, _ = ndimage.label(mask)
    if not comp[seed]:
        raise SystemExit(f"reference mask: seed {seed} is not inside the thresholded region")
    return ndimage.binary_fill_holes(comp == comp[seed])


def ct_reference(hu: np.ndarray) -> np.ndarray:
    """Reference masks of two structures that are unambiguous in CT_small, made by rule (not by a model).

    1 spinal canal: HU < 100 (cord and CSF) inside the vertebral ring (bone, > 300 HU): the connected
      piece at (55, 58) after a 2-iteration binary opening that cuts the leaks through gaps in the ring
      (its area is the same, ~350 px, for thresholds 80-100 HU; at 150 HU it leaks out).
    2 aorta: contrast-filled, 100 < HU < 300, the connected piece at (10, 90) after a 1-iteration opening
      (it is cut by the image's top edge). Holes are filled in both.
    """
    canal = _component_at(ndimage.binary_opening(hu < 100, iterations=2), (55, 58))
    aorta = _component_at(ndimage.binary_opening((hu > 100) & (hu < 300), iterations=1), (10, 90))
    out = np.zeros(hu.shape, dtype=np.uint8)
    out[canal] = 1
    out[aorta & ~canal] = 2
    return out


def mri_volume() -> tuple[np.ndarray, tuple[float, float, float]]:
    """First volume of nibabel's example4d.nii.gz (EPI, LAS... axes) as (Z, Y, X), anterior up."""
    import nibabel

    path = Path(nibabel.__file__).parent / "tests" / "data" / "example4d.nii.gz"
    img = nibabel.load(path)
    codes = nibabel.aff2axcodes(img.affine)
    if codes != ("L", "A", "S"):
        raise SystemExit(f"example4d.nii.gz orientation changed ({codes}); update the axis order here")
    vol = np.asarray(img.dataobj[..., 0])  # (i: right->left, j: posterior->anterior, k: inferior->superior)
    zooms = img.header.get_zooms()[:3]
    zyx = np.ascontiguousarray(np.transpose(vol, (2, 1, 0))[:, ::-1, :])  # rows anterior -> posterior
    return zyx.astype(np.int16), tuple(round(float(zooms[i]), 4) for i in (2, 1, 0))


def fundus() -> np.ndarray:
    """scikit-image's retina() (CC0), halved to 706 x 706 px to keep the repository small."""
    from skimage import data
    from skimage.transform import rescale

    rgb = data.retina()
    half = rescale(rgb, 0.5, channel_axis=-1, anti_aliasing=True, preserve_range=True)
    return np.clip(np.round(half), 0, 255).astype(np.uint8)


def phantom() -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    return phantom_volume(SAMPLE_SEED, PHANTOM_SHAPE)


def main() -> int:
    meta: dict[str, dict] = {}

    hu, spacing = ct_slice()
    _write("ct_slice.tif", hu)
    meta["ct_slice.tif"] = {
        "name": "CT slice (HU)", "scale": list(spacing), "unit": "mm", "contrast_limits": [-160, 240],
        "source": "pydicom test file CT_small.dcm (bundled with pydicom)", "licence": "MIT (pydicom)",
    }
    ref = ct_reference(hu)
    _write("ct_slice_reference.tif", ref)
    meta["ct_slice_reference.tif"] = {
        "name": "CT reference masks", "scale": list(spacing), "unit": "mm",
        "label_names": {"1": "spinal canal", "2": "aorta"},
        "source": "made from ct_slice.tif by thresholds + connected components (napari_msa.demo.samples.ct_reference)",
        "licence": "MIT (derived from pydicom's CT_small.dcm)",
    }

    vol, spacing3 = mri_volume()
    _write("mri_volume.tif", vol)
    meta["mri_volume.tif"] = {
        "name": "MRI volume (EPI)", "scale": list(spacing3), "unit": "mm",
        "source": "nibabel test file example4d.nii.gz, first volume (bundled with nibabel)",
        "licence": "MIT (nibabel)",
    }

    rgb = fundus()
    _write("fundus.tif", rgb)
    meta["fundus.tif"] = {
        "name": "Fundus photograph", "rgb": True,
        "source": "scikit-image data.retina(): Häggström, Mikael (2014), Wikimedia Commons "
                  "'Fundus photograph of normal left eye', downscaled by 2",
        "licence": "CC0 1.0 (public domain dedication)",
    }

    ph, labels, names = phantom()
    _write("phantom_ct.tif", ph)
    _write("phantom_labels.tif", labels)
    common = {"scale": list(PHANTOM_SPACING), "unit": "mm",
              "source": f"synthetic: napari_msa.demo.phantoms.phantom_volume(seed={SAMPLE_SEED}, "
                        f"shape={PHANTOM_SHAPE}) via python -m napari_msa.demo.samples",
              "licence": "BSD-3-Clause (napari-msa)"}
    meta["phantom_ct.tif"] = {"name": "abdominal phantom (HU)", "contrast_limits": [-160, 240], **common}
    meta["phantom_labels.tif"] = {"name": "phantom ground truth", "label_names": {str(k): v for k, v in names.items()},
                                  **common}
    tmp = HERE / ".samples.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, HERE / "samples.json")
    print("samples.json written")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
