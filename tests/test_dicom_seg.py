"""Labels of a DICOM series saved as DICOM SEG (highdicom) and read back: by pydicom, by the plugin, from the CLI."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from medical_io_files import write_series

from napari_msa._io_plugin import LabelsNotSaved
from napari_msa._widgets._layers import new_labels
from napari_msa.medical_io import MedicalIOError, read_medical
from napari_msa.medical_io.dicom import read_dicom
from napari_msa.medical_io.dicom_seg import write_dicom_seg


def world_points(image, mask: np.ndarray) -> np.ndarray:
    """Patient (RAS mm) coordinates of the display voxels where ``mask`` is set."""
    idx = np.argwhere(mask).astype(float)
    return (image.geometry.display_affine @ np.c_[idx, np.ones(len(idx))].T).T[:, :3]


@pytest.fixture
def series(tmp_path):
    files = write_series(tmp_path / "series", n=6)
    (image,) = read_dicom(tmp_path / "series")
    labels = np.zeros(image.data.shape, np.uint16)
    labels[2:4, 30:60, 40:70] = 3
    labels[4, 80:100, 20:50] = 7
    return tmp_path, files, image, labels


def test_seg_refers_to_the_series_and_reads_back_on_the_same_voxels(series):
    tmp_path, files, image, labels = series
    out = write_dicom_seg(tmp_path / "labels.dcm", labels, image.geometry, {3: "liver"})
    ds = pydicom.dcmread(out)  # pydicom reads it
    assert ds.Modality == "SEG" and len(ds.SegmentSequence) == 2
    assert [s.SegmentLabel for s in ds.SegmentSequence] == ["liver", "object 7"]
    source_uid = pydicom.dcmread(files[0]).SeriesInstanceUID
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == source_uid
    referenced = {r.ReferencedSOPInstanceUID for r in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced <= {pydicom.dcmread(f).SOPInstanceUID for f in files}

    (back,) = read_medical(out)  # the plugin's reader: a labels volume, the original ids
    assert back.is_labels and set(np.unique(back.data)) == {0, 3, 7}
    for obj in (3, 7):  # every voxel lands where it was drawn, in patient coordinates
        np.testing.assert_allclose(np.sort(world_points(back, back.data == obj), 0),
                                   np.sort(world_points(image, labels == obj), 0), atol=1e-3)


def test_a_folder_with_the_series_and_its_seg_opens_both(series):
    tmp_path, _, image, labels = series
    write_dicom_seg(tmp_path / "series" / "seg.dcm", labels, image.geometry)
    opened = read_medical(tmp_path / "series")
    assert [im.is_labels for im in opened] == [False, True]
    assert opened[0].data.shape == image.data.shape  # the SEG is not read as a slice of the series


def test_labels_not_from_a_dicom_series_are_refused_with_the_way_out(series):
    tmp_path, _, image, labels = series
    with pytest.raises(MedicalIOError, match="save them as NIfTI|save these labels as NIfTI"):
        write_dicom_seg(tmp_path / "x.dcm", labels, read_medical(tmp_path / "series")[0].geometry.__class__(
            affine=np.eye(4), source_shape=(4, 4, 4)))
    with pytest.raises(MedicalIOError, match="empty"):
        write_dicom_seg(tmp_path / "x.dcm", np.zeros_like(labels), image.geometry)
    assert not (tmp_path / "x.dcm").exists()


def test_napari_saves_and_opens_dicom_seg(make_napari_viewer, series):
    tmp_path, _, _, labels = series
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(tmp_path / "series"), plugin="napari-msa")
    layer = viewer.add_layer(new_labels(image))  # what the Segment widget makes: no metadata, same placement
    layer.data[...] = labels
    viewer.layers.selection = {layer}
    out = tmp_path / "from_napari.dcm"
    assert viewer.layers.save(str(out), selected=True, plugin="napari-msa") == [str(out)]
    (seg,) = viewer.open(str(out), plugin="napari-msa")
    assert seg._type_string == "labels" and set(np.unique(seg.data)) == {0, 3, 7}
    for obj in (3, 7):  # drawn where the layer it came from is, in napari's world
        ours = np.sort(np.array([seg.data_to_world(i) for i in np.argwhere(seg.data == obj)]), 0)
        theirs = np.sort(np.array([layer.data_to_world(i) for i in np.argwhere(layer.data == obj)]), 0)
        np.testing.assert_allclose(ours, theirs, atol=1e-3)
    nifti_like = viewer.add_labels(labels.copy(), name="drawn elsewhere", scale=(9, 9, 9))  # no series under it
    viewer.layers.selection = {nifti_like}
    with pytest.raises(LabelsNotSaved, match="no DICOM series under these labels"):
        viewer.layers.save(str(tmp_path / "nope.dcm"), selected=True, plugin="napari-msa")


def test_cli_segment_writes_dicom_seg_for_a_dicom_series(series, monkeypatch):
    from napari_msa.cli import main

    tmp_path, files, image, _ = series
    points = tmp_path / "p.csv"
    points.write_text("index,axis-0,axis-1,axis-2\n0,2,60,60\n")
    out = tmp_path / "cli.dcm"
    assert main(["-q", "segment", str(tmp_path / "series"), "-p", str(points), "-o", str(out),
                 "--model", "tiny"]) == 0
    (back,) = read_medical(out)
    assert back.is_labels and pydicom.dcmread(out).Modality == "SEG"
    ref = pydicom.dcmread(out).ReferencedSeriesSequence[0].SeriesInstanceUID
    assert ref == pydicom.dcmread(files[0]).SeriesInstanceUID
