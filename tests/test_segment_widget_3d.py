"""The Segment (MSA) widget on volumes: per-slice prompts, cached/prefetched embeddings, propagation, a
responsive GUI while the encoder runs, and box prompts."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from napari.utils import progress
from qtpy.QtCore import QTimer
from segment_support import DiskMasks, disk, install, notification_count, notifications_since, press_key, wait_idle

from napari_msa import load_model
from napari_msa._widgets._hub import hub_for

SHAPE = (8, 48, 56)
Z_SCALE = (3.0, 1.0, 1.0)


@pytest.fixture
def open_volume(make_napari_viewer, qtbot):
    """A viewer with a (Z,Y,X) image scaled along z, the widget, and a tiny model whose encoder is counted."""
    opened = []

    def open_(encode_delay: float = 0.0, set_model: bool = True):
        viewer = make_napari_viewer()
        volume = np.random.default_rng(1).random(SHAPE, dtype=np.float32)
        viewer.add_image(volume, name="vol", scale=Z_SCALE)
        _, widget = viewer.window.add_plugin_dock_widget("napari-msa", "Segment (MSA)")
        opened.append(widget)
        torch.manual_seed(0)
        model = load_model("tiny")
        model.encoded = 0
        real_encode = model.encode

        def counted_encode(*args, **kwargs):
            model.encoded += 1
            if encode_delay:
                time.sleep(encode_delay)  # stands in for a big encoder (torch also runs without the GIL)
            return real_encode(*args, **kwargs)

        model.encode = counted_encode
        if set_model:
            hub_for(viewer).set_model(model)
            wait_idle(qtbot, widget)
        return viewer, widget, model

    yield open_
    for widget in opened:
        widget.jobs.prefetcher.stop()
        widget.jobs.propagation.cancel()
        wait_idle(qtbot, widget)


def go_to_slice(viewer, widget, qtbot, z: int) -> None:
    viewer.dims.set_current_step(0, z)
    qtbot.wait(10)  # let the slice-settle timer start
    wait_idle(qtbot, widget)


def test_clicks_are_per_slice_and_slice_changes_reuse_cached_embeddings(open_volume, qtbot, monkeypatch):
    masks = install(monkeypatch, DiskMasks(radius=5))
    viewer, widget, model = open_volume()
    assert viewer.dims.current_step[0] == 3  # napari opens a volume on its middle slice
    assert widget.jobs.prefetcher.computed == [3, 4, 2, 5, 1]  # that slice, then its neighbours (radius 2)
    go_to_slice(viewer, widget, qtbot, 0)
    assert widget.jobs.prefetcher.computed[5:] == [0]  # only the slice not yet cached
    encoded = model.encoded
    go_to_slice(viewer, widget, qtbot, 2)
    assert model.encoded == encoded  # slices 0..4 are all cached: no encoder pass at all

    points = widget.layers.points()
    points.add([2, 20, 30])  # (z, row, col) in the points layer's data = the image's pixels
    wait_idle(qtbot, widget)
    labels = viewer.layers["vol labels"]
    assert labels.data.shape == SHAPE
    np.testing.assert_allclose(labels.scale, Z_SCALE)
    np.testing.assert_array_equal(labels.data[2] == 1, disk(SHAPE[1:], (20, 30), 5))
    assert not np.delete(labels.data, 2, axis=0).any()  # other slices untouched
    assert masks.calls[-1]["points"][0].tolist() == [2, 20, 30]
    assert model.encoded == encoded  # the click used the cached embedding

    go_to_slice(viewer, widget, qtbot, 5)
    points.add([5, 30, 20])
    wait_idle(qtbot, widget)
    np.testing.assert_array_equal(labels.data[5] == 1, disk(SHAPE[1:], (30, 20), 5))
    np.testing.assert_array_equal(labels.data[2] == 1, disk(SHAPE[1:], (20, 30), 5))  # slice 2 kept
    assert len(masks.calls) == 2  # slice 2 was not predicted again

    points.selected_data = {0}
    points.remove_selected()  # the slice-2 prompt is gone, so is its preview
    wait_idle(qtbot, widget)
    assert not labels.data[2].any() and labels.data[5].any()


def test_shift_s_propagates_then_commit_and_undo(open_volume, qtbot, monkeypatch):
    install(monkeypatch, DiskMasks(radius=6))
    viewer, widget, _ = open_volume()
    go_to_slice(viewer, widget, qtbot, 3)
    widget.layers.points().add([3, 24, 28])
    wait_idle(qtbot, widget)
    press_key(viewer, "Shift-S")
    assert widget.jobs.propagation.running and widget.form.propagate_button.text() == "Cancel (Shift+S)"
    wait_idle(qtbot, widget)
    assert widget.form.propagate_button.text() == "Propagate (Shift+S)"  # finished: the button proposes a new run
    labels = viewer.layers["vol labels"]
    expected = disk(SHAPE[1:], (24, 28), 6)
    for z in range(SHAPE[0]):
        np.testing.assert_array_equal(labels.data[z] == 1, expected, err_msg=f"slice {z}")
    press_key(viewer, "C")
    assert widget.form.object_id.value() == 2
    assert (labels.data == 1).sum() == SHAPE[0] * expected.sum()
    labels.undo()  # the whole propagated object was one commit
    assert not labels.data.any()


def test_propagation_can_be_cancelled_and_commits_nothing(open_volume, qtbot, monkeypatch):
    masks = install(monkeypatch, DiskMasks(radius=6))
    viewer, widget, _ = open_volume()
    widget.layers.points().add([3, 24, 28])  # on the slice shown (napari opens on the middle one)
    wait_idle(qtbot, widget)
    labels = viewer.layers["vol labels"]
    history = len(labels._undo_history)
    masks.hold_first = True  # hold the propagation's first slice until the cancel has been asked for
    masks.calls.clear()
    masks.first_started.clear()
    start = notification_count()
    widget.propagate()
    qtbot.waitUntil(masks.first_started.is_set, timeout=10_000)
    widget.form.propagate_button.click()  # the same key/button again cancels
    masks.release.set()
    wait_idle(qtbot, widget)
    assert widget.form.propagate_button.text() == "Propagate (Shift+S)"
    assert labels.data[3].any()
    # at most the slice finished before the cancel is shown, as a preview: nothing was committed
    assert not np.delete(labels.data, [3, 4], axis=0).any()
    assert len(labels._undo_history) == history
    assert sum("cancelled" in m for m in notifications_since(start)) == 1
    assert len(masks.calls) == 1
    widget.form.clear_button.click()
    wait_idle(qtbot, widget)
    assert not labels.data.any()


def test_cancelled_propagation_keeps_the_finished_slices_as_a_preview(open_volume, qtbot, monkeypatch):
    masks = install(monkeypatch, DiskMasks(radius=6))
    viewer, widget, _ = open_volume()
    widget.layers.points().add([3, 24, 28])
    wait_idle(qtbot, widget)
    labels = viewer.layers["vol labels"]
    history = len(labels._undo_history)
    clicks = len(masks.calls)
    masks.after_call = lambda n: widget.jobs.propagation.cancel() if n == clicks + 3 else None  # cancel after 3 slices
    start = notification_count()
    press_key(viewer, "Shift-S")
    wait_idle(qtbot, widget)
    expected = disk(SHAPE[1:], (24, 28), 6)
    kept = [z for z in range(SHAPE[0]) if labels.data[z].any()]
    assert kept == [3, 4, 5, 6]  # the clicked slice and the three finished before the cancel (upwards first)
    for z in kept:
        np.testing.assert_array_equal(labels.data[z] == 1, expected)
    assert len(labels._undo_history) == history  # a preview, not yet committed
    messages = notifications_since(start)
    assert sum("cancelled" in m for m in messages) == 1, messages
    assert "slices 4–6" in widget.status.text() and "C commits" in widget.status.text()
    assert widget.form.propagate_button.text() == "Propagate (Shift+S)"

    press_key(viewer, "C")  # commit keeps them all as one undo step
    assert (labels.data == 1).sum() == 4 * expected.sum() and widget.form.object_id.value() == 2
    labels.undo()
    assert not labels.data.any()

    # or X drops them all
    widget.layers.points().add([3, 24, 28])
    wait_idle(qtbot, widget)
    clicks = len(masks.calls)
    masks.after_call = lambda n: widget.jobs.propagation.cancel() if n == clicks + 2 else None
    press_key(viewer, "Shift-S")
    wait_idle(qtbot, widget)
    assert [z for z in range(SHAPE[0]) if labels.data[z].any()] == [3, 4, 5]
    press_key(viewer, "X")
    wait_idle(qtbot, widget)
    assert not labels.data.any()


def test_activity_line_shows_what_runs_and_never_hides_the_last_result(open_volume, qtbot, monkeypatch):
    install(monkeypatch, DiskMasks(radius=5))
    viewer, widget, model = open_volume(encode_delay=0.3, set_model=False)
    seen = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: seen.append(widget.form.activity.text()))
    timer.start()
    hub_for(viewer).set_model(model)
    wait_idle(qtbot, widget)
    assert "Embedding slice 3…" in seen and any(t.startswith("Prefetching slice") for t in seen), set(seen)
    assert widget.form.activity.text() == ""  # idle: nothing claims to run
    widget.layers.points().add([3, 20, 30])
    wait_idle(qtbot, widget)
    result = widget.status.text()
    assert result.startswith("Object 1 — slice 3")
    seen.clear()
    viewer.dims.set_current_step(0, 7)  # embeds slice 7 and prefetches 6, 5 (4, 3 are cached)
    qtbot.waitUntil(lambda: not widget.jobs.prefetcher.idle, timeout=5000)
    wait_idle(qtbot, widget)
    timer.stop()
    assert "Embedding slice 7…" in seen and "Prefetching slice 6…" in seen, set(seen)
    assert widget.status.text() == result and widget.form.activity.text() == ""


def test_gui_stays_responsive_while_the_slice_is_embedded(open_volume, qtbot):
    viewer, widget, model = open_volume(encode_delay=0.4, set_model=False)
    ticks_while_busy = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks_while_busy.append(not widget.jobs.prefetcher.idle))
    timer.start()
    hub_for(viewer).set_model(model)
    qtbot.waitUntil(lambda: widget.jobs.prefetcher.encoding is not None, timeout=5000)  # a worker is encoding
    qtbot.waitUntil(lambda: any("embedding" in (p.desc or "") for p in progress._all_instances), timeout=5000)
    wait_idle(qtbot, widget)
    timer.stop()
    assert model.encoded == 5  # the middle slice and its four neighbours
    assert sum(ticks_while_busy) >= 5  # the GUI thread kept running its timer while the encoder worked


def test_a_box_prompt_on_its_slice(open_volume, qtbot, monkeypatch):
    masks = install(monkeypatch, DiskMasks(radius=6))
    viewer, widget, _ = open_volume()
    go_to_slice(viewer, widget, qtbot, 4)
    boxes = viewer.add_shapes(name="boxes", scale=Z_SCALE, ndim=3)
    widget.form.shapes_choice.choose(boxes)
    boxes.add_rectangles(np.array([[4, 10, 12], [4, 10, 32], [4, 30, 32], [4, 30, 12]]))
    wait_idle(qtbot, widget)
    labels = viewer.layers["vol labels"]
    np.testing.assert_allclose(masks.calls[-1]["box"], [10, 12, 30, 32])
    assert masks.calls[-1]["z"] == 4
    np.testing.assert_array_equal(labels.data[4] == 1, disk(SHAPE[1:], (20, 22), 10))
    widget.form.clear_button.click()  # on an active Shapes layer napari's own X (remove vertex) applies
    wait_idle(qtbot, widget)
    assert len(boxes.data) == 0 and not labels.data.any()


def test_the_widget_makes_and_manages_its_own_box_layer(open_volume, qtbot, monkeypatch):
    masks = install(monkeypatch, DiskMasks(radius=6))
    viewer, widget, _ = open_volume()
    boxes = viewer.layers["vol boxes"]  # created with the prompt points, placed like the image
    assert widget.layers.shapes() is boxes and boxes.mode == "add_rectangle" and boxes.ndim == 3
    np.testing.assert_allclose(boxes.scale, Z_SCALE)
    assert viewer.layers.selection.active is widget.layers.points()  # clicks still go to the points
    go_to_slice(viewer, widget, qtbot, 4)

    viewer.layers.selection.active = boxes  # the user selects the box layer and drags a rectangle
    boxes.add_rectangles(np.array([[4, 10, 12], [4, 10, 32], [4, 30, 32], [4, 30, 12]]))
    wait_idle(qtbot, widget)
    labels = viewer.layers["vol labels"]
    np.testing.assert_allclose(masks.calls[-1]["box"], [10, 12, 30, 32])
    np.testing.assert_array_equal(labels.data[4] == 1, disk(SHAPE[1:], (20, 22), 10))
    names = [layer.name for layer in viewer.layers]
    assert names.index("vol labels") < names.index("vol boxes") < names.index("vol prompts")  # prompts on top

    press_key(viewer, "X")  # the widget's keys act on its own box layer too
    wait_idle(qtbot, widget)
    assert len(boxes.data) == 0 and not labels.data.any()
    boxes.add_rectangles(np.array([[4, 10, 12], [4, 10, 32], [4, 30, 32], [4, 30, 12]]))
    wait_idle(qtbot, widget)
    press_key(viewer, "C")
    assert (labels.data == 1).any() and widget.form.object_id.value() == 2 and len(boxes.data) == 0

    widget.form.shapes_choice.choose("(none)")  # boxes can be switched off...
    assert widget.layers.shapes() is None
    widget.form.shapes_choice.choose("(new)")  # ...and '(new)' finds the image's own layer again
    assert widget.layers.shapes() is boxes and len([ly for ly in viewer.layers if ly.name.endswith("boxes")]) == 1


def test_a_refused_action_is_told_once_and_shown_in_the_status(open_volume, qtbot, monkeypatch):
    install(monkeypatch, DiskMasks(radius=6))
    viewer, widget, _ = open_volume()
    widget.layers.points().add([3, 24, 28])
    wait_idle(qtbot, widget)
    go_to_slice(viewer, widget, qtbot, 5)  # nothing segmented on this slice
    start = notification_count()
    press_key(viewer, "Shift-S")
    messages = notifications_since(start)
    assert len(messages) == 1 and "empty on slice 5" in messages[0]
    assert "empty on slice 5" in widget.status.text() and not widget.jobs.propagation.running
