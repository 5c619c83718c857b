"""Progress of the plugin's work in napari's activity dock (model loading, embedding, propagation, tuning).

Each test drives a real viewer and records what napari's activity dialog sees: every bar the plugin
opens appears there with its description and range, moves with the work, and is gone when the work
ends, with no error on the way (pytest-qt fails a test on an exception raised in a Qt callback).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from napari._qt.widgets.qt_progress_bar import QtLabeledProgressBar
from napari.utils import progress
from segment_support import DiskMasks, install, wait_idle
from tuning_support import blob_task

from napari_msa import load_model
from napari_msa._widgets._hub import hub_for
from napari_msa.engine.files.formats import save_model_file


class DockRecorder:
    """Watches napari's progress instances and the activity dialog's bars while a test runs."""

    def __init__(self, viewer) -> None:
        self.dialog = viewer.window._qt_window._activity_dialog
        self.opened: list[str] = []
        self.values: dict[str, list[tuple[int, int]]] = {}  # desc at opening → (n, total) seen
        self.descs: list[str] = []
        self.shown: set[str] = set()  # descriptions the dialog's bars showed
        progress._all_instances.events.changed.connect(self._changed)

    def _changed(self, event) -> None:
        for prog in event.added:
            if not str(prog.desc).startswith("MSA"):
                continue
            key = str(prog.desc)
            self.opened.append(key)
            self.values[key] = []
            prog.events.value.connect(self._value_recorder(prog, key))
            prog.events.description.connect(lambda e: self.descs.append(str(e.value)))
        self.look()

    def _value_recorder(self, prog, key: str):
        def record(event) -> None:  # napari's bar runs processEvents on each value: nested updates come first
            self.values[key].append((int(event.value), int(prog.total)))

        return record

    def look(self) -> None:
        for bar in self.dialog.findChildren(QtLabeledProgressBar):
            if bar.progress is not None and str(bar.progress.desc).startswith("MSA"):
                self.shown.add(bar.description_label.text())

    def open_bars(self) -> list[str]:
        return [str(p.desc) for p in progress._all_instances if str(p.desc).startswith("MSA")]

    def dialog_bars(self) -> list[str]:
        return [bar.description_label.text() for bar in self.dialog.findChildren(QtLabeledProgressBar)
                if bar.isVisible() and bar.progress is not None and str(bar.progress.desc).startswith("MSA")]

    def close(self) -> None:
        progress._all_instances.events.changed.disconnect(self._changed)


@pytest.fixture
def dock(qtbot):
    recorders = []

    def watch(viewer) -> DockRecorder:
        recorder = DockRecorder(viewer)
        recorders.append(recorder)
        return recorder

    yield watch
    for recorder in recorders:
        recorder.close()


def test_model_loading_shows_a_busy_bar_that_goes_when_loaded(make_napari_viewer, qtbot, tmp_path, dock):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).random((64, 64), dtype=np.float32), name="img")
    _, widget = viewer.window.add_plugin_dock_widget("napari-msa", "Segment (MSA)")
    recorder = dock(viewer)
    path = save_model_file(load_model("tiny").sam, tmp_path / "tiny.safetensors", description="test")
    widget.model_panel.combo.setCurrentText("vit_b")
    widget.model_panel.checkpoint.edit.setText(str(path))
    for _ in range(3):  # a load from a small file is short: the bar must never be left behind
        widget.model_panel.load_button.click()
        qtbot.waitUntil(lambda: recorder.open_bars() == ["MSA: loading vit_b"] or widget.idle, timeout=5000)
        assert "MSA: loading vit_b: " in recorder.shown  # the dock showed it while loading
        wait_idle(qtbot, widget)
    qtbot.wait(50)
    assert recorder.opened.count("MSA: loading vit_b") == 3
    assert recorder.open_bars() == [] and recorder.dialog_bars() == []


def test_embedding_and_propagation_report_slices_done_of_total(make_napari_viewer, qtbot, monkeypatch, dock):
    masks = install(monkeypatch, DiskMasks(radius=6))
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(1).random((8, 48, 56), dtype=np.float32), name="vol")
    _, widget = viewer.window.add_plugin_dock_widget("napari-msa", "Segment (MSA)")
    recorder = dock(viewer)
    hub_for(viewer).set_model(load_model("tiny"))
    wait_idle(qtbot, widget)
    assert recorder.opened[0] == "MSA: embedding slice 3"  # the slice shown, then its 4 neighbours
    assert max(recorder.values["MSA: embedding slice 3"]) == (5, 5)
    assert "MSA: embedding slice 4 (prefetch)" in recorder.descs

    widget.layers.points().add([3, 24, 28])
    wait_idle(qtbot, widget)
    masks.after_call = lambda n: time.sleep(0.1)  # a slice takes a while, as with a real model
    widget.propagate()
    wait_idle(qtbot, widget)
    key = "MSA: propagating from slice 3"
    steps = sorted(recorder.values[key])
    assert len(steps) >= 4 and steps[-1] == (7, 7), steps  # it moved slice by slice up to 7 of 7
    assert len({n for n, _ in steps}) == len(steps)
    assert "MSA: propagating from slice 3: " in recorder.shown
    qtbot.wait(50)
    assert recorder.open_bars() == [] and recorder.dialog_bars() == []


@pytest.mark.usefixtures("one_torch_thread")
def test_tuning_reports_steps_and_eta(make_napari_viewer, qtbot, dock):
    viewer = make_napari_viewer()
    images, labels = blob_task(4, size=48)
    viewer.add_image(images, name="img")
    viewer.add_labels(labels, name="annotations")
    torch.manual_seed(0)
    hub_for(viewer).set_model(load_model("tiny", device="cpu", image_size=128))
    _, widget = viewer.window.add_plugin_dock_widget("napari-msa", "Tune (MSA)")
    recorder = dock(viewer)
    widget.steps.setValue(6)
    widget.val_share.setValue(0.0)
    widget.start_button.click()
    qtbot.waitUntil(lambda: any(d.startswith("MSA: tuning") for d in recorder.opened), timeout=5000)
    qtbot.waitUntil(lambda: not widget.run.running, timeout=120_000)
    assert len(recorder.opened) == 1, recorder.opened
    steps = sorted(recorder.values[recorder.opened[0]])
    assert steps[-1] == (6, 6) and len(steps) >= 3
    assert any(d.startswith("MSA: tuning step 3/6, ETA ") for d in recorder.descs), recorder.descs
    qtbot.wait(50)
    assert recorder.open_bars() == [] and recorder.dialog_bars() == []
