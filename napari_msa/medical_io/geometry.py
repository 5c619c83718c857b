"""Where voxels sit in the patient, and the one rule that turns a file's voxel order into napari's display order.

The display rule (the same for NIfTI and DICOM, so a study looks the same whichever way it was exported):

- Axis 0 is the file's slice axis (NIfTI: the third voxel axis; DICOM: the direction the slices are stacked), so
  SAM, which segments axis-0 slices, works in the plane the images were acquired in, at their full resolution.
- Each axis is only permuted and flipped (never resampled) to the closest patient direction, in the radiological
  view of that plane: axial (Z, Y, X) = (inferior→superior, anterior→posterior, patient right→left), coronal
  (anterior→posterior, superior→inferior, right→left), sagittal (right→left, superior→inferior,
  anterior→posterior). An axial slice shows anterior at the top and the patient's right on the screen's left.
- A file with one slice is a 2D (Y, X) image in its own plane; a 4D NIfTI puts its extra axis first (T, Z, Y, X);
  an RGB DICOM keeps its channels last.
- The layer's ``scale`` is the voxel spacing along the display axes (mm) and ``translate`` the first voxel's
  position along them, so napari's world coordinates are millimetres along those patient directions (exact for
  scans aligned with the patient axes; for oblique scans the directions are the closest patient axes).

``Geometry`` keeps the source's affine (nibabel's RAS+ convention, for the source voxel order) and shape, so labels
drawn on the display array are written back in the source's voxel order with the source's affine, voxel for voxel.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

GEOMETRY_KEY = "medical_geometry"  # the layer-metadata key that holds Geometry.to_metadata()

# Display axis codes by the patient axis the slice axis is closest to (0: R/L, 1: A/P, 2: S/I in RAS order).
DISPLAY_CODES = {2: ("S", "P", "L"), 1: ("P", "I", "L"), 0: ("L", "I", "P")}
PLANE_NAMES = {2: "axial", 1: "coronal", 0: "sagittal"}


class MedicalIOError(ValueError):
    """A medical file that cannot be read or written as asked; the message names the file and what to do."""


@dataclass(frozen=True)
class Geometry:
    """A source volume's geometry: its RAS+ affine for the source voxel order (i, j, k) and its array shape.

    ``source_shape`` is the full shape of the source array: three spatial axes, then any extra axes (time, or RGB
    channels when ``channels_last``). ``fmt`` is 'nifti', 'dicom' or 'none' (no file behind it); ``header`` the
    NIfTI header block, so labels are written with the source's own qform/sform; ``info`` a few descriptive
    fields (series description, modality, ...).
    """

    affine: np.ndarray
    source_shape: tuple[int, ...]
    fmt: str = "none"
    channels_last: bool = False
    header: bytes | None = None
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
            raise MedicalIOError(f"a voxel-to-patient affine must be a finite 4x4 matrix, got {affine.tolist()}")
        ornt = io_orientation(affine)
        if np.isnan(ornt).any() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            raise MedicalIOError("the voxel-to-patient affine is degenerate (a voxel axis of zero length or two "
                                 "parallel axes); the file's geometry is broken")
        object.__setattr__(self, "affine", affine)
        object.__setattr__(self, "source_shape", tuple(int(s) for s in self.source_shape))
        if len(self.source_shape) < 3:
            raise MedicalIOError(f"a source shape has three spatial axes, got {self.source_shape}")

    # --- the orientation rule ---------------------------------------------------------------------------------
    @cached_property  # (frozen: computed once; a client maps every click through it)
    def _source_ornt(self) -> np.ndarray:
        return io_orientation(self.affine)

    @property
    def slice_axis(self) -> int:
        """The RAS axis (0: R/L, 1: A/P, 2: S/I) closest to the source's slice axis k."""
        return int(self._source_ornt[2, 0])

    @property
    def plane(self) -> str:
        return PLANE_NAMES[self.slice_axis]

    @property
    def codes(self) -> tuple[str, str, str]:
        """The patient direction each display axis increases toward (nibabel axis codes)."""
        return DISPLAY_CODES[self.slice_axis]

    @cached_property
    def _to_display_ornt(self) -> np.ndarray:
        return ornt_transform(self._source_ornt, axcodes2ornt(self.codes))

    @property
    def is_2d(self) -> bool:
        """One slice: shown as a (Y, X) image in its own plane."""
        return self.source_shape[2] == 1

    @property
    def n_extra(self) -> int:
        return len(self.source_shape) - 3

    @property
    def n_leading(self) -> int:
        """Extra axes placed before the spatial ones in the display array (time), 0 for RGB."""
        return 0 if self.channels_last else self.n_extra

    @property
    def display_affine(self) -> np.ndarray:
        """RAS+ affine of the display array's three spatial axes (before a 2D image drops its slice axis)."""
        return self.affine @ inv_ornt_aff(self._to_display_ornt, self.source_shape[:3])

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel spacing (mm) along the three display axes."""
        return tuple(float(v) for v in np.linalg.norm(self.display_affine[:3, :3], axis=0))

    @property
    def display_shape(self) -> tuple[int, ...]:
        """Shape of the display array (extra axes included)."""
        spatial = [0, 0, 0]  # row i of the transform says where source axis i goes
        for src_axis, (dst_axis, _) in enumerate(self._to_display_ornt):
            spatial[int(dst_axis)] = self.source_shape[src_axis]
        spatial = tuple(spatial[1:]) if self.is_2d else tuple(spatial)
        extra = self.source_shape[3:]
        return spatial + extra if self.channels_last else extra + spatial

    @property
    def spatial_display_shape(self) -> tuple[int, ...]:
        """The display shape without time or channel axes: the shape a labels layer of this image has."""
        shape = self.display_shape
        return shape[:len(shape) - self.n_extra] if self.channels_last else shape[self.n_extra:]

    def layer_placement(self) -> dict:
        """napari ``scale`` and ``translate`` for the display array (1 and 0 on time axes)."""
        target = axcodes2ornt(self.codes)  # row a: (RAS axis, +1 toward R/A/S or -1 toward L/P/I)
        origin = self.display_affine[:3, 3]
        world = [float(target[a, 1] * origin[int(target[a, 0])]) + 0.0 for a in range(3)]  # no -0.0
        scale, translate = list(self.spacing), world
        if self.is_2d:
            scale, translate = scale[1:], translate[1:]
        lead = self.n_leading
        return {"scale": tuple([1.0] * lead + scale), "translate": tuple([0.0] * lead + translate)}

    # --- arrays --------------------------------------------------------------------------------------------------
    def display_index(self, source_index) -> tuple[int, ...]:
        """A voxel's index (i, j, k) in the source's own order as its index in the display array: (z, y, x), or
        (y, x) for a one-slice image. What 3D Slicer calls IJK is the source order."""
        ijk = [int(v) for v in source_index]
        if len(ijk) != 3:
            raise MedicalIOError(f"a voxel index is (i, j, k), got {list(source_index)}")
        out = [0, 0, 0]
        for axis, (dst, flip) in enumerate(self._to_display_ornt):
            n = self.source_shape[axis]
            out[int(dst)] = n - 1 - ijk[axis] if flip < 0 else ijk[axis]
        return tuple(out[1:]) if self.is_2d else tuple(out)

    def source_index(self, display_index) -> tuple[int, int, int]:
        """Invert ``display_index``: a display index (z, y, x), or (y, x) for a one-slice image, as the source's
        (i, j, k): what a MONAI Label server and 3D Slicer expect."""
        idx = [int(v) for v in display_index]
        if len(idx) != (2 if self.is_2d else 3):
            raise MedicalIOError(f"a display index of this {'2D' if self.is_2d else '3D'} image has "
                                 f"{2 if self.is_2d else 3} values, got {list(display_index)}")
        if self.is_2d:
            idx = [0, *idx]
        out = [0, 0, 0]
        for axis, (dst, flip) in enumerate(self._to_display_ornt):
            n = self.source_shape[axis]
            out[axis] = n - 1 - idx[int(dst)] if flip < 0 else idx[int(dst)]
        return tuple(out)

    def to_display(self, source: np.ndarray) -> np.ndarray:
        """The source array (i, j, k, extra...) in display order, contiguous."""
        if tuple(source.shape) != self.source_shape:
            raise MedicalIOError(f"array of shape {source.shape} does not match the geometry's {self.source_shape}")
        out = apply_orientation(source, self._to_display_ornt)
        if self.is_2d:
            out = out[0]
        if self.n_leading:
            out = np.moveaxis(out, tuple(range(out.ndim - self.n_extra, out.ndim)), tuple(range(self.n_extra)))
        return np.ascontiguousarray(out)

    def to_source(self, display: np.ndarray, *, spatial_only: bool = False) -> np.ndarray:
        """Invert ``to_display``: a display-order array back in the source's voxel order (exactly, no resampling).

        ``spatial_only``: the array has no time/channel axes (a labels layer of an RGB image).
        """
        expected = self.spatial_display_shape if spatial_only else self.display_shape
        if tuple(display.shape) != expected:
            raise MedicalIOError(f"array of shape {tuple(display.shape)} does not match the image's display shape "
                                 f"{expected}")
        arr = np.asarray(display)
        n_extra = 0 if spatial_only else self.n_extra
        if n_extra and not self.channels_last:
            arr = np.moveaxis(arr, tuple(range(n_extra)), tuple(range(arr.ndim - n_extra, arr.ndim)))
        if self.is_2d:
            arr = arr[np.newaxis]
        back = ornt_transform(axcodes2ornt(self.codes), self._source_ornt)
        return np.ascontiguousarray(apply_orientation(arr, back))

    # --- layer metadata ------------------------------------------------------------------------------------------
    def to_metadata(self) -> dict:
        """Plain Python values (lists, str), safe to keep in a napari layer's metadata and to copy."""
        meta = {"format": self.fmt, "affine": self.affine.tolist(), "source_shape": list(self.source_shape),
                "channels_last": self.channels_last, "display_axes": "".join(self.codes), "plane": self.plane,
                "info": dict(self.info)}
        if self.header is not None:
            meta["header"] = base64.b64encode(self.header).decode("ascii")
        return meta

    @classmethod
    def from_metadata(cls, meta: dict) -> Geometry:
        try:
            header = meta.get("header")
            return cls(affine=np.array(meta["affine"], dtype=np.float64), source_shape=tuple(meta["source_shape"]),
                       fmt=str(meta.get("format", "none")), channels_last=bool(meta.get("channels_last", False)),
                       header=base64.b64decode(header) if header else None, info=dict(meta.get("info", {})))
        except (KeyError, TypeError, ValueError) as err:
            if isinstance(err, MedicalIOError):
                raise
            raise MedicalIOError(f"the layer's '{GEOMETRY_KEY}' metadata is damaged ({err}); open the image again "
                                 "with napari-msa's reader") from err

    @classmethod
    def default(cls, display_shape: tuple[int, ...], scale=None, translate=None) -> Geometry:
        """The geometry of a plain (Z, Y, X) or (Y, X) array read as axial, for arrays with no file behind them.

        Reading the written file back with napari-msa gives the same array, scale and translate.
        """
        ndim = len(display_shape)
        if ndim not in (2, 3):
            raise MedicalIOError(f"labels are written as 2D or 3D NIfTI, got {ndim}D data")
        scale = np.ones(ndim) if scale is None else np.asarray(scale, dtype=np.float64)[-ndim:]
        translate = np.zeros(ndim) if translate is None else np.asarray(translate, dtype=np.float64)[-ndim:]
        if ndim == 2:
            scale, translate = np.r_[1.0, scale], np.r_[0.0, translate]
        z, y, x = (int(s) for s in ((1, *display_shape) if ndim == 2 else display_shape))
        affine = np.diag([-scale[2], -scale[1], scale[0], 1.0])  # i toward L, j toward P, k toward S
        affine[:3, 3] = (-translate[2], -translate[1], translate[0])
        return cls(affine=affine, source_shape=(x, y, z))


def check_same_grid(image: Geometry | None, labels: Geometry | None, image_name: str, labels_name: str) -> None:
    """Labels must lie on their image's voxels: with both geometries known, the same affine (to 0.01 mm) and shape,
    else the masks would be learnt from the wrong voxels."""
    if image is None or labels is None:
        return
    same_shape = image.source_shape[:3] == labels.source_shape[:3]
    if same_shape and np.allclose(image.affine, labels.affine, atol=1e-2):
        return

    def where(g: Geometry) -> str:
        origin = ", ".join(f"{v:.1f}" for v in g.affine[:3, 3])
        return f"shape {g.source_shape[:3]}, first voxel at ({origin}) mm, axes {''.join(g.codes)}"

    raise MedicalIOError(f"{labels_name} does not lie on {image_name}'s grid ({labels_name}: {where(labels)}; "
                         f"{image_name}: {where(image)}); resample the labels onto the image first (e.g. nibabel's "
                         "resample_from_to with order=0) or give the labels drawn on this image")
