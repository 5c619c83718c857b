"""The command line on NIfTI and DICOM: read → segment (demo model) → write NIfTI → read back with nibabel."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from medical_io_files import NIB_DATA, phantom, write_series

from napari_msa.cli import main
from napari_msa.engine.prompts.geometry import dice, most_interior
from napari_msa.medical_io import read_medical

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # two shared cores

LIVER = 1


def _display_index(path, world_ras: np.ndarray) -> np.ndarray:
    """Where a user clicks in napari for a patient position: the layer's scale/translate, as napari maps them."""
    (image,) = read_medical(path)
    placement = image.geometry.layer_placement()
    x, y, z = world_ras[:3]
    world = np.array([z, -y, -x])[-len(placement["scale"]):]  # napari's world axes are (S, P, L) mm here
    return (world - np.array(placement["translate"])) / np.array(placement["scale"])


def _points_csv(path, index) -> None:
    axes = ",".join(f"axis-{i}" for i in range(len(index)))
    path.write_text(f"index,{axes}\n0,{','.join(f'{v:.3f}' for v in index)}\n")


@pytest.fixture(scope="module")
def slab():
    return phantom(n_slices=6, first=13)


def test_nifti_round_trip_with_the_demo_model(tmp_path, slab):
    """The phantom stored as R-P-I voxels with 1.6 x 1.6 x 5 mm: a click on the liver, labels back on its grid."""
    ct, truth, (sz, sy, sx) = slab
    # display (z, y, x) is (S, P, L); store voxels i along R, j along P, k along I (every axis reordered/flipped)
    source = np.ascontiguousarray(np.transpose(ct, (2, 1, 0))[::-1, :, ::-1])
    truth_source = np.ascontiguousarray(np.transpose(truth, (2, 1, 0))[::-1, :, ::-1])
    affine = np.array([[sx, 0, 0, -180.0], [0, -sy, 0, 120.0], [0, 0, -sz, 40.0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(source, affine), tmp_path / "ct.nii.gz")
    k = 2
    i, j = most_interior(truth_source[:, :, k] == LIVER)
    click = _display_index(tmp_path / "ct.nii.gz", affine @ [i, j, k, 1])
    assert np.allclose(click, np.round(click)) and round(click[0]) == truth.shape[0] - 1 - k
    _points_csv(tmp_path / "p.csv", click)

    out = tmp_path / "labels.nii.gz"
    assert main(["-q", "segment", str(tmp_path / "ct.nii.gz"), "-p", str(tmp_path / "p.csv"), "-o", str(out),
                 "--model", "demo", "--normalize", "ct"]) == 0
    written = nib.load(out)
    assert written.shape == source.shape and np.allclose(written.affine, affine)
    labels = np.asarray(written.dataobj)
    assert set(np.unique(labels)) == {0, 1} and not labels[:, :, [0, 1, 3, 4, 5]].any()
    assert dice(labels[:, :, k] == 1, truth_source[:, :, k] == LIVER) > 0.85


def test_dicom_folder_round_trip_with_the_demo_model(tmp_path, slab):
    """Phantom slices written as a DICOM series (shuffled names), segmented, written as NIfTI on its geometry."""
    ct, truth, _ = slab
    files = write_series(tmp_path / "series", [s + 1024 for s in ct], spacing=5.0)  # stored values: HU + 1024
    z = 3
    _points_csv(tmp_path / "p.csv", (z, *most_interior(truth[z] == LIVER)))
    out = tmp_path / "out" / "labels.nii.gz"
    assert main(["-q", "segment", str(tmp_path / "series"), "-p", str(tmp_path / "p.csv"), "-o", str(out),
                 "--model", "demo", "--normalize", "ct"]) == 0
    written = nib.load(out)
    first = nib.load(out).affine @ [0, 0, 0, 1]
    import pydicom

    ipp = [float(v) for v in pydicom.dcmread(files[0]).ImagePositionPatient]
    assert written.shape == (224, 224, 6) and np.allclose(first[:3], [-ipp[0], -ipp[1], ipp[2]])
    assert np.allclose(np.diag(written.affine)[:3], [-0.661468, -0.661468, 5.0])  # CT_small's pixel spacing
    labels = np.asarray(written.dataobj)
    assert dice(labels[:, :, z].T == 1, truth[z] == LIVER) > 0.85 and labels.sum() == labels[:, :, z].sum()


def test_real_mri_labels_land_where_napari_shows_them(tmp_path):
    """nibabel's anatomical.nii (real MRI), a box: the same run written as TIFF (display order, what napari shows)
    and as NIfTI; each labelled display voxel, through napari's placement to patient mm and nibabel's affine back
    to source voxels, is labelled in the NIfTI file."""
    import tifffile

    path = NIB_DATA / "anatomical.nii"
    z, (y0, x0, y1, x1) = 12, (10, 8, 30, 24)
    rows = [f"0,rectangle,{v},{z},{y},{x}" for v, (y, x) in enumerate([(y0, x0), (y0, x1), (y1, x1), (y1, x0)])]
    (tmp_path / "b.csv").write_text("index,shape-type,vertex-index,axis-0,axis-1,axis-2\n" + "\n".join(rows) + "\n")
    for name in ("l.tif", "l.nii"):
        assert main(["-q", "segment", str(path), "-b", str(tmp_path / "b.csv"), "-o", str(tmp_path / name),
                     "--model", "demo"]) == 0
    shown = tifffile.imread(tmp_path / "l.tif")
    source, written = nib.load(path), nib.load(tmp_path / "l.nii")
    assert written.shape == source.shape and np.allclose(written.affine, source.affine)
    labels = np.asarray(written.dataobj)
    assert shown[z].sum() > 20 and labels.sum() == shown.sum()
    (image,) = read_medical(path)
    scale, translate = (np.array(v) for v in image.geometry.layer_placement().values())
    for d in np.argwhere(shown):
        s, p, left = translate + scale * d
        i, j, k = np.round(np.linalg.solve(source.affine, [-left, -p, s, 1.0])[:3]).astype(int)
        assert labels[i, j, k] == 1


def test_tiff_input_with_nifti_output_and_dicom_embed(tmp_path, slab):
    import tifffile

    ct, truth, _ = slab
    tifffile.imwrite(tmp_path / "ct.tif", ct)
    _points_csv(tmp_path / "p.csv", (2, *most_interior(truth[2] == LIVER)))
    assert main(["-q", "segment", str(tmp_path / "ct.tif"), "-p", str(tmp_path / "p.csv"), "-o",
                 str(tmp_path / "l.nii.gz"), "--model", "tiny"]) == 0
    (back,) = read_medical(tmp_path / "l.nii.gz")  # no geometry in a TIFF: axial, 1 mm, same array back
    assert back.is_labels and back.data.shape == ct.shape and back.geometry.layer_placement()["scale"] == (1, 1, 1)

    write_series(tmp_path / "series", n=3)
    assert main(["-q", "embed", str(tmp_path / "series"), "--cache-dir", str(tmp_path / "c"), "--model",
                 "tiny"]) == 0
    assert len(list((tmp_path / "c").rglob("z*.pt"))) == 3


def test_tune_reads_a_nifti_image_and_its_nifti_labels(tmp_path, slab):
    ct, truth, _ = slab
    affine = np.diag([-1.6, -1.6, 5.0, 1.0])
    source = np.ascontiguousarray(np.transpose(ct, (2, 1, 0)))
    nib.save(nib.Nifti1Image(source, affine), tmp_path / "ct.nii.gz")
    nib.save(nib.Nifti1Image(np.ascontiguousarray(np.transpose(truth, (2, 1, 0))), affine), tmp_path / "ct_seg.nii.gz")
    out = tmp_path / "a.safetensors"
    assert main(["-q", "tune", str(tmp_path / "ct.nii.gz"), str(tmp_path / "ct_seg.nii.gz"), "-o", str(out),
                 "--model", "tiny", "--steps", "2", "--val-fraction", "0"]) == 0
    assert out.is_file()


@pytest.mark.parametrize("case", ["two series", "4D", "damaged DICOM", "empty folder"])
def test_inputs_the_command_line_cannot_use_are_one_line_errors(tmp_path, capsys, case):
    image = tmp_path / "in"
    if case == "two series":
        write_series(image / "a", n=2, description="CT A", seed=1)
        write_series(image / "b", n=2, description="CT B", seed=2)
        expected = "holds 2 series ('CT A' 2x128x128; 'CT B' 2x128x128)"
    elif case == "4D":
        image = NIB_DATA / "example4d.nii.gz"
        expected = "is 4D (2 volumes of 24x96x128)"
    elif case == "damaged DICOM":
        files = write_series(image, n=3)
        files[1].write_bytes(files[1].read_bytes()[:-3000])
        expected = f"cannot decode the pixels of {files[1]}"
    else:
        image.mkdir()
        expected = "no DICOM images found in folder"
    _points_csv(tmp_path / "p.csv", (0, 5, 5))
    out = tmp_path / "l.nii.gz"
    assert main(["-q", "segment", str(image), "-p", str(tmp_path / "p.csv"), "-o", str(out), "--model",
                 "tiny"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("napari-msa segment: error:") and expected in err[0]
    assert not out.exists()
