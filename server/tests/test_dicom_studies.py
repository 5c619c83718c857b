"""A DICOM series folder in the studies folder is a study: clicks in its voxel indices give the masks a local
``Session`` gives on the series as napari-msa's DICOM reader reads it, on the series' own patient grid."""

from __future__ import annotations

import json
import os
import time

import nibabel as nib
import numpy as np
from medical_io_files import write_series
from msa_app.dicom_series import series_as_studies
from test_server import Local, slicer_infer, slicer_send

from napari_msa.medical_io.cli import read_array


def test_a_dicom_series_folder_is_served_on_its_own_grid(server, studies, local_model):
    status, _, body = slicer_send(server, "GET", "/datastore/?output=all")
    assert status == 200 and "ct_series" in json.loads(body)["objects"]
    local = Local(studies / "ct_series", local_model)  # the folder itself, through the DICOM reader
    _, geometry = read_array(studies / "ct_series")
    assert geometry.fmt == "dicom" and local.source_shape == (128, 128, 6)
    click = (60, 70, 2)  # i, j, k of the series (what Slicer sends for the downloaded study)
    params, label = slicer_infer(server, "msa_2d", "ct_series",
                                 {"label": "tissue", "foreground": [list(click)], "background": [], "slice": 2})
    mask, z = local.predict([(*click, 1)])
    assert mask.any() and np.array_equal(label, local.to_source({z: mask}))
    served = nib.load(studies / "ct_series.nii.gz")
    assert np.allclose(served.affine, geometry.affine)  # the series' patient geometry, voxel for voxel
    data, _ = read_array(studies / "ct_series.nii.gz")
    assert np.array_equal(data, local.data)  # the NIfTI reads back as the series reads
    manifest = json.loads((studies / ".napari-msa-series.json").read_text())
    assert manifest["ct_series"]["studies"] == ["ct_series"]


def test_a_folder_read_once_is_not_read_again_until_its_files_change(tmp_path):
    root = tmp_path / "studies"
    write_series(root / "a", n=3)
    write_series(root / "b", n=3, description="first")
    write_series(root / "b", n=3, description="second", seed=1)  # two series in one folder: two studies
    (root / "plain").mkdir()  # not DICOM: ignored
    first = sorted(p.name for p in series_as_studies(root))
    assert first == ["a.nii.gz", "b_first.nii.gz", "b_second.nii.gz"]
    stamp = (root / "a.nii.gz").stat().st_mtime_ns
    time.sleep(0.05)
    assert sorted(p.name for p in series_as_studies(root)) == first
    assert (root / "a.nii.gz").stat().st_mtime_ns == stamp  # unchanged folder: not rewritten
    newer = time.time() + 5
    for f in (root / "a").iterdir():
        os.utime(f, (newer, newer))
    series_as_studies(root)
    assert (root / "a.nii.gz").stat().st_mtime_ns != stamp
