"""Autosave and recovery in the Segment widget: each commit's labels go to the image's recovery file (on a
background thread, the newest state winning), and opening an image that has one offers to restore it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_info, show_warning
from qtpy.QtWidgets import QHBoxLayout, QLabel, QPushButton, QWidget

from napari_msa.recovery import Recovered, RecoveryFile, image_key

from .. import _layers
from . import _segment_layers

log = logging.getLogger(__name__)


class Autosave:
    """Writes snapshots on one background thread; a snapshot taken while another is written replaces any that
    waits, so a burst of commits costs one write after the one in progress."""

    def __init__(self, on_error: Callable[[str], None]) -> None:
        self.on_error = on_error  # called on the writing thread
        self._lock = threading.Lock()
        self._pending: tuple[RecoveryFile, np.ndarray, str] | None = None
        self._thread: threading.Thread | None = None

    def save(self, file: RecoveryFile, labels: np.ndarray, image_name: str) -> None:
        with self._lock:
            self._pending = (file, labels, image_name)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="napari-msa autosave", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                job, self._pending = self._pending, None
                if job is None:
                    self._thread = None
                    return
            file, labels, name = job
            try:
                file.save(labels, name)
            except OSError as err:
                log.warning("recovery file %s not written: %s", file.path, err)
                self.on_error(f"The recovery copy of your labels could not be written ({err}); your labels are "
                              "unchanged in napari: save them (File > Save Selected Layers).")

    def wait(self, timeout: float = 30.0) -> bool:
        """Until nothing waits or is being written (tests, closing)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self._thread is None or not self._thread.is_alive()


def recovery_file_for(image: Image) -> RecoveryFile:
    source = getattr(getattr(image, "source", None), "path", None)
    return RecoveryFile(image_key(image.data, source))


class RecoveryOffer(QWidget):
    """A row shown when the chosen image has a recovery file whose labels are in no layer: Restore or Discard
    (the widget connects the buttons)."""

    def __init__(self) -> None:
        super().__init__()
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        self.text = QLabel()
        self.text.setWordWrap(True)
        self.restore_button = QPushButton("Restore")
        self.restore_button.setToolTip("Add the recovered objects as a labels layer (nothing you have is changed)")
        self.discard_button = QPushButton("Discard")
        self.discard_button.setToolTip("Delete the recovery copy of this image's labels")
        row.addWidget(self.text, 1)
        row.addWidget(self.restore_button)
        row.addWidget(self.discard_button)
        self.recovered: Recovered | None = None
        self.file: RecoveryFile | None = None
        self.setVisible(False)

    def offer(self, file: RecoveryFile, recovered: Recovered, image: Image) -> None:
        self.file, self.recovered = file, recovered
        self.text.setText(f"Recovered: {recovered.objects} object{'s' * (recovered.objects != 1)} committed on "
                          f"'{image.name}' ({recovered.when()}) that no labels layer holds now.")
        self.setVisible(True)

    def withdraw(self) -> None:
        self.file = self.recovered = None
        self.setVisible(False)


def unheld(recovered: Recovered | None, image: Image, layers) -> bool:
    """The recovered labels fit the image and no labels layer holds them already (e.g. opened from a file)."""
    if recovered is None or tuple(recovered.labels.shape) != _layers.spatial_shape(image):
        return False
    return not any(isinstance(ly, Labels) and ly.data.shape == recovered.labels.shape
                   and np.array_equal(np.asarray(ly.data), recovered.labels) for ly in layers)


class RecoveryKeeper:
    """The Segment widget's recovery: the chosen image's file, the autosave at each change of the committed
    labels, and the offer (Restore / Discard) when the image has objects no layer holds."""

    def __init__(self, viewer, editor, feedback, offer_row: RecoveryOffer, prompts: Callable[[], list],
                 offer: bool = True) -> None:
        self.viewer, self.editor, self.feedback, self.row = viewer, editor, feedback, offer_row
        self.prompts = prompts  # the chosen prompt layers (a new labels layer goes below them)
        self.offers = offer  # off in the demo: its example objects are not the user's work
        self.autosave = Autosave(on_error=show_warning)
        self.file: RecoveryFile | None = None  # the chosen image's

    def image_chosen(self, image: Image) -> None:
        self.file = recovery_file_for(image)
        recovered = self.file.load() if self.offers else None
        if unheld(recovered, image, self.viewer.layers):
            self.row.offer(self.file, recovered, image)
            show_info(f"napari-msa kept {recovered.objects} object(s) you committed on '{image.name}' "
                      f"({recovered.when()}): Restore them in Segment (MSA).")
        else:
            self.row.withdraw()

    def layers_changed(self, image: Image | None) -> None:
        if self.row.recovered is not None and image is not None and not unheld(self.row.recovered, image,
                                                                               self.viewer.layers):
            self.row.withdraw()

    def save(self, image: Image | None, labels: Labels | None) -> None:
        if labels is None or image is None or self.file is None:
            return
        writer = self.editor.writer
        data = writer.committed_labels() if writer is not None and writer.layer == labels else \
            np.array(labels.data, copy=True)
        self.autosave.save(self.file, data, image.name)

    def restore(self, image: Image | None) -> Labels | None:
        """The recovered labels as a layer (the image's own labels layer when it has none or it is empty);
        nothing the user has is changed."""
        recovered = self.row.recovered
        if image is None or recovered is None:
            return None
        labels = _segment_layers.own_labels(self.viewer, image)
        if labels is not None and not np.any(labels.data):
            labels.data = recovered.labels.astype(labels.data.dtype, copy=False)
        else:
            had_own = labels is not None
            labels = _segment_layers.add_labels_below(self.viewer, image, self.prompts())
            labels.data = recovered.labels
            if had_own:
                labels.name = f"{image.name} labels (recovered)"
        self.row.withdraw()
        self.feedback.tell(f"Restored {recovered.objects} object(s) into '{labels.name}'.")
        return labels

    def discard(self) -> None:
        if self.row.file is not None:
            self.row.file.discard()
        self.row.withdraw()
        self.feedback.set("The recovery copy was deleted.")
