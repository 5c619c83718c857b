"""Refining an object already in the labels: the object as committed goes with the clicks (the engine's rule
decides how), and commit replaces it on that slice."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from napari.layers import Labels
from segment_support import DiskMasks, disk, install, wait_idle

from napari_msa import load_model
from napari_msa._widgets._hub import hub_for
from napari_msa._widgets.segment._labels_writer import LabelsWriter
from napari_msa.engine.prompts.geometry import clicked_object_box

SHAPE = (64, 80)


def open_segmenter(make_napari_viewer, qtbot, image: np.ndarray, labels: np.ndarray | None = None):
    """A viewer with 'img' (and 'img labels'), the widget from the manifest, and a tiny model."""
    viewer = make_napari_viewer()
    viewer.add_image(image, name="img")
    layer = None if labels is None else viewer.add_labels(labels.copy(), name="img labels")
    _, widget = viewer.window.add_plugin_dock_widget("napari-msa", "Segment (MSA)")
    torch.manual_seed(0)
    model = load_model("tiny")
    hub_for(viewer).set_model(model)
    wait_idle(qtbot, widget)
    return viewer, widget, model, layer


def existing_labels(volume: bool = False) -> np.ndarray:
    """Object 1: a large disk; object 2: a disk touching it; (in a volume: on slice 1 of 3)."""
    plane = np.zeros(SHAPE, np.uint8)
    plane[disk(SHAPE, (30, 30), 12)] = 1
    plane[disk(SHAPE, (30, 52), 8) & (plane == 0)] = 2
    if not volume:
        return plane
    out = np.zeros((3, *SHAPE), np.uint8)
    out[1] = plane
    out[2] = plane  # the object on another slice: refining slice 1 must leave it alone
    return out


def test_the_clicked_object_box_covers_the_object_and_positive_clicks_only():
    obj = np.zeros(SHAPE, bool)
    obj[20:30, 10:40] = True
    box = clicked_object_box(obj, np.array([[25.0, 50.0], [5.0, 5.0]]), np.array([1, 0]))
    # rows 20-29, cols 10-50 (the positive click), grown by 5 % (at least 2 px); the negative click adds nothing
    np.testing.assert_allclose(box, [18.0, 8.0, 31.0, 52.0])
    edge = np.zeros(SHAPE, bool)
    edge[0:10, 70:80] = True
    np.testing.assert_allclose(clicked_object_box(edge, np.zeros((0, 2)), np.zeros(0)), [0, 68, 11, 79])  # clipped
    assert clicked_object_box(np.zeros(SHAPE, bool), np.array([[5.0, 5.0]]), np.array([1])) is None


def test_a_replacing_preview_is_taken_back_exactly_and_its_commit_is_one_undo_step():
    original = existing_labels()
    layer = Labels(original.copy())
    writer = LabelsWriter(layer, volume=False)
    new = disk(SHAPE, (26, 26), 6)
    writer.set_preview(0, new, 1, replace=True)
    assert ((layer.data == 1) == new).all()  # the object's pixels outside the new mask show as background
    np.testing.assert_array_equal(layer.data == 2, original == 2)
    np.testing.assert_array_equal(writer.committed(0, 1), original == 1)  # the object as committed
    np.testing.assert_array_equal(writer.committed(0, 2), original == 2)
    writer.set_preview(0, disk(SHAPE, (34, 34), 5), 1, replace=True)  # a new answer for the same slice
    writer.clear()
    np.testing.assert_array_equal(layer.data, original)

    writer.set_preview(0, new, 1, replace=True)
    writer.commit({0: new}, 1, replace=True)
    expected = original.copy()
    expected[expected == 1] = 0
    expected[new & (expected == 0)] = 1
    np.testing.assert_array_equal(layer.data, expected)
    layer.undo()
    np.testing.assert_array_equal(layer.data, original)


@pytest.mark.gui
@pytest.mark.parametrize("volume", [False, True])
def test_refining_an_object_sends_its_box_previews_the_replacement_and_undo_restores_it(
        make_napari_viewer, qtbot, monkeypatch, volume):
    masks = install(monkeypatch, DiskMasks(radius=7))
    image = np.random.default_rng(0).random((3, *SHAPE) if volume else SHAPE, dtype=np.float32)
    original = existing_labels(volume)
    viewer, widget, _, labels = open_segmenter(make_napari_viewer, qtbot, image, original)
    widget.form.labels_choice.choose(labels)
    widget.form.object_id.setValue(1)
    widget.form.refine.setChecked(True)
    if volume:
        viewer.dims.set_current_step(0, 1)

    click = [30.0, 24.0]
    widget.layers.points().add([1.0, *click] if volume else click)
    wait_idle(qtbot, widget)
    plane = (lambda data: data[1]) if volume else (lambda data: data)
    np.testing.assert_array_equal(masks.calls[-1]["prior"], plane(original) == 1)  # the object as committed
    assert masks.calls[-1]["box"] is None  # the widget adds no prompt of its own: the engine's rule does
    new = disk(SHAPE, tuple(click), 7)
    np.testing.assert_array_equal(plane(labels.data) == 1, new)  # the preview shows the object replaced
    np.testing.assert_array_equal(labels.data == 2, original == 2)  # the other object untouched

    # refine off: the same click without the object's box, added to the object
    widget.form.refine.setChecked(False)
    wait_idle(qtbot, widget)
    assert masks.calls[-1]["prior"] is None
    np.testing.assert_array_equal(plane(labels.data) == 1, (plane(original) == 1) | (new & (plane(original) == 0)))
    widget.form.refine.setChecked(True)
    wait_idle(qtbot, widget)
    assert masks.calls[-1]["prior"] is not None

    widget.commit()
    assert widget.form.object_id.value() == 1 and "Refined object 1" in widget.status.text()  # still fixing it
    expected = original.copy()
    plane(expected)[plane(expected) == 1] = 0
    plane(expected)[new & (plane(expected) == 0)] = 1
    np.testing.assert_array_equal(labels.data, expected)  # replaced on the slice clicked, nowhere else
    labels.undo()
    np.testing.assert_array_equal(labels.data, original)
    assert "refinement of object 1 was undone" in widget.status.text() and widget.form.object_id.value() == 1


@pytest.mark.gui
def test_the_widget_sends_every_click_and_n_cycles_the_masks_of_a_lone_click(make_napari_viewer, qtbot,
                                                                              monkeypatch):
    masks = install(monkeypatch, DiskMasks(radius=7))
    viewer, widget, model, _ = open_segmenter(make_napari_viewer, qtbot,
                                              np.random.default_rng(0).random(SHAPE, dtype=np.float32))
    points = widget.layers.points()
    points.add([30.0, 30.0])
    wait_idle(qtbot, widget)
    assert masks.calls[-1]["box"] is None and masks.calls[-1]["candidate"] == 0
    assert "mask 1 of 3" in widget.status.text()
    for expected in (1, 2, 0):  # N: the model's next mask for this click, round and round
        widget.next_mask()
        wait_idle(qtbot, widget)
        assert masks.calls[-1]["candidate"] == expected
    widget.next_mask()
    wait_idle(qtbot, widget)
    assert "mask 2 of 3" in widget.status.text()
    widget.toggle_positive()
    points.add([30.0, 34.0])  # a negative correction click: the interaction goes on from the mask chosen
    wait_idle(qtbot, widget)
    call = masks.calls[-1]
    assert call["box"] is None and call["prior"] is None and call["candidate"] == 1
    np.testing.assert_array_equal(call["points"], [[30, 30], [30, 34]])
    np.testing.assert_array_equal(call["labels"], [1, 0])
    n = len(masks.calls)
    widget.next_mask()  # two clicks: one mask; N says so and predicts nothing
    wait_idle(qtbot, widget)
    assert len(masks.calls) == n and "single click" in widget.status.text()


def test_each_model_has_its_interaction_rule():
    assert load_model("tiny").interaction.name == "logits"  # SAM's own protocol
    assert load_model("demo").interaction.name == "clicks"
