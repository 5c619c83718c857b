"""npe2 readers (NIfTI; DICOM files and folders) and the NIfTI labels writer: thin wrappers over ``medical_io``.

Torch-free at import (napari imports this module to fill its menus); writing a file loads the engine for its atomic
write.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from napari_msa.medical_io import GEOMETRY_KEY, Geometry, MedicalIOError, is_nifti_name, read_medical

LayerData = tuple[np.ndarray, dict, str]
PathOrPaths = str | list[str]


def _paths(path: PathOrPaths) -> list[str]:
    return [path] if isinstance(path, (str, Path)) else list(path)


def read_layers(path: PathOrPaths) -> list[LayerData]:
    """Every volume in the given file(s) or folder(s): one layer each, scale/translate in mm, geometry in metadata."""
    return [image.layer_data() for p in _paths(path) for image in read_medical(p)]


def get_nifti_reader(path: PathOrPaths) -> Callable[[PathOrPaths], list[LayerData]] | None:
    return read_layers if all(is_nifti_name(p) for p in _paths(path)) else None


def get_dicom_reader(path: PathOrPaths) -> Callable[[PathOrPaths], list[LayerData]] | None:
    """A folder holding DICOM files, or ``.dcm``/``.dicom``/``.ima`` files; None leaves the path to other readers."""
    from napari_msa.medical_io.dicom import DICOM_SUFFIXES, folder_has_dicom

    for p in map(Path, _paths(path)):
        if not (folder_has_dicom(p) if p.is_dir() else p.suffix.lower() in DICOM_SUFFIXES):
            return None
    return read_layers


def _placement_matches(layer, scale, translate) -> bool:
    n = len(layer.scale)
    return (np.allclose(np.asarray(layer.scale)[-n:], np.asarray(scale)[-n:])
            and np.allclose(np.asarray(layer.translate)[-n:], np.asarray(translate)[-n:]))


def find_source_geometry(name: str, shape: tuple[int, ...], scale, translate, viewer=None) -> Geometry | None:
    """The geometry of the image a labels layer was drawn on, when the labels layer itself carries none.

    Looks in the viewer for layers opened by napari-msa's readers whose pixel grid and placement equal the
    labels'; the image named like the labels (the Segment widget names them '<image> labels') wins. Several
    different candidates: an error, since guessing could misplace every voxel.
    """
    if viewer is None:
        try:
            import napari

            viewer = napari.current_viewer()
        except Exception:  # no Qt application, or napari not importable here
            viewer = None
    if viewer is None:
        return None
    candidates = {}
    for layer in viewer.layers:
        meta = getattr(layer, "metadata", {}).get(GEOMETRY_KEY)
        try:
            geometry = Geometry.from_metadata(meta) if meta else None
        except MedicalIOError:
            geometry = None  # another layer's damaged metadata must not block this save
        if geometry is None:
            continue
        if geometry.spatial_display_shape == tuple(shape) and _placement_matches(layer, scale, translate):
            candidates[layer.name] = geometry
    if not candidates:
        return None
    base = name[: -len(" labels")] if name.endswith(" labels") else None
    if base in candidates:
        return candidates[base]
    distinct = {(g.affine.tobytes(), g.source_shape) for g in candidates.values()}
    if len(distinct) > 1:
        raise MedicalIOError(f"labels '{name}' fit several images ({', '.join(sorted(candidates))}); name the "
                             "labels layer '<image name> labels' to say which image's geometry to write")
    return next(iter(candidates.values()))


class LabelsNotSaved(RuntimeError):
    """Raised by the writer instead of a ValueError, which napari would swallow into 'not a valid writer'."""


def write_labels(path: str, data, attributes: dict) -> list[str]:
    """npe2 single-layer writer: a Labels layer as .nii/.nii.gz on the geometry of the image it was drawn on.

    The geometry comes from the layer's metadata (labels opened from NIfTI) or from the image it was drawn on (see
    ``find_source_geometry``); with neither, the array is written as axial (Z, Y, X) with the layer's scale and
    translate in mm.
    """
    from napari_msa.medical_io.nifti import write_nifti_labels

    if not str(path).lower().endswith((".nii", ".nii.gz")):
        path = f"{path}.nii.gz"  # napari passes the dialog's name as typed when this writer's filter is chosen
    labels = np.asarray(data)
    meta = (attributes.get("metadata") or {}).get(GEOMETRY_KEY)
    scale, translate = attributes.get("scale"), attributes.get("translate")
    try:
        geometry = Geometry.from_metadata(meta) if meta else None
        if geometry is None:
            geometry = find_source_geometry(str(attributes.get("name", "")), labels.shape, scale, translate)
        written = write_nifti_labels(path, labels, geometry, scale=scale, translate=translate)
    except MedicalIOError as err:
        raise LabelsNotSaved(f"{Path(path).name} was not saved: {err}") from err
    return [str(written)]


def write_labels_dicom_seg(path: str, data, attributes: dict) -> list[str]:
    """npe2 single-layer writer: labels drawn on a DICOM series as a DICOM SEG referring to that series."""
    from napari_msa.medical_io.dicom_seg import write_dicom_seg

    if not str(path).lower().endswith(".dcm"):
        path = f"{path}.dcm"  # napari passes the dialog's name as typed when this writer's filter is chosen
    labels = np.asarray(data)
    meta = (attributes.get("metadata") or {}).get(GEOMETRY_KEY)
    scale, translate = attributes.get("scale"), attributes.get("translate")
    names = (attributes.get("metadata") or {}).get("label_names") or {}
    try:
        geometry = Geometry.from_metadata(meta) if meta else None
        if geometry is None or not geometry.info.get("source_files"):
            geometry = find_source_geometry(str(attributes.get("name", "")), labels.shape, scale, translate)
        if geometry is None:
            raise MedicalIOError("no DICOM series under these labels (open the series with napari-msa's reader and "
                                 "draw on it), or save them as NIfTI")
        written = write_dicom_seg(path, labels, geometry, {int(k): str(v) for k, v in names.items()})
    except MedicalIOError as err:
        raise LabelsNotSaved(f"{Path(path).name} was not saved: {err}") from err
    return [str(written)]
