"""'Segment everything' in the Segment widget: the engine's grid of clicks on a worker, its candidates in a labels
layer of their own, and a click on a candidate to keep it as an object of the user's labels (one undo step)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels

from .. import _layers
from .._workers import CancellableRun, Failure, ImageFeed, ImageSource

if TYPE_CHECKING:  # annotations only: importing this module must not load torch
    from napari_msa.engine import Session


def candidates_name(image: Image) -> str:
    return f"{image.name} candidates"


class EverythingRun(CancellableRun):
    """Finds every object on one slice on a worker; cancellable between batches of clicks, with progress."""

    def __init__(self, feed: ImageFeed, on_done: Callable[[int, np.ndarray, int], None],
                 on_error: Callable[[BaseException], None], on_change: Callable[[], None] | None = None) -> None:
        super().__init__(on_change)
        self.feed = feed
        self.on_done = on_done  # (slice, labels plane of the candidates, how many)
        self.on_error = on_error

    def start(self, session: Session, source: ImageSource, z: int) -> None:
        from napari_msa.engine.inference.everything import EverythingSettings

        total = EverythingSettings.coarse_per_side ** 2 + EverythingSettings.points_per_side ** 2
        token = self._token
        self._launch(f"MSA: segmenting everything on slice {z}", total, self._run, session, source, z,
                     on_returned=lambda value: self._returned(token, value))

    def _run(self, session: Session, source: ImageSource, z: int) -> tuple[int, np.ndarray, int] | None:
        from napari_msa.engine import Cancelled
        from napari_msa.engine.inference.everything import segment_everything, to_labels

        self.feed.prepare(session, source)
        try:
            found = segment_everything(session, z, progress=self._relay.stepped.emit, cancel=self._cancel.is_set)
        except Cancelled:
            return None
        return z, to_labels(found, session.plane_shape), len(found)

    def _returned(self, token: int, value: Any) -> None:
        if token != self._token or value is None:
            return
        if isinstance(value, Failure):
            self.on_error(value.error)
        else:
            self.on_done(*value)


def show_candidates(viewer, image: Image, z: int | None, plane: np.ndarray) -> Labels:
    """The image's '<image> candidates' layer (made if missing, placed like the image) holding ``plane`` on slice
    ``z`` (the whole of a 2D image); other slices keep the candidates found there before."""
    name = candidates_name(image)
    layer = next((ly for ly in viewer.layers if isinstance(ly, Labels) and ly.name == name), None)
    if layer is None:
        layer = viewer.add_layer(_layers.new_labels(image))
        layer.name = name
        layer.opacity = 0.45
    data = layer.data
    if z is None:
        data[...] = plane
    else:
        data[z] = plane
    layer.refresh()
    return layer


def take_candidate(candidates: Labels, z: int | None, value: int) -> np.ndarray:
    """Remove candidate ``value`` from its slice of the candidates layer and return its mask."""
    plane = candidates.data if z is None else candidates.data[z]
    mask = plane == value
    plane[mask] = 0
    candidates.refresh()
    return mask


class EverythingTool:
    """The widget's side: start (or cancel) a run on the slice shown, show its candidates, keep them on click."""

    def __init__(self, viewer, editor, feedback, source: Callable[[Image], ImageSource],
                 need_model: Callable[[], None]) -> None:
        self.viewer, self.editor, self.feedback = viewer, editor, feedback
        self.source, self.need_model = source, need_model
        self._clickable: set[int] = set()  # ids of the candidate layers that keep a candidate on click

    def run(self) -> None:
        jobs = self.editor.jobs
        if jobs.everything.running:
            jobs.everything.cancel()
            return
        image = self.editor.usable_image()
        if image is None:
            self.feedback.problem("Open or choose an image layer first (the Image field above).")
            return
        if jobs.session is None:
            self.need_model()
            return
        if jobs.remote:
            self.feedback.tell("Segment everything runs with a model on this machine, not on a server: clear the "
                               "Server field and load a model for it.")
            return
        z = _layers.current_plane(self.viewer, image)
        jobs.prefetcher.stop()
        jobs.everything.start(jobs.session, self.source(image), z)
        where = f" on slice {z}" if _layers.is_volume(image) else ""
        self.feedback.set(f"Segmenting everything{where} (a grid of clicks, up to a minute on a CPU); press "
                          "'Segment everything' again to cancel.")

    def found(self, z: int, plane: np.ndarray, count: int) -> None:
        image = self.editor.usable_image(tell=False)
        if image is None or plane.shape != _layers.spatial_shape(image)[-2:]:
            return  # the image changed meanwhile: the candidates answer another one
        layer = show_candidates(self.viewer, image, z if _layers.is_volume(image) else None, plane)
        if id(layer) not in self._clickable:
            layer.mouse_drag_callbacks.append(self._clicked)
            self._clickable.add(id(layer))
        self.viewer.layers.selection.active = layer
        layer.mode = "pan_zoom"
        self.feedback.set(f"{count} candidate objects in '{layer.name}': click one to keep it as a new object of "
                          "your labels (Ctrl+Z on the labels undoes), 'Keep all' keeps every one; delete the layer "
                          "to drop them.")

    def _clicked(self, layer: Labels, event) -> None:
        value = layer.get_value(event.position, world=True)
        if isinstance(value, tuple):  # multiscale layers answer (level, value)
            value = value[-1]
        if not value:
            return
        image = self.editor.usable_image()
        if image is None:
            return
        z = _layers.current_plane(self.viewer, image) if _layers.is_volume(image) else None
        self._keep(layer, image, {z: int(value)})

    def keep_all(self) -> None:
        image = self.editor.usable_image()
        layer = None if image is None else next((ly for ly in self.viewer.layers if isinstance(ly, Labels)
                                                 and ly.name == candidates_name(image)), None)
        if layer is None:
            self.feedback.tell("No candidates to keep: press 'Segment everything' first.")
            return
        if _layers.is_volume(image):
            picks = [(z, int(v)) for z in range(layer.data.shape[0]) for v in np.unique(layer.data[z]) if v]
        else:
            picks = [(None, int(v)) for v in np.unique(layer.data) if v]
        kept = sum(self._keep(layer, image, {z: v}, quiet=True) for z, v in picks)
        self.feedback.set(f"Kept {kept} candidate objects as objects of your labels.")

    def _keep(self, layer: Labels, image: Image, pick: dict, quiet: bool = False) -> int:
        """Write one candidate as the next free id of the chosen labels (one undo step); 1 when written."""
        if self.editor.draft:
            self.feedback.tell("Commit (C) or clear (X) the object you are segmenting first; then keep candidates.")
            return 0
        try:
            writer = self.editor.ensure_writer()
        except _layers.PromptError as exc:
            self.feedback.problem(str(exc))
            return 0
        if writer is None:
            return 0
        (z, value), = pick.items()
        mask = take_candidate(layer, z, value)
        labels = writer.layer
        obj = int(np.max(labels.data, initial=0)) + 1
        written = writer.commit({0 if z is None else z: mask}, obj, overwrite=False)
        self.editor.object_id.setValue(int(np.max(labels.data, initial=0)) + 1)
        self.editor.on_written()
        if not quiet:
            self.feedback.set(f"Kept candidate as object {obj} ({written} px) in '{labels.name}'; click another, "
                              "or Ctrl+Z on the labels to undo.")
        return 1 if written else 0
