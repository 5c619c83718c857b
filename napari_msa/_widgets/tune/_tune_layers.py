"""Which labels layer the Tune widget tunes on: the one the user is annotating on the chosen image's grid."""

from __future__ import annotations

from collections.abc import Callable

from napari.layers import Labels

from .._controls import LayerChoice
from .._layers import spatial_shape


class AnnotatedLabels:
    """Follows the labels layers' edits and the layer selection, and keeps the Labels field on the layer being
    annotated: the one last selected or painted on the image's grid, else the current choice if it fits, else
    the newest that fits (a sample's ground truth usually comes first)."""

    def __init__(self, viewer, image_combo: LayerChoice, labels_combo: LayerChoice,
                 frozen: Callable[[], bool], preview_only: Callable[[Labels], bool] = lambda layer: False) -> None:
        self.viewer = viewer
        self.preview_only = preview_only  # a layer holding only the Segment widget's preview is no annotation
        self.image_combo = image_combo
        self.labels_combo = labels_combo
        self.frozen = frozen  # while tuning runs, what is being tuned on stays shown
        self._recent: list = []  # labels layers, least to most recently selected or painted
        self._watched: list = []  # labels layers whose edits we follow

    def refresh(self, *_) -> None:
        """The layer list changed: both fields, the edits followed and the choice follow it."""
        self.image_combo.refresh(self.viewer.layers)
        self.labels_combo.refresh(self.viewer.layers)
        present = [layer for layer in self.viewer.layers if isinstance(layer, Labels)]
        for layer in [ly for ly in self._watched if ly not in present]:
            self._unwatch(layer)
        for layer in [ly for ly in present if ly not in self._watched]:
            layer.events.paint.connect(self.edited)
            layer.events.data.connect(self.edited)
            layer.events.set_data.connect(self.redrawn)
            self._watched.append(layer)
        self._recent = [ly for ly in self._recent if ly in present]
        self.active_changed()
        self.pick()

    def _unwatch(self, layer) -> None:
        layer.events.paint.disconnect(self.edited)
        layer.events.data.disconnect(self.edited)
        layer.events.set_data.disconnect(self.redrawn)
        self._watched.remove(layer)

    def release(self) -> None:
        """Stop following the labels layers' edits (the widget is closed or undocked)."""
        for layer in list(self._watched):
            self._unwatch(layer)

    def _touch(self, layer) -> None:
        if layer in self._recent:
            self._recent.remove(layer)
        self._recent.append(layer)

    def edited(self, event) -> None:
        layer = getattr(event, "source", None)
        if isinstance(layer, Labels):
            self._touch(layer)
            self.pick()

    def redrawn(self, event) -> None:
        """The chosen layer was redrawn: if all it holds now is the Segment widget's preview, choose again."""
        layer = getattr(event, "source", None)
        if layer is not None and layer == self.labels_combo.layer() and self.preview_only(layer):
            self.pick()

    def active_changed(self, *_) -> None:
        active = self.viewer.layers.selection.active
        if isinstance(active, Labels):
            self._touch(active)
            self.pick()

    def pick(self, *_) -> None:
        """Choose the labels layer being annotated on the image's grid (see the class)."""
        if self.frozen():
            return
        image, current = self.image_combo.layer(), self.labels_combo.layer()
        if image is None:
            return
        shape = spatial_shape(image)
        fits = [ly for ly in self.viewer.layers if isinstance(ly, Labels) and ly.data.shape == shape]
        fits = [ly for ly in fits if not self.preview_only(ly)] or fits
        recent = [ly for ly in self._recent if ly in fits]
        if recent:
            choice = recent[-1]
        elif current is not None and current in fits:
            choice = current
        elif fits:
            choice = fits[-1]
        else:
            return
        if choice != current:
            self.labels_combo.choose(choice)
