"""The Segment (MSA) dock widget in a real napari viewer (Xvfb): prompts → worker → labels, undo, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_support import DiskMasks, disk, install, notification_count, notifications_since, press_key, wait_idle

from napari_msa import Session, load_model
from napari_msa._widgets._hub import hub_for
from napari_msa._widgets.segment.segment_widget import SegmentWidget
from napari_msa.engine import DEMO_MODEL_FILE
from napari_msa.engine.files.formats import save_model_file

SCALE = (2.0, 0.5)
TRANSLATE = (10.0, -5.0)


@pytest.fixture
def open_segmenter(make_napari_viewer, qtbot):
    """A viewer with an image and the widget opened through the manifest; waits for workers at the end."""
    opened = []

    def open_(image: np.ndarray | None = None, model: str | None = "tiny", **image_kwargs):
        viewer = make_napari_viewer()
        if image is not None:
            viewer.add_image(image, name="img", **image_kwargs)
        _, widget = viewer.window.add_plugin_dock_widget("napari-msa", "Segment (MSA)")
        opened.append(widget)
        if model is not None:
            torch.manual_seed(0)
            hub_for(viewer).set_model(load_model(model))
        wait_idle(qtbot, widget)
        return viewer, widget

    yield open_
    for widget in opened:
        widget.jobs.prefetcher.stop()
        widget.jobs.propagation.cancel()
        wait_idle(qtbot, widget)


def image2d(shape=(64, 80)) -> np.ndarray:
    return np.random.default_rng(0).random(shape, dtype=np.float32)


def test_manifest_widget_opens_with_its_layers(open_segmenter):
    viewer, widget = open_segmenter(image2d(), model=None, scale=SCALE)
    assert isinstance(widget, SegmentWidget)
    points = viewer.layers["img prompts"]
    assert widget.layers.points() == points and viewer.layers.selection.active == points
    np.testing.assert_allclose(points.scale, SCALE)
    assert points.mode == "add"
    assert widget.model_panel.combo.currentText() == "litemedsam"  # the default model is preselected
    assert widget.model_panel.combo.model().item(0).isEnabled()
    demo_item = widget.model_panel.combo.model().item(1)
    if DEMO_MODEL_FILE.is_file():
        assert demo_item.isEnabled()
    else:
        assert not demo_item.isEnabled() and "not available" in demo_item.text()
        assert "demo model is not available" in widget.model_panel.label.text()
    assert "loads by itself on your first click" in widget.model_panel.label.text()


def test_positive_click_in_world_coordinates_paints_preview(open_segmenter, qtbot, monkeypatch):
    masks = install(monkeypatch, DiskMasks(radius=5))
    viewer, widget = open_segmenter(image2d(), scale=SCALE, translate=TRANSLATE)
    # A prompt layer with its own (identity) transform: the point is given in world coordinates.
    world = viewer.add_points(np.empty((0, 2)), name="world clicks")
    widget.form.points_choice.choose(world)
    pixel = (20, 30)
    world.add([TRANSLATE[0] + SCALE[0] * pixel[0], TRANSLATE[1] + SCALE[1] * pixel[1]])
    wait_idle(qtbot, widget)
    labels = viewer.layers["img labels"]
    np.testing.assert_allclose(labels.scale, SCALE)
    np.testing.assert_array_equal(labels.data == 1, disk((64, 80), pixel, 5))
    assert set(np.unique(labels.data)) == {0, 1}
    np.testing.assert_allclose(masks.calls[-1]["points"], [pixel])


def test_negative_point_removes_area(open_segmenter, qtbot, monkeypatch):
    install(monkeypatch, DiskMasks(radius=8))
    viewer, widget = open_segmenter(image2d(), scale=SCALE)
    points = widget.layers.points()
    points.add([32, 40])
    wait_idle(qtbot, widget)
    labels = viewer.layers["img labels"]
    before = int((labels.data == 1).sum())
    press_key(viewer, "T")
    points.add([32, 46])
    wait_idle(qtbot, widget)
    assert points.features["positive"].tolist() == [True, False]
    after = labels.data == 1
    assert after.sum() < before
    assert not after[32, 46] and after[32, 40]
    np.testing.assert_array_equal(after, disk((64, 80), (32, 40), 8) & ~disk((64, 80), (32, 46), 4))


def test_t_toggles_sign_of_new_points_and_their_colour(open_segmenter):
    viewer, widget = open_segmenter(image2d(), model=None)
    points = widget.layers.points()
    assert widget.form.sign_button.text().startswith("positive")
    press_key(viewer, "T")
    assert widget.form.sign_button.text().startswith("negative")
    points.add([5, 5])
    press_key(viewer, "T")
    points.add([6, 6])
    assert points.features["positive"].tolist() == [False, True]
    np.testing.assert_allclose(points.face_color[:, :3], [[1, 0, 0], [0, 1, 0]])
    # T also works when another layer (here the image) is active: it is bound on the viewer too.
    viewer.layers.selection.active = viewer.layers["img"]
    press_key(viewer, "T")
    assert widget.form.sign_button.text().startswith("negative")


def test_commit_moves_to_new_id_keeps_objects_and_undo_restores(open_segmenter, qtbot, monkeypatch):
    install(monkeypatch, DiskMasks(radius=6))
    viewer, widget = open_segmenter(image2d())
    points = widget.layers.points()
    points.add([20, 20])
    wait_idle(qtbot, widget)
    press_key(viewer, "C")
    labels = viewer.layers["img labels"]
    first = disk((64, 80), (20, 20), 6)
    np.testing.assert_array_equal(labels.data == 1, first)
    assert widget.form.object_id.value() == 2 and len(points.data) == 0

    # The second object overlaps the first: the first keeps its pixels (overwrite is off), and the status says so.
    points.add([20, 28])
    wait_idle(qtbot, widget)
    assert "lie on other objects" in widget.status.text() and "overwrite other objects" in widget.status.text()
    press_key(viewer, "C")
    second = disk((64, 80), (20, 28), 6)
    np.testing.assert_array_equal(labels.data == 1, first)
    np.testing.assert_array_equal(labels.data == 2, second & ~first)
    assert widget.form.object_id.value() == 3

    # With overwrite ticked the third object takes its whole disk.
    widget.form.overwrite.setChecked(True)
    points.add([20, 24])
    wait_idle(qtbot, widget)
    press_key(viewer, "C")
    third = disk((64, 80), (20, 24), 6)
    np.testing.assert_array_equal(labels.data == 3, third)

    labels.undo()
    np.testing.assert_array_equal(labels.data == 2, second & ~first)
    assert not (labels.data == 3).any()
    labels.undo()
    np.testing.assert_array_equal(labels.data == 1, first)
    assert not (labels.data == 2).any()
    labels.undo()
    assert not labels.data.any()


def test_clear_drops_prompts_and_preview_but_not_committed_objects(open_segmenter, qtbot, monkeypatch):
    install(monkeypatch, DiskMasks(radius=6))
    viewer, widget = open_segmenter(image2d())
    points = widget.layers.points()
    points.add([20, 20])
    wait_idle(qtbot, widget)
    press_key(viewer, "C")
    labels = viewer.layers["img labels"]
    committed = labels.data.copy()
    points.add([40, 60])
    wait_idle(qtbot, widget)
    assert (labels.data == 2).any()
    press_key(viewer, "X")
    wait_idle(qtbot, widget)
    assert len(points.data) == 0
    np.testing.assert_array_equal(labels.data, committed)


def test_last_of_many_rapid_clicks_wins(open_segmenter, qtbot, monkeypatch):
    masks = install(monkeypatch, DiskMasks(radius=4, hold_first=True))
    viewer, widget = open_segmenter(image2d())
    points = widget.layers.points()
    clicks = [(10 + 5 * i, 10 + 7 * i) for i in range(8)]
    points.add(clicks[0])
    qtbot.waitUntil(masks.first_started.is_set, timeout=10_000)  # the first prediction is in flight
    for click in clicks[1:]:
        points.add(click)
        qtbot.wait(5)
    masks.release.set()
    wait_idle(qtbot, widget)
    labels = viewer.layers["img labels"]
    np.testing.assert_array_equal(labels.data == 1, masks.expected((64, 80), clicks, [1] * len(clicks)))
    assert widget.jobs.predictions.dropped == 1  # the first result came back stale and was not painted
    assert len(masks.calls) == 2  # the burst was answered by one more prediction, with all the clicks
    assert len(masks.calls[-1]["points"]) == len(clicks)


def test_a_point_deleted_while_its_prediction_runs_is_never_painted(open_segmenter, qtbot, monkeypatch):
    masks = install(monkeypatch, DiskMasks(radius=5))
    viewer, widget = open_segmenter(image2d())
    points = widget.layers.points()
    points.add([20, 20])
    wait_idle(qtbot, widget)
    masks.hold_first, masks.calls = True, []
    points.add([40, 60])
    qtbot.waitUntil(masks.first_started.is_set, timeout=10_000)
    points.selected_data = {1}
    points.remove_selected()  # back to the prompts whose preview is already shown
    masks.release.set()
    wait_idle(qtbot, widget)
    np.testing.assert_array_equal(viewer.layers["img labels"].data == 1, disk((64, 80), (20, 20), 5))
    assert widget.jobs.predictions.dropped == 1 and len(masks.calls) == 1


def test_worker_error_is_reported_and_labels_unchanged(open_segmenter, qtbot, monkeypatch):
    masks = install(monkeypatch, DiskMasks(radius=6))
    viewer, widget = open_segmenter(image2d())
    points = widget.layers.points()
    points.add([20, 20])
    wait_idle(qtbot, widget)
    press_key(viewer, "C")
    labels = viewer.layers["img labels"]
    before = labels.data.copy()
    for error, words in ((RuntimeError("decoder exploded"), "prediction failed"),
                         (MemoryError(), "out of memory")):
        masks.error = error
        start = notification_count()
        points.add([40, 60 - len(points.data)])
        wait_idle(qtbot, widget)
        messages = notifications_since(start)
        assert any(words in m.lower() and "nothing was written" in m for m in messages), messages
        np.testing.assert_array_equal(labels.data, before)


def test_layer_removed_while_predicting_is_reported(open_segmenter, qtbot, monkeypatch):
    masks = install(monkeypatch, DiskMasks(radius=6, hold_first=True))
    viewer, widget = open_segmenter(image2d())
    points = widget.layers.points()
    points.add([20, 20])
    qtbot.waitUntil(masks.first_started.is_set, timeout=10_000)
    start = notification_count()
    viewer.layers.remove("img labels")
    masks.release.set()
    wait_idle(qtbot, widget)
    assert any("removed" in m and "no labels changed" in m for m in notifications_since(start))
    assert "img labels" not in viewer.layers
    # The widget recovers: the next click creates a fresh labels layer.
    points.add([40, 40])
    wait_idle(qtbot, widget)
    np.testing.assert_array_equal(viewer.layers["img labels"].data == 1,
                                  masks.expected((64, 80), [(20, 20), (40, 40)], [1, 1]))


def test_first_click_loads_the_default_model_then_bad_input_is_notified(open_segmenter, qtbot, make_napari_viewer):
    viewer, widget = open_segmenter(image2d(), model=None)
    points = widget.layers.points()
    start = notification_count()
    points.add([20, 20])  # no model yet: the preselected default loads on a worker, then answers the click
    qtbot.waitUntil(lambda: hub_for(viewer).model is not None, timeout=120_000)
    wait_idle(qtbot, widget)
    assert any("Loading litemedsam for your first prompt" in m for m in notifications_since(start))
    assert hub_for(viewer).model.name == "litemedsam"
    assert "img labels" in viewer.layers  # the click was answered with a preview
    points.data = np.empty((0, 2))
    wait_idle(qtbot, widget)
    viewer.layers.remove("img labels")

    hub_for(viewer).set_model(load_model("tiny"))
    points.add([20, 20])
    wait_idle(qtbot, widget)
    viewer.layers.remove("img labels")
    wrong = viewer.add_labels(np.zeros((10, 10), dtype=np.uint8), name="wrong")
    widget.form.labels_choice.choose(wrong)
    start = notification_count()
    widget.editor.update()
    wait_idle(qtbot, widget)
    assert any("has shape (10, 10)" in m for m in notifications_since(start))
    assert not wrong.data.any()

    start = notification_count()
    widget.editor.update()  # the same problem again: not notified again
    wait_idle(qtbot, widget)
    assert not notifications_since(start)
    assert "has shape (10, 10)" in widget.status.text()


def test_preview_with_the_real_tiny_model_matches_the_session(open_segmenter, qtbot):
    image = np.zeros((64, 64), np.float32)
    image[16:48, 20:44] = 1.0
    viewer, widget = open_segmenter(image)
    reference = Session(widget.jobs.session.model)
    reference.set_image(image)
    click = (32, 32)
    expected, _ = reference.predict(points=[click], labels=[1])
    widget.layers.points().add(click)
    wait_idle(qtbot, widget)
    np.testing.assert_array_equal(viewer.layers["img labels"].data == 1, expected)


def test_hub_model_change_rebuilds_session_and_keeps_prompts(open_segmenter, qtbot, monkeypatch):
    masks = install(monkeypatch, DiskMasks(radius=6))
    viewer, widget = open_segmenter(image2d())
    widget.layers.points().add([30, 30])
    wait_idle(qtbot, widget)
    calls = len(masks.calls)
    tuned = load_model("tiny")
    tuned.adapter_source = "/tmp/tuned_adapter.safetensors"
    hub_for(viewer).set_model(tuned)  # what the Tune widget does when tuning finishes
    wait_idle(qtbot, widget)
    assert widget.jobs.session.model is tuned
    assert "tuned_adapter.safetensors" in widget.model_panel.label.text()
    assert len(masks.calls) == calls + 1  # the prompted slice was predicted again with the new model
    assert len(widget.layers.points().data) == 1
    assert (viewer.layers["img labels"].data == 1).sum() == disk((64, 80), (30, 30), 6).sum()


def test_load_model_from_file_on_a_worker(open_segmenter, qtbot, tmp_path):
    viewer, widget = open_segmenter(image2d(), model=None)
    path = save_model_file(load_model("tiny").sam, tmp_path / "tiny_model.safetensors", description="test")
    widget.model_panel.combo.setCurrentText("vit_b")
    widget.model_panel.checkpoint.edit.setText(str(path))
    widget.model_panel.load_button.click()
    wait_idle(qtbot, widget)
    model = hub_for(viewer).model
    assert model is not None and model.source == str(path)
    assert widget.jobs.session.model is model
    assert model.describe() in widget.model_panel.label.text()

    widget.model_panel.checkpoint.edit.setText(str(tmp_path / "missing.pth"))
    start = notification_count()
    widget.model_panel.load_button.click()
    wait_idle(qtbot, widget)
    assert any("missing.pth" in m for m in notifications_since(start))
    assert hub_for(viewer).model is model  # the failed load left the working model in place


def test_closing_the_widget_releases_keys_and_viewer_events(open_segmenter, qtbot):
    viewer, widget = open_segmenter(image2d(), model=None)
    points = widget.layers.points()
    assert any(getattr(f, "__name__", "").startswith("msa_") for f in viewer.keymap.values())
    assert any(getattr(f, "__name__", "").startswith("msa_") for f in viewer.layers["img boxes"].keymap.values())
    viewer.window.remove_dock_widget(widget)  # napari detaches the widget; it must let go of the viewer
    assert not any(getattr(f, "__name__", "").startswith("msa_") for f in viewer.keymap.values())
    assert not any(getattr(f, "__name__", "").startswith("msa_") for f in points.keymap.values())
    assert not any(getattr(f, "__name__", "").startswith("msa_") for f in viewer.layers["img boxes"].keymap.values())
    image_choice = [widget.form.image_choice.itemText(i) for i in range(widget.form.image_choice.count())]
    viewer.add_image(image2d(), name="after")
    points.add([5, 5])
    assert [widget.form.image_choice.itemText(i) for i in range(widget.form.image_choice.count())] == image_choice
    assert widget.idle and "img labels" not in viewer.layers
    widget.deleteLater()


def test_switching_the_image_takes_the_uncommitted_preview_back(open_segmenter, qtbot, monkeypatch):
    install(monkeypatch, DiskMasks(radius=6))
    viewer, widget = open_segmenter(image2d())
    viewer.add_image(image2d((40, 50)), name="other")
    widget.form.image_choice.choose(viewer.layers["img"])
    wait_idle(qtbot, widget)
    widget.layers.points().add([20, 20])
    wait_idle(qtbot, widget)
    labels = viewer.layers["img labels"]
    assert (labels.data == 1).any()  # the preview is shown
    history = len(labels._undo_history)

    widget.form.image_choice.choose(viewer.layers["other"])
    wait_idle(qtbot, widget)
    assert not labels.data.any()  # the preview was taken back, not baked into the old labels
    assert len(labels._undo_history) == history  # and no undo step was made
    assert widget.layers.points() is viewer.layers["other prompts"]

    widget.form.image_choice.choose(viewer.layers["img"])  # back: the prompts are still there, so is their preview
    wait_idle(qtbot, widget)
    assert widget.form.object_id.value() == 1  # the id did not advance past an object that was never committed
    np.testing.assert_array_equal(labels.data == 1, disk((64, 80), (20, 20), 6))
    widget.clear()
    assert not labels.data.any()


def test_a_point_outside_the_image_is_ignored_once_and_the_others_still_segment(open_segmenter, qtbot, monkeypatch):
    masks = install(monkeypatch, DiskMasks(radius=6))
    viewer, widget = open_segmenter(image2d())
    points = widget.layers.points()
    points.add([20, 20])
    wait_idle(qtbot, widget)
    start = notification_count()
    points.add([200, 5])  # outside the 64×80 image
    wait_idle(qtbot, widget)
    messages = notifications_since(start)
    assert len(messages) == 1 and "outside 'img'" in messages[0] and "ignored" in messages[0], messages
    assert "pixel (200, 5)" in messages[0]
    assert "outside 'img'" in widget.status.text()

    points.add([40, 60])  # later clicks are answered, with the point outside left out, and not told again
    wait_idle(qtbot, widget)
    assert notifications_since(start) == messages
    labels = viewer.layers["img labels"]
    np.testing.assert_array_equal(labels.data == 1, masks.expected((64, 80), [(20, 20), (40, 60)], [1, 1]))
    np.testing.assert_allclose(masks.calls[-1]["points"], [(20, 20), (40, 60)])
    assert "1 prompt outside the image ignored" in widget.status.text()

    points.selected_data = {1}
    points.remove_selected()  # deleted: the note goes, and a new point outside would be told again
    wait_idle(qtbot, widget)
    assert "outside" not in widget.status.text()
    points.add([5, 500])
    wait_idle(qtbot, widget)
    assert len(notifications_since(start)) == 2


def test_status_follows_undo_and_problems_are_told_once_per_click(open_segmenter, qtbot, monkeypatch):
    masks = install(monkeypatch, DiskMasks(radius=6))
    viewer, widget = open_segmenter(image2d())
    points = widget.layers.points()
    points.add([20, 20])
    wait_idle(qtbot, widget)
    assert widget.status.text().startswith("Object 1") and widget.form.activity.text() == ""
    press_key(viewer, "C")
    assert "Committed object 1" in widget.status.text()
    labels = viewer.layers["img labels"]
    labels.undo()  # Ctrl+Z on the labels layer: the status must not keep saying it is committed
    assert "Committed" not in widget.status.text()
    assert "Object 1 was undone" in widget.status.text() and widget.form.object_id.value() == 1

    masks.error = RuntimeError("decoder exploded")
    start = notification_count()
    points.add([40, 60])  # one click: data and features events, one notification
    wait_idle(qtbot, widget)
    points.add([30, 60])  # the same failure again: the status says it, no second notification
    wait_idle(qtbot, widget)
    messages = notifications_since(start)
    assert len(messages) == 1 and "decoder exploded" in messages[0], messages
    assert "decoder exploded" in widget.status.text()
    masks.error = None
    points.add([30, 30])
    wait_idle(qtbot, widget)
    assert widget.status.text().startswith("Object 1")  # the result replaces the error once it works again


def _luminance(hex_colour: str) -> float:
    channels = [int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def test_sign_is_readable_long_names_are_elided_and_model_errors_name_the_fields(open_segmenter, qtbot):
    from napari_msa._widgets.segment.segment_widget import SIGN_COLORS

    long_name = "ct_abdomen_patient_0042_portal_venous_phase"
    viewer, widget = open_segmenter(image2d(), model=None)
    viewer.add_image(image2d(), name=long_name)
    widget.form.image_choice.choose(viewer.layers[long_name])
    wait_idle(qtbot, widget)

    # the sign of new points: the points' colour as background, dark text on it, contrast >= 4.5:1 (WCAG AA)
    for positive in (True, False):
        if L_new_points_positive(widget) != positive:
            press_key(viewer, "T")
        background, text = SIGN_COLORS[positive]
        style = widget.form.sign_button.styleSheet()
        assert background in style and f"color: {text}" in style
        lighter, darker = sorted((_luminance(background), _luminance(text)), reverse=True)
        assert (lighter + 0.05) / (darker + 0.05) >= 4.5
        picture = widget.form.sign_button.grab().toImage()
        assert picture.pixelColor(picture.width() // 2, 3).name() == background  # the style is what is painted

    # long names: cut in the middle, so Points still reads '… prompts' and not like the image; full text in tooltips
    form = widget.form
    for combo in (form.image_choice, form.points_choice, form.shapes_choice, form.labels_choice):
        combo.setFixedWidth(170)
    points_text = widget.form.points_choice.displayed_text()
    assert "…" in points_text and points_text.endswith("prompts"), points_text
    assert widget.form.shapes_choice.displayed_text().endswith("boxes")
    assert widget.form.image_choice.displayed_text() != points_text
    assert widget.form.points_choice.toolTip().startswith(f"{long_name} prompts")
    index = widget.form.points_choice.currentIndex()
    assert widget.form.points_choice.itemData(index, 3) == f"{long_name} prompts"  # 3: Qt's ToolTipRole

    # a model error names the widget's fields, not command-line flags
    widget.model_panel.combo.setCurrentText("vit_b")
    widget.model_panel.checkpoint.edit.setText("")
    start = notification_count()
    widget.model_panel.load_button.click()
    wait_idle(qtbot, widget)
    messages = notifications_since(start)
    assert any("Checkpoint field" in m for m in messages), messages
    assert not any("--" in m or "=PATH" in m for m in messages), messages
    assert "Checkpoint field" in widget.status.text()


def L_new_points_positive(widget) -> bool:  # noqa: N802 - mirrors the widget's layer helper
    from napari_msa._widgets._layers import new_points_positive

    return new_points_positive(widget.layers.points())


def click_canvas_center(viewer, qtbot) -> None:
    """A real left click (Qt mouse press and release) at the centre of napari's canvas."""
    from qtpy.QtCore import QPoint, Qt

    canvas = viewer.window._qt_viewer.canvas.native
    center = QPoint(canvas.width() // 2, canvas.height() // 2)
    qtbot.mousePress(canvas, Qt.MouseButton.LeftButton, pos=center)
    qtbot.mouseRelease(canvas, Qt.MouseButton.LeftButton, pos=center)


@pytest.mark.parametrize("widget_first", [True, False])
def test_first_click_after_opening_a_sample_is_a_prompt(make_napari_viewer, qtbot, monkeypatch, widget_first):
    """File > Open Sample adds the CT slice and then its reference masks; napari selects the last layer added (in
    pan/zoom). The prompts layer must end up active in add mode, so the user's first click on the canvas makes a
    prompt and a preview, and the status line says what to do (not 'Open or choose an image layer')."""
    masks = install(monkeypatch, DiskMasks(radius=6))
    viewer = make_napari_viewer(show=True)
    if widget_first:
        _, widget = viewer.window.add_plugin_dock_widget("napari-msa", "Segment (MSA)")
        viewer.open_sample("napari-msa", "ct_slice")
    else:
        viewer.open_sample("napari-msa", "ct_slice")
        _, widget = viewer.window.add_plugin_dock_widget("napari-msa", "Segment (MSA)")
    hub_for(viewer).set_model(load_model("tiny"))
    points = viewer.layers["CT slice (HU) prompts"]
    qtbot.waitUntil(lambda: viewer.layers.selection.active is points)
    assert points.mode == "add"
    assert widget.form.image_choice.currentText() == "CT slice (HU)"
    assert "click on an object in 'CT slice (HU)'" in widget.status.text()
    viewer.reset_view()
    qtbot.wait(50)
    click_canvas_center(viewer, qtbot)
    qtbot.waitUntil(lambda: len(points.data) == 1)
    image = viewer.layers["CT slice (HU)"]
    np.testing.assert_allclose(points.data[0], np.array(image.data.shape) / 2, atol=3)  # where the user clicked
    wait_idle(qtbot, widget)
    assert masks.calls and len(masks.calls[-1]["points"]) == 1
    assert (viewer.layers["CT slice (HU) labels"].data == 1).sum() > 0  # the preview is painted
    widget.jobs.prefetcher.stop()
    wait_idle(qtbot, widget)


def test_ctrl_z_on_the_prompts_layer_undoes_and_redoes_the_commit(open_segmenter, qtbot, monkeypatch):
    """Ctrl+Z where the hand is: after C the prompts layer is still the active one; Ctrl+Z there (a real key
    event through napari's canvas) takes the commit back, Ctrl+Shift+Z brings it back, and a preview shown
    meanwhile is neither undone nor written."""
    from qtpy.QtCore import Qt

    install(monkeypatch, DiskMasks(radius=6))
    viewer, widget = open_segmenter(image2d())
    points = widget.layers.points()
    points.add([20, 20])
    wait_idle(qtbot, widget)
    press_key(viewer, "C")
    labels = viewer.layers["img labels"]
    committed = labels.data.copy()
    assert (committed == 1).sum() > 0 and widget.form.object_id.value() == 2
    assert viewer.layers.selection.active is points

    canvas = viewer.window._qt_viewer.canvas.native
    ctrl, shift = Qt.KeyboardModifier.ControlModifier, Qt.KeyboardModifier.ShiftModifier
    qtbot.keyClick(canvas, Qt.Key.Key_Z, ctrl)
    assert not labels.data.any()
    assert "Object 1 was undone" in widget.status.text() and widget.form.object_id.value() == 1
    qtbot.keyClick(canvas, Qt.Key.Key_Z, ctrl | shift)
    np.testing.assert_array_equal(labels.data, committed)
    assert widget.form.object_id.value() == 2 and "Object 1 is back" in widget.status.text()

    points.add([45, 60])  # a new object's preview is shown while the user undoes the commit before it
    wait_idle(qtbot, widget)
    preview = labels.data == 2
    assert preview.sum() > 0
    qtbot.keyClick(canvas, Qt.Key.Key_Z, ctrl)
    assert not (labels.data == 1).any()  # the commit is undone
    np.testing.assert_array_equal(labels.data == 2, preview)  # the preview is still shown, unchanged
    qtbot.keyClick(canvas, Qt.Key.Key_Z, ctrl | shift)
    np.testing.assert_array_equal(labels.data == 1, committed == 1)
    press_key(viewer, "X")  # clearing the preview leaves exactly the committed object
    np.testing.assert_array_equal(labels.data, committed)


def test_status_names_the_object_after_a_manual_id_change(open_segmenter, qtbot, monkeypatch):
    install(monkeypatch, DiskMasks(radius=6))
    viewer, widget = open_segmenter(image2d())
    widget.layers.points().add([20, 20])
    wait_idle(qtbot, widget)
    press_key(viewer, "C")
    assert "now segmenting object 2" in widget.status.text()
    widget.form.object_id.setValue(7)
    assert widget.status.text() == "Segmenting object 7."
    widget.form.object_id.setValue(1)  # an object that exists: the status says what a click will do to it
    assert widget.status.text().startswith("Segmenting object 1. It is already in the labels")


def test_the_chosen_model_loads_as_soon_as_an_image_is_there(make_napari_viewer, qtbot, monkeypatch):
    """The first click must not wait for the model: opening an image starts loading it on a worker."""
    from napari_msa._widgets.segment import segment_widget

    monkeypatch.setattr(segment_widget, "PRELOAD", True)
    if not DEMO_MODEL_FILE.is_file():
        pytest.skip("the demo model file is not installed")
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-msa", "Segment (MSA)")
    widget.model_panel.combo.setCurrentText("demo")  # small: loads in a second
    assert widget.hub.model is None and not widget.model_panel.loading  # no image yet: nothing loads
    viewer.add_image(image2d(), name="img")
    assert widget.model_panel.loading and "model is loading" in widget.status.text()
    qtbot.waitUntil(lambda: widget.hub.model is not None, timeout=60_000)
    assert widget.hub.model.is_demo
    wait_idle(qtbot, widget)
    assert widget.status.text().startswith("Ready: click on an object in 'img'")
    widget.jobs.prefetcher.stop()
    wait_idle(qtbot, widget)
