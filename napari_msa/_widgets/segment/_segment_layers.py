"""The Segment widget's layer bookkeeping: its own prompt and labels layers, their order, events and keys.

No state of the object being segmented lives here (that is ``object_draft``) and no engine is called.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from napari.layers import Image, Labels, Points, Shapes

from .. import _layers
from .._controls import LayerChoice

NEW = "(new)"  # a layer field's choice: the image's own layer, made when needed
NONE = "(none)"  # the Boxes field's choice: no box prompts
KEYS = {"T": "toggle_positive", "C": "commit", "X": "clear", "Shift-S": "propagate", "N": "next_mask"}
# On the widget's prompt layers only (the viewer keeps napari's meaning): the chosen labels layer's history, so
# Ctrl+Z works where the user just clicked; Points and Shapes layers have no undo of their own.
HISTORY_KEYS = {"Control-Z": "undo", "Control-Shift-Z": "redo"}


def own_prompt_layer(viewer, image: Image, kind: type) -> Points | Shapes:
    """The image's '<image> prompts' (Points) or '<image> boxes' (Shapes, rectangle mode), created if missing.

    Boxes go below the points, so a click on a point is never taken by a rectangle's edge.
    """
    name = _layers.prompt_points_name(image) if kind is Points else _layers.prompt_boxes_name(image)
    layer = next((ly for ly in viewer.layers if isinstance(ly, kind) and ly.name == name), None)
    if layer is not None:
        return layer
    active = viewer.layers.selection.active
    layer = viewer.add_layer(_layers.new_prompt_points(image) if kind is Points else _layers.new_prompt_boxes(image))
    points = viewer.layers[_layers.prompt_points_name(image)] if kind is Shapes and \
        _layers.prompt_points_name(image) in viewer.layers else None
    if points is not None:
        viewer.layers.move(viewer.layers.index(layer), viewer.layers.index(points))
    if active is not None and kind is Shapes:
        viewer.layers.selection.active = active
    return layer


def own_labels(viewer, image: Image) -> Labels | None:
    """The image's '<image> labels' layer if there is one."""
    name = f"{image.name} labels"
    return next((ly for ly in viewer.layers if isinstance(ly, Labels) and ly.name == name), None)


def add_labels_below(viewer, image: Image, prompts: list) -> Labels:
    """A new '<image> labels' layer, drawn under the prompt layers; the selected layer stays selected."""
    active = viewer.layers.selection.active
    labels = viewer.add_layer(_layers.new_labels(image))
    above = [viewer.layers.index(ly) for ly in prompts if ly is not None and ly in viewer.layers]
    if above:  # keep the prompts drawn above the masks
        viewer.layers.move(viewer.layers.index(labels), min(above))
    if active is not None:
        viewer.layers.selection.active = active
    return labels


def clear_prompts(points: Points | None, shapes: Shapes | None) -> None:
    """Empty the prompt layers (their events then find nothing to predict)."""
    if points is not None and len(points.data):
        points.data = np.empty((0, points.ndim))
    if shapes is not None:
        boxes = {i for i, kind in enumerate(shapes.shape_type) if kind == "rectangle"}
        if boxes:
            shapes.selected_data = boxes
            shapes.remove_selected()


class PromptFollower:
    """Follows the chosen prompt layers' changes and binds the widget's keys on them (and on the viewer)."""

    def __init__(self, on_change: Callable, actions: Callable[[str], Callable]) -> None:
        self.on_change = on_change
        self.actions = actions  # key action name → a key callback named 'msa_<action>'
        self.layers: list = []

    def follow(self, chosen: list, own_boxes: str | None) -> None:
        """Listen to ``chosen`` only; keys act on points and on the widget's own box layer (a Shapes layer the
        user brought keeps napari's shortcuts)."""
        for layer in self.layers:
            self._disconnect(layer)
            if layer not in chosen:
                unbind_keys(layer)
        self.layers = list(chosen)
        for layer in self.layers:
            layer.events.data.connect(self.on_change)
            if isinstance(layer, Points):
                layer.events.features.connect(self.on_change)
            if isinstance(layer, Points) or layer.name == own_boxes:
                bind_keys(layer, self.actions, {**KEYS, **HISTORY_KEYS})

    def _disconnect(self, layer) -> None:
        layer.events.data.disconnect(self.on_change)
        if isinstance(layer, Points):
            layer.events.features.disconnect(self.on_change)

    def release(self) -> None:
        for layer in self.layers:
            self._disconnect(layer)
            unbind_keys(layer)
        self.layers = []


def bind_keys(provider, actions: Callable[[str], Callable], keys: dict[str, str] = KEYS) -> None:
    for key, action in keys.items():
        provider.bind_key(key, actions(action), overwrite=True)


def unbind_keys(provider) -> None:
    """Remove this widget's key bindings from a viewer or layer, leaving anyone else's in place."""
    for key in (*KEYS, *HISTORY_KEYS):
        try:
            unbound = provider.bind_key(key, None)
        except (KeyError, ValueError):
            continue
        if unbound is not None and not getattr(unbound, "__name__", "").startswith("msa_"):
            provider.bind_key(key, unbound)  # someone else's binding: put it back


class SegmentLayers:
    """The layers the Segment widget works on, as chosen in its four layer fields, kept in step with the viewer.

    ``(new)`` in a field means the image's own layer: '<image> prompts', '<image> boxes' (made as soon as the
    image is chosen) and '<image> labels' (made on the first mask).
    """

    def __init__(self, viewer, image: LayerChoice, points: LayerChoice, shapes: LayerChoice,
                 labels: LayerChoice) -> None:
        self.viewer = viewer
        self.choices = {"image": image, "points": points, "shapes": shapes, "labels": labels}

    def image(self) -> Image | None:
        return self.choices["image"].layer()

    def points(self) -> Points | None:
        return self.choices["points"].layer()

    def shapes(self) -> Shapes | None:
        return self.choices["shapes"].layer()

    def labels(self) -> Labels | None:
        return self.choices["labels"].layer()

    def prompts(self) -> list:
        return [ly for ly in (self.points(), self.shapes()) if ly is not None]

    def own_boxes_name(self) -> str | None:
        image = self.image()
        return None if image is None else _layers.prompt_boxes_name(image)

    def in_use(self, layer) -> bool:
        return layer in (self.image(), self.labels(), self.points(), self.shapes())

    def refresh(self) -> None:
        for choice in self.choices.values():
            choice.refresh(self.viewer.layers)

    def adopt(self, image: Image) -> Points:
        """A new image: choose its own prompt layers (made if missing) and its labels, if it has some."""
        points = own_prompt_layer(self.viewer, image, Points)
        boxes = own_prompt_layer(self.viewer, image, Shapes)
        self.refresh()
        choose_quietly(self.choices["points"], points)  # the caller acts once, not once per field
        choose_quietly(self.choices["shapes"], boxes)
        labels = own_labels(self.viewer, image)
        self.choices["labels"].choose(labels if labels is not None else NEW)
        return points

    def adopt_new_prompt_layers(self) -> None:
        """'(new)' in Points or Boxes: the image's own layer, found or made."""
        image = self.image()
        if image is None:
            return
        for key, kind in (("points", Points), ("shapes", Shapes)):
            choice = self.choices[key]
            if choice.currentText() == NEW:
                layer = own_prompt_layer(self.viewer, image, kind)
                choice.refresh(self.viewer.layers)
                choose_quietly(choice, layer)

    def labels_to_write(self, image: Image) -> tuple[Labels, bool]:
        """The chosen labels layer, or '<image> labels' made now for '(new)'; and whether it was made."""
        labels = self.labels()
        if labels is not None:
            return labels, False
        labels = add_labels_below(self.viewer, image, [self.points(), self.shapes()])
        self.choices["labels"].refresh(self.viewer.layers)
        choose_quietly(self.choices["labels"], labels)
        return labels, True


def choose_quietly(choice: LayerChoice, layer) -> None:
    """Choose without the change signal (the caller acts once for several changes)."""
    choice.blockSignals(True)
    choice.choose(layer)
    choice.blockSignals(False)
