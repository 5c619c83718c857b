"""napari-msa's MONAI Label app: ``monailabel start_server --app server --studies DIR --conf model litemedsam``.

Infer tasks ``msa_2d`` and ``msa_3d`` and the train task ``msa_tune`` serve napari-msa's engine
(``napari_msa.Session``, ``tune``) to 3D Slicer's MONAI Label extension, OHIF and any MONAI Label client. Studies
are the NIfTI files in the studies folder and the DICOM series in its subfolders (``msa_app.dicom_series``).
``--conf`` keys: model, checkpoint, adapter (a file, auto, none), device, precision, runtime, normalize, cache_dir,
studies_kept, model_dir, threads (see ``msa_app.config``).
"""

from __future__ import annotations

import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # msa_app, beside this file

from monailabel.interfaces.app import MONAILabelApp  # noqa: E402
from msa_app import auth  # noqa: E402
from msa_app.config import AppConfig  # noqa: E402
from msa_app.dicom_series import series_as_studies  # noqa: E402
from msa_app.infer import MSAInfer  # noqa: E402
from msa_app.studies import Studies  # noqa: E402
from msa_app.train import MSATrain  # noqa: E402

import napari_msa  # noqa: E402

logger = logging.getLogger(__name__)
auth.install()  # before the first request: MONAI Label 0.8.5 refuses every token without it (msa_app/auth.py)


class NapariMSAApp(MONAILabelApp):
    """The model is loaded once, at start-up, and shared by both infer tasks and every study."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.config = AppConfig.from_conf(conf or {}, app_dir)
        self.studies_served = Studies(self.config)
        logger.info(f"napari-msa {napari_msa.__version__}: {self.studies_served.model.describe()}")
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="napari-msa",
                         description="Segment Anything with Medical SAM Adapters (napari-msa)",
                         version=napari_msa.__version__)

    def init_datastore(self):
        """DICOM series folders inside a local studies folder become NIfTI studies first (msa_app.dicom_series)."""
        if not self.studies.startswith(("http://", "https://")) and os.path.isdir(self.studies):
            series_as_studies(self.studies)
        return super().init_datastore()

    def init_infers(self) -> dict:
        return {"msa_2d": MSAInfer(self.studies_served, 2), "msa_3d": MSAInfer(self.studies_served, 3)}

    def init_trainers(self) -> dict:
        return {"msa_tune": MSATrain(self.studies_served)}
