"""The model and the studies it serves: one ``Session`` per study (its slice embeddings cached), read with
napari-msa's readers in the display order the widget and the command line use, so a click means the same voxel."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_msa import Normalization, Session, load_model
from napari_msa.medical_io import Geometry, write_nifti_labels
from napari_msa.medical_io.cli import read_array

from .clicks import ClickHistory
from .config import AppConfig


@dataclass
class Study:
    """One image: its path, its geometry (to map clicks in and write masks out) and its session."""

    path: str
    geometry: Geometry
    session: Session
    lock: threading.Lock


class Studies:
    """The loaded model, the most recently used studies (``config.studies_kept``) and the click history."""

    def __init__(self, config: AppConfig) -> None:
        self.config = config
        self.model = load_model(config.model, checkpoint=config.checkpoint, adapter=config.adapter,
                                device=config.device, precision=config.precision, runtime=config.runtime)
        self.normalization = None if config.normalize == "auto" else Normalization(preset=config.normalize)
        self.clicks = ClickHistory()
        self._studies: OrderedDict[tuple, Study] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str | os.PathLike) -> Study:
        """The study at ``path`` (a NIfTI file or a DICOM file/folder), read once while the file stays the same."""
        real = os.path.realpath(path)
        st = os.stat(real)
        key = (real, st.st_mtime_ns, st.st_size)
        with self._lock:
            study = self._studies.pop(key, None)
            if study is not None:
                self._studies[key] = study
                return study
        data, geometry = read_array(real)
        session = Session(self.model, normalization=self.normalization, cache_dir=self.config.cache_dir)
        session.set_image(data)
        study = Study(real, geometry, session, threading.Lock())
        with self._lock:
            self._studies[key] = study
            while len(self._studies) > self.config.studies_kept:
                self._studies.popitem(last=False)
        return study


def write_mask(path: str | os.PathLike, labels: np.ndarray, geometry: Geometry) -> Path:
    """Display-order labels as NIfTI on the study's geometry (its affine, header and voxel order)."""
    return write_nifti_labels(path, labels, geometry)
