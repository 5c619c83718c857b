"""The infer tasks ``msa_2d`` and ``msa_3d``: MONAI Label's ``deepgrow`` type, so 3D Slicer shows its point tools."""

from __future__ import annotations

import logging
import os
import tempfile

import nibabel as nib
import numpy as np
from fastapi import HTTPException
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from napari_msa.medical_io import MedicalIOError

from .segment import RequestError, segment
from .studies import Studies, write_mask

logger = logging.getLogger(__name__)

DESCRIPTIONS = {
    2: "napari-msa: one slice (the request's slice) from foreground/background clicks and an optional roi box",
    3: "napari-msa: the clicked slices, then propagation through the volume until the object ends",
}


class MSAInfer(InferTask):
    """One object from clicks (and a roi box): on one slice (``dimension`` 2) or through the volume (3)."""

    def __init__(self, studies: Studies, dimension: int) -> None:
        super().__init__(type=InferType.DEEPGROW, labels=[], dimension=dimension,
                         description=DESCRIPTIONS[dimension])
        self.studies = studies

    def is_valid(self) -> bool:
        return True

    def __call__(self, request: dict) -> tuple[str, dict]:
        """Label file (NIfTI on the study's geometry, 1 = the object) and the result's params."""
        try:
            result = segment(self.studies, request, self.dimension)
        except (RequestError, MedicalIOError) as err:  # the client is told why, in one line (Slicer shows it)
            raise HTTPException(status_code=400, detail=str(err)) from err
        fd, path = tempfile.mkstemp(prefix="msa_", suffix=".nii.gz")
        os.close(fd)
        try:
            if result.geometry is None:  # one display-order plane, for napari-msa's client
                nib.save(nib.Nifti1Image(result.labels.astype(np.uint8), np.eye(4)), path)
            else:
                write_mask(path, result.labels, result.geometry)
        except BaseException:
            os.unlink(path)
            raise
        logger.info(f"napari-msa {request.get('model')}: slices {result.params['slices']}, "
                    f"{result.params['seconds'] * 1000:.0f} ms")
        return path, result.params
