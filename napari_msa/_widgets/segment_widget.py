"""The "Segment (MSA)" dock widget: layout and wiring.

The object being segmented is an ``ObjectDraft`` (Qt-free: its masks, the prompts they answer, the
requests in flight); layers become prompts through ``_layers``, engine work runs on napari workers via
``_prediction``/``_volume``, previews and commits are painted by ``_labels_writer``, the model comes
from the shared ``ModelPanel``. This module connects them to the controls, the viewer's events and keys.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from napari.layers import Image, Labels, Points, Shapes
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLayout,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from . import _choices as C
from . import _layers as L
from . import _segment_layers as S
from ._controls import ElidingComboBox, LayerChoice, PathPicker, ScrollPanel
from ._feedback import Feedback
from ._hub import ViewerLink
from ._labels_writer import LabelsWriter
from ._model_panel import ModelPanel
from ._prediction import (
    ImageFeed,
    ImageSource,
    LatestWins,
    Prefetcher,
    Propagation,
    ensure_thread_capacity,
    predict_planes,
)
from ._volume import VolumeEmbedder
from .object_draft import ObjectDraft

if TYPE_CHECKING:  # the engine (torch) is imported where it is used: importing this module must not load it
    from napari_msa.engine import MSAModel, Session

NEW = "(new)"
NONE = "(none)"
# New-point sign button: the point colour as background (lime, red) and black text, contrast 15:1 and 5.3:1
# (WCAG asks for 4.5:1); red text on napari's grey was about 2:1.
SIGN_COLORS = {True: ("#00ff00", "#000000"), False: ("#ff0000", "#000000")}
SLICE_SETTLE_MS = 150  # wait for scrolling to pause before re-targeting the prefetch


class SegmentWidget(QWidget):
    """Points and boxes → SAM/MSA masks on a worker → a labels layer, in 2D and slice by slice in 3D.

    The widget makes each image's prompt layers: '<image> prompts' (points, add mode) and '<image> boxes'
    (rectangles, add-rectangle mode: select it and drag a box around the object).

    Keys (bound on those two layers and on the viewer): T flips positive/negative for new
    points, C commits the object and moves to a new id, X clears prompts and preview, Shift+S
    propagates the object through the volume (again to cancel). They act while a prompt layer
    is selected; on other layers napari's own shortcuts for the same keys (e.g. Labels X, Shapes T)
    come first. Ctrl+Z on the labels layer undoes a commit.
    """

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session: Session | None = None
        self.draft = ObjectDraft()  # the object being segmented; ``writer`` paints it into the labels layer
        self.writer: LabelsWriter | None = None
        self.feed = ImageFeed()
        self.predictions = LatestWins(self._on_predicted, partial(self._report, "prediction"),
                                      on_change=self._refresh_activity)
        self.prefetcher = Prefetcher(self.feed, partial(self._report, "embedding"), self._refresh_activity)
        self.propagation = Propagation(self.feed, self._on_propagated, partial(self._report, "propagation"),
                                       on_finished=self._sync_propagate_button, on_change=self._refresh_activity)
        self.volume = VolumeEmbedder(self.feed, partial(self._report, "embedding the volume"),
                                     self._refresh_activity, self._on_volume_finished)
        self._volume_wanted = False  # 'Embed volume' was pressed before a model was there
        ensure_thread_capacity()

        self.link = ViewerLink(self, napari_viewer, self._on_model, on_undocked=self._stop_work)
        self.hub = self.link.hub
        self._build()
        self._update_timer = QTimer(self, singleShot=True, interval=0)
        self._update_timer.timeout.connect(self.update_prediction)
        # Prefetches start from this timer, never straight from an event: scrolling settles first, and
        # when napari closes (removing layers one by one) the timer dies with the widget instead of
        # starting an encoder pass for the next image.
        self._prefetch_timer = QTimer(self, singleShot=True, interval=SLICE_SETTLE_MS)
        self._prefetch_timer.timeout.connect(self.start_prefetch)

        for emitter, callback in ((self.viewer.layers.events.inserted, self._on_layers_changed),
                                  (self.viewer.layers.events.removed, self._on_layer_removed),
                                  (self.viewer.layers.events.moved, self._on_layers_changed),
                                  (self.viewer.dims.events.current_step, self._on_slice_changed)):
            self.link.connect(emitter, callback)
        actions = partial(_key_action, self)
        self.prompts = S.PromptFollower(self._on_prompts_changed, actions)
        S.bind_keys(self.viewer, actions)
        self.link.on_release(self.prompts.release)
        self.link.on_release(partial(S.unbind_keys, self.viewer))

        self._refresh_layer_choices()
        self._on_image_chosen()
        if self.hub.model is not None:
            self._on_model(self.hub.model)
        else:
            self._show_model(None)

    # ============================================================================ layout
    def _build(self) -> None:
        self.panel = ScrollPanel(self)  # scrolls when the dock is short; nothing is squeezed
        root = QVBoxLayout(self.panel.contents)
        root.setSizeConstraint(QLayout.SizeConstraint.SetMinimumSize)  # never squeeze rows when docks share space
        self.status = QLabel("Ready")  # the last outcome: a result, a problem, what to do next (added last)
        self.status.setWordWrap(True)
        self.feedback = Feedback(self.status)
        self.model_panel = ModelPanel(self.hub, self.feedback, _no_model_text, self._refresh_activity)
        p = self.model_panel
        self.model_section, self.model_label, self.model_combo = p.section, p.label, p.combo
        self.checkpoint, self.adapter, self.load_button = p.checkpoint, p.adapter, p.load_button
        self.device_combo, self.precision_combo = p.device_combo, p.precision_combo
        root.addWidget(p.section)
        root.addWidget(p.label)

        data_box = QGroupBox("Image and prompts")
        form = QFormLayout(data_box)
        self.image_choice = LayerChoice(Image, tooltip="The image to segment: 2D, RGB, or a (Z,Y,X) volume")
        self.image_choice.currentIndexChanged.connect(self._on_image_chosen)
        form.addRow("Image", self.image_choice)
        self.norm_combo = ElidingComboBox()
        self.norm_combo.addItems(list(C.NORMALIZATIONS))
        self.norm_combo.setToolTip(C.NORMALIZATION_TIP)
        self.norm_combo.currentIndexChanged.connect(self._on_normalization_changed)
        form.addRow("Normalisation", self.norm_combo)
        self.points_choice = LayerChoice(Points, (NEW,), "Prompt points: green positive, red negative. "
                                         "'(new)' creates '<image> prompts'.")
        self.points_choice.currentIndexChanged.connect(self._on_prompt_layers_chosen)
        form.addRow("Points", self.points_choice)
        self.shapes_choice = LayerChoice(Shapes, (NEW, NONE), "Box prompts: select '<image> boxes' (created for "
                                         "you, in rectangle mode) and drag a box around the object; the last "
                                         "rectangle on a slice is its box. '(new)' creates the layer, '(none)' "
                                         "ignores boxes.")
        self.shapes_choice.currentIndexChanged.connect(self._on_prompt_layers_chosen)
        form.addRow("Boxes", self.shapes_choice)
        embed_row = QHBoxLayout()
        self.cache_folder = PathPicker("optional folder for embeddings", "", "A folder where slice embeddings are "
                                       "kept on disk and found again next time (also those `napari-msa embed "
                                       "--cache-dir FOLDER` made). Empty: kept in memory only.", folder=True)
        self.cache_folder.edit.textChanged.connect(self._on_cache_folder_changed)
        self.embed_button = _button("Embed volume", self.embed_volume, "Embed every slice in the background "
                                    "(progress and time left in napari's activity dock), so a click on any slice "
                                    "answers at once; press again to stop")
        embed_row.addWidget(self.cache_folder, 1)
        embed_row.addWidget(self.embed_button)
        form.addRow("Embeddings", embed_row)
        self.sign_button = _button("", self.toggle_positive,
                                   "Sign of new points (T toggles): positive adds area, negative removes it")
        form.addRow("New points", self.sign_button)
        root.addWidget(data_box)

        out_box = QGroupBox("Output")
        form = QFormLayout(out_box)
        self.labels_choice = LayerChoice(Labels, (NEW,), "Where masks go; '(new)' creates '<image> labels'")
        self.labels_choice.currentIndexChanged.connect(self._on_labels_chosen)
        form.addRow("Labels", self.labels_choice)
        self.object_id = QSpinBox()
        self.object_id.setRange(1, 2**31 - 1)
        self.object_id.setToolTip("Id of the object being segmented; commit moves to the next free id")
        self.object_id.valueChanged.connect(self._repaint_preview)
        form.addRow("Object id", self.object_id)
        self.overwrite = QCheckBox("overwrite other objects")
        self.overwrite.setToolTip("Off: pixels of other objects are never changed")
        self.overwrite.toggled.connect(self._repaint_preview)
        form.addRow(self.overwrite)
        buttons = QHBoxLayout()
        self.commit_button = _button("Commit (C)", self.commit, "Make the preview final (one undo step, Ctrl+Z on "
                                     "the labels layer) and start a new object")
        self.clear_button = _button("Clear (X)", self.clear, "Drop the prompts and the preview of the current object")
        self.propagate_button = _button("Propagate (Shift+S)", self.propagate,
                                        "Carry the object from this slice through the volume; press again to cancel")
        for b in (self.commit_button, self.clear_button, self.propagate_button):
            buttons.addWidget(b)
        form.addRow(buttons)
        root.addWidget(out_box)

        keys = QLabel("Keys: <b>T</b> ± · <b>C</b> commit · <b>X</b> clear · <b>Shift+S</b> propagate · "
                      "Ctrl+Z undo (hover for more)")
        keys.setWordWrap(True)
        keys.setToolTip(self.__doc__)
        root.addWidget(keys)
        self.activity = QLabel()  # what runs now (loading, embedding, predicting, propagating); empty when idle
        self.activity.setToolTip("Work in progress; napari's activity dock (bottom right) shows its progress")
        self.activity.setStyleSheet("color: #9ab8d8")
        self.activity.setWordWrap(True)
        self.activity.hide()
        root.addWidget(self.activity)
        root.addWidget(self.status)
        root.addStretch(1)

    # ============================================================================ model
    def load_model(self) -> None:
        """Load the chosen model on a worker, then share it through the viewer's hub."""
        self.model_panel.load()

    def _load_on_first_need(self) -> None:
        """Prompts arrived before any model: load the chosen one (the default) now; they are answered after."""
        if self.model_panel.loading:
            self.feedback.set("Your prompts are answered as soon as the model is loaded.")
        elif not self.model_panel.chosen_available():
            self.feedback.problem("No model loaded: choose an available model in the Model field above and press "
                                  "Load model.")
        else:
            show_info(f"Loading {self.model_combo.currentText()} for your first prompt (once per session)…")
            self.model_panel.load()

    def _on_model(self, model: MSAModel | None) -> None:
        """A new model (loaded here or tuned elsewhere): a new session, same image and prompts."""
        self.predictions.invalidate()
        self.propagation.discard()
        self.prefetcher.stop()
        self.volume.cancel()
        self.feed.forget()
        self.draft.outdated()
        if model is None:
            self.session = None
        else:
            from napari_msa.engine import Session  # the model is loaded: so is the engine

            self.session = Session(model, cache_dir=self.cache_folder.path() or None)
        self._show_model(model)
        if model is not None:
            self._prefetch_timer.start()
            self.schedule_update()
            if self._volume_wanted:
                self._volume_wanted = False
                self.embed_volume()

    def _show_model(self, model: MSAModel | None) -> None:
        self.model_panel.show(model)
        if model is not None:
            self.feedback.set("Ready: click on an object (T for negative points), or drag a box in "
                              "'<image> boxes'.")

    # ============================================================================ layers
    def image_layer(self) -> Image | None:
        return self.image_choice.layer()

    def points_layer(self) -> Points | None:
        return self.points_choice.layer()

    def shapes_layer(self) -> Shapes | None:
        return self.shapes_choice.layer()

    def labels_layer(self) -> Labels | None:
        return self.labels_choice.layer()

    def _usable_image(self, tell: bool = True) -> Image | None:
        """The chosen image if the engine can segment it; else None (and ``tell``: the problem is told)."""
        image = self.image_layer()
        if image is not None:
            try:
                L.check_image(image)
            except L.PromptError as exc:
                if tell:
                    self.feedback.problem(str(exc))
                return None
        return image

    def _refresh_layer_choices(self) -> None:
        for choice in (self.image_choice, self.points_choice, self.shapes_choice, self.labels_choice):
            choice.refresh(self.viewer.layers)

    def _on_layers_changed(self, event=None) -> None:
        had_image = self.image_layer()
        self._refresh_layer_choices()
        if self.image_layer() != had_image:  # == : plugin widgets see layers through proxies
            self._on_image_chosen()

    def _on_layer_removed(self, event) -> None:
        layer = event.value
        in_use = layer in (self.image_layer(), self.labels_layer(), self.points_layer(), self.shapes_layer())
        busy = not self.predictions.idle or self.propagation.running
        if in_use:
            self.predictions.invalidate()
            self.propagation.discard()
            if busy:
                show_warning(f"Layer '{layer.name}' was removed while the segmenter was working; its result was "
                             "dropped and no labels changed. Choose the layers again in Segment (MSA).")
        if self.writer is not None and layer == self.writer.layer:
            self.writer = None
            self.draft.drop()
        if layer in self.prompts.layers:
            self._follow_prompt_layers()
            self.draft.outdated()
        if layer == self.image_layer():
            self.prefetcher.stop()
            self.feed.forget()
        self._on_layers_changed()

    def _drop_preview(self) -> None:
        """Take the uncommitted preview back out of its labels layer and forget it (only a commit writes labels)."""
        self.predictions.invalidate()
        self.propagation.discard()
        if self.writer is not None and self.writer.layer in self.viewer.layers:
            self.writer.clear()
        self.writer = None
        self.draft.drop()

    def _on_image_chosen(self, *_) -> None:
        """A new image: its own prompt layers (created on demand), a fresh preview, embeddings started."""
        self._drop_preview()
        self.prefetcher.stop()
        self.volume.cancel()  # its worker would give the session the old image back
        if self.image_layer() is None:
            self.feedback.set("Open or choose an image layer.")
            self._follow_prompt_layers()
            return
        image = self._usable_image()
        if image is None:
            return
        points = S.own_prompt_layer(self.viewer, image, Points)
        boxes = S.own_prompt_layer(self.viewer, image, Shapes)
        self._refresh_layer_choices()
        _choose_quietly(self.points_choice, points)  # one _on_prompt_layers_chosen below, not one per combo
        _choose_quietly(self.shapes_choice, boxes)
        labels = S.own_labels(self.viewer, image)
        self.labels_choice.choose(labels if labels is not None else NEW)
        self._on_labels_chosen()
        self._follow_prompt_layers()
        self.viewer.layers.selection.active = points
        points.mode = "add"
        self._prefetch_timer.start()
        self.schedule_update()

    def _on_prompt_layers_chosen(self, *_) -> None:
        """'(new)' in Points or Boxes creates (or finds) the image's own layer; then follow what is chosen."""
        image = self.image_layer()
        if image is not None:
            for choice, kind in ((self.points_choice, Points), (self.shapes_choice, Shapes)):
                if choice.currentText() == NEW:
                    layer = S.own_prompt_layer(self.viewer, image, kind)
                    choice.refresh(self.viewer.layers)
                    _choose_quietly(choice, layer)
        self._follow_prompt_layers()
        self.schedule_update()

    def _on_labels_chosen(self, *_) -> None:
        if self.writer is not None and self.writer.layer != self.labels_layer():
            self._drop_preview()
        labels = self.labels_layer()
        if labels is not None:
            self.object_id.setValue(int(np.max(labels.data, initial=0)) + 1)
        self.schedule_update()

    def _follow_prompt_layers(self) -> None:
        """Listen to the chosen prompt layers only, and bind the widget's keys on them."""
        image = self.image_layer()
        self.prompts.follow([ly for ly in (self.points_layer(), self.shapes_layer()) if ly is not None],
                            None if image is None else L.prompt_boxes_name(image))
        self._show_sign()

    def _ensure_writer(self) -> LabelsWriter | None:
        """The labels writer for the chosen layer, creating '<image> labels' when '(new)' is chosen."""
        image = self.image_layer()
        if image is None:
            return None
        labels = self.labels_layer()
        if labels is None:
            labels = S.add_labels_below(self.viewer, image, [self.points_layer(), self.shapes_layer()])
            self.labels_choice.refresh(self.viewer.layers)
            _choose_quietly(self.labels_choice, labels)
            self.object_id.setValue(1)
        L.check_labels(labels, image)
        if self.writer is None or self.writer.layer != labels:
            self.writer = LabelsWriter(labels, L.is_volume(image))
        labels.selected_label = self.object_id.value()
        return self.writer

    # ============================================================================ prompts → prediction
    def _on_prompts_changed(self, event=None) -> None:
        """Act at once, so a prompt removed while its prediction runs makes that result stale before it lands."""
        action = getattr(event, "action", None)
        if action is not None and str(getattr(action, "value", action)).endswith("ing"):
            return  # 'adding'/'changing'/'removing' precede the change itself
        self.update_prediction()

    def schedule_update(self) -> None:
        """Coalesce the events of one user action into one prediction request."""
        self._update_timer.start()

    def _source(self, image: Image) -> ImageSource:
        norm = C.normalization(self.norm_combo.currentText(), image)
        return ImageSource(image.data, bool(image.rgb), norm, (id(image), id(image.data), norm, bool(image.rgb)))

    def update_prediction(self) -> None:
        """Send the slices whose prompts changed to the engine; the newest request wins.

        A request carries every slice whose preview does not match its prompts, so dropping an older
        request's result never loses a slice. Nothing changed (e.g. a features event after a data
        event): nothing is sent and the request in flight stays valid.
        """
        image = self._usable_image()
        if image is None:
            self.predictions.invalidate()  # what is in flight answers prompts the user is fixing
            return
        try:
            prompts, ignored = L.collect_prompts(image, self.points_layer(), self.shapes_layer())
        except L.PromptsChanging:
            self.predictions.invalidate()
            self.schedule_update()
            return
        self.feedback.show_ignored(ignored)
        update = self.draft.update({z: p.signature() for z, p in prompts.items()}, self.predictions.latest)
        if update.stale:
            self.predictions.invalidate()  # what is in flight answers prompts that no longer exist
        if self.writer is not None:
            for z in update.dropped:
                self.writer.clear(z)
        if not update.todo:
            return  # up to date, or the request in flight already answers exactly these prompts
        if self.session is None:
            self._load_on_first_need()
            return
        try:
            self._ensure_writer()
        except L.PromptError as exc:
            self.feedback.problem(str(exc))
            return
        todo = {z: prompts[z] for z in update.todo}
        job = partial(predict_planes, self.session, self.feed, self._source(image), L.is_volume(image), todo)
        self.draft.sent(self.predictions.submit(job), update.todo)

    def _on_predicted(self, request: int, result: dict[int, tuple[np.ndarray, float]]) -> None:
        if self.writer is None or self.writer.layer not in self.viewer.layers:
            self.draft.unanswered(request)
            self.feedback.tell("The labels layer was removed while predicting; nothing was written. Choose a "
                               "labels layer (or '(new)') in the Labels field.", warning=True)
            return
        masks = self.draft.answered(request, {z: mask for z, (mask, _score) in result.items()})
        painted = self._paint(masks)
        where = "" if not L.is_volume(self.image_layer()) else f"slice {', '.join(map(str, sorted(result)))}: "
        scores = ", ".join(f"{s:.2f}" for _, s in result.values())
        self.feedback.result(f"Object {self.object_id.value()} — {where}{painted} px, predicted IoU {scores}")

    def _paint(self, masks: dict[int, np.ndarray]) -> int:
        """Show ``masks`` as the current object's preview; returns the pixels painted."""
        obj, overwrite = self.object_id.value(), self.overwrite.isChecked()
        painted = sum(self.writer.set_preview(z, m, obj, overwrite, refresh=False) for z, m in masks.items())
        self.writer.layer.refresh()
        return painted

    # ============================================================================ actions
    def toggle_positive(self) -> None:
        """T: the sign of new points flips (positive adds area, negative removes it)."""
        points = self.points_layer()
        if points is None:
            self.feedback.tell("Choose a prompt points layer first.")
            return
        L.toggle_positive(points)
        self._show_sign()

    def _show_sign(self) -> None:
        points = self.points_layer()
        positive = True if points is None else L.new_points_positive(points)
        self.sign_button.setText("positive (T)" if positive else "negative (T)")
        background, text = SIGN_COLORS[positive]  # the points' own colour, with text readable on it
        self.sign_button.setStyleSheet(f"QPushButton {{ background-color: {background}; color: {text}; "
                                       "font-weight: bold; border-radius: 3px; padding: 3px 8px; }")

    def commit(self) -> None:
        """C: the preview becomes final (one undo step); prompts are cleared; the id moves to max + 1."""
        if self.writer is None or not self.draft:
            self.feedback.tell("Nothing to commit: click on the object first.")
            return
        if self.writer.layer not in self.viewer.layers:
            self.feedback.tell("The labels layer is gone; choose a labels layer (or '(new)') in the Labels field.",
                               warning=True)
            return
        self.predictions.invalidate()
        self.propagation.discard()
        obj = self.object_id.value()
        written = self.writer.commit(self.draft.take(), obj, self.overwrite.isChecked())
        S.clear_prompts(self.points_layer(), self.shapes_layer())
        next_id = int(np.max(self.writer.layer.data, initial=0)) + 1
        self.object_id.setValue(next_id)
        self.writer.layer.selected_label = next_id
        self.feedback.outcome(f"Committed object {obj} ({written} px); now segmenting object {next_id}. "
                              "Ctrl+Z on the labels layer undoes it.")
        if written:
            self.feedback.watch_commit(self.writer.layer, obj, self._commit_undone)

    def _commit_undone(self, layer: Labels, obj: int) -> None:
        if self.writer is not None and self.writer.layer == layer and not self.draft:
            self.object_id.setValue(int(np.max(layer.data, initial=0)) + 1)
        self.feedback.outcome(f"Object {obj} was undone; segmenting object {self.object_id.value()}.")

    def clear(self) -> None:
        """X: drop the prompts and the preview of the current object."""
        self.predictions.invalidate()
        self.propagation.discard()
        if self.writer is not None:
            self.writer.clear()
        self.draft.drop()
        S.clear_prompts(self.points_layer(), self.shapes_layer())
        self.feedback.outcome(f"Cleared; segmenting object {self.object_id.value()}.")

    def propagate(self) -> None:
        """Shift+S: carry the current object through the volume (a cancellable worker); again to cancel."""
        if self.propagation.running:
            self.propagation.cancel()  # the activity line says "Cancelling…" until the worker stops
            return
        image = self.image_layer()
        if image is None or not L.is_volume(image):
            self.feedback.tell("Propagation needs a (Z,Y,X) volume image.")
            return
        if self.session is None:
            self._load_on_first_need()
            return
        try:
            writer = self._ensure_writer()
        except L.PromptError as exc:
            self.feedback.problem(str(exc))
            return
        z, obj = L.current_plane(self.viewer, image), self.object_id.value()
        mask = self.draft.seed(z, np.asarray(writer.layer.data[z]) == obj)
        if mask is None:
            self.feedback.tell(f"Object {obj} is empty on slice {z}; segment it there first.")
            return
        self.prefetcher.stop()
        self.propagation.start(self.session, self._source(image), mask, z)
        self._sync_propagate_button()
        self.feedback.set(f"Propagating object {obj} from slice {z}; Shift+S again cancels.")

    def _on_propagated(self, masks: dict[int, np.ndarray], cancelled: bool = False) -> None:
        """Propagation ended (or was cancelled): the slices it finished become the preview, never final labels."""
        if self.writer is None or self.writer.layer not in self.viewer.layers:
            self.feedback.tell("The labels layer was removed while propagating; nothing was written.", warning=True)
            return
        self._paint(self.draft.propagated(masks))
        obj, span = self.object_id.value(), _span(masks)
        if cancelled:
            message = (f"Propagation cancelled: object {obj} kept on {span} as a preview; C commits it, X clears it."
                       if masks else "Propagation cancelled; no other slice was changed.")
            show_info(message)
        else:
            message = f"Propagated object {obj} to {span or 'no other slice'}; C commits, X clears it."
        self.feedback.set(message)

    def _sync_propagate_button(self) -> None:
        """The button proposes a new run when none runs (done, cancelled, failed or discarded)."""
        try:
            self.propagate_button.setText("Cancel (Shift+S)" if self.propagation.running else "Propagate (Shift+S)")
        except RuntimeError:  # the widget was closed meanwhile
            pass

    def _repaint_preview(self, *_) -> None:
        """Id or overwrite changed: show the same preview under the new settings."""
        if self.writer is None or not self.draft or self.writer.layer not in self.viewer.layers:
            return
        self.writer.clear(refresh=False)
        self._paint(self.draft.masks)
        self.writer.layer.selected_label = self.object_id.value()

    # ============================================================================ slices and embeddings
    def _on_slice_changed(self, event=None) -> None:
        image = self.image_layer()
        if image is not None and L.is_volume(image):
            self._prefetch_timer.start()

    def _on_normalization_changed(self, *_) -> None:
        self.volume.cancel()
        self.predictions.invalidate()
        self.draft.outdated()
        self._prefetch_timer.start()
        self.schedule_update()

    def start_prefetch(self) -> None:
        """Embed the current slice now and its neighbours after it, in the background."""
        image = self._usable_image(tell=False)
        if image is None or self.session is None or self.propagation.running:
            return
        if L.is_volume(image) and not L.plane_axes_displayed(self.viewer, image):
            self.feedback.set("Show the image's (Y,X) planes (dims order) to segment slice by slice.")
            return
        n_slices = L.spatial_shape(image)[0] if L.is_volume(image) else 1
        self.prefetcher.request(self.session, self._source(image), L.current_plane(self.viewer, image), n_slices)

    def embed_volume(self) -> None:
        """Embed every slice in the background (press again to stop); loads the model first if needed."""
        if self.volume.running:
            self.volume.cancel()
            return
        if self.image_layer() is None:
            self.feedback.problem("Open or choose an image layer first (the Image field above).")
            return
        image = self._usable_image()
        if image is None:
            return
        if self.session is None:
            self._volume_wanted = True
            self._load_on_first_need()
            return
        n_slices = L.spatial_shape(image)[0] if L.is_volume(image) else 1
        self.volume.start(self.session, self._source(image), n_slices)
        self.embed_button.setText("Stop embedding")

    def _on_volume_finished(self, completed: bool) -> None:
        try:
            self.embed_button.setText("Embed volume")
        except RuntimeError:  # the widget was closed meanwhile
            return
        if completed:
            where = f", kept in {self.cache_folder.path()}" if self.cache_folder.path() else ""
            self.feedback.set(f"All {self.volume.total} slices are embedded{where}.")

    def _on_cache_folder_changed(self, text: str) -> None:
        if self.session is not None:
            self.session.cache.directory = Path(text.strip()) if text.strip() else None

    # ============================================================================ feedback
    def _set_status(self, text: str) -> None:
        self.feedback.set(text)

    def _report(self, action: str, exc: BaseException) -> None:
        """A worker error becomes a notification (once while it repeats) that says what to do; no labels change."""
        self.feedback.report(action, exc)

    def _refresh_activity(self) -> None:
        """The activity line, from what is running now (so it is never stale): empty when nothing runs."""
        parts = []
        if self.model_panel.loading:
            parts.append(f"Loading {self.model_panel.loading_name}…")
        if self.propagation.cancelling:
            parts.append("Cancelling propagation…")
        elif self.propagation.running:
            parts.append(f"Propagating: {self.propagation.done}/{self.propagation.total} slices…")
        if self.prefetcher.encoding is not None:
            z = self.prefetcher.encoding
            parts.append(f"Embedding slice {z}…" if z == self.prefetcher.requested else f"Prefetching slice {z}…")
        if self.volume.cancelling:
            parts.append("Stopping the volume embedding…")
        elif self.volume.running:
            parts.append(self.volume.describe() + "…")
        if not self.predictions.idle:
            parts.append("Predicting…")
        try:
            self.activity.setText(" · ".join(parts))
            self.activity.setVisible(bool(parts))
        except RuntimeError:  # the widget was closed while a worker finished
            pass

    # ============================================================================ lifetime
    def _stop_work(self) -> None:
        """Undocked: stop all work and take the uncommitted preview back (the link then lets go of the viewer)."""
        self._update_timer.stop()
        self._prefetch_timer.stop()
        self._drop_preview()  # closing the widget must not leave an uncommitted preview in the labels
        self.feedback.unwatch_commit()
        self.prefetcher.stop()
        self.volume.cancel()

    def release(self) -> None:
        """Stop all work and stop listening to the viewer, its layers, its keys and the model hub."""
        self._stop_work()
        self.link.release()

    @property
    def idle(self) -> bool:
        """No prediction, embedding, propagation or model load in progress (used by tests and benchmarks)."""
        return (self.predictions.idle and self.prefetcher.idle and not self.propagation.running
                and not self.volume.running and not self.model_panel.loading and not self._update_timer.isActive()
                and not self._prefetch_timer.isActive())


def _no_model_text() -> str:
    text = "No model loaded yet: the chosen model loads by itself on your first click, or press Load model."
    return text if C.demo_model_available() else text + " The demo model is not available."


def _button(text: str, clicked, tooltip: str) -> QPushButton:
    button = QPushButton(text)
    button.setToolTip(tooltip)
    button.clicked.connect(clicked)
    return button


def _choose_quietly(choice: LayerChoice, layer) -> None:
    """Choose without the change signal (the caller acts once for several changes)."""
    choice.blockSignals(True)
    choice.choose(layer)
    choice.blockSignals(False)


def _span(planes) -> str:
    """'slice 3', 'slices 2–6' or '' for a set of slice indices."""
    planes = sorted(planes)
    if not planes:
        return ""
    return f"slice {planes[0]}" if len(planes) == 1 else f"slices {planes[0]}–{planes[-1]}"


def _key_action(widget: SegmentWidget, action: str):
    """A key callback that forwards to ``widget.<action>`` (napari passes the viewer or the layer)."""

    def run(_viewer_or_layer):
        getattr(widget, action)()

    run.__name__ = f"msa_{action}"
    run.__doc__ = getattr(SegmentWidget, action).__doc__
    return run
