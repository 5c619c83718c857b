"""DICOM series in the studies folder, served as studies: each read with napari-msa's DICOM reader and kept as a
NIfTI beside its folder, because MONAI Label's local datastore lists image *files* (a series is a folder of them).

The NIfTI holds the series in the reader's source voxel order with the series' patient affine, so the voxel indices
3D Slicer sends for the downloaded file are the series' own voxels, and masks (and submitted labels) lie on the
series' grid: the same geometry napari-msa's widget and command line use for that folder. A folder whose files
changed since its NIfTI was written is read again; one holding several series gives one study per series.
Done at start-up (and never over a folder's files): series copied in later are served after a restart.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from napari_msa.engine.files.checkpoints import atomic_write
from napari_msa.medical_io import MedicalIOError, read_medical
from napari_msa.medical_io.dicom import folder_has_dicom
from napari_msa.medical_io.nifti import write_nifti_image

logger = logging.getLogger(__name__)
NOT_SERIES = {"labels", "model", "logs"}  # MONAI Label's own folders inside the studies folder
MANIFEST = ".napari-msa-series.json"  # folder name -> the newest file time it was read at and the studies it gave


def _newest_file(folder: Path) -> float:
    return max((p.stat().st_mtime for p in folder.rglob("*") if p.is_file()), default=0.0)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "series"


def _manifest(root: Path) -> dict:
    try:
        return json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}


def series_as_studies(studies: str | Path) -> list[Path]:
    """The NIfTI study of each DICOM series folder directly inside ``studies`` (written when missing or older than
    the folder's files); a folder that cannot be read is logged and skipped, never fatal."""
    root = Path(studies)
    before = _manifest(root)
    after: dict = {}
    written: list[Path] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in NOT_SERIES
                         and not p.name.startswith(".")):
        if not folder_has_dicom(folder):
            continue
        newest = _newest_file(folder)
        known = before.get(folder.name, {})
        paths = [root / f"{name}.nii.gz" for name in known.get("studies", [])]
        if known.get("newest") == newest and paths and all(p.is_file() for p in paths):
            after[folder.name] = known
            written += paths
            continue
        try:
            images = read_medical(folder)
        except (MedicalIOError, OSError) as err:
            logger.error(f"napari-msa: the DICOM folder {folder.name} is not served: {err}")
            continue
        names = []
        for image in images:
            if image.geometry.n_extra:
                logger.error(f"napari-msa: series '{image.name}' in {folder.name} is RGB or 4D "
                             f"({image.data.shape}); only grey-level series are served")
                continue
            name = folder.name if len(images) == 1 else f"{folder.name}_{_slug(image.name)}"
            path = root / f"{name}.nii.gz"
            write_nifti_image(path, image.data, image.geometry)
            logger.info(f"napari-msa: DICOM series {folder.name} ({image.name}) served as study {name}")
            names.append(name)
            written.append(path)
        after[folder.name] = {"newest": newest, "studies": names}
    if after != before:
        text = json.dumps(after, indent=1)
        atomic_write(root / MANIFEST, lambda tmp: Path(tmp).write_text(text))
    return written
