"""NIfTI-1/2 volumes (``.nii``, ``.nii.gz``) in and labels out, with nibabel, on the source's own geometry.

Which files open as labels: integer voxels with no intensity scaling and no negative values, and one of: a
name that says so (``seg``, ``label``, ``mask`` or ``annot`` in it: ``case1_seg.nii.gz``, ``aseg.nii``), the
NIfTI intent ``label`` (napari-msa writes it), or at most 64 distinct values. Everything else is an image.

Labels are written with the source's header (its qform/sform and codes, units, pixdim) and affine, in the source's
voxel order, so they overlay the source voxel for voxel in any NIfTI tool; their dtype is the narrowest unsigned
integer that holds the ids, the intent ``label``, no scaling.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import nibabel as nib
import numpy as np

from .geometry import Geometry, MedicalIOError
from .image import MedicalImage, smallest_int_dtype

NIFTI_SUFFIXES = (".nii", ".nii.gz")
LABEL_NAME_HINT = re.compile(r"seg|label|mask|annot", re.IGNORECASE)
MAX_LABEL_VALUES = 64  # an integer volume with at most this many distinct values opens as labels
LABEL_INTENT = "label"


def is_nifti_name(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def stem(path: str | Path) -> str:
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _load(path: Path) -> nib.Nifti1Image | nib.Nifti2Image:
    if not path.is_file():
        raise MedicalIOError(f"NIfTI file not found: {path}")
    if path.name.lower().endswith(".gz"):
        _check_gzip(path)
    try:
        img = nib.load(path)
    except Exception as err:  # nibabel raises many types for damaged headers
        raise MedicalIOError(f"cannot read {path.name} as NIfTI ({err}); is the file complete?") from err
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise MedicalIOError(f"{path.name} is a {type(img).__name__}, not a single-file NIfTI image")
    return img


def _check_gzip(path: Path) -> None:
    """Read the whole compressed stream once: gzip checks its CRC and length only at the end, which nibabel never
    reaches when the voxels end before it, so a damaged file would otherwise open with wrong voxels."""
    import gzip
    import zlib

    try:
        with gzip.open(path, "rb") as f:
            while f.read(1 << 24):
                pass
    except (OSError, EOFError, zlib.error) as err:
        raise MedicalIOError(f"{path.name} is damaged or incomplete ({err}); its voxels cannot be trusted: get "
                             "the file again") from err


def _voxels(img, path: Path) -> np.ndarray:
    """The voxel values with the header's scaling applied; integer when the scaling keeps them whole."""
    proxy = img.dataobj
    try:
        slope, inter = float(proxy.slope), float(proxy.inter)
        raw = np.asarray(proxy.get_unscaled())
    except Exception as err:  # truncated or damaged data block
        raise MedicalIOError(f"cannot read the voxels of {path.name} ({err}); the file is damaged or "
                             "incomplete") from err
    if not raw.dtype.isnative:  # big-endian files: native byte order for numpy, napari and torch
        raw = raw.astype(raw.dtype.newbyteorder("="))
    if raw.dtype.kind not in "iufb":
        raise MedicalIOError(f"{path.name} holds {raw.dtype} voxels (RGB or complex); napari-msa reads scalar "
                             "volumes")
    if slope == 1 and inter == 0:
        return raw
    if raw.size:  # the scaled range, in float64: a header whose scaling leaves float32 is damaged, not data
        ends = np.array([np.min(raw), np.max(raw)], dtype=np.float64) * slope + inter
        if not np.all(np.isfinite(ends)) or np.max(np.abs(ends)) > np.finfo(np.float32).max:
            raise MedicalIOError(f"{path.name}: its header's scaling (scl_slope {slope:g}, scl_inter {inter:g}) "
                                 "takes the voxels beyond any float32 value; the header is damaged: fix scl_slope/"
                                 "scl_inter or export the image again")
    if raw.dtype.kind in "iub" and slope.is_integer() and inter.is_integer() and raw.size and \
            np.max(np.abs(ends)) < 2**62:
        scaled = raw.astype(np.int64) * int(slope) + int(inter)
        return scaled.astype(smallest_int_dtype(scaled.min(), scaled.max()))
    return raw.astype(np.float32) * np.float32(slope) + np.float32(inter)


def looks_like_labels(path: str | Path, header, data: np.ndarray) -> bool:
    """The rule in this module's docstring."""
    if data.dtype.kind not in "iub" or data.size == 0 or data.min() < 0:
        return False
    if LABEL_NAME_HINT.search(stem(path)):
        return True
    if header.get_intent()[0] == LABEL_INTENT:
        return True
    top = int(data.max())
    if top >= 2**16:
        return False
    return int(np.count_nonzero(np.bincount(data.ravel(), minlength=1))) <= MAX_LABEL_VALUES


def read_nifti(path: str | Path) -> MedicalImage:
    """A NIfTI file as one layer in display order (see ``geometry``), its header kept for writing labels back."""
    path = Path(path)
    img = _load(path)
    data = _voxels(img, path)
    singleton = tuple(axis for axis in range(3, data.ndim) if data.shape[axis] == 1)
    if data.ndim > 4 and singleton:  # e.g. (X, Y, Z, 1, 1) or (X, Y, Z, 1, C): the empty axes carry nothing
        data = np.squeeze(data, axis=singleton)
    if data.ndim > 4:
        raise MedicalIOError(f"{path.name} is {data.ndim}D {data.shape}; napari-msa reads 2D, 3D and 4D NIfTI")
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    while data.ndim < 3:
        data = data[..., np.newaxis]
    header = img.header.copy()
    if not np.all(np.isfinite(img.affine)):
        raise MedicalIOError(f"{path.name}: its header's voxel-to-patient affine (sform/qform) holds NaN or Inf, so "
                             "no voxel has a place in the patient; fix the header (nibabel: img.set_sform(affine)) or "
                             "export the image again")
    geometry = Geometry(affine=img.affine, source_shape=data.shape, fmt="nifti", header=header.binaryblock,
                        info={"file": path.name, "descrip": _text(header.get("descrip"))})
    labels = looks_like_labels(path, header, data)
    return MedicalImage(data=geometry.to_display(data), geometry=geometry, name=stem(path), is_labels=labels)


def _text(value) -> str:
    try:
        return bytes(np.asarray(value).item()).decode("latin-1").strip("\x00 ")
    except Exception:
        return ""


def labels_for_writing(labels: np.ndarray) -> np.ndarray:
    """Labels as the narrowest unsigned integers; a clear error for negative or fractional ids."""
    arr = np.asarray(labels)
    if arr.dtype.kind == "b":
        return arr.astype(np.uint8)
    if arr.dtype.kind not in "iuf":
        raise MedicalIOError(f"labels must be integer ids, got {arr.dtype}")
    if arr.size and arr.dtype.kind == "f" and not np.all(np.isfinite(arr) & (arr == np.round(arr))):
        raise MedicalIOError("labels must be whole numbers (0 = background); these have fractions or NaN — is "
                             "this an image rather than labels?")
    low, high = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if low < 0:
        raise MedicalIOError(f"labels must be ids ≥ 0 (0 = background), found {low:g}")
    if high > np.iinfo(np.uint32).max:
        raise MedicalIOError(f"label id {high:g} is larger than NIfTI labels hold here (2^32 - 1)")
    return arr.astype(smallest_int_dtype(0, high))


def _in_scanner_space(img: nib.Nifti1Image, affine: np.ndarray) -> nib.Nifti1Image:
    """qform and sform both the affine (scanner space), millimetres: what readers other than nibabel expect."""
    img.set_qform(affine, code="scanner")
    img.set_sform(affine, code="scanner")
    img.header.set_xyzt_units("mm", "sec")
    return img


def nifti_image_bytes(image: np.ndarray, geometry: Geometry, *, compresslevel: int = 1) -> bytes:
    """A display-order grey-level image as the complete NIfTI file (gzip at ``compresslevel``; 0: none) on
    ``geometry``, in its source voxel order: napari-msa's reader gives back the same array. For the MONAI Label
    server's studies and the client's uploads."""
    img = _in_scanner_space(nib.Nifti1Image(geometry.to_source(np.asarray(image)), geometry.affine), geometry.affine)
    data = img.to_bytes()
    return gzip.compress(data, compresslevel=compresslevel, mtime=0) if compresslevel else data


def write_nifti_image(path: str | Path, image: np.ndarray, geometry: Geometry, *, compresslevel: int = 1) -> Path:
    """``nifti_image_bytes`` written atomically (a ``.nii.gz`` name; ``.nii``: uncompressed)."""
    from napari_msa.engine.files.checkpoints import atomic_write  # loads torch: only when a file is written

    path = Path(path)
    if not is_nifti_name(path):
        raise MedicalIOError(f"{path.name}: NIfTI images are written as .nii or .nii.gz")
    level = compresslevel if path.name.lower().endswith(".gz") else 0
    blob = nifti_image_bytes(image, geometry, compresslevel=level)
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(blob))


def nifti_labels_bytes(labels: np.ndarray, geometry: Geometry, *, compress: bool) -> bytes:
    """The complete file (gzip-compressed when asked) for display-order ``labels`` on ``geometry``."""
    ids = labels_for_writing(labels)
    spatial = tuple(ids.shape) == geometry.spatial_display_shape and geometry.n_extra > 0
    source = geometry.to_source(ids, spatial_only=spatial)
    if geometry.header is not None:
        header_class = nib.Nifti2Header if len(geometry.header) == nib.Nifti2Header.template_dtype.itemsize \
            else nib.Nifti1Header
        header = header_class(binaryblock=geometry.header).as_byteswapped("=")  # native byte order
        image_class = nib.Nifti2Image if header_class is nib.Nifti2Header else nib.Nifti1Image
        img = image_class(source, geometry.affine, header=header)
    else:
        img = _in_scanner_space(nib.Nifti1Image(source, geometry.affine), geometry.affine)
    hdr = img.header
    hdr.set_data_dtype(source.dtype)
    hdr.set_slope_inter(1.0, 0.0)
    hdr.set_intent(LABEL_INTENT, (), name="napari-msa")
    hdr["cal_min"], hdr["cal_max"] = 0, float(source.max()) if source.size else 0
    hdr["descrip"] = b"napari-msa labels"
    data = img.to_bytes()
    return gzip.compress(data, compresslevel=6, mtime=0) if compress else data


def write_nifti_labels(path: str | Path, labels: np.ndarray, geometry: Geometry | None = None, *,
                       scale=None, translate=None) -> Path:
    """Write display-order ``labels`` as ``.nii``/``.nii.gz`` on ``geometry`` (the image they were drawn on).

    Without a geometry, the array is taken as axial (Z, Y, X) with ``scale``/``translate`` in mm (see
    ``Geometry.default``). Everything is checked and encoded before the file is touched, and the file appears
    whole or not at all.
    """
    from napari_msa.engine.files.checkpoints import atomic_write  # loads torch: only when a file is written

    path = Path(path)
    if not is_nifti_name(path):
        raise MedicalIOError(f"{path.name}: NIfTI labels are written as .nii or .nii.gz")
    if geometry is None:
        geometry = Geometry.default(np.shape(labels), scale=scale, translate=translate)
    blob = nifti_labels_bytes(labels, geometry, compress=path.name.lower().endswith(".gz"))
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(blob))
