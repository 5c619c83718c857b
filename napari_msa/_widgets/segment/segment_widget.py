"""The "Segment (MSA)" dock widget: layout and wiring.

The object being segmented is an ``ObjectDraft`` (Qt-free: its masks, the prompts they answer, the requests
in flight) that ``ObjectEditor`` carries out on the layers; the chosen layers are ``SegmentLayers``, engine
work runs on napari workers (``SegmentJobs``), the model comes from the shared ``ModelPanel``. This module
lays out the controls and connects them, the viewer's events and the keys to those pieces.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from napari.layers import Image
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QLabel, QLayout, QVBoxLayout, QWidget

from napari_msa.engine import catalog

from .. import _layers
from .._controls import ScrollPanel
from .._docking import TabWithSiblings
from .._feedback import Feedback
from .._hub import ViewerLink, hub_for
from .._model_panel import ModelPanel
from .._normalization import normalization
from .._workers import ImageSource, ensure_thread_capacity
from . import _segment_layers
from ._everything import EverythingTool
from ._form import SegmentForm
from ._jobs import SegmentJobs
from ._object_editor import ObjectEditor
from ._recovery import RecoveryKeeper

if TYPE_CHECKING:  # the engine (torch) is imported where it is used: importing this module must not load it
    from napari_msa.engine import MSAModel

# New-point sign button: the point colour as background (lime, red) and black text, contrast 15:1 and 5.3:1
# (WCAG asks for 4.5:1); red text on napari's grey was about 2:1.
SIGN_COLORS = {True: ("#00ff00", "#000000"), False: ("#ff0000", "#000000")}
SLICE_SETTLE_MS = 150  # wait for scrolling to pause before re-targeting the prefetch
# Load the chosen model as soon as an image is chosen (off: on the first click). NAPARI_MSA_PRELOAD=0 turns it off
# (the tests do, and give each widget the model they need).
PRELOAD = os.environ.get("NAPARI_MSA_PRELOAD", "1") != "0"


class SegmentWidget(QWidget):
    """Points and boxes → SAM/MSA masks on a worker → a labels layer, in 2D and slice by slice in 3D.

    The widget makes each image's prompt layers: '<image> prompts' (points, add mode) and '<image> boxes'
    (rectangles, add-rectangle mode: select it and drag a box around the object).

    Keys (bound on those two layers and on the viewer): T flips positive/negative for new
    points, C commits the object and moves to a new id, X clears prompts and preview, Shift+S
    propagates the object through the volume (again to cancel), N shows the model's next mask for a
    lone click (three in turn; later clicks go on from the one chosen). They act while a prompt layer
    is selected; on other layers napari's own shortcuts for the same keys (e.g. Labels X, Shapes T)
    come first. Ctrl+Z (Ctrl+Shift+Z) on the labels layer or on the widget's prompt layers undoes (redoes) a
    commit.
    """

    def __init__(self, napari_viewer, *, offer_recovery: bool = True) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self._volume_wanted = False  # 'Embed volume' was pressed before a model was there
        ensure_thread_capacity()
        self.hub = hub_for(napari_viewer)
        self.link = ViewerLink(self, self.hub, self._on_model, on_undocked=self._stop_work)
        TabWithSiblings(self)  # beside the plugin's other dock widget as a tab, each with the full height
        self._build()
        self.link.connect(self.hub.adapter_saved, self.model_panel.show)  # tuned adapter saved: name the file
        f = self.form
        self.editor = ObjectEditor(self.viewer, self.layers, self.feedback, f.object_id, f.overwrite, f.refine,
                                   self._source, self._load_on_first_need, self.schedule_update)
        self.recovery = RecoveryKeeper(self.viewer, self.editor, self.feedback, f.recovery_offer,
                                       self.layers.prompts, offer=offer_recovery)
        self.editor.on_written = self.save_recovery
        self.hub.preview_sources.append(self._labels_without_preview)
        self.link.on_release(lambda: self.hub.preview_sources.remove(self._labels_without_preview))
        self.everything_tool = EverythingTool(self.viewer, self.editor, self.feedback, self._source,
                                              self._load_on_first_need)
        self.jobs = self.editor.jobs = SegmentJobs(self.editor.predicted, self.editor.propagated,
                                                   self._sync_propagate_button, self._on_volume_finished,
                                                   self.feedback.report, self._refresh_activity,
                                                   self.everything_tool.found)
        self._update_timer = QTimer(self, singleShot=True, interval=0)
        self._update_timer.timeout.connect(self.editor.update)
        # Prefetches start from this timer, never straight from an event: scrolling settles first, and
        # when napari closes (removing layers one by one) the timer dies with the widget instead of
        # starting an encoder pass for the next image.
        self._prefetch_timer = QTimer(self, singleShot=True, interval=SLICE_SETTLE_MS)
        self._prefetch_timer.timeout.connect(self.start_prefetch)
        # napari selects each layer it adds *after* telling its listeners, and a file or sample can add several
        # (image, then reference labels): the prompts layer is made active once that is over, so a click on the
        # image after File > Open makes a prompt.
        self._select_timer = QTimer(self, singleShot=True, interval=0)
        self._select_timer.timeout.connect(self._activate_prompts)
        self._connect_form()

        for emitter, callback in ((self.viewer.layers.events.inserted, self._on_layers_changed),
                                  (self.viewer.layers.events.removed, self._on_layer_removed),
                                  (self.viewer.layers.events.moved, self._on_layers_changed),
                                  (self.viewer.dims.events.current_step, self._on_slice_changed)):
            self.link.connect(emitter, callback)
        actions = partial(_key_action, self)
        self.prompts = _segment_layers.PromptFollower(self._on_prompts_changed, actions)
        _segment_layers.bind_keys(self.viewer, actions)
        self.link.on_release(self.prompts.release)
        self.link.on_release(partial(_segment_layers.unbind_keys, self.viewer))

        self.layers.refresh()
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
        root.addWidget(self.model_panel.section)
        root.addWidget(self.model_panel.label)
        self.form = f = SegmentForm(root, type(self).__doc__)  # the fields below: image and prompts, output, keys
        root.addWidget(self.status)
        root.addStretch(1)
        self.layers = _segment_layers.SegmentLayers(self.viewer, f.image_choice, f.points_choice, f.shapes_choice,
                                                    f.labels_choice)

    def _connect_form(self) -> None:
        """The form's fields and buttons act on this widget."""
        f = self.form
        f.image_choice.currentIndexChanged.connect(self._on_image_chosen)
        f.norm_combo.currentIndexChanged.connect(self._on_normalization_changed)
        f.points_choice.currentIndexChanged.connect(self._on_prompt_layers_chosen)
        f.shapes_choice.currentIndexChanged.connect(self._on_prompt_layers_chosen)
        f.cache_folder.edit.textChanged.connect(self._on_cache_folder_changed)
        f.embed_button.clicked.connect(self.embed_volume)
        f.sign_button.clicked.connect(self.toggle_positive)
        f.recovery_offer.restore_button.clicked.connect(self.restore_recovered)
        f.recovery_offer.discard_button.clicked.connect(self.recovery.discard)
        f.labels_choice.currentIndexChanged.connect(self._on_labels_chosen)
        f.object_id.valueChanged.connect(self.editor.repaint)  # the same preview under the new id
        f.object_id.valueChanged.connect(self._on_object_id_changed)
        f.overwrite.toggled.connect(self.editor.repaint)
        f.refine.toggled.connect(self.editor.refine_toggled)
        f.commit_button.clicked.connect(self.commit)
        f.clear_button.clicked.connect(self.clear)
        f.propagate_button.clicked.connect(self.propagate)
        f.everything_button.clicked.connect(self.everything_tool.run)
        f.keep_all_button.clicked.connect(self.everything_tool.keep_all)

    # ============================================================================ model
    def _load_on_first_need(self) -> None:
        """Prompts arrived before any model: load the chosen one (the default) now; they are answered after."""
        if self.model_panel.loading:
            self.feedback.set("Your prompts are answered as soon as the model is loaded.")
        elif not self.model_panel.chosen_available():
            self.feedback.problem("No model loaded: choose an available model in the Model field above and press "
                                  "Load model.")
        else:
            verb = "Connecting to" if self.model_panel.server_url() else "Loading"
            show_info(f"{verb} {self.model_panel.chosen_name()} for your first prompt (once per session)…")
            self.model_panel.load()

    def _on_model(self, model: MSAModel | None) -> None:
        """A new model (loaded here or tuned elsewhere): a new session, same image and prompts."""
        self.jobs.use(model, self.form.cache_folder.path() or None)
        self.editor.draft.outdated()
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
            image = self.layers.image()
            if image is None:
                self.feedback.set("Ready: open or choose an image layer, then click on an object.")
            else:
                self._tell_ready(image)

    # ============================================================================ layers
    def _on_layers_changed(self, event=None) -> None:
        had_image = self.layers.image()
        self.layers.refresh()
        if self.layers.image() != had_image:  # == : plugin widgets see layers through proxies
            self._on_image_chosen()
        else:
            self.recovery.layers_changed(self.layers.image())  # e.g. the user opened the labels saved from them

    def _on_layer_removed(self, event) -> None:
        layer = event.value
        busy = not self.jobs.predictions.idle or self.jobs.propagation.running
        if self.layers.in_use(layer):
            self.jobs.drop_results()
            if busy:
                show_warning(f"Layer '{layer.name}' was removed while the segmenter was working; its result was "
                             "dropped and no labels changed. Choose the layers again in Segment (MSA).")
        self.editor.layer_removed(layer)
        if layer in self.prompts.layers:
            self._follow_prompt_layers()
            self.editor.draft.outdated()
        if layer == self.layers.image():
            self.jobs.prefetcher.stop()
            self.jobs.feed.forget()
        self._on_layers_changed()

    def _on_image_chosen(self, *_) -> None:
        """A new image: its own prompt layers (created on demand), a fresh preview, embeddings started."""
        self.editor.drop_preview()
        self.jobs.prefetcher.stop()
        self.jobs.volume.cancel()  # its worker would give the session the old image back
        if self.layers.image() is None:
            self.feedback.set("Open or choose an image layer.")
            self._follow_prompt_layers()
            return
        image = self.editor.usable_image()
        if image is None:
            return
        self.layers.adopt(image)
        self.recovery.image_chosen(image)
        self._on_labels_chosen()
        self._follow_prompt_layers()
        self._activate_prompts()
        self._select_timer.start()  # again after napari's own selection of what it is adding now
        self._preload_model()
        self._tell_ready(image)
        self._prefetch_timer.start()
        self.schedule_update()

    def _activate_prompts(self) -> None:
        """The chosen points layer active, in add mode: the user's next click on the image is a prompt."""
        points = self.layers.points()
        if points is not None and points in self.viewer.layers:
            self.viewer.layers.selection.active = points
            points.mode = "add"

    def _preload_model(self) -> None:
        """An image is there and no model: load the chosen one now, on a worker, so the first click does not
        wait for it (models that need a checkpoint file the user has not given still load on demand)."""
        panel = self.model_panel
        if not PRELOAD or self.hub.model is not None or panel.loading:
            return
        chosen = catalog.MODEL_NAMES[panel.combo.currentIndex()]
        if panel.server_url() or (panel.chosen_available() and (chosen in catalog.BUILTIN_MODELS
                                                                 or panel.checkpoint.path())):
            panel.load()

    def _tell_ready(self, image: Image) -> None:
        if self.hub.model is not None:
            self.feedback.set(f"Ready: click on an object in '{image.name}' (T for negative points), or drag a box "
                              f"in '{_layers.prompt_boxes_name(image)}'.")
        elif self.model_panel.loading:
            self.feedback.set(f"Click on an object in '{image.name}' to segment it (T for negative points); the "
                              "model is loading and answers as soon as it is there.")
        else:
            self.feedback.set(f"Click on an object in '{image.name}' to segment it (T for negative points): the "
                              "model loads on your first click.")

    def _labels_without_preview(self, layer, copy: bool = True):
        """For the Tune widget (through the hub): ``layer`` without this widget's preview, None if not ours."""
        writer = self.editor.writer
        if writer is None or writer.layer != layer or not writer.planes:
            return None
        return (writer.committed_labels() if copy else None), writer.preview_only()

    # ============================================================================ recovery
    def save_recovery(self) -> None:
        """The committed labels changed (a commit, undo, redo): they go to the image's recovery file."""
        self.recovery.save(self.layers.image(), self.layers.labels())

    def restore_recovered(self) -> None:
        """Restore: the recovered objects as a labels layer, chosen in the Labels field."""
        labels = self.recovery.restore(self.layers.image())
        if labels is not None:
            self.layers.refresh()
            self.form.labels_choice.choose(labels)

    def _on_prompt_layers_chosen(self, *_) -> None:
        """'(new)' in Points or Boxes creates (or finds) the image's own layer; then follow what is chosen."""
        self.layers.adopt_new_prompt_layers()
        self._follow_prompt_layers()
        self.schedule_update()

    def _on_labels_chosen(self, *_) -> None:
        if self.editor.writer is not None and self.editor.writer.layer != self.layers.labels():
            self.editor.drop_preview()
        labels = self.layers.labels()
        if labels is not None:
            self.form.object_id.setValue(int(np.max(labels.data, initial=0)) + 1)
        self.schedule_update()

    def _follow_prompt_layers(self) -> None:
        """Listen to the chosen prompt layers only, and bind the widget's keys on them."""
        self.prompts.follow(self.layers.prompts(), self.layers.own_boxes_name())
        self._show_sign()

    # ============================================================================ prompts and actions
    def _on_prompts_changed(self, event=None) -> None:
        """Act at once, so a prompt removed while its prediction runs makes that result stale before it lands."""
        action = getattr(event, "action", None)
        if action is not None and str(getattr(action, "value", action)).endswith("ing"):
            return  # 'adding'/'changing'/'removing' precede the change itself
        self.editor.update()

    def schedule_update(self) -> None:
        """Coalesce the events of one user action into one prediction request."""
        self._update_timer.start()

    def _source(self, image: Image) -> ImageSource:
        norm = normalization(self.form.norm_combo.currentText(), image)
        return ImageSource(image.data, bool(image.rgb), norm, (id(image), id(image.data), norm, bool(image.rgb)))

    def toggle_positive(self) -> None:
        """T: the sign of new points flips (positive adds area, negative removes it)."""
        points = self.layers.points()
        if points is None:
            self.feedback.tell("Choose a prompt points layer first.")
            return
        _layers.toggle_positive(points)
        self._show_sign()

    def _show_sign(self) -> None:
        points = self.layers.points()
        positive = True if points is None else _layers.new_points_positive(points)
        self.form.sign_button.setText("positive (T)" if positive else "negative (T)")
        background, text = SIGN_COLORS[positive]  # the points' own colour, with text readable on it
        self.form.sign_button.setStyleSheet(f"QPushButton {{ background-color: {background}; color: {text}; "
                                       "font-weight: bold; border-radius: 3px; padding: 3px 8px; }")

    def next_mask(self) -> None:
        """N: a lone click is ambiguous; show the model's next mask for it (three in turn)."""
        self.editor.next_mask()

    def commit(self) -> None:
        """C: the preview becomes final (one undo step); prompts are cleared; the id moves to max + 1."""
        self.editor.commit()

    def clear(self) -> None:
        """X: drop the prompts and the preview of the current object."""
        self.editor.clear()

    def undo(self) -> None:
        """Ctrl+Z on the prompt layers: undo the last change of the labels layer (a commit, a refinement)."""
        self.editor.history(redo=False)

    def redo(self) -> None:
        """Ctrl+Shift+Z on the prompt layers: redo what Ctrl+Z undid in the labels layer."""
        self.editor.history(redo=True)

    def propagate(self) -> None:
        """Shift+S: carry the current object through the volume (a cancellable worker); again to cancel."""
        self.editor.propagate()
        self._sync_propagate_button()

    def _sync_propagate_button(self) -> None:
        """The button proposes a new run when none runs (done, cancelled, failed or discarded)."""
        try:
            running = self.jobs.propagation.running
            self.form.propagate_button.setText("Cancel (Shift+S)" if running else "Propagate (Shift+S)")
        except RuntimeError:  # the widget was closed meanwhile
            pass

    def _on_object_id_changed(self, obj: int) -> None:
        """The status names the object a click now works on (a commit or an undo says more right after)."""
        labels = self.layers.labels()
        exists = labels is not None and bool(np.any(labels.data == obj))
        note = "" if not exists or self.form.refine.isChecked() else (
            " It is already in the labels: new masks add to it; tick 'refine the object where it exists' to redo it.")
        self.feedback.set(f"Segmenting object {obj}.{note}")

    # ============================================================================ slices and embeddings
    def _on_slice_changed(self, event=None) -> None:
        image = self.layers.image()
        if image is not None and _layers.is_volume(image):
            self._prefetch_timer.start()

    def _on_normalization_changed(self, *_) -> None:
        self.jobs.volume.cancel()
        self.jobs.predictions.invalidate()
        self.editor.draft.outdated()
        self._prefetch_timer.start()
        self.schedule_update()

    def start_prefetch(self) -> None:
        """Embed the current slice now and its neighbours after it, in the background."""
        image, jobs = self.editor.usable_image(tell=False), self.jobs
        if image is None or jobs.session is None or jobs.propagation.running:
            return
        if _layers.is_volume(image) and not _layers.plane_axes_displayed(self.viewer, image):
            self.feedback.set("Show the image's (Y,X) planes (dims order) to segment slice by slice.")
            return
        n_slices = _layers.spatial_shape(image)[0] if _layers.is_volume(image) else 1
        jobs.prefetcher.request(jobs.session, self._source(image), _layers.current_plane(self.viewer, image), n_slices)

    def embed_volume(self) -> None:
        """Embed every slice in the background (press again to stop); loads the model first if needed."""
        if self.jobs.volume.running:
            self.jobs.volume.cancel()
            return
        if self.layers.image() is None:
            self.feedback.problem("Open or choose an image layer first (the Image field above).")
            return
        image = self.editor.usable_image()
        if image is None:
            return
        if self.jobs.session is None:
            self._volume_wanted = True
            self._load_on_first_need()
            return
        if self.jobs.remote:
            self.feedback.tell("The server embeds each slice at your first click on it (and keeps it); Embed volume "
                               "is for a model on this machine.")
            return
        n_slices = _layers.spatial_shape(image)[0] if _layers.is_volume(image) else 1
        self.jobs.volume.start(self.jobs.session, self._source(image), n_slices)
        self.form.embed_button.setText("Stop embedding")

    def _on_volume_finished(self, completed: bool) -> None:
        try:
            self.form.embed_button.setText("Embed volume")
        except RuntimeError:  # the widget was closed meanwhile
            return
        if completed:
            where = f", kept in {self.form.cache_folder.path()}" if self.form.cache_folder.path() else ""
            self.feedback.set(f"All {self.jobs.volume.total} slices are embedded{where}.")

    def _on_cache_folder_changed(self, text: str) -> None:
        if self.jobs.session is not None and not self.jobs.remote:  # a server keeps its own embeddings
            self.jobs.session.cache.directory = Path(text.strip()) if text.strip() else None

    # ============================================================================ feedback
    def _refresh_activity(self) -> None:
        """The activity line, from what is running now (so it is never stale): empty when nothing runs."""
        run = self.model_panel.load_run
        loading = [f"{run.verb} {run.name}…"] if self.model_panel.loading else []
        parts = loading + self.jobs.activity()
        try:
            self.form.activity.setText(" · ".join(parts))
            self.form.activity.setVisible(bool(parts))
        except RuntimeError:  # the widget was closed while a worker finished
            pass

    # ============================================================================ lifetime
    def _stop_work(self) -> None:
        """Undocked: stop all work and take the uncommitted preview back (the link then lets go of the viewer)."""
        self._update_timer.stop()
        self._prefetch_timer.stop()
        self.editor.drop_preview()  # closing the widget must not leave an uncommitted preview in the labels
        self.feedback.unwatch_commit()
        self.jobs.stop()
        self.recovery.autosave.wait(10)  # the last commit's recovery copy is on disk before the widget goes

    def release(self) -> None:
        """Stop all work and stop listening to the viewer, its layers, its keys and the model hub."""
        self._stop_work()
        self.link.release()

    @property
    def idle(self) -> bool:
        """No prediction, embedding, propagation or model load in progress (used by tests and benchmarks)."""
        return (self.jobs.idle and not self.model_panel.loading and not self._update_timer.isActive()
                and not self._prefetch_timer.isActive())


def _no_model_text() -> str:
    text = "No model loaded yet: the chosen model loads by itself on your first click, or press Load model."
    return text if catalog.demo_model_available() else text + " The demo model is not available."


def _key_action(widget: SegmentWidget, action: str):
    """A key callback that forwards to ``widget.<action>`` (napari passes the viewer or the layer)."""

    def run(_viewer_or_layer):
        getattr(widget, action)()

    run.__name__ = f"msa_{action}"
    run.__doc__ = getattr(SegmentWidget, action).__doc__
    return run
