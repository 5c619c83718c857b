"""napari's own open/save paths through the npe2 reader and writer contributions, on real files."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from medical_io_files import NIB_DATA, nifti_like, write_series

from napari_msa._io_plugin import LabelsNotSaved
from napari_msa._widgets._layers import new_labels
from napari_msa.medical_io import GEOMETRY_KEY

pytestmark = pytest.mark.gui


def _labelled_voxels_match(labels_display: np.ndarray, layer, written: nib.Nifti1Image) -> None:
    """Each labelled display voxel, placed in napari's world (mm), is the same id in the written file.

    World (S, P, L) mm -> RAS -> voxel through the written file's own affine: independent of the writer's code.
    """
    back = np.asarray(written.dataobj)
    for d in np.argwhere(labels_display)[::13]:
        s, p, left = layer.data_to_world(d)  # napari's scale + translate: the world the user clicks in
        i, j, k = np.round(np.linalg.solve(written.affine, [-left, -p, s, 1.0])[:3]).astype(int)
        assert back[i, j, k] == labels_display[tuple(d)]


@pytest.fixture
def volume_file(tmp_path):
    """nibabel's anatomical.nii stored as P-R-I voxels (flipped and permuted) with 2 x 3 x 4.4 mm voxels."""
    img = nifti_like(nib.load(NIB_DATA / "anatomical.nii"), ("P", "R", "I"))
    img = nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine @ np.diag([1.0, 1.5, 2.2, 1.0]), img.header)
    path = tmp_path / "study.nii.gz"
    nib.save(img, path)
    return path, img


def test_nifti_opens_through_napari_with_scale_and_geometry(make_napari_viewer, volume_file):
    path, img = volume_file
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin="napari-msa")
    assert layer._type_string == "image" and layer.data.shape == (25, 41, 33)
    assert np.allclose(layer.scale, (4.4, 2.0, 3.0))  # (S, P, L): source axes k (4.4 mm), i (2 mm), j (3 mm)
    assert np.allclose(layer.extent.world[1] - layer.extent.world[0], (24 * 4.4, 40 * 2.0, 32 * 3.0))  # centres
    assert np.allclose(layer.metadata[GEOMETRY_KEY]["affine"], img.affine)
    # the voxel under any world point is the voxel nibabel finds at that patient position
    data = np.asarray(img.dataobj)
    for d in [(0, 0, 0), (12, 20, 16), (24, 40, 32), (3, 35, 7)]:
        s, p, left = layer.data_to_world(d)
        i, j, k = np.round(np.linalg.solve(img.affine, [-left, -p, s, 1.0])[:3]).astype(int)
        assert layer.data[d] == data[i, j, k]


def test_labels_layer_saved_through_the_writer_lands_on_the_source_voxels(make_napari_viewer, volume_file,
                                                                          tmp_path):
    path, img = volume_file
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(path), plugin="napari-msa")
    labels = viewer.add_layer(new_labels(image))  # what the Segment widget makes: no metadata, same placement
    labels.data[10:14, 12:30, 8:20] = 1
    labels.data[20, 5:9, 25:30] = 2
    viewer.layers.selection = {labels}
    out = tmp_path / "study_labels.nii.gz"
    assert viewer.layers.save(str(out), selected=True, plugin="napari-msa") == [str(out)]
    written = nib.load(out)
    assert written.shape == img.shape and np.allclose(written.affine, img.affine)
    assert written.header.get_intent()[0] == "label" and written.get_data_dtype() == np.uint8
    _labelled_voxels_match(labels.data, labels, written)

    (reopened,) = viewer.open(str(out), plugin="napari-msa")  # labels files open as labels, on the same grid
    assert reopened._type_string == "labels" and np.array_equal(reopened.data, labels.data)
    assert np.allclose(reopened.scale, image.scale) and np.allclose(reopened.translate, image.translate)
    reopened.data[0, 0, 0] = 3
    viewer.layers.selection = {reopened}
    again = tmp_path / "again.nii"
    viewer.layers.save(str(again), selected=True, plugin="napari-msa")  # geometry from its own metadata now
    assert np.allclose(nib.load(again).affine, img.affine)
    _labelled_voxels_match(reopened.data, reopened, nib.load(again))


def test_save_dialog_with_the_nifti_filter_and_napari_s_proposed_name_adds_nii_gz(make_napari_viewer, volume_file,
                                                                             tmp_path):
    """File > Save Selected Layers proposes the layer's name (no extension); with our filter chosen napari hands
    that name to our writer as typed: it must be saved as .nii.gz, not fail."""
    from napari._qt.qt_viewer import _npe2_decode_selected_filter
    from napari.plugins import _npe2

    path, img = volume_file
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(path), plugin="napari-msa")
    labels = viewer.add_layer(new_labels(image))
    labels.data[10:14, 12:30, 8:20] = 1
    ext_str, writers = _npe2.file_extensions_string_for_layers([labels])
    nifti_filter = next(f for f in ext_str.split(";;") if "NIfTI" in f)
    writer = _npe2_decode_selected_filter(ext_str, nifti_filter, writers)  # what the dialog's filter picks
    viewer.layers.selection = {labels}
    saved = viewer.layers.save(str(tmp_path / labels.name), selected=True, _writer=writer)
    assert saved == [str(tmp_path / f"{labels.name}.nii.gz")]
    assert np.allclose(nib.load(saved[0]).affine, img.affine)


def test_labels_that_fit_two_different_images_are_refused(make_napari_viewer, tmp_path):
    a = nib.Nifti1Image(np.random.default_rng(0).normal(size=(8, 9, 4)).astype(np.float32), np.eye(4))
    b = nib.Nifti1Image(np.asarray(a.dataobj), np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.eye(4))
    b.affine[:3, 3] = 0
    nib.save(a, tmp_path / "a.nii")
    nib.save(b, tmp_path / "b.nii")
    viewer = make_napari_viewer()
    viewer.open(str(tmp_path / "a.nii"), plugin="napari-msa")
    (layer_b,) = viewer.open(str(tmp_path / "b.nii"), plugin="napari-msa")
    layer_b.translate = viewer.layers["a"].translate  # same placement in napari, different files
    labels = viewer.add_labels(np.ones(layer_b.data.shape, np.uint8), name="drawn", scale=layer_b.scale,
                               translate=layer_b.translate, units=layer_b.units)
    viewer.layers.selection = {labels}
    with pytest.raises(LabelsNotSaved, match="l.nii.gz was not saved: labels 'drawn' fit several images"):
        viewer.layers.save(str(tmp_path / "l.nii.gz"), selected=True, plugin="napari-msa")
    assert not (tmp_path / "l.nii.gz").exists()
    labels.name = "b labels"  # the Segment widget's name for labels drawn on 'b' says which image
    viewer.layers.save(str(tmp_path / "l.nii.gz"), selected=True, plugin="napari-msa")
    assert np.allclose(nib.load(tmp_path / "l.nii.gz").affine, b.affine)


def test_dicom_folder_with_two_series_opens_as_two_layers(make_napari_viewer, tmp_path):
    write_series(tmp_path / "study" / "a", n=3, description="CT 2.5 mm", seed=1)
    write_series(tmp_path / "study" / "b", n=2, spacing=5.0, description="CT 5 mm", seed=2)
    viewer = make_napari_viewer()
    layers = viewer.open(str(tmp_path / "study"), plugin="napari-msa")
    assert sorted(ly.name for ly in layers) == ["CT 2.5 mm", "CT 5 mm"]
    by_name = {ly.name: ly for ly in layers}
    assert np.allclose(by_name["CT 5 mm"].scale, (5.0, 0.661468, 0.661468))
    assert by_name["CT 2.5 mm"].data.shape == (3, 128, 128) and by_name["CT 2.5 mm"].data.min() < -500  # HU


def test_4d_nifti_and_a_damaged_file_through_napari(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(NIB_DATA / "example4d.nii.gz"), plugin="napari-msa")
    assert layer.data.shape == (2, 24, 96, 128) and np.allclose(layer.scale[1:], (2.2, 2.0, 2.0), atol=1e-5)
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes((NIB_DATA / "example4d.nii.gz").read_bytes()[:5000])
    with pytest.raises(Exception, match="broken.nii.gz") as info:
        viewer.open(str(broken), plugin="napari-msa")
    assert "damaged or incomplete" in str(info.value) or "damaged or incomplete" in str(info.value.__cause__)
    assert len(viewer.layers) == 1
