"""Files in and out: images (with their scanner geometry), labels, and the checks before any work."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_msa.engine.file_checks import CheckpointError, existing_file

from .errors import CLIError

if TYPE_CHECKING:
    from napari_msa.medical_io import Geometry


@dataclass(frozen=True)
class ImageFile:
    """An input image as the commands use it: its array, and where it lies in the scanner (NIfTI/DICOM
    ``medical_io.Geometry``; None for TIFF and .npy), which ``write_labels`` gives the labels written for it."""

    data: np.ndarray
    geometry: Geometry | None = None


def read_image(path: str | Path) -> ImageFile:
    """An image from .tif/.tiff (tifffile), .npy (no pickles), NIfTI (.nii/.nii.gz) or DICOM (a file or a folder
    holding one series); NIfTI and DICOM in the display order of napari-msa's napari reader (napari_msa.medical_io),
    with their geometry."""
    from napari_msa import medical_io

    path = Path(path)
    if medical_io.is_medical_path(path):
        from napari_msa.medical_io import cli as medical_cli

        try:
            return ImageFile(*medical_cli.read_array(path))
        except medical_io.MedicalIOError as err:
            raise CLIError(str(err)) from err
    if not path.is_file():
        raise CLIError(f"image file not found: {path}")
    suffix = path.suffix.lower()
    array = None
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            array = tifffile.imread(path)
        elif suffix == ".npy":
            array = np.load(path, allow_pickle=False)
    except Exception as err:
        raise CLIError(f"cannot read {path}: {err}") from err
    if array is not None:
        return ImageFile(_real_valued(array, path))
    raise CLIError(f"{path.name}: unsupported image type '{suffix}'; use .tif, .tiff, .npy, .nii, .nii.gz, .dcm "
                   "or a DICOM folder")


def _real_valued(array: np.ndarray, path: Path) -> np.ndarray:
    if array.dtype.kind not in "biuf":
        raise CLIError(f"{path.name} holds {array.dtype} values; napari-msa needs real-valued intensities (take the "
                       "magnitude of complex data first, e.g. numpy.abs)")
    return array


def read_image_and_labels(image_path: str | Path, labels_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """An image and its labels; when both are medical files their voxel grids must be the same (checked from the
    files' geometry, not only the array shapes)."""
    from napari_msa import medical_io

    image, labels = read_image(image_path), read_image(labels_path)
    try:
        medical_io.check_same_grid(image.geometry, labels.geometry, Path(image_path).name, Path(labels_path).name)
    except medical_io.MedicalIOError as err:
        raise CLIError(str(err)) from err
    return image.data, labels.data


def write_labels(path: str | Path, labels: np.ndarray, source: ImageFile) -> Path:
    """A labels image as TIFF, as NIfTI (.nii/.nii.gz) on the geometry of the NIfTI/DICOM image ``source`` (same
    affine and header, the source's voxel order), or as a DICOM SEG (.dcm) referring to that DICOM series; written
    atomically."""
    import tifffile

    from napari_msa import medical_io
    from napari_msa.engine.files.checkpoints import atomic_write

    path = Path(path)
    if medical_io.is_nifti_name(path) or path.suffix.lower() == ".dcm":
        from napari_msa.medical_io import cli as medical_cli

        try:
            return medical_cli.write_labels(path, labels, source.geometry)
        except medical_io.MedicalIOError as err:
            raise CLIError(f"output {path.name}: {err}") from err
    if path.suffix.lower() not in (".tif", ".tiff"):
        raise CLIError(f"output {path.name}: labels are written as .tif/.tiff, .nii, .nii.gz or .dcm (DICOM SEG)")
    return atomic_write(path, lambda tmp: tifffile.imwrite(tmp, labels, compression="zlib"))


def check_output(path: str | Path, *, inputs: tuple = (), folder: bool = False) -> Path:
    """Refuse an output before any model work: one that is an input, a folder where a file goes (or the
    reverse), a read-only existing file, or a folder path through a file. Missing folders are made on write."""
    path = Path(path)
    resolved = path.resolve()
    for given in inputs:
        if given is not None and Path(given).resolve() == resolved:
            raise CLIError(f"output {path} is also an input; choose another name so the input stays as it is")
    if folder:
        if path.exists() and not path.is_dir():
            raise CLIError(f"{path} is a file, not a folder; give a folder for the cache")
        return path
    if path.is_dir():
        raise CLIError(f"output {path} is a folder; give a file name inside it")
    if path.exists() and not path.is_file():  # through a symlink too: /dev/null, a FIFO, a socket
        raise CLIError(f"output {path} is not a regular file (a device, pipe or socket); it was not touched: "
                       "give a file name")
    existing = next(parent for parent in resolved.parents if parent.exists())
    if not existing.is_dir():
        raise CLIError(f"output {path}: {existing} is a file, so no folder can be made there")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CLIError(f"output {path}: folder {existing} is not writable; choose another folder")
    if path.exists() and not path.stat().st_mode & 0o222:
        raise CLIError(f"output {path} is read-only; it was not replaced (make it writable or choose another name)")
    return path


def check_input(path: str | Path, what: str) -> Path:
    """An input file that exists and is a file: a folder is named as a folder, not as "not found"."""
    path = Path(path)
    if path.is_dir() and what == "image":
        return path  # a DICOM series folder; read_image says so if it holds no DICOM images
    try:
        return existing_file(path, what)
    except CheckpointError as err:
        raise CLIError(str(err)) from None
