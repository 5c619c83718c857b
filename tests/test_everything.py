"""Segment everything: a grid of clicks → the confident, stable, distinct masks, through the engine and the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_msa import Normalization, Session, load_model
from napari_msa.engine import DEMO_MODEL_FILE
from napari_msa.engine.inference.everything import (
    Candidate,
    EverythingSettings,
    deduplicate,
    grid_points,
    segment_everything,
    to_labels,
)
from napari_msa.engine.prompts.geometry import iou

needs_demo = pytest.mark.skipif(not DEMO_MODEL_FILE.is_file(), reason="the demo model file is not installed")


def disk(shape, center, radius):
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - center[0]) ** 2 + (cols - center[1]) ** 2 <= radius**2


def test_grid_points_are_cell_centres():
    pts = grid_points((40, 80), 4)
    assert pts.shape == (16, 2)
    np.testing.assert_allclose(sorted(set(pts[:, 0])), [5, 15, 25, 35])
    np.testing.assert_allclose(sorted(set(pts[:, 1])), [10, 30, 50, 70])


def test_duplicates_go_and_nested_objects_keep_their_ids():
    shape = (64, 64)
    big, same, inner = disk(shape, (32, 32), 20), disk(shape, (32, 33), 20), disk(shape, (32, 32), 5)
    kept = deduplicate([Candidate(same, 0.8, 0.9), Candidate(big, 0.9, 0.95), Candidate(inner, 0.85, 0.9)],
                       box_nms=0.7, mask_nms=0.6)
    assert [c.score for c in kept] == [0.9, 0.85]  # the better of the two near-identical masks stays
    labels = to_labels(kept, shape, first_id=5)
    assert set(np.unique(labels)) == {0, 5, 6}
    np.testing.assert_array_equal(labels == 6, inner)  # drawn after the larger one around it
    np.testing.assert_array_equal(labels == 5, big & ~inner)


@needs_demo
def test_everything_on_a_phantom_slice_finds_its_organs():
    from napari_msa._sample_data import phantom_volume

    (hu, _, _), (truth, _, _) = phantom_volume()
    z = 16
    session = Session(load_model("demo"), normalization=Normalization("ct"))
    session.set_image(hu[z])
    seen = []
    candidates = segment_everything(session, settings=EverythingSettings(points_per_side=12),
                                    progress=lambda done, total: seen.append((done, total)))
    assert seen[-1][0] == seen[-1][1]  # progress reaches its end (skipped points count as done)
    s = EverythingSettings()
    assert len(candidates) >= 3
    assert all(c.score >= s.min_score and c.stability >= s.min_stability for c in candidates)
    for i, a in enumerate(candidates):
        assert all(iou(a.mask, b.mask) <= s.mask_nms for b in candidates[i + 1 :])
    organs = [truth[z] == label for label in np.unique(truth[z]) if label and (truth[z] == label).sum() > 300]
    found = [max(iou(c.mask, organ) for c in candidates) >= 0.5 for organ in organs]
    assert sum(found) >= 2, found  # the large organs are found (BENCHMARKS.md measures how many)


@needs_demo
def test_cli_everything_writes_one_id_per_object(tmp_path):
    from napari_msa._sample_data import phantom_volume
    from napari_msa.cli import main

    (hu, _, _), _ = phantom_volume()
    tifffile.imwrite(tmp_path / "slice.tif", hu[16])
    out = tmp_path / "all.tif"
    assert main(["-q", "segment", str(tmp_path / "slice.tif"), "--everything", "--points-per-side", "8",
                 "-o", str(out), "--model", "demo", "--normalize", "ct"]) == 0
    labels = tifffile.imread(out)
    assert labels.shape == hu.shape[1:] and len(np.unique(labels)) >= 3
    assert main(["-q", "segment", str(tmp_path / "slice.tif"), "--everything", "-p", str(tmp_path / "x.csv"),
                 "-o", str(out), "--model", "demo"]) == 2  # prompts and --everything: refused


@needs_demo
def test_widget_everything_candidates_kept_by_a_click_and_all(make_napari_viewer, qtbot):
    """The button runs on a worker; the candidates land in '<image> candidates'; a click on one (a real mouse
    event on the canvas) makes it the next object of the labels in one undo step; Keep all keeps the rest."""
    from qtpy.QtCore import QPoint, Qt

    from napari_msa._sample_data import phantom_volume
    from napari_msa._widgets._hub import hub_for

    (hu, _, _), _ = phantom_volume()
    viewer = make_napari_viewer(show=True)
    viewer.add_image(hu[16], name="img")
    _, widget = viewer.window.add_plugin_dock_widget("napari-msa", "Segment (MSA)")
    hub_for(viewer).set_model(load_model("demo"))
    widget.form.norm_combo.setCurrentText("ct")
    qtbot.waitUntil(lambda: widget.idle, timeout=30_000)
    widget.form.everything_button.click()
    assert widget.jobs.everything.running
    qtbot.waitUntil(lambda: widget.idle, timeout=120_000)
    candidates = viewer.layers["img candidates"]
    ids = [v for v in np.unique(candidates.data) if v]
    assert len(ids) >= 3 and viewer.layers.selection.active is candidates
    assert f"{len(ids)} candidate objects" in widget.status.text()

    # a real click on the canvas at the centre of the largest candidate
    biggest = max(ids, key=lambda v: (candidates.data == v).sum())
    from napari_msa.engine.prompts.geometry import most_interior

    row, col = most_interior(candidates.data == biggest)
    expected = candidates.data == biggest
    viewer.camera.center = (row, col)
    qtbot.wait(50)
    canvas = viewer.window._qt_viewer.canvas.native
    centre = QPoint(canvas.width() // 2, canvas.height() // 2)
    qtbot.mousePress(canvas, Qt.MouseButton.LeftButton, pos=centre)
    qtbot.mouseRelease(canvas, Qt.MouseButton.LeftButton, pos=centre)
    labels = viewer.layers["img labels"]
    qtbot.waitUntil(lambda: labels.data.any(), timeout=5000)
    np.testing.assert_array_equal(labels.data == 1, expected)
    assert not (candidates.data == biggest).any() and widget.form.object_id.value() == 2
    labels.undo()  # one undo step
    assert not labels.data.any()
    labels.redo()

    widget.form.keep_all_button.click()
    assert not candidates.data.any()
    assert len(np.unique(labels.data)) - 1 == len(ids)
