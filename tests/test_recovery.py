"""Autosave at each commit and recovery: after a crash (a killed napari) the same image offers its objects back."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from segment_support import DiskMasks, disk, install, wait_idle

from napari_msa import load_model
from napari_msa._widgets._hub import hub_for
from napari_msa.recovery import RecoveryFile, image_key, recovery_dir

SHAPE = (64, 80)


def image2d() -> np.ndarray:
    return np.random.default_rng(0).random(SHAPE, dtype=np.float32)


def test_recovery_file_round_trip_and_keys(tmp_path):
    labels = np.zeros((3, 8, 9), np.uint16)
    labels[1, 2:4, 3:6] = 7
    labels[2, 0, 0] = 2
    file = RecoveryFile("abc", tmp_path)
    file.save(labels, "scan")
    got = file.load()
    assert got is not None and got.image_name == "scan" and got.objects == 2
    np.testing.assert_array_equal(got.labels, labels)
    assert got.labels.dtype == np.uint16
    assert not list(tmp_path.glob("*.tmp"))  # atomic: no temporary file left
    file.save(np.zeros_like(labels), "scan")  # nothing committed any more: nothing to recover
    assert file.load() is None and not file.path.exists()
    file.path.write_bytes(b"not an npz")  # damaged: not offered, left for the user to look at
    assert file.load() is None and file.path.exists()

    a = image2d()
    assert image_key(a) == image_key(a.copy())  # the same image opened again
    b = a.copy()
    b[0, 0] += 1
    assert image_key(a) != image_key(b) and image_key(a) != image_key(a.reshape(80, 64))
    assert image_key(a, "/data/x.nii.gz") != image_key(a, "/data/y.nii.gz")
    assert recovery_dir() == Path(os.environ["NAPARI_MSA_RECOVERY_DIR"])


@pytest.fixture
def segmenter(make_napari_viewer, qtbot, monkeypatch):
    install(monkeypatch, DiskMasks(radius=6))
    opened = []

    def open_(image: np.ndarray):
        viewer = make_napari_viewer()
        viewer.add_image(image, name="img")
        _, widget = viewer.window.add_plugin_dock_widget("napari-msa", "Segment (MSA)")
        hub_for(viewer).set_model(load_model("tiny"))
        wait_idle(qtbot, widget)
        opened.append(widget)
        return viewer, widget

    yield open_
    for widget in opened:
        widget.jobs.prefetcher.stop()
        wait_idle(qtbot, widget)


def test_commits_are_autosaved_without_the_preview_and_offered_back(segmenter, qtbot):
    viewer, widget = segmenter(image2d())
    assert widget.form.recovery_offer.isHidden()  # nothing saved for this image yet
    points = widget.layers.points()
    points.add([20, 20])
    wait_idle(qtbot, widget)
    widget.commit()
    points.add([45, 60])  # the next object's preview: shown, never saved
    wait_idle(qtbot, widget)
    assert widget.recovery.autosave.wait()
    committed = np.asarray(viewer.layers["img labels"].data == 1)
    saved = widget.recovery.file.load()
    assert saved is not None and saved.objects == 1
    np.testing.assert_array_equal(saved.labels, committed.astype(saved.labels.dtype))
    np.testing.assert_array_equal(committed, disk(SHAPE, (20, 20), 6))

    widget.undo()  # undone: the recovery copy follows
    assert widget.recovery.autosave.wait() and widget.recovery.file.load() is None
    widget.redo()
    assert widget.recovery.autosave.wait() and widget.recovery.file.load().objects == 1

    # The same image in a new window (the old one closed): the objects are offered, and restored on request.
    viewer2, widget2 = segmenter(image2d())
    assert not widget2.form.recovery_offer.isHidden() and "1 object" in widget2.form.recovery_offer.text.text()
    widget2.form.recovery_offer.restore_button.click()
    restored = viewer2.layers["img labels"]
    np.testing.assert_array_equal(restored.data == 1, committed)
    assert widget2.layers.labels() is restored and widget2.form.object_id.value() == 2
    assert widget2.form.recovery_offer.isHidden()

    # A labels layer that already holds them (e.g. opened from the saved file): nothing to offer.
    viewer3, widget3 = segmenter(image2d())
    assert not widget3.form.recovery_offer.isHidden()
    viewer3.add_labels(saved.labels.copy(), name="from file")
    assert widget3.form.recovery_offer.isHidden()
    viewer3.layers.remove("from file")
    widget3.recovery.image_chosen(viewer3.layers["img"])  # as when the image is chosen again
    assert not widget3.form.recovery_offer.isHidden()
    widget3.form.recovery_offer.discard_button.click()  # the user does not want them: the copy is deleted
    assert widget3.recovery.file.load() is None and widget3.form.recovery_offer.isHidden()


CRASHING_SESSION = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    import napari
    from qtpy.QtWidgets import QApplication
    from napari_msa import load_model
    from napari_msa._widgets._hub import hub_for
    from napari_msa.engine.inference.session import Session

    def disks(self, points=None, labels=None, box=None, mask_input=None, **kw):
        rows, cols = np.ogrid[:64, :80]
        mask = np.zeros((64, 80), bool)
        for r, c in np.asarray(points, float):
            mask |= (rows - r) ** 2 + (cols - c) ** 2 <= 36
        return mask, 0.9
    Session.predict = disks

    app = QApplication.instance() or QApplication([])
    viewer = napari.Viewer(show=False)
    viewer.add_image(np.random.default_rng(0).random((64, 80), dtype=np.float32), name="img")
    _, widget = viewer.window.add_plugin_dock_widget("napari-msa", "Segment (MSA)")
    hub_for(viewer).set_model(load_model("tiny"))
    for point in ([20, 20], [45, 60]):
        widget.layers.points().add(point)
        while not widget.idle or not widget.editor.draft:
            app.processEvents()
        widget.commit()
    assert widget.recovery.autosave.wait()
    print("committed", int(viewer.layers["img labels"].data.max()), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # napari crashes: nothing is closed or saved by hand
""")


@pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs an X server (pytest-xvfb or xvfb-run)")
def test_objects_committed_before_napari_was_killed_are_offered_back(segmenter, qtbot):
    run = subprocess.run([sys.executable, "-c", CRASHING_SESSION], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "NAPARI_MSA_PRECISION": "fp32"})
    assert run.returncode == -9, run.stderr[-3000:]  # killed, as a crash would
    assert "committed 2" in run.stdout
    viewer, widget = segmenter(image2d())
    assert not widget.form.recovery_offer.isHidden() and "2 objects" in widget.form.recovery_offer.text.text()
    widget.form.recovery_offer.restore_button.click()
    labels = viewer.layers["img labels"].data
    np.testing.assert_array_equal(labels == 1, disk(SHAPE, (20, 20), 6))
    np.testing.assert_array_equal(labels == 2, disk(SHAPE, (45, 60), 6))
