"""The command line's side of medical I/O: one array per input, and labels written on that input's geometry.

``read_array`` gives the array with its geometry and ``write_labels`` takes that geometry back, so
``segment IMAGE.nii.gz -o labels.nii.gz`` writes the labels with IMAGE's affine and header; nothing is kept between
calls.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import Geometry, MedicalIOError, read_medical, write_nifti_labels


def read_array(path: str | Path) -> tuple[np.ndarray, Geometry]:
    """(array, geometry): the one volume in a NIfTI file or DICOM file/folder, in the display order napari-msa's
    napari reader gives (so points saved from napari on that layer are indices into this array)."""
    path = Path(path)
    images = read_medical(path)
    if len(images) > 1:
        listed = "; ".join(f"'{im.name}' {'x'.join(map(str, im.data.shape))}" for im in images[:6])
        more = f" and {len(images) - 6} more" if len(images) > 6 else ""
        raise MedicalIOError(f"{path} holds {len(images)} series ({listed}{more}); the command line reads one: "
                             "give a folder holding only that series (napari opens them all, one layer each)")
    image = images[0]
    if image.geometry.n_leading:
        shape = image.geometry.display_shape
        raise MedicalIOError(f"{path.name} is 4D ({shape[0]} volumes of {'x'.join(map(str, shape[1:]))}); the "
                             "command line segments one volume: save one first, e.g. with nibabel "
                             "nib.save(img.slicer[..., 0], 'volume0.nii.gz')")
    return image.data, image.geometry


def write_labels(path: str | Path, labels: np.ndarray, geometry: Geometry | None) -> Path:
    """Labels as NIfTI on ``geometry`` (the source image's) when they fit its grid; else as plain axial (Z, Y, X)
    with 1 mm voxels (the input was a TIFF or .npy: no geometry). A .dcm name: a DICOM SEG referring to the DICOM
    series ``geometry`` came from."""
    if geometry is not None and geometry.spatial_display_shape != tuple(np.shape(labels)):
        geometry = None
    if str(path).lower().endswith(".dcm"):
        from .dicom_seg import write_dicom_seg

        if geometry is None:
            raise MedicalIOError(f"{Path(path).name}: DICOM SEG labels need a DICOM series as the image; write "
                                 ".nii.gz or .tif instead")
        return write_dicom_seg(path, labels, geometry)
    return write_nifti_labels(path, labels, geometry)
