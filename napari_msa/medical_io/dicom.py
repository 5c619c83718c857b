"""DICOM images in: one file, or a folder holding one or more series (one volume each), with their geometry.

- A folder is searched recursively; files that are not DICOM (no 'DICM' marker: notes, DICOMDIR indexes are skipped
  too) and DICOM objects that hold no image (SEG, RTSTRUCT, SR, ...) are skipped. A DICOM file that is damaged is
  an error naming it: nothing half-read is returned.
- Images are grouped by SeriesInstanceUID (and, within a series, by orientation and size, so a three-plane
  localizer gives three volumes); each volume is named by its SeriesDescription.
- Slices are sorted by their position along the slice normal (ImagePositionPatient · (row × column direction)),
  never by file name or InstanceNumber; the slice spacing comes from those positions. Images without a position
  (secondary captures, ultrasound) are stacked by InstanceNumber with unit spacing.
- Stored values go through the modality transform (RescaleSlope/RescaleIntercept, per frame for enhanced
  multi-frame files; DoseGridScaling for RT dose): CT is in Hounsfield units. Values stay integers when the
  transform keeps them whole.
- Multi-frame files: enhanced ones (per-frame PlanePositionSequence), classic ones with a GridFrameOffsetVector
  (RT dose), and frames without positions (ultrasound cine, stacked in file order).
- A single file is read alone (to read its whole series, open the folder).
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from .geometry import Geometry, MedicalIOError
from .image import MedicalImage, smallest_int_dtype

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
NON_IMAGE_MODALITIES = {"SEG", "RTSTRUCT", "RTPLAN", "RTRECORD", "SR", "PR", "KO", "REG", "DOC", "FID"}
SPACING_TOLERANCE = 0.01  # relative deviation of slice gaps beyond which spacing counts as uneven
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def has_dicom_marker(path: str | Path) -> bool:
    """True for a regular file with the DICOM Part 10 preamble ('DICM' at byte 128). A pipe or device is never
    opened (reading a FIFO would wait forever)."""
    if not os.path.isfile(path):
        return False
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def folder_has_dicom(folder: str | Path, limit: int = 200) -> bool:
    """Whether a folder holds a DICOM file, looking at no more than ``limit`` files (cheap for napari's menus)."""
    seen = 0
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or name.upper() == "DICOMDIR":
                continue
            if has_dicom_marker(os.path.join(root, name)):
                return True
            seen += 1
            if seen >= limit:
                return False
    return False


@dataclass
class _Image:
    path: Path
    ds: pydicom.Dataset  # header only (no pixel data)


def _header(path: Path, *, strict: bool) -> pydicom.Dataset | None:
    """The header of a DICOM file; None for a file that is not DICOM (unless ``strict``)."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError as err:
        forced = _without_preamble(path)
        if forced is not None:
            return forced
        if strict:
            raise MedicalIOError(f"{path.name} is not a DICOM file (no 'DICM' marker at byte 128): {err}") from err
        return None
    except Exception as err:
        raise MedicalIOError(f"cannot read DICOM file {path} ({type(err).__name__}: {err}); the file is damaged "
                             "— remove it from the folder or export the series again") from err


def _without_preamble(path: Path) -> pydicom.Dataset | None:
    """A DICOM file written without the 128-byte preamble (old exporters): read when it carries what identifies
    an image of a series, with a warning; anything else (notes, other files) is not DICOM."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        identified = "SOPInstanceUID" in ds and "SOPClassUID" in ds  # a DICOM object (an image or not)
    except Exception:
        return None
    if not identified:
        return None
    if _is_image(ds):
        warnings.warn(f"{path.name} has no DICOM preamble ('DICM' at byte 128); read anyway", stacklevel=4)
    return ds


def _is_image(ds: pydicom.Dataset) -> bool:
    return "Rows" in ds and "Columns" in ds and str(ds.get("Modality", "")).upper() not in NON_IMAGE_MODALITIES


def _collect(path: Path) -> tuple[list[_Image], list[Path]]:
    """The image files, and the DICOM SEG files (read as labels by ``dicom_seg``)."""
    from .dicom_seg import is_dicom_seg

    if path.exists() and not path.is_file() and not path.is_dir():
        raise MedicalIOError(f"{path} is not a regular file (a pipe or device); give the DICOM file or its folder")
    if path.is_file():
        ds = _header(path, strict=True)
        if is_dicom_seg(ds):
            return [], [path]
        if not _is_image(ds):
            raise MedicalIOError(f"{path.name} is a DICOM {ds.get('Modality', '')} object without an image "
                                 "(napari-msa reads image series and DICOM SEG; RTSTRUCT and others are not read)")
        return [_Image(path, ds)], []
    if not path.is_dir():
        raise MedicalIOError(f"DICOM file or folder not found: {path}")
    images, segs = [], []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or name.upper() == "DICOMDIR":
                continue
            file = Path(root) / name
            if not file.is_file():  # a FIFO (reading it would hang), a socket, a dangling link or a link loop
                warnings.warn(f"{file} is not a regular file (a pipe, device or broken link); skipped", stacklevel=2)
                continue
            ds = _header(file, strict=False)
            if ds is not None and is_dicom_seg(ds):
                segs.append(file)
            elif ds is not None and _is_image(ds):
                images.append(_Image(file, ds))
    if not images and not segs:
        raise MedicalIOError(f"no DICOM images found in folder {path}")
    return images, segs


def _floats(value, n: int | None = None) -> np.ndarray | None:
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return arr if n is None or arr.shape == (n,) else None


def _functional(ds: pydicom.Dataset, frame: int | None, sequence: str, attr: str):
    """An attribute from an enhanced file's per-frame, then shared functional groups; None if absent."""
    groups = []
    if frame is not None and "PerFrameFunctionalGroupsSequence" in ds:
        groups.append(ds.PerFrameFunctionalGroupsSequence[frame])
    if "SharedFunctionalGroupsSequence" in ds:
        groups.append(ds.SharedFunctionalGroupsSequence[0])
    for group in groups:
        if sequence in group and len(group[sequence].value) and attr in group[sequence].value[0]:
            return group[sequence].value[0][attr].value
    return None


def _orientation(ds: pydicom.Dataset) -> np.ndarray | None:
    value = ds.get("ImageOrientationPatient") or _functional(ds, 0, "PlaneOrientationSequence",
                                                                "ImageOrientationPatient")
    iop = _floats(value, 6) if value is not None else None
    if iop is None or np.linalg.norm(np.cross(iop[:3], iop[3:])) < 1e-3:
        return None
    return iop


def _pixel_spacing(ds: pydicom.Dataset) -> tuple[float, float]:
    """(between rows, between columns) in mm; 1 when the file gives none."""
    for value in (ds.get("PixelSpacing"), _functional(ds, 0, "PixelMeasuresSequence", "PixelSpacing"),
                  ds.get("ImagerPixelSpacing")):
        spacing = _floats(value, 2) if value is not None else None
        if spacing is not None and np.all(spacing > 0):
            return float(spacing[0]), float(spacing[1])
    return 1.0, 1.0


def _slice_thickness(ds: pydicom.Dataset) -> float:
    for value in (ds.get("SpacingBetweenSlices"), ds.get("SliceThickness"),
                  _functional(ds, 0, "PixelMeasuresSequence", "SpacingBetweenSlices"),
                  _functional(ds, 0, "PixelMeasuresSequence", "SliceThickness")):
        try:
            if value is not None and float(value) > 0:
                return float(value)
        except (TypeError, ValueError):
            continue
    return 1.0


def _rescale(ds: pydicom.Dataset, frame: int | None) -> tuple[float, float]:
    """(slope, intercept) of the modality transform for one frame."""
    if str(ds.get("Modality", "")).upper() == "RTDOSE" and "DoseGridScaling" in ds:
        return float(ds.DoseGridScaling), 0.0
    slope = _functional(ds, frame, "PixelValueTransformationSequence", "RescaleSlope")
    inter = _functional(ds, frame, "PixelValueTransformationSequence", "RescaleIntercept")
    slope = ds.get("RescaleSlope", 1.0) if slope is None else slope
    inter = ds.get("RescaleIntercept", 0.0) if inter is None else inter
    try:
        return float(slope), float(inter)
    except (TypeError, ValueError):
        return 1.0, 0.0


def _pixels(item: _Image) -> tuple[pydicom.Dataset, np.ndarray]:
    pydicom_log = logging.getLogger("pydicom")
    level = pydicom_log.level
    pydicom_log.setLevel(logging.CRITICAL)  # a decoder that fails logs its traceback there; the error below says it
    try:
        ds = pydicom.dcmread(item.path, force=True)  # the header was read already: it is DICOM
        arr = ds.pixel_array
    except Exception as err:
        raise MedicalIOError(f"cannot decode the pixels of {item.path} ({_decoder_problem(err)}); the file is "
                             "damaged or compressed with a codec that is not installed (pip install "
                             "pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg)") from err
    finally:
        pydicom_log.setLevel(level)
    return ds, arr


def _decoder_problem(err: Exception) -> str:
    """pydicom's error in a few words: its last plugin's reason, without the wrapper's preamble."""
    text = " ".join(str(err).split())
    return text.split("plugins: ", 1)[-1] if "plugins: " in text else f"{type(err).__name__}: {text}"


def _modality_values(frames: list[np.ndarray], rescale: list[tuple[float, float]]) -> np.ndarray:
    """Stack frames and apply each one's slope/intercept; integers stay integers when the result is whole."""
    stack = np.stack(frames)
    if all(s == 1 and i == 0 for s, i in rescale):
        return stack
    whole = stack.dtype.kind in "iu" and all(float(s).is_integer() and float(i).is_integer() for s, i in rescale)
    wide = np.int32 if stack.dtype.itemsize <= 2 else np.int64  # 16-bit values times small whole slopes fit
    out = np.empty(stack.shape, dtype=wide if whole else np.float32)
    for k, (slope, inter) in enumerate(rescale):
        out[k] = stack[k].astype(out.dtype) * (int(slope) if whole else np.float32(slope)) + (
            int(inter) if whole else np.float32(inter))
    if whole:
        return out.astype(smallest_int_dtype(out.min(), out.max()))
    return out


def _window(ds: pydicom.Dataset) -> tuple[float, float] | None:
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:
        return None
    try:
        c = float(center[0] if isinstance(center, MultiValue) else center)
        w = float(width[0] if isinstance(width, MultiValue) else width)
    except (TypeError, ValueError):
        return None
    return (c - w / 2, c + w / 2) if w > 0 else None


def _positions_multiframe(ds: pydicom.Dataset, n: int, normal: np.ndarray | None) -> np.ndarray | None:
    if "PerFrameFunctionalGroupsSequence" in ds:
        pos = [_floats(_functional(ds, k, "PlanePositionSequence", "ImagePositionPatient") or [], 3)
               for k in range(n)]
        return np.array(pos) if all(p is not None for p in pos) else None
    ipp = _floats(ds.get("ImagePositionPatient") or [], 3)
    offsets = _floats(ds.get("GridFrameOffsetVector") or [], n)
    if ipp is None or offsets is None or normal is None:
        return None
    if offsets[0] != 0:  # absolute positions along the normal (DICOM C.8.8.3.2)
        offsets = offsets - float(ipp @ normal)
    return ipp + offsets[:, None] * normal


def _series_name(ds: pydicom.Dataset, fallback: str) -> str:
    description = str(ds.get("SeriesDescription", "") or "").strip()
    if description:
        return description
    number = ds.get("SeriesNumber")
    modality = str(ds.get("Modality", "") or "").strip()
    if number is not None:
        return f"{modality or 'DICOM'} series {number}"
    return fallback


def _affine(iop: np.ndarray | None, spacing: tuple[float, float], positions: np.ndarray | None,
            thickness: float) -> np.ndarray:
    """RAS+ affine for the voxel order (column, row, slice), from DICOM's LPS geometry."""
    row_dir, col_dir = (iop[:3], iop[3:]) if iop is not None else (np.array([1.0, 0, 0]), np.array([0, 1.0, 0]))
    normal = np.cross(row_dir, col_dir)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * spacing[1]  # along a row: the column index grows
    lps[:3, 1] = col_dir * spacing[0]  # along a column: the row index grows
    if positions is not None and len(positions) > 1:
        lps[:3, 2] = (positions[-1] - positions[0]) / (len(positions) - 1)
    else:
        lps[:3, 2] = normal * thickness
    lps[:3, 3] = positions[0] if positions is not None else 0.0
    return LPS_TO_RAS @ lps


def _check_spacing(positions: np.ndarray, normal: np.ndarray, where: str) -> None:
    along = positions @ normal
    gaps = np.diff(along)
    if np.any(gaps < 1e-4):
        raise MedicalIOError(f"{where}: {int(np.sum(gaps < 1e-4)) + 1} images share a slice position (several "
                             "time points, echoes or repeats in one series?); napari-msa reads one volume per "
                             "series — put each repeat in a folder of its own")
    if len(gaps) > 1 and np.ptp(gaps) > SPACING_TOLERANCE * np.mean(gaps):
        warnings.warn(f"{where}: slice gaps vary from {gaps.min():.3g} to {gaps.max():.3g} mm (a missing slice?); "
                      f"shown and written with their mean, {np.mean(gaps):.3g} mm", stacklevel=3)


@dataclass
class _Frames:
    """A series' frames in slice order, each frame's (slope, intercept), their positions (None: unknown)."""

    ds: pydicom.Dataset  # a full dataset of the series, for the attributes shared by all frames
    frames: list[np.ndarray]
    rescale: list[tuple[float, float]]
    positions: np.ndarray | None
    files: list[Path] | None = None  # single-frame series: each slice's file, in slice order (DICOM SEG refers to them)


def _one_file(item: _Image, normal: np.ndarray | None, where: str) -> _Frames:
    """A single-frame file, or a multi-frame file sorted by its frames' positions."""
    ds, arr = _pixels(item)
    n = int(ds.get("NumberOfFrames", 1) or 1)
    if n == 1:
        positions = _floats(ds.get("ImagePositionPatient") or [], 3)
        return _Frames(ds, [arr], [_rescale(ds, None)], None if positions is None else positions[None], [item.path])
    frames, rescale = list(arr), [_rescale(ds, k) for k in range(n)]
    positions = _positions_multiframe(ds, n, normal)
    if positions is None or normal is None:
        return _Frames(ds, frames, rescale, None)  # no positions: frames in file order
    order = np.argsort(positions @ normal, kind="stable")
    _check_spacing(positions[order], normal, where)
    return _Frames(ds, [frames[k] for k in order], [rescale[k] for k in order], positions[order])


def _single_frame_files(items: list[_Image], normal: np.ndarray | None, where: str) -> _Frames:
    """One slice per file, sorted by position along the normal (by InstanceNumber when positions are missing)."""
    positions = None
    if normal is not None and all("ImagePositionPatient" in it.ds for it in items):
        positions = np.array([_floats(it.ds.ImagePositionPatient, 3) for it in items])
        order = np.argsort(positions @ normal, kind="stable")
        positions = positions[order]
        _check_spacing(positions, normal, where)
    else:
        order = sorted(range(len(items)), key=lambda k: (int(items[k].ds.get("InstanceNumber") or 0),
                                                          items[k].path.name))
    decoded = [_pixels(items[k]) for k in order]
    frames = [arr for _, arr in decoded]
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise MedicalIOError(f"{where}: images of different sizes {sorted(shapes)}")
    return _Frames(decoded[0][0], frames, [_rescale(ds, None) for ds, _ in decoded], positions,
                   [items[k].path for k in order])


def _volume(items: list[_Image], name: str) -> MedicalImage:
    first = items[0].ds
    where = f"series '{name}' ({items[0].path.parent})"
    iop = _orientation(first)
    normal = np.cross(iop[:3], iop[3:]) if iop is not None else None
    if len(items) == 1:
        got = _one_file(items[0], normal, where)
    elif int(first.get("NumberOfFrames", 1) or 1) > 1:
        raise MedicalIOError(f"{where} is spread over {len(items)} multi-frame files; open one file at a time")
    else:
        got = _single_frame_files(items, normal, where)
    ds = got.ds
    rgb = int(ds.get("SamplesPerPixel", 1) or 1) > 1
    values = np.stack(got.frames) if rgb else _modality_values(got.frames, got.rescale)
    affine = _affine(iop, _pixel_spacing(ds), got.positions, _slice_thickness(ds))
    # (slice, row, column[, channel]) -> nibabel's voxel order (column, row, slice[, channel])
    source = np.swapaxes(values, 0, 2)
    info = {key: str(ds.get(key, "") or "") for key in ("Modality", "SeriesDescription", "SeriesNumber",
                                                         "SeriesInstanceUID", "StudyInstanceUID",
                                                         "FrameOfReferenceUID")}
    info["files"] = len(items)
    if got.files is not None:
        info["source_files"] = [str(f.resolve()) for f in got.files]
    geometry = Geometry(affine=affine, source_shape=source.shape, fmt="dicom", channels_last=rgb, info=info)
    inverted = str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1"
    return MedicalImage(data=geometry.to_display(source), geometry=geometry, name=name, rgb=rgb,
                        contrast_limits=None if rgb else _window(ds), inverted=inverted)


def _group_key(item: _Image) -> tuple:
    ds = item.ds
    iop = _orientation(ds)
    return (str(ds.get("SeriesInstanceUID", "") or item.path.parent),
            None if iop is None else tuple(np.round(iop, 3)),
            int(ds.Rows), int(ds.Columns), int(ds.get("SamplesPerPixel", 1) or 1))


def read_dicom(path: str | Path) -> list[MedicalImage]:
    """Every image series in a DICOM file or folder, one display-order volume each (see the module docstring)."""
    from .dicom_seg import read_dicom_seg

    path = Path(path)
    groups: dict[tuple, list[_Image]] = {}
    items, segs = _collect(path)
    for item in items:
        groups.setdefault(_group_key(item), []).append(item)
    by_series: dict[str, list[list[_Image]]] = {}
    for key, items in groups.items():
        by_series.setdefault(key[0], []).append(items)
    volumes, names = [], set()
    for parts in by_series.values():
        for part, items in enumerate(parts, start=1):
            base = _series_name(items[0].ds, path.stem if path.is_file() else path.name)
            name = f"{base} ({part}/{len(parts)})" if len(parts) > 1 else base
            unique, n = name, 2
            while unique in names:  # two series with one description: number them in reading order
                unique, n = f"{name} [{n}]", n + 1
            names.add(unique)
            name = unique
            volumes.append(_volume(items, name))
    return volumes + [read_dicom_seg(seg) for seg in segs]
