"""The object being segmented, on napari's side: prompts in the chosen layers → requests on the workers → a
preview painted in the labels layer → commit, clear, propagate.

The decisions and the state are the ``ObjectDraft``'s (Qt-free, tested alone); this class carries them out on
the layers, the workers and the status line. The Segment widget wires it to its controls and keys.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import partial

import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_info
from qtpy.QtWidgets import QCheckBox, QSpinBox

from .. import _layers
from .._feedback import Feedback
from .._workers import ImageSource, predict_planes
from . import _segment_layers
from ._jobs import SegmentJobs
from ._labels_writer import LabelsWriter
from .object_draft import ObjectDraft

CANDIDATES = 3  # SAM's masks for an ambiguous prompt


class ObjectEditor:
    """One object at a time: its draft, and the writer that shows it in the labels layer until it is committed."""

    def __init__(self, viewer, layers: _segment_layers.SegmentLayers, feedback: Feedback, object_id: QSpinBox,
                 overwrite: QCheckBox, refine: QCheckBox, source: Callable[[Image], ImageSource],
                 need_model: Callable[[], None], schedule: Callable[[], None]) -> None:
        self.viewer = viewer
        self.layers = layers
        self.feedback = feedback
        self.object_id = object_id
        self.overwrite = overwrite
        self.refine = refine  # the object's pixels on a prompted slice are the starting point, and replaced
        self.source = source  # the image as the engine gets it (normalisation chosen in the widget)
        self.need_model = need_model  # prompts came before a model: load one
        self.schedule = schedule  # ask again once the events of this user action are over
        self.jobs: SegmentJobs | None = None  # set by the widget (the jobs report back to this editor)
        self.draft = ObjectDraft()
        self.writer: LabelsWriter | None = None
        self.on_written: Callable[[], None] = lambda: None  # the committed labels changed (autosave)
        self.choices: dict[int, tuple[tuple, int]] = {}  # slice → (its lone click's signature, mask chosen with N)
        self.ambiguous: dict[int, int] = {}  # slices of the request in flight that were a lone click → mask shown

    def usable_image(self, tell: bool = True) -> Image | None:
        """The chosen image if the engine can segment it; else None (and ``tell``: the problem is told)."""
        image = self.layers.image()
        if image is not None:
            try:
                _layers.check_image(image)
            except _layers.PromptError as exc:
                if tell:
                    self.feedback.problem(str(exc))
                return None
        return image

    def _shown(self) -> bool:
        return self.writer is not None and self.writer.layer in self.viewer.layers

    # ============================================================================ prompts → preview
    def update(self) -> None:
        """Send the slices whose prompts changed to the engine; the newest request wins.

        A request carries every slice whose preview does not match its prompts, so dropping an older
        request's result never loses a slice. Nothing changed (e.g. a features event after a data
        event): nothing is sent and the request in flight stays valid.
        """
        predictions = self.jobs.predictions
        image = self.usable_image()
        if image is None:
            predictions.invalidate()  # what is in flight answers prompts the user is fixing
            return
        try:
            prompts, ignored = _layers.collect_prompts(image, self.layers.points(), self.layers.shapes())
        except _layers.PromptsChanging:
            predictions.invalidate()
            self.schedule()
            return
        self.feedback.show_ignored(ignored)
        if prompts and self.jobs.session is not None and self.writer is None:
            try:  # the request needs the labels layer when refining (the object as committed)
                self.ensure_writer()
            except _layers.PromptError as exc:
                self.feedback.problem(str(exc))
                return
        prompts = {z: self._request(z, p) for z, p in prompts.items()} if self.writer is not None else prompts
        update = self.draft.update({z: p.signature() for z, p in prompts.items()}, predictions.latest)
        if update.stale:
            predictions.invalidate()  # what is in flight answers prompts that no longer exist
        if self.writer is not None:
            for z in update.dropped:
                self.writer.clear(z)
        if not update.todo:
            return  # up to date, or the request in flight already answers exactly these prompts
        if self.jobs.session is None:
            self.need_model()
            return
        try:
            self.ensure_writer()
        except _layers.PromptError as exc:
            self.feedback.problem(str(exc))
            return
        todo = {z: prompts[z] for z in update.todo}
        self.ambiguous = {z: p.candidate for z, p in todo.items() if p.ambiguous}
        job = partial(predict_planes, self.jobs.session, self.jobs.feed, self.source(image), _layers.is_volume(image),
                      todo)
        self.draft.sent(predictions.submit(job), update.todo)

    def predicted(self, request: int, result: dict[int, tuple[np.ndarray, float]]) -> None:
        """The newest request's masks: they become the preview."""
        if not self._shown():
            self.draft.unanswered(request)
            self.feedback.tell("The labels layer was removed while predicting; nothing was written. Choose a "
                               "labels layer (or '(new)') in the Labels field.", warning=True)
            return
        masks = self.draft.answered(request, {z: mask for z, (mask, _score) in result.items()})
        painted = self._paint(masks)
        self.jobs.prefetch_windows(sorted(result))
        where = "" if not _layers.is_volume(self.layers.image()) else f"slice {', '.join(map(str, sorted(result)))}: "
        scores = ", ".join(f"{s:.2f}" for _, s in result.values())
        choice = [f"mask {self.ambiguous[z] + 1} of {CANDIDATES}" for z in result if z in self.ambiguous]
        hint = f"; {choice[0]} for this click (N: next)" if len(choice) == 1 else ""
        hidden = sum(int(np.count_nonzero(m)) for m in masks.values()) - painted
        if hidden > max(0.1 * painted, 8) and not self.overwrite.isChecked():  # most of it under other objects
            hint += (f"; {hidden} px of the mask lie on other objects and were left to them (tick 'overwrite other "
                     "objects' to take them)")
        self.feedback.result(f"Object {self.object_id.value()} — {where}{painted} px, predicted IoU {scores}{hint}")

    def _request(self, z: int, prompts: _layers.PlanePrompts) -> _layers.PlanePrompts:
        """The slice's prompts as the engine gets them: with the mask the user chose for a lone click, and when
        refining, the object as committed there (the engine's rule decides how either joins the clicks)."""
        refining = self.refine.isChecked() and self.writer is not None
        prior = self.writer.committed(z, self.object_id.value()) if refining else None
        prompts = replace(prompts, prior=prior if prior is not None and prior.any() else None)
        chosen = self.choices.get(z)
        starts_alone = len(prompts.points) and prompts.box is None and prompts.prior is None
        if starts_alone and chosen is not None and chosen[0] == _first_click(prompts):
            prompts = replace(prompts, candidate=chosen[1])  # later clicks go on from the mask chosen
        return prompts

    def next_mask(self) -> None:
        """N: a lone click is ambiguous (the vertebral body or the whole vertebra): show the model's next mask."""
        image = self.usable_image()
        if image is None or self.jobs.session is None:
            self.feedback.tell("Click on an object first; N then shows the model's other masks for that click.")
            return
        z = _layers.current_plane(self.viewer, image)
        try:
            prompts, _ = _layers.collect_prompts(image, self.layers.points(), self.layers.shapes())
        except _layers.PromptsChanging:
            return
        plane = prompts.get(z)
        if plane is None or not self._request(z, plane).ambiguous:
            self.feedback.tell("N chooses among the masks of a single click (no box, not refining); after more "
                               "clicks the model gives one mask.")
            return
        current = self._request(z, plane).candidate
        self.choices[z] = (_first_click(plane), (current + 1) % CANDIDATES)
        self.update()

    def _paint(self, masks: dict[int, np.ndarray]) -> int:
        """Show ``masks`` as the current object's preview; returns the pixels painted."""
        obj, overwrite, refine = self.object_id.value(), self.overwrite.isChecked(), self.refine.isChecked()
        painted = sum(self.writer.set_preview(z, m, obj, overwrite, refresh=False, replace=refine)
                      for z, m in masks.items())
        self.writer.layer.refresh()
        return painted

    def repaint(self, *_) -> None:
        """Id, overwrite or refine changed: show the same preview under the new settings; when refining, the
        object's box is part of the prompts, so its slices are predicted again."""
        if not self.draft or not self._shown():
            return
        self.writer.clear(refresh=False)
        self._paint(self.draft.masks)
        self.writer.layer.selected_label = self.object_id.value()
        if self.refine.isChecked():
            self.draft.outdated()
            self.schedule()

    def refine_toggled(self, *_) -> None:
        """Refining on or off changes the prompts (the object's box) and what a commit replaces."""
        self.repaint()
        if self.draft:
            self.draft.outdated()
            self.schedule()

    def ensure_writer(self) -> LabelsWriter | None:
        """The labels writer for the chosen layer, creating '<image> labels' when '(new)' is chosen."""
        image = self.layers.image()
        if image is None:
            return None
        labels, made = self.layers.labels_to_write(image)
        if made:
            self.object_id.setValue(1)
        _layers.check_labels(labels, image)
        if self.writer is None or self.writer.layer != labels:
            self.writer = LabelsWriter(labels, _layers.is_volume(image), made)
        labels.selected_label = self.object_id.value()
        return self.writer

    def drop_preview(self) -> None:
        """Take the uncommitted preview back out of its labels layer and forget it (only a commit writes labels)."""
        self.jobs.drop_results()
        if self._shown():
            self.writer.clear()
        self.writer = None
        self.draft.drop()

    def layer_removed(self, layer) -> None:
        """The labels layer being written went: so did the preview in it."""
        if self.writer is not None and layer == self.writer.layer:
            self.writer = None
            self.draft.drop()

    # ============================================================================ actions
    def commit(self) -> None:
        """The preview becomes final (one undo step); prompts are cleared; the id moves to max + 1, except after
        refining an object that was there (the user is still fixing it)."""
        if self.writer is None or not self.draft:
            self.feedback.tell("Nothing to commit: click on the object first.")
            return
        if not self._shown():
            self.feedback.tell("The labels layer is gone; choose a labels layer (or '(new)') in the Labels field.",
                               warning=True)
            return
        self.jobs.drop_results()
        obj = self.object_id.value()
        self.writer.clear(refresh=False)
        refined = self.refine.isChecked() and bool(np.any(self.writer.layer.data == obj))
        masks, writer = self.draft.take(), self.writer
        self.choices.clear()
        before = {z: writer.committed(z, obj) for z in masks} if refined else {}
        written = writer.commit(masks, obj, self.overwrite.isChecked(), self.refine.isChecked())
        self.on_written()
        _segment_layers.clear_prompts(self.layers.points(), self.layers.shapes())
        if refined:  # the user is fixing this object: stay on it
            writer.layer.selected_label = obj
            self.feedback.outcome(f"Refined object {obj} ({written} px); still on object {obj} (set Object id for "
                                  "another). Ctrl+Z undoes it.")
            if any(not np.array_equal(writer.committed(z, obj), m) for z, m in before.items()):
                self.feedback.watch_commit(writer.layer, obj, self._refinement_undone, undone=lambda: all(
                    np.array_equal(writer.committed(z, obj), m) for z, m in before.items()))
            return
        next_id = int(np.max(self.writer.layer.data, initial=0)) + 1
        self.object_id.setValue(next_id)
        self.writer.layer.selected_label = next_id
        self.feedback.outcome(f"Committed object {obj} ({written} px); now segmenting object {next_id}. "
                              "Ctrl+Z undoes it.")
        if written:
            self.feedback.watch_commit(self.writer.layer, obj, self._commit_undone)

    def history(self, redo: bool) -> None:
        """Undo or redo in the chosen labels layer's history (Ctrl+Z pressed where the user clicks). An uncommitted
        preview is not in that history: it is taken out while the history is applied and shown again after."""
        labels = self.layers.labels()
        if labels is None:
            self.feedback.tell("Nothing to undo yet: no labels layer is chosen (Labels field).")
            return
        preview = bool(self.draft) and self._shown() and self.writer.layer == labels
        if preview:
            self.writer.clear(refresh=False)
        (labels.redo if redo else labels.undo)()
        if preview:
            self._paint(self.draft.masks)
        self.on_written()
        obj = self.object_id.value()
        if redo and not self.draft and not self.refine.isChecked() and np.any(labels.data == obj):
            next_id = int(np.max(labels.data, initial=0)) + 1  # a commit came back: a new click is a new object
            self.object_id.setValue(next_id)
            labels.selected_label = next_id
            self.feedback.outcome(f"Object {obj} is back (redo); segmenting object {next_id}.")

    def _refinement_undone(self, layer: Labels, obj: int) -> None:
        self.feedback.outcome(f"The refinement of object {obj} was undone; still on object {obj}.")

    def _commit_undone(self, layer: Labels, obj: int) -> None:
        if self.writer is not None and self.writer.layer == layer and not self.draft:
            self.object_id.setValue(int(np.max(layer.data, initial=0)) + 1)
        self.feedback.outcome(f"Object {obj} was undone; segmenting object {self.object_id.value()}.")

    def clear(self) -> None:
        """Drop the prompts and the preview of the current object."""
        self.jobs.drop_results()
        if self.writer is not None:
            self.writer.clear()
        self.draft.drop()
        self.choices.clear()
        _segment_layers.clear_prompts(self.layers.points(), self.layers.shapes())
        self.feedback.outcome(f"Cleared; segmenting object {self.object_id.value()}.")

    def propagate(self) -> None:
        """Carry the object through the volume from the slice shown (a cancellable worker); again to cancel."""
        propagation = self.jobs.propagation
        if propagation.running:
            propagation.cancel()  # the activity line says "Cancelling…" until the worker stops
            return
        image = self.layers.image()
        if image is None or not _layers.is_volume(image):
            self.feedback.tell("Propagation needs a (Z,Y,X) volume image.")
            return
        if self.jobs.session is None:
            self.need_model()
            return
        try:
            writer = self.ensure_writer()
        except _layers.PromptError as exc:
            self.feedback.problem(str(exc))
            return
        z, obj = _layers.current_plane(self.viewer, image), self.object_id.value()
        mask = self.draft.seed(z, np.asarray(writer.layer.data[z]) == obj)
        if mask is None:
            self.feedback.tell(f"Object {obj} is empty on slice {z}; segment it there first.")
            return
        self.jobs.prefetcher.stop()
        propagation.start(self.jobs.session, self.source(image), mask, z)
        self.feedback.set(f"Propagating object {obj} from slice {z}; Shift+S again cancels.")

    def propagated(self, masks: dict[int, np.ndarray], cancelled: bool = False) -> None:
        """Propagation ended (or was cancelled): the slices it finished become the preview, never final labels."""
        if not self._shown():
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


def _span(planes) -> str:
    """'slice 3', 'slices 2–6' or '' for a set of slice indices."""
    planes = sorted(planes)
    if not planes:
        return ""
    return f"slice {planes[0]}" if len(planes) == 1 else f"slices {planes[0]}–{planes[-1]}"


def _first_click(prompts: _layers.PlanePrompts) -> tuple:
    """The click an interaction starts from: the mask chosen for it holds while later clicks correct it."""
    return tuple(np.round(prompts.points[0], 3)), int(prompts.labels[0])
