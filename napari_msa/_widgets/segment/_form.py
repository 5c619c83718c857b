"""The Segment widget's fields below the model: image and prompts, output, keys and activity.

Like a Designer form: a ``SegmentForm`` makes the controls (its attributes) and lays them out; the widget that
owns it connects their signals to its methods and does the work behind them.
"""

from __future__ import annotations

from napari.layers import Image, Labels, Points, Shapes
from qtpy.QtWidgets import QCheckBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QPushButton, QSpinBox, QVBoxLayout

from .. import _normalization
from .._controls import ElidingComboBox, LayerChoice, PathPicker
from ._recovery import RecoveryOffer
from ._segment_layers import NEW, NONE


class SegmentForm:
    """The fields, added to ``root``; ``keys_help`` is the tooltip of the keys line."""

    def __init__(self, root: QVBoxLayout, keys_help: str) -> None:
        data_box = QGroupBox("Image and prompts")
        form = QFormLayout(data_box)
        self.image_choice = LayerChoice(Image, tooltip="The image to segment: 2D, RGB, or a (Z,Y,X) volume")
        form.addRow("Image", self.image_choice)
        self.norm_combo = ElidingComboBox()
        self.norm_combo.addItems(list(_normalization.CHOICES))
        self.norm_combo.setToolTip(_normalization.TIP)
        form.addRow("Normalisation", self.norm_combo)
        self.points_choice = LayerChoice(Points, (NEW,), "Prompt points: green positive, red negative. "
                                         "'(new)' creates '<image> prompts'.")
        form.addRow("Points", self.points_choice)
        self.shapes_choice = LayerChoice(Shapes, (NEW, NONE), "Box prompts: select '<image> boxes' (created for you, "
                                         "in rectangle mode) and drag a box around the object; the last rectangle "
                                         "on a slice is its box. '(new)' creates the layer, '(none)' ignores boxes.")
        form.addRow("Boxes", self.shapes_choice)
        embed_row = QHBoxLayout()
        self.cache_folder = PathPicker("optional folder for embeddings", "", "A folder where slice embeddings are "
                                       "kept on disk and found again next time (also those `napari-msa embed "
                                       "--cache-dir FOLDER` made). Empty: kept in memory only.", folder=True)
        self.embed_button = _button("Embed volume", "Embed every slice in the background (progress and time left "
                                    "in napari's activity dock), so a click on any slice answers at once; press "
                                    "again to stop")
        embed_row.addWidget(self.cache_folder, 1)
        embed_row.addWidget(self.embed_button)
        form.addRow("Embeddings", embed_row)
        self.sign_button = _button("", "Sign of new points (T toggles): positive adds area, negative removes it")
        form.addRow("New points", self.sign_button)
        root.addWidget(data_box)

        out_box = QGroupBox("Output")
        form = QFormLayout(out_box)
        self.recovery_offer = RecoveryOffer()  # shown when there is one
        form.addRow(self.recovery_offer)
        self.labels_choice = LayerChoice(Labels, (NEW,), "Where masks go; '(new)' creates '<image> labels'")
        form.addRow("Labels", self.labels_choice)
        self.object_id = QSpinBox()
        self.object_id.setRange(1, 2**31 - 1)
        self.object_id.setToolTip("Id of the object being segmented; commit moves to the next free id")
        form.addRow("Object id", self.object_id)
        self.overwrite = QCheckBox("overwrite other objects")
        self.overwrite.setToolTip("Off: pixels of other objects are never changed")
        form.addRow(self.overwrite)
        self.refine = QCheckBox("refine the object where it exists")
        self.refine.setToolTip("On: set Object id to an object already in the labels and click on a slice where it "
                               "is: your clicks start from the object as it is (a negative click trims it, a positive "
                               "one extends it); Commit replaces the object on that slice (and on slices propagated "
                               "to) by the new mask (Ctrl+Z undoes) and stays on the object. Off: a new mask is added "
                               "to the object")
        form.addRow(self.refine)
        buttons = QHBoxLayout()
        self.commit_button = _button("Commit (C)", "Make the preview final (one undo step: Ctrl+Z on the prompts or "
                                     "the labels layer) and start a new object")
        self.clear_button = _button("Clear (X)", "Drop the prompts and the preview of the current object")
        self.propagate_button = _button("Propagate (Shift+S)",
                                        "Carry the object from this slice through the volume; press again to cancel")
        for b in (self.commit_button, self.clear_button, self.propagate_button):
            buttons.addWidget(b)
        form.addRow(buttons)
        everything = QHBoxLayout()
        self.everything_button = _button("Segment everything", "Find every object on the slice shown (a grid of "
                                         "clicks; up to a minute on a CPU) as candidates in '<image> candidates': "
                                         "click one to keep it; again to cancel")
        self.keep_all_button = _button("Keep all", "Keep every candidate of 'Segment everything' as an object of "
                                       "the labels")
        everything.addWidget(self.everything_button)
        everything.addWidget(self.keep_all_button)
        form.addRow(everything)
        root.addWidget(out_box)

        keys = QLabel("Keys: <b>T</b> ± · <b>C</b> commit · <b>X</b> clear · <b>Shift+S</b> propagate · "
                      "<b>N</b> next mask of a click · Ctrl+Z undo (hover for more)")
        keys.setWordWrap(True)
        keys.setToolTip(keys_help)
        root.addWidget(keys)
        self.activity = QLabel()  # what runs now (loading, embedding, predicting, propagating); empty when idle
        self.activity.setToolTip("Work in progress; napari's activity dock (bottom right) shows its progress")
        self.activity.setStyleSheet("color: #9ab8d8")
        self.activity.setWordWrap(True)
        self.activity.hide()
        root.addWidget(self.activity)


def _button(text: str, tooltip: str) -> QPushButton:
    button = QPushButton(text)
    button.setToolTip(tooltip)
    return button
