"""A MONAI Label infer request's clicks and roi as napari-msa prompts, and the masks they give.

Requests speak in the file's own voxel order, as 3D Slicer does: ``foreground`` / ``background`` are lists of
[i, j, k] voxel indices, ``slice`` is a k, ``roi`` is [i0, i1, j0, j1, k0, k1]. They are mapped to the display
order napari-msa's readers give (``Geometry.display_index``), and each object's clicks on a slice go into one
``Session.predict`` call in click order (``clicks``), as ``napari-msa segment`` does with a points file: the
engine's interaction rule replays them, so the mask is the one the widget and the command line give.

napari-msa's own client (``napari_msa.remote``) sends a few more params, so the widget's flow works remotely:
``clicks`` (every click in its order, [i, j, k, label]; when given, the order is not guessed), ``candidate`` (which
of SAM's masks a lone click keeps: the widget's N key), ``normalization`` (the widget's intensity setting, as
``Normalization.to_dict()``), ``answer: plane`` (``msa_2d`` answers with the clicked plane only, in display order:
a click on a big volume does not write and send the whole volume), and a ``label`` *file* (MONAI Label's label
upload, on the study's grid or that one display-order plane): on ``msa_2d`` the object as it exists on the slice
(refining it); on ``msa_3d`` without clicks, the object on the request's ``slice`` to propagate from (as the
widget's Propagate does).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np

from napari_msa import Normalization
from napari_msa.engine.inference.propagation import fill_by_propagation
from napari_msa.medical_io import Geometry, is_nifti_name
from napari_msa.medical_io.cli import read_array

from .clicks import Click, as_clicks
from .studies import Studies, Study


class RequestError(ValueError):
    """A request the app cannot answer; the message says what to send instead."""


@dataclass
class SlicePrompts:
    """One object's prompts on one slice: clicks in order (source ijk + label) and a display-order box."""

    k: int
    clicks: list[Click] = field(default_factory=list)
    box: tuple[float, float, float, float] | None = None


@dataclass
class Result:
    """Display-order labels (1 where the object is) on the study's geometry, and what the client is told; or, for
    napari-msa's client (``answer: plane``), the one display-order plane and no geometry."""

    labels: np.ndarray
    geometry: Geometry | None
    params: dict


def _roi(study: Study, roi) -> tuple[tuple[float, float, float, float], tuple[int, int]] | None:
    """Slicer's roi [i0, i1, j0, j1, k0, k1] as a display box (min_row, min_col, max_row, max_col), clipped to the
    image, and its k range."""
    if not roi:
        return None
    if len(roi) != 6:
        raise RequestError(f"roi is [i0, i1, j0, j1, k0, k1] (voxel indices), got {roi}")
    r = [int(round(float(v))) for v in roi]
    shape = study.geometry.source_shape[:3]
    lo = [min(max(min(r[2 * a], r[2 * a + 1]), 0), shape[a] - 1) for a in range(3)]
    hi = [min(max(max(r[2 * a], r[2 * a + 1]), 0), shape[a] - 1) for a in range(3)]
    a, b = study.geometry.display_index(lo), study.geometry.display_index(hi)
    (r0, c0), (r1, c1) = a[-2:], b[-2:]
    return (min(r0, r1), min(c0, c1), max(r0, r1), max(c0, c1)), (lo[2], hi[2])


def _check_k(study: Study, k: int) -> int:
    n = study.geometry.source_shape[2]
    if not 0 <= k < n:
        raise RequestError(f"slice {k} is outside the study's {n} slices (k = 0..{n - 1})")
    return k


def _display_z(study: Study, k: int) -> int | None:
    return None if study.geometry.is_2d else study.geometry.display_index((0, 0, k))[0]


def _source_k(study: Study, z: int) -> int:
    """The file's slice index k of display slice ``z`` (display axis 0 is the file's slice axis)."""
    n = study.geometry.source_shape[2]
    return z if study.geometry.display_index((0, 0, 0))[0] == 0 else n - 1 - z


def _ordered_clicks(request: dict) -> list[Click] | None:
    """napari-msa's ``clicks``: [[i, j, k, label], ...] in click order (label 1 positive, 0 negative), or None."""
    given = request.get("clicks")
    if given is None:
        return None
    try:
        clicks = [(int(round(float(i))), int(round(float(j))), int(round(float(k))), int(label))
                  for i, j, k, label in given]
    except (TypeError, ValueError) as err:
        raise RequestError(f"clicks is a list of [i, j, k, label] (label 1 or 0), got {given}") from err
    if any(c[3] not in (0, 1) for c in clicks):
        raise RequestError(f"a click's label is 1 (positive) or 0 (negative), got {given}")
    return clicks


def uploaded_mask(request: dict) -> str | None:
    """The label file MONAI Label saved from the request's upload (Slicer's ``label`` param is a segment name)."""
    value = request.get("label")
    if isinstance(value, str) and is_nifti_name(value) and os.path.isfile(value):
        return value
    return None


def _object_name(request: dict) -> str:
    return (request.get("label_name") if uploaded_mask(request) else request.get("label")) or "object"


def _mask_on(study: Study, path: str, z: int | None) -> np.ndarray:
    """The uploaded object on display slice ``z`` (2D: the image), as a bool plane. The file is either on the
    study's grid or, as napari-msa's client sends it, that one plane in display order (a 2D NIfTI)."""
    plane_shape = tuple(study.geometry.spatial_display_shape[-2:])
    try:
        raw = nib.load(path)
        if len(raw.shape) == 2:
            plane = np.asanyarray(raw.dataobj)
            if plane.shape != plane_shape:
                raise RequestError(f"the uploaded plane has shape {plane.shape}, the study's slices {plane_shape}")
            return plane > 0
        labels, _ = read_array(path)
    except RequestError:
        raise
    except Exception as err:
        raise RequestError(f"the uploaded label is not a readable NIfTI ({err})") from err
    if tuple(labels.shape) != tuple(study.geometry.spatial_display_shape):
        raise RequestError(f"the uploaded label has shape {labels.shape}, the study "
                           f"{study.geometry.spatial_display_shape}: write it on the study's grid")
    return np.asarray(labels if z is None else labels[z]) > 0


def prompts(studies: Studies, study: Study, request: dict, dimension: int) -> list[SlicePrompts]:
    """The request's prompts, one ``SlicePrompts`` per slice (2D: the request's ``slice`` only)."""
    try:
        ordered = _ordered_clicks(request)
        clicks = ordered if ordered is not None else as_clicks(request.get("foreground"), request.get("background"))
    except (TypeError, ValueError) as err:
        raise RequestError(f"foreground/background are lists of [i, j, k] voxel indices: {err}") from err
    shape = study.geometry.source_shape[:3]
    for c in clicks:
        if not all(0 <= v < n for v, n in zip(c[:3], shape)):
            raise RequestError(f"click {list(c[:3])} lies outside the study's {shape[0]}x{shape[1]}x{shape[2]} voxels")
    roi = _roi(study, request.get("roi"))
    if dimension == 2:
        k = request.get("slice")
        if k is None or int(k) < 0:  # as Slicer picks its slice: the last click, else the roi's middle
            k = clicks[-1][2] if clicks else (roi[1][0] + roi[1][1]) // 2 if roi else None
        if k is None:
            raise RequestError("give a foreground click or a roi (and the slice)")
        slices = [_check_k(study, int(k))]
    else:
        slices = sorted({c[2] for c in clicks}) or ([(roi[1][0] + roi[1][1]) // 2] if roi else [])
        if not slices:
            raise RequestError("give a foreground click or a roi")
    key = (study.path, request.get("client_id"), _object_name(request))
    reset = bool(request.get("reset_state")) or ordered is not None
    refining = dimension == 2 and uploaded_mask(request) is not None
    out = []
    for k in slices:
        on_slice = [c for c in clicks if c[2] == k]
        box = roi[0] if roi and roi[1][0] <= k <= roi[1][1] else None
        if box is None and not refining and ordered is None and not any(c[3] == 1 for c in on_slice):
            raise RequestError(f"slice {k} has only negative clicks; add a positive one or a roi")
        out.append(SlicePrompts(k, studies.clicks.order((*key, k), on_slice, reset), box))
    return out


def _propagate_upload(study: Study, request: dict) -> tuple[dict, list]:
    """msa_3d with a label file and no clicks: the object on ``slice``, carried through the volume."""
    k = request.get("slice")
    if k is None:
        raise RequestError("give the slice the uploaded object lies on (slice = its k)")
    k = _check_k(study, int(k))
    z = _display_z(study, k)
    mask = _mask_on(study, uploaded_mask(request), z)
    if not mask.any():
        raise RequestError(f"the uploaded object is empty on slice {k}; segment it there first")
    masks = {z: mask}
    masks.update(study.session.propagate(mask, z))
    return masks, [SlicePrompts(k)]


def _normalization(studies: Studies, study: Study, request: dict) -> None:
    """The client's intensity setting (``Normalization.to_dict()``, or None for the server's own): the study's
    session uses it from this request on."""
    if "normalization" not in request:
        return
    given = request["normalization"]
    try:
        norm = studies.normalization if given is None else Normalization.from_dict(given)
    except (TypeError, ValueError) as err:
        raise RequestError(f"normalization is napari-msa's Normalization as a dict: {err}") from err
    session = study.session
    if session.normalization != norm:
        session.normalization = norm
        session.set_image(session.image)


def segment(studies: Studies, request: dict, dimension: int) -> Result:
    """Masks for the request: each prompted slice, then (3D) propagation through the volume from them."""
    start = time.perf_counter()
    if not request.get("image"):
        raise RequestError("the request names no image (an image id, or a session_id that has expired): upload "
                           "the image again")
    study = studies.get(request["image"])
    geometry, session = study.geometry, study.session
    labels = np.zeros(geometry.spatial_display_shape, dtype=np.uint8)
    masks: dict[int, np.ndarray] = {}
    scores = {}
    candidate = int(request.get("candidate") or 0)
    with study.lock:
        _normalization(studies, study, request)
        upload = uploaded_mask(request)
        has_clicks = bool(request.get("clicks") or request.get("foreground") or request.get("roi"))
        if dimension == 3 and upload is not None and not has_clicks and not geometry.is_2d:
            try:
                masks, asked = _propagate_upload(study, request)
            except ValueError as err:
                raise RequestError(str(err)) from err
            prompted = {_display_z(study, asked[0].k)}
        else:
            asked = prompts(studies, study, request, dimension)
            for p in asked:
                z = _display_z(study, p.k)
                points = [geometry.display_index(c[:3]) for c in p.clicks]
                prior = _mask_on(study, upload, z) if upload is not None and dimension == 2 else None
                try:
                    mask, score = session.predict(points=points or None, labels=[c[3] for c in p.clicks] or None,
                                                  box=p.box, z=z, prior=prior, candidate=candidate)
                except ValueError as err:
                    raise RequestError(str(err)) from err
                masks[0 if z is None else z] = mask
                scores[p.k] = round(float(score), 4)
            prompted = set(masks)
            if dimension == 3 and not geometry.is_2d:
                masks.update(fill_by_propagation(session, masks, iou_threshold=0.5))
            else:
                studies.encode_ahead(study, z)
    for z, mask in masks.items():
        target = labels if geometry.is_2d else labels[z]
        target[mask] = 1
    name = _object_name(request)
    params = {
        "label_names": {name: 1},
        "clicks": [list(c) for p in asked for c in p.clicks],
        "slices": [p.k for p in asked],
        "propagated": len(masks) - len(prompted),
        "filled": sorted(_source_k(study, z) for z in masks if z not in prompted),
        "scores": scores,
        "model": session.model.describe(),
        "adapter": studies.adapter if studies.adapter is None else str(studies.adapter),
        "seconds": round(time.perf_counter() - start, 4),
    }
    if request.get("answer") == "plane" and dimension == 2:  # napari-msa's client: the clicked plane, not the volume
        z = _display_z(study, asked[0].k)
        params["answer"] = "plane"
        return Result(labels if z is None else labels[z], None, params)
    return Result(labels, geometry, params)
