"""The MONAI Label app, served for real: masks through the server equal ``Session.predict`` in this process.

Requests are sent two ways: as 3D Slicer's MONAI Label extension sends them (its MONAILabelLib client: http.client,
its own multipart encoding and boundary, voxel indices in the file's own order, ``slice`` for 2D), and through
monailabel's ``MONAILabelClient`` in the server's venv.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from urllib.parse import quote_plus

import nibabel as nib
import numpy as np
import pytest
from conftest import CONF

from napari_msa import Session
from napari_msa.engine.inference.propagation import fill_by_propagation
from napari_msa.medical_io.cli import read_array
from napari_msa.remote.server import multipart_parts  # the replies' parts, read as napari-msa's client reads them

SLICER_BOUNDARY = "----------lImIt_of_THE_fIle_eW_$"  # MONAILabelLib's multipart boundary
SLICER_CLIENT = "user-xyz"  # the extension's default Client/User-ID
CONF_MODEL = CONF["model"]
CONF_REST = {"device": CONF["device"], "precision": CONF["precision"], "runtime": CONF["runtime"]}


# --- 3D Slicer's requests --------------------------------------------------------------------------------------------
def slicer_body(fields: dict[str, str], files: dict[str, Path]) -> tuple[str, bytes]:
    """Fields then files, CRLF-separated, as the extension encodes a multipart form."""
    parts: list[bytes] = []
    for key, value in fields.items():
        parts += [f"--{SLICER_BOUNDARY}".encode(), f'Content-Disposition: form-data; name="{key}"'.encode(), b"",
                  value.encode()]
    for key, path in files.items():
        parts += [f"--{SLICER_BOUNDARY}".encode(),
                  f'Content-Disposition: form-data; name="{key}"; filename="{path}"'.encode(),
                  b"Content-Type: application/octet-stream", b"", Path(path).read_bytes()]
    parts += [f"--{SLICER_BOUNDARY}--".encode(), b""]
    return f"multipart/form-data; boundary={SLICER_BOUNDARY}", b"\r\n".join(parts) + b"\r\n"


def slicer_send(server, method: str, selector: str, fields=None, files=None, json_body=None):
    """One request on its own connection, as MONAILabelUtils.http_multipart / http_method make it."""
    conn = server.connection()
    headers = {}
    body = None
    if fields is not None or files:
        content_type, body = slicer_body(fields or {}, files or {})
        headers = {"content-type": content_type, "content-length": str(len(body))}
    elif json_body is not None:
        body = json.dumps(json_body)
        headers = {"content-type": "application/json", "content-length": str(len(body))}
    conn.request(method, selector, body=body, headers=headers)
    response = conn.getresponse()
    return response.status, response.getheader("content-type", ""), response.read()


def slicer_infer(server, model: str, image: str, params: dict) -> tuple[dict, np.ndarray]:
    """POST /infer/<model>?image=<id> with the extension's params; the result's params and label (source order)."""
    params = dict(params, client_id=SLICER_CLIENT)
    status, content_type, body = slicer_send(server, "POST", f"/infer/{quote_plus(model)}?image={quote_plus(image)}",
                                             fields={"params": json.dumps(params)})
    assert status == 200, f"{status} {body[:2000]!r}\n{server.log_tail()}"
    assert "multipart" in content_type
    parts = multipart_parts(content_type, body)
    return json.loads(parts["params"]), nifti_array(parts["image"])


def nifti_array(blob: bytes) -> np.ndarray:
    if blob[:2] == b"\x1f\x8b":
        blob = gzip.decompress(blob)
    return np.asanyarray(nib.Nifti1Image.from_bytes(blob).dataobj)


# --- the same clicks in this process ---------------------------------------------------------------------------------
class Local:
    """A study read as the server reads it, and a session on the server's model."""

    def __init__(self, path: Path, model) -> None:
        self.data, self.geometry = read_array(path)
        self.source_shape = self.geometry.source_shape[:3]
        self.session = Session(model)
        self.session.set_image(self.data)

    def predict(self, clicks, box=None, k=None):
        """clicks: [(i, j, k, label)] in click order; the mask in the source's voxel order, with its display z."""
        points = [self.geometry.display_index(c[:3]) for c in clicks]
        z = None if self.geometry.is_2d else self.geometry.display_index((0, 0, k if k is not None else
                                                                          clicks[0][2]))[0]
        mask, _ = self.session.predict(points=points or None, labels=[c[3] for c in clicks] or None, box=box, z=z)
        return mask, z

    def to_source(self, masks: dict) -> np.ndarray:
        labels = np.zeros(self.geometry.spatial_display_shape, np.uint8)
        for z, m in masks.items():
            (labels if z is None else labels[z])[m] = 1
        return self.geometry.to_source(labels)


def inside_voxel(studies: Path, name: str, label: int, k: int | None = None) -> tuple[int, int, int]:
    """A voxel (i, j, k) deep inside reference object ``label`` of the phantom, on its largest slice or ``k``."""
    from scipy import ndimage

    from napari_msa._sample_data import read_sample

    ref, _ = read_sample("phantom_labels.tif")  # display (z, y, x) of phantom_ct.nii.gz: k, j, i
    z = k if k is not None else int(np.argmax((ref == label).sum(axis=(1, 2))))
    assert (ref[z] == label).sum() > 100
    depth = ndimage.distance_transform_edt(ref[z] == label)
    y, x = np.unravel_index(depth.argmax(), depth.shape)
    assert name == "phantom_ct"
    return int(x), int(y), int(z)


# --- tests -----------------------------------------------------------------------------------------------------------
def test_info_lists_the_deepgrow_tasks_as_slicer_reads_them(server):
    status, _, body = slicer_send(server, "GET", "/info/")
    assert status == 200
    info = json.loads(body)
    assert info["name"] == "napari-msa"
    models = info["models"]
    assert models["msa_2d"]["type"] == "deepgrow" and models["msa_2d"]["dimension"] == 2
    assert models["msa_3d"]["type"] == "deepgrow" and models["msa_3d"]["dimension"] == 3
    assert info["datastore"]["total"] == 6  # the three samples, the phantom reoriented and inverted, a DICOM series
    assert "msa_tune" in info["trainers"]


def test_slicer_clicks_on_a_slice_give_the_sessions_masks_click_after_click(server, studies, local_model):
    """One request per click, as the extension sends them; the server recovers the click order from them."""
    local = Local(studies / "phantom_ct.nii.gz", local_model)
    i, j, k = inside_voxel(studies, "phantom_ct", 1)  # the liver
    fg1, bg1, fg2 = (i, j, k), (i + 25, j, k), (i - 10, j + 8, k)
    steps = [([fg1], []), ([fg1], [bg1]), ([fg1, fg2], [bg1])]
    order = [(*fg1, 1), (*bg1, 0), (*fg2, 1)]  # the order they were clicked in
    for n, (fg, bg) in enumerate(steps, start=1):
        params, label = slicer_infer(server, "msa_2d", "phantom_ct",
                                     {"label": "liver", "foreground": [list(p) for p in fg],
                                      "background": [list(p) for p in bg], "slice": k})
        assert params["clicks"] == [list(c) for c in order[:n]]
        mask, z = local.predict(order[:n])
        assert mask.any()
        assert label.shape == local.source_shape
        assert np.array_equal(label, local.to_source({z: mask})), f"click {n}"
        assert params["label_names"] == {"liver": 1}


def test_a_slicer_roi_is_a_box_on_its_slice(server, studies, local_model):
    local = Local(studies / "phantom_ct.nii.gz", local_model)
    i, j, k = inside_voxel(studies, "phantom_ct", 2)  # the spleen
    roi = [i + 14, i - 14, j - 14, j + 14, k, k]  # i0 > i1 is allowed: Slicer's RAS box can flip an axis
    _, label = slicer_infer(server, "msa_2d", "phantom_ct",
                            {"label": "spleen", "foreground": [], "background": [], "roi": roi, "slice": k})
    mask, z = local.predict([], box=(j - 14, i - 14, j + 14, i + 14), k=k)
    assert mask.any() and np.array_equal(label, local.to_source({z: mask}))


def test_a_study_in_another_voxel_order_gets_its_mask_in_that_order(server, studies, local_model):
    """Clicks are indices in the file's own order; the mask comes back on the file's grid and affine."""
    local = Local(studies / "phantom_rpi.nii.gz", local_model)
    plain = Local(studies / "phantom_ct.nii.gz", local_model)
    i, j, k = inside_voxel(studies, "phantom_ct", 4)  # the left kidney, in the plain file's ijk
    ni, nj, nk = plain.source_shape
    click = (ni - 1 - i, j, nk - 1 - k)  # the plain file runs (L, P, S); this one (R, P, I)
    params, label = slicer_infer(server, "msa_2d", "phantom_rpi",
                                 {"label": "kidney", "foreground": [list(click)], "background": [], "slice": click[2]})
    mask, z = local.predict([(*click, 1)])
    assert mask.any() and np.array_equal(label, local.to_source({z: mask}))
    flipped_back = label[::-1, :, ::-1]
    plain_mask, pz = plain.predict([(i, j, k, 1)])
    assert np.array_equal(flipped_back, plain.to_source({pz: plain_mask}))  # the same anatomy either way


def test_a_one_slice_study(server, studies, local_model):
    local = Local(studies / "ct_slice.nii.gz", local_model)
    click = (64, 90, 0)
    _, label = slicer_infer(server, "msa_2d", "ct_slice",
                            {"label": "x", "foreground": [list(click)], "background": [], "slice": 0})
    mask, z = local.predict([(*click, 1)])
    assert z is None and mask.any()
    assert np.array_equal(label, local.to_source({None: mask}))


def test_monailabel_client_3d_is_the_clicked_slice_then_propagation(run_client, studies, local_model):
    local = Local(studies / "phantom_ct.nii.gz", local_model)
    i, j, k = inside_voxel(studies, "phantom_ct", 4)  # the left kidney
    (info, infer) = run_client([
        {"op": "info"},
        {"op": "infer", "model": "msa_3d", "image": "phantom_ct",
         "params": {"label": "kidney", "foreground": [[i, j, k]], "background": []}},
    ])
    assert set(info["result"]["models"]) == {"msa_2d", "msa_3d"}
    mask, z = local.predict([(i, j, k, 1)])
    masks = {z: mask}
    masks.update(fill_by_propagation(local.session, masks, iou_threshold=0.5))
    assert len(masks) > 1, "the kidney spans several slices"
    label = np.asanyarray(nib.load(infer["result"]["file"]).dataobj)
    assert np.array_equal(label, local.to_source(masks))
    assert infer["result"]["params"]["propagated"] == len(masks) - 1


def test_monailabel_client_2d_and_the_datastore_flow(run_client, studies, local_model, tmp_path):
    """next sample, a 2D click, and the mask saved back as the study's final label."""
    local = Local(studies / "mri_volume.nii.gz", local_model)
    click = (64, 48, 12)
    results = run_client([
        {"op": "next_sample", "strategy": "random"},
        {"op": "infer", "model": "msa_2d", "image": "mri_volume",
         "params": {"label": "brain", "foreground": [list(click)], "background": [], "slice": 12}},
    ])
    assert results[0]["result"]["id"] in {"ct_slice", "mri_volume", "phantom_ct", "phantom_rpi", "phantom_inv",
                                          "ct_series"}
    mask, z = local.predict([(*click, 1)])
    label_file = results[1]["result"]["file"]
    assert np.array_equal(np.asanyarray(nib.load(label_file).dataobj), local.to_source({z: mask}))
    assert np.allclose(nib.load(label_file).affine, nib.load(studies / "mri_volume.nii.gz").affine)
    saved = run_client([{"op": "save_label", "image": "mri_volume", "label": label_file}])
    assert saved[0]["result"]["image"] == "mri_volume"
    final = studies / "labels" / "final" / "mri_volume.nii.gz"
    assert np.array_equal(np.asanyarray(nib.load(final).dataobj), local.to_source({z: mask}))


@pytest.mark.parametrize("params, says", [
    ({"foreground": [[500, 1, 1]], "background": [], "slice": 1}, "outside"),
    ({"foreground": [], "background": [[10, 10, 3]], "slice": 3}, "only negative"),
    ({"foreground": [], "background": []}, "foreground click or a roi"),
])
def test_a_bad_request_is_one_clear_error(server, params, says):
    status, _, body = slicer_send(server, "POST", "/infer/msa_2d?image=phantom_ct",
                                  fields={"params": json.dumps(params)})
    assert status == 400 and says in json.loads(body)["detail"]


def test_the_server_venv_keeps_pydicom_3_and_still_imports_pydicom_seg():
    """The workaround (server/pydicom_compat.py via a .pth file) rather than a pydicom < 3 pin."""
    import subprocess

    from conftest import server_python

    code = ("import pydicom, pydicom_seg, highdicom, monailabel.datastore.utils.convert; "
            "from pydicom._storage_sopclass_uids import SegmentationStorage; "
            "assert SegmentationStorage == pydicom.uid.SegmentationStorage; print(pydicom.__version__)")
    done = subprocess.run([str(server_python()), "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.strip().split(".")[0]) >= 3


# --- training --------------------------------------------------------------------------------------------------------
def nrrd_labelmap(path: Path, labels: np.ndarray, affine: np.ndarray) -> Path:
    """A labelmap NRRD on the image's voxel grid, as Slicer saves one (raw uint8, i fastest, LPS space)."""
    lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3, :4]  # nibabel's RAS+ to NRRD's LPS
    dirs = " ".join("(" + ",".join(f"{v:.6g}" for v in lps[:, a]) + ")" for a in range(3))
    header = ("NRRD0004\ntype: uint8\ndimension: 3\nspace: left-posterior-superior\n"
              f"sizes: {' '.join(map(str, labels.shape))}\nspace directions: {dirs}\nkinds: domain domain domain\n"
              "endian: little\nencoding: raw\n"
              f"space origin: ({','.join(f'{v:.6g}' for v in lps[:, 3])})\n\n")
    path.write_bytes(header.encode() + labels.astype(np.uint8).tobytes(order="F"))
    return path


def wait_for_training(server, timeout_s: float = 900) -> dict:
    """GET /train/ (the extension's training status) until the run is no longer RUNNING."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status, _, body = slicer_send(server, "GET", "/train/")
        task = json.loads(body)
        if status == 200 and task.get("status") not in ("SUBMITTED", "RUNNING"):
            return task
        time.sleep(2)
    pytest.fail(f"training did not finish in {timeout_s} s\n{server.log_tail()}")


def test_training_on_a_submitted_label_makes_the_tuned_adapter_live_and_restore_goes_back(
        server, studies, local_model, tmp_path):
    """Submit Label (a Slicer NRRD), Train, then the next click uses the tuned adapter; restore undoes it."""
    from napari_msa import load_model
    from napari_msa._sample_data import read_sample

    ref, _ = read_sample("phantom_labels.tif")  # display (z, y, x) = (k, j, i) of the phantom files
    labelled = ref.copy()
    labelled[[z for z in range(ref.shape[0]) if z % 4]] = 0  # 8 labelled slices
    affine = nib.load(studies / "phantom_inv.nii.gz").affine
    label_file = nrrd_labelmap(tmp_path / "label.nrrd", np.transpose(labelled, (2, 1, 0)), affine)
    status, _, body = slicer_send(server, "PUT", "/datastore/label?image=phantom_inv",
                                  fields={"params": json.dumps({"label_info": [], "client_id": SLICER_CLIENT})},
                                  files={"label": label_file})
    assert status == 200, body

    status, _, body = slicer_send(server, "POST", "/train/msa_tune", json_body={"steps": 30,
                                                                                "client_id": SLICER_CLIENT})
    assert status == 200, body
    task = wait_for_training(server)
    assert task["status"] == "DONE", f"{task}\n{server.log_tail()}"
    status, _, body = slicer_send(server, "GET", "/info/")
    stats = json.loads(body)["train_stats"]["msa_tune"]
    assert stats["held_out"]["click_after"] > stats["held_out"]["click_before"] + 0.01, stats
    adapter = stats["adapter"]

    i, j, k = inside_voxel(studies, "phantom_ct", 1)  # the liver
    click = {"label": "liver", "foreground": [[i, j, k]], "background": [], "slice": k}
    params, label = slicer_infer(server, "msa_2d", "phantom_inv", click)
    assert params["adapter"] == adapter
    tuned = Local(studies / "phantom_inv.nii.gz", load_model(CONF_MODEL, adapter=adapter, **CONF_REST))
    untuned = Local(studies / "phantom_inv.nii.gz", local_model)
    tuned_mask, z = tuned.predict([(i, j, k, 1)])
    untuned_mask, _ = untuned.predict([(i, j, k, 1)])
    assert not np.array_equal(tuned_mask, untuned_mask), "the test needs a click the tuning changes"
    assert np.array_equal(label, tuned.to_source({z: tuned_mask}))

    status, _, body = slicer_send(server, "POST", "/train/msa_tune", json_body={"restore": True})
    assert status == 200, body
    assert wait_for_training(server)["status"] == "DONE"
    params, label = slicer_infer(server, "msa_2d", "phantom_inv", dict(click, label="liver again"))
    assert params["adapter"] != adapter
    assert np.array_equal(label, untuned.to_source({z: untuned_mask}))
