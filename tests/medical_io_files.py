"""Real medical files for the medical I/O tests: nibabel's and pydicom's own test files, and series built from them.

A DICOM series is made from copies of one real slice (pydicom's CT_small.dcm, or the phantom's slices written into
it) with new positions, shuffled file names and InstanceNumbers that run against the positions, so only sorting by
position along the slice normal puts them in order.
"""

from __future__ import annotations

import copy
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from nibabel.testing import data_path
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

NIB_DATA = Path(data_path)


def dicom_test_file(name: str) -> Path:
    """A file pydicom ships (never downloaded: the tests run offline)."""
    path = get_testdata_file(name, download=False)
    assert path is not None, f"pydicom's test file {name} is missing"
    return Path(path)


def write_series(folder: Path, slices: list[np.ndarray] | None = None, *, n: int = 5, spacing: float = 2.5,
                 description: str = "test CT", iop=(1, 0, 0, 0, 1, 0), seed: int = 0,
                 series_uid: str | None = None, prefix: str = "") -> list[Path]:
    """A single-frame series from CT_small.dcm's header: slice k at origin + k·spacing along the normal.

    ``slices`` are the stored values (before RescaleIntercept -1024) of each slice in position order; by default
    CT_small's own pixels with the top-left 4x4 pixels set to 100·k, so a slice's place is visible in its values.
    File names are random and InstanceNumbers descend as positions ascend. Returns the files in position order.
    """
    src = pydicom.dcmread(dicom_test_file("CT_small.dcm"))
    rng = np.random.default_rng(seed)
    if slices is None:
        slices = []
        for k in range(n):
            arr = src.pixel_array.copy()
            arr[:4, :4] = 100 * k
            slices.append(arr)
    iop = np.asarray(iop, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    origin = np.array([float(v) for v in src.ImagePositionPatient])
    uid = series_uid or generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"{prefix}{h:08x}" for h in rng.choice(2**31, size=len(slices), replace=False)]
    paths = []
    for k, arr in enumerate(slices):
        ds = copy.deepcopy(src)
        ds.SeriesInstanceUID = uid
        ds.SeriesDescription = description
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.ImageOrientationPatient = [float(v) for v in iop]
        ds.ImagePositionPatient = [float(v) for v in origin + k * spacing * normal]
        ds.InstanceNumber = len(slices) - k
        ds.Rows, ds.Columns = arr.shape
        ds.PixelData = np.ascontiguousarray(arr, dtype=np.int16).tobytes()
        path = folder / names[k]
        ds.save_as(path)
        paths.append(path)
    return paths


def nifti_like(source: nib.Nifti1Image, codes: tuple[str, str, str]) -> nib.Nifti1Image:
    """The same voxels in the same world positions, stored in another voxel order (nibabel's own reorientation)."""
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    return source.as_reoriented(ornt_transform(io_orientation(source.affine), axcodes2ornt(codes)))


def expected_display(img: nib.Nifti1Image) -> np.ndarray:
    """What the display rule gives, computed another way: from nibabel's canonical (RAS) array by plane."""
    ras = np.asanyarray(nib.as_closest_canonical(img).dataobj)
    slice_world_axis = int(nib.orientations.io_orientation(img.affine)[2, 0])
    if slice_world_axis == 2:  # axial: (S, P, L)
        return np.transpose(ras, (2, 1, 0))[:, ::-1, ::-1]
    if slice_world_axis == 1:  # coronal: (P, I, L)
        return np.transpose(ras, (1, 2, 0))[::-1, ::-1, ::-1]
    return np.transpose(ras, (0, 2, 1))[::-1, ::-1, ::-1]  # sagittal: (L, I, P)


def phantom(n_slices: int = 8, first: int = 12) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """A slab of the shipped abdominal phantom (HU, int16) with its ground-truth labels and spacing (Z, Y, X)."""
    import json

    import tifffile

    from napari_msa._sample_data import sample_dir

    folder = sample_dir()
    ct = tifffile.imread(folder / "phantom_ct.tif")[first:first + n_slices].astype(np.int16)
    truth = tifffile.imread(folder / "phantom_labels.tif")[first:first + n_slices]
    scale = json.loads((folder / "samples.json").read_text())["phantom_ct.tif"]["scale"]
    return ct, truth, tuple(float(s) for s in scale)
