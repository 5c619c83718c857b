"""Write napari-msa's grey-level samples as NIfTI studies for the MONAI Label server (``make server``'s default).

``python server/export_samples.py DIR``: ct_slice (pydicom's CT slice, HU), mri_volume (nibabel's EPI volume) and
phantom_ct (the synthetic abdominal phantom) as ``DIR/<name>.nii.gz``, axial, with their voxel spacing; napari-msa's
reader gives back the sample arrays exactly. Existing files are left as they are.
"""

from __future__ import annotations

import sys
from pathlib import Path

from napari_msa._sample_data import read_sample
from napari_msa.medical_io import Geometry
from napari_msa.medical_io.nifti import write_nifti_image

SAMPLES = ("ct_slice", "mri_volume", "phantom_ct")


def export(folder: str | Path) -> list[Path]:
    """The samples as NIfTI in ``folder`` (written atomically; ones already there are kept)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in SAMPLES:
        path = folder / f"{name}.nii.gz"
        written.append(path)
        if path.exists():
            continue
        data, meta = read_sample(f"{name}.tif")
        write_nifti_image(path, data, Geometry.default(data.shape, scale=meta.get("scale")), compresslevel=6)
    return written


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python server/export_samples.py FOLDER")
    for p in export(sys.argv[1]):
        print(p)
