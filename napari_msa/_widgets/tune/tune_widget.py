"""The "Tune (MSA)" dock widget: few-shot adapter tuning from the labels already painted in napari.

The widget copies the chosen image and labels layers' arrays, runs ``napari_msa.engine.tuning.api.tune``
on a napari worker (progress comes back through a queued Qt signal, Cancel sets a flag the engine
checks between steps) and, when tuning succeeds, hands the tuned model to the viewer's model hub so
the Segment widget uses it at once. The engine tunes a copy, so segmentation keeps working on the
old model meanwhile and a cancelled or failed run changes nothing. No tensors are touched here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils.notifications import show_info
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_msa.engine import catalog
from napari_msa.engine.tuning.budget import LIGHT_DECODER, STANDARD
from napari_msa.engine.tuning.tune_types import TuneConfig

from .. import _normalization
from .._controls import ElidingComboBox, LayerChoice, ScrollPanel, Section
from .._docking import TabWithSiblings
from .._feedback import Feedback
from .._hub import ViewerLink, hub_for
from .._layers import spatial_shape
from .._model_panel import ModelPanel
from ._curve import CurveWidget, fmt_time
from ._run import TuneRun
from ._tune_layers import AnnotatedLabels

if TYPE_CHECKING:  # the engine (torch) is imported where it is used: importing this module must not load it
    from napari_msa.engine import Normalization
    from napari_msa.engine.tuning.api import TuneProgress, TuneResult, TuneSummary

log = logging.getLogger(__name__)

TRAIN_CHOICES = {  # shown name: (train the encoder adapters, train the mask decoder)
    "mask decoder": (False, True),
    "encoder adapters": (True, False),
    "adapters + decoder": (True, True),
}


class TuneWidget(QWidget):
    """Tune the current model's adapters on an image layer and the labels painted on it."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.hub = hub_for(napari_viewer)
        self.link = ViewerLink(self, self.hub, self._show_model)  # undocked or closed: lets go of the viewer
        TabWithSiblings(self)  # beside the plugin's other dock widget as a tab, each with the full height
        self.result: TuneResult | None = None
        self._before = None  # the model tuning started from: what Discard goes back to
        self._label_names: dict = {}
        self.run = TuneRun(self._on_progress, self._on_done, self._on_cancelled, self._on_error,
                           on_change=self._run_changed)
        self._save_worker = None
        self._build()
        self.annotations = AnnotatedLabels(self.viewer, self.image_combo, self.labels_combo, lambda: self.run.running,
                                           self.hub.preview_only)
        self.image_combo.currentIndexChanged.connect(self.annotations.pick)
        for emitter, callback in ((self.viewer.layers.events.inserted, self.annotations.refresh),
                                  (self.viewer.layers.events.removed, self.annotations.refresh),
                                  (self.viewer.layers.events.moved, self.annotations.refresh),
                                  (self.viewer.layers.selection.events.active, self.annotations.active_changed)):
            self.link.connect(emitter, callback)
        self.link.on_release(self.run.discard)  # a run the closed widget started stops
        self.link.on_release(self.annotations.release)
        self.annotations.refresh()
        self._show_model(self.hub.model)

    # ============================================================================ layout
    def _build(self) -> None:
        self.panel = ScrollPanel(self)  # scrolls when the dock is short; nothing is squeezed
        root = QVBoxLayout(self.panel.contents)
        self.status = QLabel("Paint a few objects in a labels layer, then press Start.")  # added below
        self.status.setWordWrap(True)
        self.feedback = Feedback(self.status)
        self.model_panel = ModelPanel(self.hub, self.feedback, _no_model_text, chooser=False)
        self.link.connect(self.hub.adapter_saved, self.model_panel.show)
        root.addWidget(self.model_panel.label)

        data = QGroupBox("Annotations")
        form = QFormLayout(data)
        self.image_combo = LayerChoice(Image, tooltip="The image the labels were painted on")
        self.labels_combo = LayerChoice(
            Labels, tooltip="Your annotations: every labelled slice and every object id in it is used "
                            "(0 is background). Follows the labels layer you last selected or painted on "
                            "this image's grid.")
        form.addRow("Image", self.image_combo)
        form.addRow("Labels", self.labels_combo)
        self.norm_combo = ElidingComboBox()
        self.norm_combo.addItems(list(_normalization.CHOICES))
        self.norm_combo.setToolTip("How intensities become 8-bit for the encoder; use the same as in Segment (MSA). "
                                   "The tuned model keeps this setting as its default.")
        form.addRow("Normalisation", self.norm_combo)
        root.addWidget(data)

        self.training_section = Section("Training", expanded=False,
                                        tooltip="Steps, learning rate, held-out share, decoder; the title shows "
                                                "the current settings. Click to show or hide.")
        form = QFormLayout(self.training_section.body)
        defaults = TuneConfig()
        self.train_what = ElidingComboBox()
        self.train_what.addItems(list(TRAIN_CHOICES))
        self.train_what.setCurrentText(next(k for k, v in TRAIN_CHOICES.items()
                                            if v == (defaults.train_adapters, defaults.train_decoder)))
        self.train_what.setToolTip("What learns from your labels. The mask decoder trains on embeddings computed "
                                   "once per slice, so it is the fastest; the encoder adapters (MSA) recompute the "
                                   "last blocks every step. The adapter file holds what was tuned.")
        form.addRow("Tune", self.train_what)
        self.steps = QSpinBox()
        self.steps.setRange(0, 100_000)
        self.steps.setSpecialValueText("auto")
        self.steps.setValue(defaults.steps or 0)
        standard, light = STANDARD, LIGHT_DECODER
        self.steps.setToolTip(f"Optimiser steps, each on a few objects of one slice. auto: about {standard.epochs:g} "
                              f"passes over your objects ({standard.min_steps} to {standard.max_steps} steps of "
                              f"{standard.batch_size} objects); when only the decoder of a light model (the demo "
                              f"model) tunes, about {light.epochs:g} passes ({light.min_steps} to {light.max_steps} "
                              f"steps of {light.batch_size} objects), which is cheap there. Tuning may stop earlier "
                              "once held-out Dice stops improving in the second half of the run")
        form.addRow("Steps", self.steps)
        self.lr = QDoubleSpinBox()
        self.lr.setDecimals(6)
        self.lr.setRange(1e-6, 1e-1)
        self.lr.setSingleStep(1e-5)
        self.lr.setValue(defaults.lr)
        self.lr.setToolTip("Peak AdamW learning rate (after a short warm-up, it decays on a cosine)")
        form.addRow("Learning rate", self.lr)
        self.val_share = QDoubleSpinBox()
        self.val_share.setRange(0.0, 0.9)
        self.val_share.setSingleStep(0.05)
        self.val_share.setValue(defaults.val_fraction)
        self.val_share.setToolTip("Share of the labelled objects held out, from every labelled slice, to measure "
                                  "Dice; the tuned weights are kept only if they beat the model on them. 0 turns "
                                  "the check and early stopping off")
        form.addRow("Held-out share", self.val_share)
        root.addWidget(self.training_section)
        for control in (self.steps, self.lr, self.val_share):
            control.valueChanged.connect(self._title_training)
        self.train_what.currentIndexChanged.connect(self._title_training)
        self._title_training()

        buttons = QHBoxLayout()
        self.start_button = QPushButton("Start")
        self.start_button.setToolTip("Tune on a worker; napari stays usable and Segment keeps the old model "
                                     "until tuning finishes")
        self.start_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.cancel_button)
        root.addLayout(buttons)

        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        root.addWidget(self.progress)
        root.addWidget(self.status)
        self.curve = CurveWidget()
        root.addWidget(self.curve)
        self.results = QLabel()  # per-label held-out Dice before/after, once a run ends
        self.results.setTextFormat(Qt.TextFormat.RichText)
        self.results.setWordWrap(True)
        self.results.setVisible(False)
        root.addWidget(self.results)
        decision = QHBoxLayout()
        self.keep_button = QPushButton("Keep tuned")
        self.keep_button.setToolTip("Keep segmenting with the tuned adapter (save it to use it in a later session)")
        self.keep_button.clicked.connect(self.keep)
        self.discard_button = QPushButton("Discard")
        self.discard_button.setToolTip("Go back to the model as it was before tuning")
        self.discard_button.clicked.connect(self.discard)
        decision.addWidget(self.keep_button)
        decision.addWidget(self.discard_button)
        root.addLayout(decision)
        self._show_decision(False)

        self.save_button = QPushButton("Save adapter…")
        self.save_button.setEnabled(False)
        self.save_button.setToolTip("Write the tuned adapter (.safetensors, with the training summary)")
        self.save_button.clicked.connect(self._choose_save_path)
        root.addWidget(self.save_button)
        root.addStretch(1)

    def _title_training(self, *_) -> None:
        """The folded Training section still says what it will do (in full in its tooltip)."""
        steps = self.steps.value() or "auto"
        what = self.train_what.currentText()
        self.training_section.set_title(f"Training: {what}, {steps} steps")
        self.training_section.header.setToolTip(
            f"Tune {what}, {steps} steps, peak learning rate {self.lr.value():g}, "
            f"{self.val_share.value():.0%} of the labelled objects held out. Click to show or hide.")

    # ============================================================================ model
    def _show_model(self, model) -> None:
        if self.result is not None and model is not self.result.model:
            self._show_decision(False)  # another model was loaded meanwhile: nothing to keep or discard
        self.model_panel.show(model)

    # ============================================================================ tuning
    def _normalization(self, image: Image) -> Normalization | None:
        return _normalization.normalization(self.norm_combo.currentText(), image)

    def _inputs(self) -> tuple[np.ndarray, np.ndarray, bool]:
        image, labels = self.image_combo.layer(), self.labels_combo.layer()
        if image is None or labels is None:
            raise ValueError("choose an image layer and the labels layer with your annotations")
        if image.multiscale or labels.multiscale:
            raise ValueError("multiscale layers cannot be tuned on; open the full-resolution level as a plain layer")
        if labels.data.shape != spatial_shape(image):
            raise ValueError(f"labels '{labels.name}' {labels.data.shape} do not match image '{image.name}' "
                             f"{spatial_shape(image)}; choose the labels painted on this image")
        _check_same_grid(image, labels)
        # a copy (the user may keep painting while tuning runs), without the Segment widget's uncommitted preview
        lab, preview_only = self.hub.committed(labels)
        if preview_only:
            raise ValueError(f"labels layer '{labels.name}' holds only the Segment widget's uncommitted preview; "
                             "commit objects (C) or paint a few, then tune")
        if not lab.any():
            raise ValueError(f"labels layer '{labels.name}' is empty; paint a few objects first")
        return np.asarray(image.data), lab, bool(image.rgb)

    def start(self) -> None:
        """Start tuning on a worker (no-op while one runs)."""
        if self.run.running:
            return
        try:
            image, labels, rgb = self._inputs()
        except ValueError as err:
            self.feedback.problem(f"Tuning: {err}")
            return
        model = self.hub.model
        if getattr(model, "remote", False):
            self.feedback.problem("The model runs on a MONAI Label server: tune it there (its train task msa_tune: "
                                  "submit final labels, then train; README 'Team server'), or clear the Server field "
                                  "in Segment (MSA) and load a model to tune here.")
            return
        if model is None and not catalog.litemedsam_installed():
            self.feedback.problem("No model loaded: load one in the Segment (MSA) widget first, then press Start.")
            return
        steps = int(self.steps.value()) or None  # 0 shows as "auto"
        train_adapters, train_decoder = TRAIN_CHOICES[self.train_what.currentText()]
        settings = dict(steps=steps, lr=float(self.lr.value()), val_fraction=float(self.val_share.value()),
                        train_adapters=train_adapters, train_decoder=train_decoder, rgb=rgb,
                        normalization=self._normalization(self.image_combo.layer()))
        self.feedback.fresh()  # a new run: a problem that comes back is told again
        self.result = None
        self._label_names = dict(self.labels_combo.layer().metadata.get("label_names", {}) or {})
        self.results.setVisible(False)
        self._show_decision(False)
        self.curve.reset(steps or 1)
        self.progress.setRange(0, steps or 0)  # busy until the budget is known
        self.progress.setValue(0)
        self.status.setText("Preparing…")
        self.run.start(model, image, labels, settings)

    def cancel(self) -> None:
        """Ask the running tuning to stop; the model stays as it was."""
        if self.run.running:
            self.run.cancel()
            self.status.setText("Cancelling…")

    def _on_progress(self, p: TuneProgress) -> None:
        if p.total_steps and self.progress.maximum() != p.total_steps:  # an "auto" budget is known now
            self.progress.setRange(0, p.total_steps)
            self.curve.total = p.total_steps
        self.curve.add(p)
        if p.phase == "prepare":
            self.status.setText(p.message.capitalize() + "…")
            return
        self.progress.setValue(min(p.step, self.progress.maximum()))
        parts = [f"step {p.step}/{p.total_steps}"]
        if p.loss is not None:
            parts.append(f"loss {p.loss:.3f}")
        if p.val_dice is not None:
            parts.append(f"held-out Dice {p.val_dice:.3f} (best {p.best_val_dice:.3f})")
        if p.phase == "train":
            parts.append(f"ETA {fmt_time(p.eta_s)}")
        self.status.setText(" · ".join(parts))

    def _on_done(self, result: TuneResult) -> None:
        self._before = self.run.started_from  # what Discard goes back to
        s = result.summary
        self.progress.setValue(self.progress.maximum())
        stop = " (stopped early)" if s.stopped == "early_stopping" else ""
        done = f"Done in {fmt_time(s.time_s)}: {s.steps_done} steps{stop}"
        if s.held_out is not None:
            self.results.setText(results_table(s, self._label_names))
            self.results.setVisible(True)
        # In a short dock the table and the buttons sit below the fold: scroll to them once laid out.
        QTimer.singleShot(0, lambda: self.panel.ensureWidgetVisible(self.save_button))
        if not s.tuned:
            self.status.setText(f"{done}. No held-out check beat the model as it was, so it stays unchanged; "
                                "label more slices or objects and tune again.")
            return
        self.result = result
        dice = (f"held-out Dice {s.held_out.click_before:.3f} → {s.held_out.click_after:.3f}" if s.held_out
                else "no held-out objects, Dice not measured")
        if s.blend < 1:
            dice += f" ({s.blend:.0%} of the tuned change: it scored as well as all of it)"
        self.status.setText(f"{done}, {dice}. Segmentation uses the tuned adapter now: keep it, or discard it to go "
                            "back.")
        self.save_button.setEnabled(True)
        self._show_decision(True)
        self.hub.set_model(result.model)

    def keep(self) -> None:
        """Keep the tuned adapter (it is already in use); offer saving."""
        self._show_decision(False)
        self.status.setText("Kept: Segment (MSA) uses the tuned adapter. Save it to use it in a later session.")

    def discard(self) -> None:
        """Go back to the model tuning started from."""
        if self.result is None:
            return
        self._show_decision(False)
        self.result = None
        self.save_button.setEnabled(False)
        before = self._before
        self._before = None
        self.hub.set_model(before)
        self.status.setText("Discarded: back to the model as it was before tuning.")

    def _show_decision(self, visible: bool) -> None:
        self.keep_button.setVisible(visible)
        self.discard_button.setVisible(visible)

    def _on_cancelled(self) -> None:
        self.status.setText("Cancelled; the model is unchanged.")
        show_info("Tuning cancelled; the model is unchanged.")

    def _on_error(self, exc: BaseException) -> None:
        log.debug("tuning failed", exc_info=exc)
        self.feedback.report("tuning", exc, outcome="the model is unchanged")

    def _run_changed(self) -> None:
        try:
            self._set_running(self.run.running)
        except RuntimeError:  # the widget was closed while its run ended
            pass

    def _set_running(self, running: bool) -> None:
        self.start_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        for w in (self.image_combo, self.labels_combo, self.norm_combo, self.steps, self.lr, self.val_share,
                  self.train_what):
            w.setEnabled(not running)
        if running:
            self.save_button.setEnabled(False)

    # ============================================================================ saving
    def _choose_save_path(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save tuned adapter", "adapter.safetensors",
                                              "Adapters (*.safetensors)")
        if path:
            self.save_adapter(path)

    def save_adapter(self, path: str | Path) -> None:
        """Write the tuned adapter on a worker (atomic: a crash never leaves half a file)."""
        if self.result is None:
            self.feedback.problem("Nothing to save yet: tune first.")
            return
        path = Path(path)
        if path.suffix != ".safetensors":
            path = path.with_suffix(".safetensors")
        worker = create_worker(self.result.save, path, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(lambda out: self._saved(Path(out)))
        worker.errored.connect(lambda exc: self.feedback.problem(f"Could not save the adapter to {path}: {exc}"))
        worker.finished.connect(lambda: setattr(self, "_save_worker", None))
        self._save_worker = worker
        worker.start()

    def _saved(self, path: Path) -> None:
        self.status.setText(f"Adapter saved to {path}.")
        show_info(f"Adapter saved to {path}")
        if self.result is not None and self.hub.model is self.result.model:
            self.hub.adapter_saved.emit(self.result.model)  # both widgets' Adapter fields now name the file


def _check_same_grid(image: Image, labels: Labels) -> None:
    """Both opened from medical files: their voxel grids (affine and shape) must be the same, not only the arrays'
    shapes (a labels file of another scan, or with transposed axes, would teach the wrong voxels)."""
    from napari_msa.medical_io import GEOMETRY_KEY, Geometry, MedicalIOError, check_same_grid

    metas = [layer.metadata.get(GEOMETRY_KEY) for layer in (image, labels)]
    if not all(metas):
        return
    try:
        check_same_grid(*(Geometry.from_metadata(m) for m in metas), f"'{image.name}'", f"'{labels.name}'")
    except MedicalIOError as err:
        raise ValueError(str(err)) from err


def results_table(summary: TuneSummary, names: dict | None = None) -> str:
    """Held-out Dice before → after per label and overall, as a small HTML table; a drop is shown in red
    so a structure that got worse is seen, not averaged away."""
    names = names or {}

    def cell(before: float | None, after: float | None) -> str:
        if before is None or after is None:
            return "<td>n/a</td>"
        color = "#ff6b6b" if after < before - 0.01 else "#7bd88f" if after > before + 0.01 else None
        if color is None:  # no colour of our own: Qt's rich text draws 'color:inherit' black, whatever the theme
            return f"<td>{before:.3f} → {after:.3f}</td>"
        return f'<td>{before:.3f} → <span style="color:{color}">{after:.3f}</span></td>'

    rows = ["<tr><th align=left>held-out</th><th>1 click</th><th>box</th></tr>"]
    for label, d in summary.per_label.items():
        name = names.get(int(label), names.get(str(label), f"label {label}"))
        rows.append(f"<tr><td>{name}</td>{cell(d.click_before, d.click_after)}{cell(d.box_before, d.box_after)}</tr>")
    h = summary.held_out
    rows.append(f"<tr><td><b>all {summary.n_val_objects} objects</b></td>{cell(h.click_before, h.click_after)}"
                f"{cell(h.box_before, h.box_after)}</tr>")
    return "<table cellspacing=4>" + "".join(rows) + "</table>"


def _no_model_text() -> str:
    if catalog.litemedsam_installed():
        return "Model: none loaded; Start loads the default (LiteMedSAM + click adapter)"
    return "Model: none loaded; load one in the Segment (MSA) widget"
