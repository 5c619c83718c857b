"""The model and the studies it serves: one ``Session`` per study (its slice embeddings cached), read with
napari-msa's readers in the display order the widget and the command line use, so a click means the same voxel.

The adapter in use is the ``--conf adapter`` one unless the train task made a tuned one live: it writes
``<model_dir>/live_adapter.json`` (atomically) naming the file, and every request checks that pointer, so the next
request after a run (in the training process MONAI Label starts, or in this one) uses it. Removing the pointer
(the train task's ``restore``) goes back to the configured adapter.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_msa import Normalization, Session, load_model
from napari_msa.medical_io import Geometry, write_nifti_labels
from napari_msa.medical_io.cli import read_array

from .clicks import ClickHistory
from .config import AppConfig

logger = logging.getLogger(__name__)
POINTER = "live_adapter.json"


@dataclass
class Study:
    """One image: its path, its geometry (to map clicks in and write masks out) and its session."""

    path: str
    geometry: Geometry
    session: Session
    lock: threading.Lock


class Studies:
    """The live model, the most recently used studies (``config.studies_kept``) and the click history."""

    def __init__(self, config: AppConfig) -> None:
        import torch

        self.config = config
        if config.threads:
            torch.set_num_threads(config.threads)
        self.normalization = None if config.normalize == "auto" else Normalization(preset=config.normalize)
        self.clicks = ClickHistory()
        self.pointer = Path(config.model_dir) / POINTER
        self.adapter = config.adapter  # the file (or 'auto' / None) the live model carries
        self._pointer_seen: tuple | None = None
        self._studies: OrderedDict[tuple, Study] = OrderedDict()
        self._lock = threading.Lock()
        self._ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="msa-ahead")
        self.model = self._load(self._pointed_adapter())

    def encode_ahead(self, study: Study, z: int | None) -> None:
        """Encode, in the background, the window the object's next click will most likely be decoded in (the
        zoom rule's), as the Segment widget does while the annotator looks at the answer; masks are unchanged."""
        def run() -> None:
            try:
                study.session.prefetch_window(0 if z is None else z)
            except Exception as err:  # only a cache fill: the next click encodes it itself
                logger.debug(f"napari-msa: encoding ahead failed ({err})")

        self._ahead.submit(run)

    # --- the live adapter ------------------------------------------------------------------------------------------
    def _pointer_key(self) -> tuple | None:
        try:
            st = self.pointer.stat()
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_size

    def _pointed_adapter(self) -> str | None:
        """The tuned adapter the pointer names, else the configured one (remembering which pointer was read)."""
        self._pointer_seen = self._pointer_key()
        if self._pointer_seen is None:
            return self.config.adapter
        try:
            return str(json.loads(self.pointer.read_text())["adapter"])
        except (OSError, ValueError, KeyError) as err:
            logger.error(f"napari-msa: {self.pointer} is unreadable ({err}); using the configured adapter")
            return self.config.adapter

    def _load(self, adapter: str | None):
        c = self.config
        model = load_model(c.model, checkpoint=c.checkpoint, adapter=adapter, device=c.device, precision=c.precision,
                           runtime=c.runtime)
        self.adapter = adapter
        return model

    def refresh(self) -> None:
        """Load the adapter the pointer names when it changed since it was last read (one stat per request)."""
        if self._pointer_key() == self._pointer_seen:
            return
        with self._lock:
            if self._pointer_key() == self._pointer_seen:
                return
            adapter = self._pointed_adapter()
            try:
                model = self._load(adapter)
            except Exception as err:  # a broken or foreign file: say so once, keep serving the model in use
                logger.error(f"napari-msa: cannot load adapter {adapter} ({err}); keeping {self.model.describe()}")
                return
            self.model = model
            self._studies.clear()  # sessions hold the old model; their embeddings are of its weights
            logger.info(f"napari-msa: now serving {model.describe()} (adapter {adapter})")

    # --- studies ---------------------------------------------------------------------------------------------------
    def get(self, path: str | os.PathLike) -> Study:
        """The study at ``path`` (a NIfTI file or a DICOM file/folder), read once while the file stays the same."""
        self.refresh()
        real = os.path.realpath(path)
        st = os.stat(real)
        key = (real, st.st_mtime_ns, st.st_size)
        with self._lock:
            study = self._studies.pop(key, None)
            if study is not None:
                self._studies[key] = study
                return study
            model = self.model
        data, geometry = read_array(real)
        session = Session(model, normalization=self.normalization, cache_dir=self.config.cache_dir)
        session.set_image(data)
        study = Study(real, geometry, session, threading.Lock())
        with self._lock:
            if model is self.model:
                self._studies[key] = study
                while len(self._studies) > self.config.studies_kept:
                    self._studies.popitem(last=False)
        return study


def write_mask(path: str | os.PathLike, labels: np.ndarray, geometry: Geometry) -> Path:
    """Display-order labels as NIfTI on the study's geometry (its affine, header and voxel order)."""
    return write_nifti_labels(path, labels, geometry)
