"""The Tune (MSA) dock widget in a real napari viewer (Xvfb): layers → worker → tuned model in the hub."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tuning_support import blob_task

from napari_msa import Session, load_model
from napari_msa._widgets._hub import hub_for
from napari_msa._widgets.tune import _curve
from napari_msa._widgets.tune import tune_widget as tw

SIZE = 128


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def tuner(make_napari_viewer, qtbot):
    """A viewer with blobs and their labels, a tiny model in the hub, and the Tune widget from the manifest."""
    opened = []

    def open_(with_model: bool = True):
        viewer = make_napari_viewer()
        images, labels = blob_task(6, size=48)
        viewer.add_image(images, name="img")
        viewer.add_labels(labels, name="annotations")
        model = None
        if with_model:
            torch.manual_seed(0)
            model = load_model("tiny", device="cpu", image_size=SIZE)
            hub_for(viewer).set_model(model)
        _, widget = viewer.window.add_plugin_dock_widget("napari-msa", "Tune (MSA)")
        opened.append(widget)
        return viewer, widget, model

    yield open_
    for widget in opened:
        widget.cancel()
        qtbot.waitUntil(lambda w=widget: not w.run.running and w._save_worker is None, timeout=60_000)


def predict_logits(model, image: np.ndarray) -> np.ndarray:
    session = Session(model)
    session.set_image(image)
    session.predict(points=[(2, 24, 24)], labels=[1])
    return session.last_logits


def test_tunes_on_layers_and_segment_uses_the_tuned_model(tuner, qtbot, tmp_path):
    viewer, widget, old = tuner()
    _, segment = viewer.window.add_plugin_dock_widget("napari-msa", "Segment (MSA)")
    assert isinstance(widget, tw.TuneWidget)
    assert widget.image_combo.layer() is viewer.layers["img"]
    assert widget.labels_combo.layer() is viewer.layers["annotations"]
    old_state = {k: v.clone() for k, v in old.trainable_state().items()}
    image = viewer.layers["img"].data
    before = predict_logits(old, image)

    widget.steps.setValue(40)  # the tiny random model's held-out Dice first rises at ~step 25
    widget.lr.setValue(0.003)
    widget.val_share.setValue(0.34)
    widget.train_what.setCurrentText("adapters + decoder")
    widget.norm_combo.setCurrentText("limits")  # the layer's contrast limits, kept by the tuned model
    widget.start_button.click()
    assert widget.run.running and not widget.start_button.isEnabled() and widget.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: not widget.run.running, timeout=120_000)

    hub = hub_for(viewer)
    assert widget.result is not None and hub.model is widget.result.model and hub.model is not old
    qtbot.waitUntil(lambda: segment.jobs.session is not None and segment.jobs.session.model is hub.model,
                    timeout=10_000)
    after = predict_logits(hub.model, image)
    assert np.abs(after - before).max() > 0.1  # segmentation now answers with the tuned weights
    assert all(torch.equal(v, old_state[k]) for k, v in old.trainable_state().items())  # old model untouched
    limits = tuple(float(v) for v in viewer.layers["img"].contrast_limits)
    assert hub.model.normalization.preset == "limits" and hub.model.normalization.limits == limits

    steps = widget.result.summary.steps_done
    assert widget.progress.value() == widget.progress.maximum() == 40
    assert [s for s, _ in widget.curve.loss] == list(range(1, steps + 1)) and len(widget.curve.dice) >= 2
    assert "held-out Dice" in widget.status.text() and widget.save_button.isEnabled()
    # the per-label table (blob_task's ids 1 and 2) and the choice to keep or discard
    table = widget.results.text()
    assert not widget.results.isHidden() and "label 1" in table and "label 2" in table and "all 4 objects" in table
    assert not widget.keep_button.isHidden() and not widget.discard_button.isHidden()
    widget.keep_button.click()
    assert widget.keep_button.isHidden() and hub.model is widget.result.model and "Kept" in widget.status.text()
    picture = widget.curve.grab().toImage()  # the live curve paints both lines
    colours = {picture.pixelColor(x, y).name() for x in range(picture.width()) for y in range(20, picture.height())}
    assert _curve.DICE_COLOR.name() in colours and _curve.LOSS_COLOR.name() in colours

    assert "inherit" not in table  # Qt draws 'color:inherit' black on napari's dark grey
    assert segment.model_panel.adapter.edit.placeholderText() == "tuned in this session (not saved)"
    path = tmp_path / "tuned.safetensors"
    widget.save_adapter(path)
    qtbot.waitUntil(lambda: path.is_file() and widget._save_worker is None, timeout=30_000)
    assert "saved" in widget.status.text()
    # Segment's Adapter field names the file
    qtbot.waitUntil(lambda: segment.model_panel.adapter.edit.text() == str(path))
    assert segment.jobs.session.model is hub.model  # the same weights: the session (and its embeddings) stay
    reloaded = old.clone()
    reloaded.apply_adapter(path)
    np.testing.assert_allclose(predict_logits(reloaded, image), after, atol=1e-5)


def test_discard_goes_back_to_the_model_tuning_started_from(tuner, qtbot):
    viewer, widget, old = tuner()
    viewer.layers["annotations"].metadata["label_names"] = {1: "disc", 2: "other disc"}
    widget.steps.setValue(40)
    widget.lr.setValue(0.003)
    widget.val_share.setValue(0.34)
    widget.train_what.setCurrentText("adapters + decoder")
    widget.start_button.click()
    qtbot.waitUntil(lambda: not widget.run.running, timeout=120_000)
    hub = hub_for(viewer)
    assert "disc" in widget.results.text() and "label 1" not in widget.results.text()  # the layer's names
    assert hub.model is widget.result.model is not old
    widget.discard_button.click()
    assert hub.model is old and widget.result is None and not widget.save_button.isEnabled()
    assert "Discarded" in widget.status.text() and widget.discard_button.isHidden()


def test_results_table_marks_a_label_that_got_worse():
    from napari_msa.engine.tuning.tune_types import DiceChange, TuneConfig, TuneSummary

    summary = TuneSummary(config=TuneConfig(), model="tiny", image_size=48, n_slices=2, n_train_objects=2,
                          n_val_objects=2, split="slice", steps_done=4, stopped="completed", kept="tuned", best_step=4,
                          epochs=1.0, held_out=DiceChange(0.8, 0.7, 0.9, 0.905),
                          per_label={1: DiceChange(0.8, 0.9, 0.9, 0.9), 2: DiceChange(0.8, 0.5, 0.9, 0.91)})
    html = tw.results_table(summary, {1: "liver"})
    assert "liver" in html and "label 2" in html and "all 2 objects" in html
    rows = html.split("<tr>")
    assert "#7bd88f" in rows[2] and "#ff6b6b" not in rows[2]  # liver: click rose
    assert "#ff6b6b" in rows[3]  # label 2: click fell 0.8 → 0.5


def test_cancel_keeps_the_model_and_napari_stays_responsive(tuner, qtbot):
    viewer, widget, old = tuner()
    widget.steps.setValue(5000)
    widget.start_button.click()
    # progress reaches the GUI thread while training runs: the event loop is free
    qtbot.waitUntil(lambda: widget.progress.value() >= 2, timeout=60_000)
    assert widget.run.running
    viewer.add_labels(np.zeros((6, 48, 48), np.int32), name="more")  # the layer list still reacts
    assert widget.labels_combo.findText("more") >= 0
    widget.cancel_button.click()
    qtbot.waitUntil(lambda: not widget.run.running, timeout=60_000)
    assert hub_for(viewer).model is old and widget.result is None
    assert "Cancelled" in widget.status.text() and widget.start_button.isEnabled()
    assert widget.progress.value() < 5000


def test_unusable_inputs_are_explained(tuner, monkeypatch):
    viewer, widget, _ = tuner(with_model=False)
    monkeypatch.setattr("napari_msa.engine.catalog.litemedsam_installed", lambda: False)
    widget._show_model(None)
    assert "Segment (MSA)" in widget.model_panel.label.text()
    widget.start_button.click()
    assert not widget.run.running and "load one in the Segment (MSA) widget" in widget.status.text()
    viewer.layers["annotations"].data = np.zeros((6, 48, 48), np.int32)
    widget.start_button.click()
    assert not widget.run.running and "is empty" in widget.status.text()
    viewer.layers.remove("annotations")
    assert widget.labels_combo.layer() is None
    widget.start_button.click()
    assert "choose an image layer and the labels layer" in widget.status.text()


def test_labels_choice_follows_the_layer_being_annotated(make_napari_viewer, qtbot, monkeypatch):
    from segment_support import DiskMasks, install, wait_idle

    viewer = make_napari_viewer()
    images, truth = blob_task(4, size=48)
    viewer.add_image(images, name="img")
    viewer.add_labels(truth, name="ground truth")  # a sample's ground truth comes first
    viewer.add_labels(np.zeros((3, 48, 48), np.int32), name="other grid")  # never fits this image
    _, widget = viewer.window.add_plugin_dock_widget("napari-msa", "Tune (MSA)")
    assert widget.labels_combo.layer() is viewer.layers["ground truth"]  # the only one that fits

    mine = viewer.add_labels(np.zeros_like(truth), name="mine")  # added (and selected) to paint in
    assert widget.labels_combo.layer() is mine
    viewer.layers.selection.active = viewer.layers["ground truth"]  # selected in the layer list
    assert widget.labels_combo.layer() is viewer.layers["ground truth"]
    viewer.layers.selection.active = viewer.layers["img"]
    mine.paint((1, 20, 20), 3)  # painting a layer makes it the one being annotated
    assert widget.labels_combo.layer() is mine
    viewer.layers.selection.active = viewer.layers["other grid"]  # wrong shape: the choice stays
    assert widget.labels_combo.layer() is mine

    # the Segment widget's commits count as painting its labels layer
    install(monkeypatch, DiskMasks(radius=5))
    _, segment = viewer.window.add_plugin_dock_widget("napari-msa", "Segment (MSA)")
    hub_for(viewer).set_model(load_model("tiny"))
    wait_idle(qtbot, segment)
    viewer.dims.set_current_step(0, 2)
    segment.layers.points().add([2, 24, 24])
    wait_idle(qtbot, segment)
    # 'img labels' now holds only the uncommitted preview: not an annotation, so not chosen, and not tunable
    preview = viewer.layers["img labels"]
    assert preview.data.any() and widget.labels_combo.layer() is mine
    widget.annotations.refresh()
    assert widget.labels_combo.layer() is mine
    widget.labels_combo.choose(preview)  # chosen by hand: refused with what to do
    widget.start_button.click()
    assert not widget.run.running and "only the Segment widget's uncommitted preview" in widget.status.text()
    viewer.layers.selection.active = viewer.layers["ground truth"]
    segment.commit()
    assert widget.labels_combo.layer() is viewer.layers["img labels"]
    wait_idle(qtbot, segment)


def test_undocking_stops_tuning_and_lets_go_of_the_viewer_and_the_hub(tuner, qtbot):
    viewer, widget, old = tuner()
    widget.steps.setValue(5000)
    widget.start_button.click()
    qtbot.waitUntil(lambda: widget.progress.value() >= 1, timeout=60_000)
    shown = widget.model_panel.label.text()
    viewer.window.remove_dock_widget(widget)  # napari detaches the widget; it must let go of the viewer
    qtbot.waitUntil(lambda: not widget.run.running, timeout=60_000)  # the run it started was cancelled
    assert hub_for(viewer).model is old and widget.result is None
    viewer.add_labels(np.zeros((6, 48, 48), np.int32), name="after")
    assert widget.labels_combo.findText("after") < 0  # no longer follows the layer list
    viewer.layers["annotations"].paint((1, 20, 20), 3)
    viewer.layers.selection.active = viewer.layers["after"]
    assert widget.labels_combo.layer() is viewer.layers["annotations"]  # nor edits and selection
    hub_for(viewer).set_model(load_model("tiny", device="cpu", image_size=SIZE))
    qtbot.wait(50)
    assert widget.model_panel.label.text() == shown  # nor the model hub
    widget.deleteLater()
