"""napari-msa's own client of the server (``napari_msa.remote``), against the real server: the masks equal a local
``Session`` on the same model click after click (order, candidates, refining, boxes, normalisation, propagation),
an expired server session is uploaded again, and the Segment widget, connected from its Model panel in a real napari
window, previews, commits and propagates with the server's masks."""

from __future__ import annotations

import numpy as np
import pytest

from napari_msa import Normalization, Session
from napari_msa.medical_io.cli import read_array
from napari_msa.remote import LabelServer, RemoteSession, ServerError, connect


def free_port() -> int:
    """A port nothing listens on."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def phantom(studies) -> np.ndarray:
    """The phantom volume as napari-msa's reader gives it: what an image layer holds after File > Open."""
    data, _ = read_array(studies / "phantom_ct.nii.gz")
    return data


@pytest.fixture(scope="module")
def reference(phantom) -> np.ndarray:
    from napari_msa._sample_data import read_sample

    ref, _ = read_sample("phantom_labels.tif")  # the same (z, y, x) grid as the phantom NIfTI's display array
    assert ref.shape == phantom.shape
    return ref


def deep_point(ref: np.ndarray, label: int) -> tuple[int, int, int]:
    from scipy import ndimage

    z = int(np.argmax((ref == label).sum(axis=(1, 2))))
    depth = ndimage.distance_transform_edt(ref[z] == label)
    y, x = np.unravel_index(depth.argmax(), depth.shape)
    return z, int(y), int(x)


def pair(server, model, image, normalization=None) -> tuple[RemoteSession, Session]:
    remote = connect(server.url).new_session()
    remote.set_image(image, normalization=normalization)
    local = Session(model)
    local.set_image(image, normalization=normalization)
    return remote, local


def test_clicks_in_any_order_give_the_local_sessions_masks(server, local_model, phantom, reference):
    remote, local = pair(server, local_model, phantom)
    z, y, x = deep_point(reference, 1)  # the liver
    clicks = [((z, y, x), 1), ((z, y, x + 30), 0), ((z, y + 9, x - 12), 1), ((z, y - 20, x), 0)]
    for n in range(1, len(clicks) + 1):
        points = [c for c, _ in clicks[:n]]
        labels = [lab for _, lab in clicks[:n]]
        got, score = remote.predict(points=points, labels=labels)
        want, want_score = local.predict(points=points, labels=labels)
        assert want.any() and np.array_equal(got, want), f"click {n}"
        assert score == pytest.approx(want_score, abs=1e-4)
    remote.close()


def test_candidates_boxes_refining_and_normalisation_are_the_local_ones(server, local_model, phantom, reference):
    norm = Normalization("limits", limits=(-200.0, 300.0))
    remote, local = pair(server, local_model, phantom, norm)
    z, y, x = deep_point(reference, 2)  # the spleen
    for candidate in (0, 1, 2):  # the N key: SAM's other masks for a lone click
        got, _ = remote.predict(points=[(z, y, x)], labels=[1], candidate=candidate)
        want, _ = local.predict(points=[(z, y, x)], labels=[1], candidate=candidate)
        assert np.array_equal(got, want), f"candidate {candidate}"
    box = (y - 12, x - 12, y + 12, x + 12)
    got, _ = remote.predict(box=box, z=z)
    want, _ = local.predict(box=box, z=z)
    assert want.any() and np.array_equal(got, want)
    prior = reference[z] == 2  # refining an object that exists: it is the answer before the first click
    got, _ = remote.predict(points=[(z, y + 3, x + 3)], labels=[0], z=z, prior=prior)
    want, _ = local.predict(points=[(z, y + 3, x + 3)], labels=[0], z=z, prior=prior)
    assert np.array_equal(got, want)
    remote.set_image(phantom, normalization=None)  # back to the server's (the model's) own normalisation
    local.normalization = None
    local.set_image(phantom)
    got, _ = remote.predict(points=[(z, y, x)], labels=[1])
    want, _ = local.predict(points=[(z, y, x)], labels=[1])
    assert np.array_equal(got, want)
    remote.close()


def test_propagation_is_the_local_sessions(server, local_model, phantom, reference):
    remote, local = pair(server, local_model, phantom)
    z, y, x = deep_point(reference, 4)  # the left kidney
    start, _ = local.predict(points=[(z, y, x)], labels=[1])
    got = remote.propagate(start, z)
    want = local.propagate(start, z)
    assert len(want) > 1 and sorted(got) == sorted(want)
    assert all(np.array_equal(got[k], want[k]) for k in want)
    remote.close()


def test_a_2d_image_and_an_expired_server_session(server, local_model, phantom, reference):
    plane = np.ascontiguousarray(phantom[deep_point(reference, 1)[0]])
    remote, local = pair(server, local_model, plane)
    _, y, x = deep_point(reference, 1)
    first, _ = remote.predict(points=[(y, x)], labels=[1])
    server_side = remote._session_id
    remote.server.remove_session(server_side)  # as MONAI Label does when a session expires
    got, _ = remote.predict(points=[(y, x), (y, x + 25)], labels=[1, 0])
    want, _ = local.predict(points=[(y, x), (y, x + 25)], labels=[1, 0])
    assert remote._session_id != server_side, "the image went up again"
    assert np.array_equal(got, want)
    remote.close()


def test_an_rgb_image_or_a_refused_request_is_one_clear_error(server, phantom):
    remote = connect(server.url).new_session()
    with pytest.raises(ValueError, match="grey-level"):
        remote.set_image(np.zeros((32, 32, 3), np.uint8), rgb=True)
    remote.set_image(phantom)
    with pytest.raises(ServerError, match=r"answered 400: click .* lies outside the study's"):
        remote.predict(points=[(phantom.shape[0] + 3, 10, 10)], labels=[1])
    remote.close()


# --- the Segment widget, in a real napari window ----------------------------------------------------------------
@pytest.mark.gui
def test_the_segment_widget_connects_from_its_model_panel_and_segments_on_the_server(
        make_napari_viewer, qtbot, server, local_model, phantom, reference):
    viewer = make_napari_viewer()
    image = viewer.add_image(phantom, name="phantom")
    _, widget = viewer.window.add_plugin_dock_widget("napari-msa", "Segment (MSA)")
    panel = widget.model_panel
    panel.server.setText(server.url)
    assert panel.load_button.text() == "Connect to server"
    panel.load_button.click()
    qtbot.waitUntil(lambda: widget.hub.model is not None and widget.idle, timeout=60_000)
    assert server.url in panel.label.text() and widget.jobs.remote

    z, y, x = deep_point(reference, 1)  # the liver
    viewer.dims.set_current_step(0, z)
    widget.layers.points().add([z, y, x])
    qtbot.waitUntil(lambda: widget.idle, timeout=60_000)
    labels = viewer.layers["phantom labels"]
    local = Session(local_model)
    local.set_image(phantom)
    want, _ = local.predict(points=[(z, y, x)], labels=[1])
    assert np.array_equal(labels.data[z] == 1, want), "the preview is the server's mask"

    widget.propagate()  # Shift+S: through the volume, on the server
    qtbot.waitUntil(lambda: not widget.jobs.propagation.running and widget.idle, timeout=120_000)
    along = local.propagate(want, z)
    assert len(along) > 1
    widget.commit()
    qtbot.waitUntil(lambda: widget.idle, timeout=60_000)
    assert widget.form.object_id.value() == 2
    filled = {k for k in range(phantom.shape[0]) if k != z and np.any(labels.data[k] == 1)}
    assert filled == set(along)
    assert all(np.array_equal(labels.data[k] == 1, along[k]) for k in along)
    assert np.array_equal(labels.data[z] == 1, want)

    widget.embed_volume()  # only for a model here: said, nothing started
    assert "server" in widget.status.text() and not widget.jobs.volume.running
    assert np.array_equal(image.data, phantom)

    # The server goes away (its address answers no more): each click is told, once, and nothing changes.
    from napari.utils.notifications import notification_manager

    widget.jobs.session.server = LabelServer(f"http://127.0.0.1:{free_port()}")
    committed = labels.data.copy()
    told = len(notification_manager.records)
    for point in ([z, y - 8, x], [z, y + 8, x]):
        widget.layers.points().add(point)
        qtbot.waitUntil(lambda: widget.idle, timeout=60_000)
    gone = [str(n.message) for n in notification_manager.records[told:] if "connection refused" in str(n.message)]
    assert len(gone) == 1, gone
    assert gone[0].startswith("Prediction: Cannot reach the server") and "Nothing was written" in gone[0]
    assert np.array_equal(labels.data, committed) and len(widget.layers.points().data) == 2


@pytest.mark.gui
def test_a_labs_server_from_the_environment_is_connected_when_an_image_opens(
        make_napari_viewer, qtbot, monkeypatch, server, local_model, phantom, reference):
    """$NAPARI_MSA_SERVER fills the Server field; opening an image connects (as it would load a local model)."""
    from napari_msa._widgets.segment import segment_widget

    monkeypatch.setenv("NAPARI_MSA_SERVER", server.url)
    monkeypatch.setattr(segment_widget, "PRELOAD", True)
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-msa", "Segment (MSA)")
    viewer.add_image(phantom, name="phantom")
    qtbot.waitUntil(lambda: widget.hub.model is not None and widget.idle, timeout=60_000)
    assert widget.jobs.remote
    z, y, x = deep_point(reference, 3)  # the right kidney
    viewer.dims.set_current_step(0, z)
    widget.layers.points().add([z, y, x])
    qtbot.waitUntil(lambda: widget.idle, timeout=60_000)
    local = Session(local_model)
    local.set_image(phantom)
    want, _ = local.predict(points=[(z, y, x)], labels=[1])
    assert np.array_equal(viewer.layers["phantom labels"].data[z] == 1, want)


@pytest.mark.gui
def test_the_widget_says_once_when_the_server_is_gone_and_nothing_changes(make_napari_viewer, qtbot, phantom):
    port = free_port()
    viewer = make_napari_viewer()
    viewer.add_image(phantom, name="phantom")
    labels = viewer.add_labels(np.zeros(phantom.shape, np.uint8), name="mine")
    labels.data[3, 10:20, 10:20] = 7
    before = labels.data.copy()
    _, widget = viewer.window.add_plugin_dock_widget("napari-msa", "Segment (MSA)")
    widget.model_panel.server.setText(f"http://127.0.0.1:{port}")
    widget.model_panel.load_button.click()
    qtbot.waitUntil(lambda: widget.idle, timeout=30_000)
    assert widget.hub.model is None
    assert "connection refused" in widget.status.text() and "make server" in widget.status.text()
    assert np.array_equal(labels.data, before)


@pytest.mark.gui
def test_a_server_asked_for_while_the_local_model_loads_replaces_that_load(
        make_napari_viewer, qtbot, monkeypatch, server, phantom):
    from napari_msa._widgets.segment import segment_widget

    monkeypatch.setattr(segment_widget, "PRELOAD", True)
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-msa", "Segment (MSA)")
    viewer.add_image(phantom, name="phantom")  # the default model starts loading here
    panel = widget.model_panel
    assert panel.loading and panel.load_run.name == "litemedsam"
    panel.server.setText(server.url)
    assert panel.load_button.isEnabled()  # another choice than the one loading
    panel.load_button.click()
    qtbot.waitUntil(lambda: widget.hub.model is not None and widget.idle, timeout=120_000)
    qtbot.wait(200)  # the discarded local model would have arrived by now
    assert widget.jobs.remote and getattr(widget.hub.model, "remote", False)
    assert server.url in panel.label.text()


def test_an_object_uploaded_on_the_studys_grid_propagates_too(server, studies, local_model, phantom, reference,
                                                            tmp_path):
    """MONAI Label's own convention for a label upload (the whole study's grid), beside the client's one plane."""
    import gzip

    import nibabel as nib

    from napari_msa.medical_io import write_nifti_labels

    _, geometry = read_array(studies / "phantom_ct.nii.gz")
    z, y, x = deep_point(reference, 4)  # the left kidney
    local = Session(local_model)
    local.set_image(phantom)
    start, _ = local.predict(points=[(z, y, x)], labels=[1])
    grid = np.zeros(phantom.shape, np.uint8)
    grid[z][start] = 1
    path = write_nifti_labels(tmp_path / "start.nii.gz", grid, geometry)
    result, blob = LabelServer(server.url).infer_image("msa_3d", "phantom_ct", {"slice": z, "label_name": "kidney"},
                                                       path)
    labels = geometry.to_display(np.asanyarray(nib.Nifti1Image.from_bytes(gzip.decompress(blob)).dataobj))
    want = local.propagate(start, z)
    assert sorted(result["filled"]) == sorted(want)
    assert all(np.array_equal(labels[k] == 1, want[k]) for k in want)


# Fresh napari first, then the plugin and a sample from the menus (tests/test_menu_path.py's script, Qt before
# anything of torch's), then the Server field, Connect and a click: the user's path to a server.
SERVER_AFTER = """
import time
widget = viewer.window.dock_widgets["Segment (MSA) (napari-msa)"]
widget.model_panel.server.setText(plan["url"])
widget.model_panel.load_button.click()
deadline = time.monotonic() + 120
while (widget.hub.model is None or not widget.idle) and time.monotonic() < deadline:
    app.processEvents(); time.sleep(0.02)
assert widget.jobs.remote, widget.status.text()
widget.form.image_choice.choose(viewer.layers["CT slice (HU)"])
widget.layers.points().add([64, 64])
while (widget.layers.labels() is None or not widget.idle) and time.monotonic() < deadline:
    app.processEvents(); time.sleep(0.02)
assert widget.layers.labels() is not None and widget.layers.labels().data.any(), widget.status.text()
print("server click answered:", int(widget.layers.labels().data.sum()), "pixels", flush=True)
"""


@pytest.mark.gui
def test_from_a_fresh_napari_the_menus_and_a_server_answer_a_click(server):
    import json
    import os
    import subprocess
    import sys

    from test_menu_path import VIEWER_FIRST, _assert_ok

    plan = {"widgets": ["Segment (MSA)"], "samples": ["ct_slice"], "after": SERVER_AFTER, "url": server.url}
    proc = subprocess.run([sys.executable, "-c", VIEWER_FIRST, json.dumps(plan)], capture_output=True, text=True,
                          timeout=240, env={**os.environ, "PYTHONFAULTHANDLER": "1"})
    _assert_ok(proc)
    assert "server click answered" in proc.stdout
