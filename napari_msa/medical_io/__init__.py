"""Medical files in and out: NIfTI volumes and DICOM series with their geometry, for napari and the command line.

Readers return ``MedicalImage``s in one display order (``geometry`` explains it); the geometry they keep lets
labels drawn on them be written back as NIfTI aligned voxel for voxel with the source. Torch-free: napari's reader
imports this module; only writing a file loads the engine (for its atomic write).
"""

from __future__ import annotations

from pathlib import Path

from .geometry import GEOMETRY_KEY, Geometry, MedicalIOError, check_same_grid
from .image import MedicalImage

__all__ = ["GEOMETRY_KEY", "Geometry", "MedicalIOError", "MedicalImage", "check_same_grid", "is_dicom_path",
           "is_medical_path", "is_nifti_name", "read_medical", "write_nifti_labels"]


def is_nifti_name(path: str | Path) -> bool:
    """``.nii`` or ``.nii.gz`` (any case)."""
    return str(path).lower().endswith((".nii", ".nii.gz"))


def is_dicom_path(path: str | Path) -> bool:
    """A ``.dcm``/``.dicom``/``.ima`` file, a file with the DICOM marker, or a folder holding DICOM files."""
    from .dicom import DICOM_SUFFIXES, folder_has_dicom, has_dicom_marker

    path = Path(path)
    if path.is_dir():
        return folder_has_dicom(path)
    return path.suffix.lower() in DICOM_SUFFIXES or (path.is_file() and has_dicom_marker(path))


def is_medical_path(path: str | Path) -> bool:
    """What ``read_medical`` reads: NIfTI names, DICOM files and any folder (a folder is read as DICOM)."""
    path = Path(path)
    return is_nifti_name(path) or path.is_dir() or is_dicom_path(path)


def read_medical(path: str | Path) -> list[MedicalImage]:
    """A NIfTI file (one volume) or a DICOM file or folder (one volume per series), in display order."""
    path = Path(path)
    if is_nifti_name(path):
        from .nifti import read_nifti

        return [read_nifti(path)]
    from .dicom import read_dicom

    return read_dicom(path)


def write_nifti_labels(path: str | Path, labels, geometry: Geometry | None = None, *, scale=None,
                       translate=None) -> Path:
    """Labels (display order) as ``.nii``/``.nii.gz`` on the geometry of the image they were drawn on."""
    from .nifti import write_nifti_labels as write

    return write(path, labels, geometry, scale=scale, translate=translate)
