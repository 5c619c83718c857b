"""The Segment widget's session on a MONAI Label server that runs napari-msa's app (``server/``).

``RemoteSession`` answers the calls the widget makes of a local ``Session`` (set the image, predict one object's
clicks and box on a slice, refine an existing object, the next candidate of a lone click, propagate through the
volume), so masks come back into the same preview / commit / undo / propagate flow. The image goes up once, as a
MONAI Label session (a NIfTI written on ``Geometry.default``, so the server reads back exactly the layer's array);
each request then names the session and sends every click so far in its order (the app's ``clicks``), so the
server's ``Session`` replays them with the engine's interaction rule and answers what a local model would.
Clicks and boxes travel as voxel indices (the voxel a click falls in, as 3D Slicer sends them); a click's answer,
and an object sent along (refining, propagating), is one plane, not the volume. An expired session is uploaded
again once, silently.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import tempfile
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np

from napari_msa.engine.cancel import CancelFn, Cancelled, ProgressFn
from napari_msa.medical_io import Geometry
from napari_msa.medical_io.nifti import nifti_image_bytes

from .server import LabelServer, ServerError

if TYPE_CHECKING:
    from napari_msa.engine import Normalization

log = logging.getLogger(__name__)

TASK_2D = "msa_2d"
TASK_3D = "msa_3d"
PROPAGATION_TIMEOUT_S = 1800.0  # a whole volume, slice after slice, on a CPU server: minutes, not seconds
SERVER_DTYPES = (np.uint8, np.int8, np.uint16, np.int16, np.int32, np.uint32, np.float32, np.float64)


class RemoteModel:
    """The model a server serves: what the widgets name, and sessions on it. Tuning runs on the server (its
    ``msa_tune`` train task), never here."""

    remote = True
    is_demo = False
    name = "server"
    adapter_source = None

    def __init__(self, server: LabelServer, info: dict) -> None:
        self.server = server
        self.info = info

    @property
    def source(self) -> str:
        return self.server.url

    def describe(self) -> str:
        app = self.info.get("name") or "MONAI Label"
        version = self.info.get("version")
        return f"the {app} app on the MONAI Label server {self.server.url}" + (f" ({version})" if version else "")

    def new_session(self) -> RemoteSession:
        return RemoteSession(self)


def connect(url: str, token: str | None = None, timeout: float = 120.0) -> RemoteModel:
    """The server at ``url`` if it answers and serves napari-msa's tasks; else a ServerError saying what to do."""
    server = LabelServer(url, token, timeout)
    info = server.info()
    models = info.get("models") if isinstance(info, dict) else None
    missing = [task for task in (TASK_2D, TASK_3D) if task not in (models or {})]
    if missing:
        raise ServerError(f"The server {server.url} does not serve napari-msa's tasks ({', '.join(missing)} "
                          "missing): start it with napari-msa's app (`make server`, README 'Team server').")
    return RemoteModel(server, info)


def _as_nifti_dtype(image: np.ndarray) -> np.ndarray:
    """The array in a dtype NIfTI stores as is (the server must read back the very values the layer holds)."""
    if image.dtype == bool:
        return image.astype(np.uint8)
    if image.dtype.type in SERVER_DTYPES:
        return image
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(np.int32)
        if image.size == 0 or (image.min() >= info.min and image.max() <= info.max):
            return image.astype(np.int32)
        return image.astype(np.float64)
    if image.dtype == np.float16:
        return image.astype(np.float32)
    raise ValueError(f"image dtype {image.dtype} cannot be sent to the server; convert the layer to a number type")


class RemoteSession:
    """One image on the server and one object's prompts at a time, as the widget asks for them."""

    remote = True

    def __init__(self, model: RemoteModel) -> None:
        self.model = model
        self.server = model.server
        self.client_id = f"napari-msa-{uuid.uuid4().hex[:12]}"
        self.image: np.ndarray | None = None
        self.normalization: Normalization | None = None
        self.geometry: Geometry | None = None
        self._data: np.ndarray | None = None  # what was uploaded (the image in a dtype NIfTI keeps), to upload again
        self._digest = ""
        self._session_id: str | None = None
        self._lock = threading.Lock()
        self._folder = tempfile.TemporaryDirectory(prefix="napari-msa-remote-")

    # --- the image ---------------------------------------------------------------------------------------------------
    def set_image(self, image: np.ndarray, *, normalization: Normalization | None = None,
                  rgb: bool | None = None) -> None:
        """Upload the image once (a new upload only when its values change); the normalisation goes with each
        request."""
        image = np.asarray(image)
        if rgb or image.ndim not in (2, 3):
            raise ValueError("a MONAI Label server segments grey-level 2D images and (Z,Y,X) volumes; this image "
                             f"is {'RGB' if rgb else f'{image.ndim}D'}: clear the Server field to segment it with "
                             "a model on this machine")
        if image.size == 0:
            raise ValueError("the image is empty")
        data = _as_nifti_dtype(image)
        digest = hashlib.blake2b(np.ascontiguousarray(data).view(np.uint8).reshape(-1), digest_size=16)
        digest.update(repr((data.shape, data.dtype.str)).encode())
        with self._lock:
            self.normalization = normalization
            if digest.hexdigest() == self._digest and self._session_id is not None:
                self.image = image
                return
            geometry = Geometry.default(data.shape)
            old = self._session_id
            self._session_id = None
            session_id = self._upload(data, geometry)
            self.image, self.geometry, self._digest, self._session_id = image, geometry, digest.hexdigest(), session_id
            self._data = data
        if old is not None:
            self._forget(old)

    def _upload(self, data: np.ndarray, geometry: Geometry) -> str:
        path = Path(self._folder.name) / "image.nii.gz"
        path.write_bytes(nifti_image_bytes(data, geometry))
        try:
            return self.server.create_session(path)
        finally:
            path.unlink(missing_ok=True)

    def _forget(self, session_id: str) -> None:
        """The server's copy of an image no longer shown (it would expire by itself anyway)."""
        try:
            self.server.remove_session(session_id)
        except ServerError as err:
            log.debug("removing server session %s failed: %s", session_id, err)

    def close(self) -> None:
        if self._session_id is not None:
            self._forget(self._session_id)
            self._session_id = None
        self._folder.cleanup()

    @property
    def num_slices(self) -> int:
        self._require_image()
        return self.image.shape[0] if self.image.ndim == 3 else 1

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        self._require_image()
        return tuple(self.image.shape)

    @property
    def plane_shape(self) -> tuple[int, int]:
        return tuple(self.spatial_shape[-2:])

    def _require_image(self) -> None:
        if self.image is None:
            raise RuntimeError("no image set: call set_image(image) first")

    # --- what the server does on its side --------------------------------------------------------------------------
    def is_cached(self, z: int = 0) -> bool:
        """Always: slices are embedded on the server, at the first click on them."""
        return True

    def prefetch_window(self, z: int = 0) -> None:
        """Nothing to do here: the server encodes the next click's window itself after each answer."""
        return None

    # --- requests -------------------------------------------------------------------------------------------------
    def _k(self, z: int | None) -> int:
        return 0 if z is None else self.geometry.source_index((int(z), 0, 0))[2]

    def _voxel(self, z: int | None, row: float, col: float) -> list[int]:
        plane = (int(round(row)), int(round(col)))
        return list(self.geometry.source_index(plane if z is None else (int(z), *plane)))

    def _label_file(self, plane: np.ndarray, name: str) -> Path:
        """The object on one slice, as the app takes it in MONAI Label's label upload: that plane in display order
        (a 2D NIfTI; the request's ``slice`` says which), not the whole volume."""
        path = Path(self._folder.name) / f"{name}-{uuid.uuid4().hex[:8]}.nii.gz"
        nib.save(nib.Nifti1Image(np.asarray(plane, dtype=bool).astype(np.uint8), np.eye(4)), path)
        return path

    def _params(self, **params) -> dict:
        norm = self.normalization
        return dict(params, client_id=self.client_id, label_name="object",
                    normalization=None if norm is None else norm.to_dict())

    def _infer(self, task: str, params: dict, label: Path | None = None,
               timeout: float | None = None) -> tuple[dict, np.ndarray]:
        """The result's params and labels in display order (the clicked plane, when the answer is one); an expired
        server session is uploaded again once."""
        with self._lock:
            session_id = self._session_id
        try:
            result, blob = self.server.infer(task, session_id, params, label, timeout)
        except ServerError as err:
            if err.status is None or err.status in (401, 403) or self.server.session_exists(session_id):
                raise
            log.info("server session %s expired; uploading the image again", session_id)
            with self._lock:
                self._session_id = self._upload(self._data, self.geometry)
                session_id = self._session_id
            result, blob = self.server.infer(task, session_id, params, label, timeout)
        if blob[:2] == b"\x1f\x8b":
            blob = gzip.decompress(blob)
        answer = np.asanyarray(nib.Nifti1Image.from_bytes(blob).dataobj)
        if result.get("answer") == "plane" and answer.shape == self.plane_shape:
            return result, answer > 0  # the clicked plane only, in display order
        if tuple(answer.shape[:3]) != self.geometry.source_shape[:3]:
            raise ServerError(f"The server {self.server.url} answered a label of shape {answer.shape}, not the "
                              f"image's {self.geometry.source_shape}")
        return result, self.geometry.to_display(answer.reshape(self.geometry.source_shape)) > 0

    def predict(self, points=None, labels=None, box=None, mask_input=None, *, z: int | None = None,
                multimask: bool | None = None, prior: np.ndarray | None = None,
                candidate: int = 0) -> tuple[np.ndarray, float]:
        """``Session.predict`` over the server: one object's clicks (in click order) and box on one slice."""
        self._require_image()
        if mask_input is not None or multimask is not None:
            raise ValueError("a server answers interactions only (no mask_input/multimask decoder passes)")
        pts = np.zeros((0, 3 if self.image.ndim == 3 else 2)) if points is None else np.asarray(points, float)
        lab = np.ones(len(pts), int) if labels is None else np.asarray(labels, int).reshape(-1)
        if len(pts) == 0 and box is None:
            raise ValueError("give at least one point or a box")
        if len(lab) != len(pts):
            raise ValueError(f"{len(pts)} points but {len(lab)} labels")
        volume = self.image.ndim == 3
        if volume and len(pts):
            zs = np.unique(np.round(pts[:, 0]).astype(int))
            if len(zs) > 1:
                raise ValueError(f"points lie on several slices {zs.tolist()}; predict one slice at a time")
            z = int(zs[0]) if z is None else z
            pts = pts[:, 1:]
        if volume and z is None:
            raise ValueError("in a volume, give the slice: z=... or (z, row, col) points")
        z = int(z) if volume else None
        h, w = self.plane_shape
        if len(pts) and (np.any(pts < -0.5) or np.any(pts[:, 0] > h - 0.5) or np.any(pts[:, 1] > w - 0.5)):
            raise ValueError(f"a point lies outside the {h}×{w} image")
        clicks = [[*self._voxel(z, r, c), int(label > 0)] for (r, c), label in zip(pts, lab)]
        params = self._params(clicks=clicks, slice=self._k(z), candidate=int(candidate), answer="plane")
        if box is not None:
            r0, c0, r1, c1 = (float(v) for v in box)
            a, b = self._voxel(z, r0, c0), self._voxel(z, r1, c1)
            params["roi"] = [a[0], b[0], a[1], b[1], a[2], b[2]]
        upload = None
        if prior is not None and np.any(prior):
            if np.shape(prior) != (h, w):
                raise ValueError(f"the prior mask has shape {np.shape(prior)}, the slice is {h}×{w}")
            upload = self._label_file(prior, "prior")
        try:
            result, labels_display = self._infer(TASK_2D, params, upload)
        finally:
            if upload is not None:
                upload.unlink(missing_ok=True)
        mask = labels_display if labels_display.ndim == 2 else labels_display[z]
        scores = result.get("scores") or {}
        score = float(scores.get(str(self._k(z)), scores.get(self._k(z), 0.0)))
        return np.ascontiguousarray(mask), score

    def propagate(self, mask: np.ndarray, z: int, *, progress: ProgressFn | None = None,
                  cancel: CancelFn | None = None) -> dict[int, np.ndarray]:
        """The object on slice ``z`` carried through the volume by the server (its propagation rule, the engine's
        defaults); {slice: mask}, start excluded. One request: a cancel keeps what it returned."""
        self._require_image()
        if self.image.ndim != 3:
            raise ValueError("propagation needs a volume (Z,Y,X)")
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            raise ValueError(f"the object is empty on slice {z}; segment it there first")
        upload = self._label_file(mask, "start")
        try:
            result, labels_display = self._infer(TASK_3D, self._params(slice=self._k(z)), upload,
                                                 PROPAGATION_TIMEOUT_S)
        finally:
            upload.unlink(missing_ok=True)
        filled = {self.geometry.display_index((0, 0, int(k)))[0] for k in result.get("filled", [])}
        masks = {zz: np.ascontiguousarray(labels_display[zz]) for zz in sorted(filled)}
        if progress is not None:
            progress(self.num_slices - 1, self.num_slices - 1)
        if cancel is not None and cancel():
            raise Cancelled(partial=masks)
        return masks
