"""The Segment widget's fields below the model: image and prompts, output, keys, activity and status.

Like a Designer form: ``build`` makes the controls as attributes of the widget and connects them to its
methods; the widget does the wiring behind them.
"""

from __future__ import annotations

from napari.layers import Image, Labels, Points, Shapes
from qtpy.QtWidgets import QCheckBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QPushButton, QSpinBox, QVBoxLayout

from .. import _normalization
from .._controls import ElidingComboBox, LayerChoice, PathPicker
from ._recovery import RecoveryOffer
from ._segment_layers import NEW, NONE


def build(w, root: QVBoxLayout) -> None:
    """Add the fields to ``root``; ``w`` (the Segment widget) gets them as attributes."""
    data_box = QGroupBox("Image and prompts")
    form = QFormLayout(data_box)
    w.image_choice = LayerChoice(Image, tooltip="The image to segment: 2D, RGB, or a (Z,Y,X) volume")
    w.image_choice.currentIndexChanged.connect(w._on_image_chosen)
    form.addRow("Image", w.image_choice)
    w.norm_combo = ElidingComboBox()
    w.norm_combo.addItems(list(_normalization.CHOICES))
    w.norm_combo.setToolTip(_normalization.TIP)
    w.norm_combo.currentIndexChanged.connect(w._on_normalization_changed)
    form.addRow("Normalisation", w.norm_combo)
    w.points_choice = LayerChoice(Points, (NEW,), "Prompt points: green positive, red negative. "
                                  "'(new)' creates '<image> prompts'.")
    w.points_choice.currentIndexChanged.connect(w._on_prompt_layers_chosen)
    form.addRow("Points", w.points_choice)
    w.shapes_choice = LayerChoice(Shapes, (NEW, NONE), "Box prompts: select '<image> boxes' (created for you, in "
                                  "rectangle mode) and drag a box around the object; the last rectangle on a "
                                  "slice is its box. '(new)' creates the layer, '(none)' ignores boxes.")
    w.shapes_choice.currentIndexChanged.connect(w._on_prompt_layers_chosen)
    form.addRow("Boxes", w.shapes_choice)
    embed_row = QHBoxLayout()
    w.cache_folder = PathPicker("optional folder for embeddings", "", "A folder where slice embeddings are kept on "
                                "disk and found again next time (also those `napari-msa embed --cache-dir FOLDER` "
                                "made). Empty: kept in memory only.", folder=True)
    w.cache_folder.edit.textChanged.connect(w._on_cache_folder_changed)
    w.embed_button = _button("Embed volume", w.embed_volume, "Embed every slice in the background (progress and "
                             "time left in napari's activity dock), so a click on any slice answers at once; press "
                             "again to stop")
    embed_row.addWidget(w.cache_folder, 1)
    embed_row.addWidget(w.embed_button)
    form.addRow("Embeddings", embed_row)
    w.sign_button = _button("", w.toggle_positive,
                            "Sign of new points (T toggles): positive adds area, negative removes it")
    form.addRow("New points", w.sign_button)
    root.addWidget(data_box)

    out_box = QGroupBox("Output")
    form = QFormLayout(out_box)
    w.recovery_offer = RecoveryOffer(w.restore_recovered, w.discard_recovered)  # shown when there is one
    form.addRow(w.recovery_offer)
    w.labels_choice = LayerChoice(Labels, (NEW,), "Where masks go; '(new)' creates '<image> labels'")
    w.labels_choice.currentIndexChanged.connect(w._on_labels_chosen)
    form.addRow("Labels", w.labels_choice)
    w.object_id = QSpinBox()
    w.object_id.setRange(1, 2**31 - 1)
    w.object_id.setToolTip("Id of the object being segmented; commit moves to the next free id")
    w.object_id.valueChanged.connect(w._repaint_preview)
    w.object_id.valueChanged.connect(w._on_object_id_changed)
    form.addRow("Object id", w.object_id)
    w.overwrite = QCheckBox("overwrite other objects")
    w.overwrite.setToolTip("Off: pixels of other objects are never changed")
    w.overwrite.toggled.connect(w._repaint_preview)
    form.addRow(w.overwrite)
    w.refine = QCheckBox("refine the object where it exists")
    w.refine.setToolTip("On: set Object id to an object already in the labels and click on a slice where it is: "
                        "your clicks start from the object as it is (a negative click trims it, a positive one "
                        "extends it); Commit replaces the object on that slice (and on slices propagated to) by "
                        "the new mask (Ctrl+Z undoes) and stays on the object. Off: a new mask is added to the object")
    w.refine.toggled.connect(w._on_refine_toggled)
    form.addRow(w.refine)
    buttons = QHBoxLayout()
    w.commit_button = _button("Commit (C)", w.commit, "Make the preview final (one undo step: Ctrl+Z on the prompts "
                              "or the labels layer) and start a new object")
    w.clear_button = _button("Clear (X)", w.clear, "Drop the prompts and the preview of the current object")
    w.propagate_button = _button("Propagate (Shift+S)", w.propagate,
                                 "Carry the object from this slice through the volume; press again to cancel")
    for b in (w.commit_button, w.clear_button, w.propagate_button):
        buttons.addWidget(b)
    form.addRow(buttons)
    everything = QHBoxLayout()
    w.everything_button = _button("Segment everything", w.segment_everything,
                                  "Find every object on the slice shown (a grid of clicks; up to a minute on a CPU) "
                                  "as candidates in '<image> candidates': click one to keep it; again to cancel")
    w.keep_all_button = _button("Keep all", w.keep_all_candidates,
                                "Keep every candidate of 'Segment everything' as an object of the labels")
    everything.addWidget(w.everything_button)
    everything.addWidget(w.keep_all_button)
    form.addRow(everything)
    root.addWidget(out_box)

    keys = QLabel("Keys: <b>T</b> ± · <b>C</b> commit · <b>X</b> clear · <b>Shift+S</b> propagate · "
                  "<b>N</b> next mask of a click · Ctrl+Z undo (hover for more)")
    keys.setWordWrap(True)
    keys.setToolTip(type(w).__doc__)
    root.addWidget(keys)
    w.activity = QLabel()  # what runs now (loading, embedding, predicting, propagating); empty when idle
    w.activity.setToolTip("Work in progress; napari's activity dock (bottom right) shows its progress")
    w.activity.setStyleSheet("color: #9ab8d8")
    w.activity.setWordWrap(True)
    w.activity.hide()
    root.addWidget(w.activity)
    root.addWidget(w.status)
    root.addStretch(1)


def _button(text: str, clicked, tooltip: str) -> QPushButton:
    button = QPushButton(text)
    button.setToolTip(tooltip)
    button.clicked.connect(clicked)
    return button
