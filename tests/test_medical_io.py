"""NIfTI and DICOM readers and the NIfTI labels writer on real files (nibabel's and pydicom's own test data)."""

from __future__ import annotations

import copy

import nibabel as nib
import numpy as np
import pydicom
import pytest
from medical_io_files import NIB_DATA, dicom_test_file, expected_display, nifti_like, write_series
from pydicom.uid import generate_uid

from napari_msa.medical_io import GEOMETRY_KEY, Geometry, MedicalIOError, read_medical, write_nifti_labels

AXIAL_ORDERS = [("L", "A", "S"), ("R", "A", "S"), ("R", "P", "I"), ("A", "L", "S"), ("P", "R", "I")]
OTHER_PLANES = [("L", "S", "A"), ("I", "A", "R")]  # slice axis A/P (coronal), R/L (sagittal)


def _skip_without_decoder(name: str) -> None:
    """Compressed files are tested where a decoder for them is installed (pillow: JPEG, JPEG 2000; RLE: built in)."""
    try:
        _ = pydicom.dcmread(dicom_test_file(name)).pixel_array
    except RuntimeError as err:
        pytest.skip(f"no decoder for {name}: {err}")


def _one(path):
    images = read_medical(path)
    assert len(images) == 1
    return images[0]


# --- NIfTI in -------------------------------------------------------------------------------------------------------
def test_anatomical_nifti_reads_in_display_order_with_spacing_and_header():
    img = nib.load(NIB_DATA / "anatomical.nii")  # LAS, 2 mm, big-endian int16
    image = _one(NIB_DATA / "anatomical.nii")
    assert image.data.shape == (25, 41, 33) and image.data.dtype == np.int16 and image.data.dtype.isnative
    assert np.array_equal(image.data, np.transpose(np.asarray(img.dataobj), (2, 1, 0))[:, ::-1, :])
    assert np.array_equal(image.data, expected_display(img))
    assert not image.is_labels and image.name == "anatomical"
    data, kwargs, kind = image.layer_data()
    assert kind == "image" and kwargs["scale"] == (2.0, 2.0, 2.0) and kwargs["units"] == ("mm",) * 3
    # napari's world coordinates: mm along (S, P, L) of the first displayed voxel
    first = img.affine @ [0, 40, 0, 1]  # display (0, 0, 0) is source (i=0, j=40, k=0): j runs toward anterior
    assert np.allclose(kwargs["translate"], (first[2], -first[1], -first[0]))
    geometry = Geometry.from_metadata(kwargs["metadata"][GEOMETRY_KEY])
    assert np.array_equal(geometry.affine, img.affine) and geometry.header == img.header.binaryblock


@pytest.mark.parametrize("codes", AXIAL_ORDERS + OTHER_PLANES, ids="".join)
def test_any_voxel_order_gives_the_display_rule(tmp_path, codes):
    """The same anatomy stored in other voxel orders: axial files show identically; others in their own plane."""
    source = nifti_like(nib.load(NIB_DATA / "anatomical.nii"), codes)
    nib.save(source, tmp_path / "a.nii.gz")
    image = _one(tmp_path / "a.nii.gz")
    assert np.array_equal(image.data, expected_display(source))
    if codes in AXIAL_ORDERS:
        reference = _one(NIB_DATA / "anatomical.nii")
        assert np.array_equal(image.data, reference.data)
        assert np.allclose(image.layer_data()[1]["translate"], reference.layer_data()[1]["translate"])
    else:
        assert image.geometry.plane == {"A": "coronal", "R": "sagittal"}[codes[2]]


@pytest.mark.parametrize("codes", AXIAL_ORDERS + OTHER_PLANES, ids="".join)
def test_a_source_voxel_index_maps_to_the_display_voxel_holding_it(tmp_path, codes):
    """3D Slicer's IJK clicks are source-order indices: each lands on the display voxel with the same value."""
    source = nifti_like(nib.load(NIB_DATA / "anatomical.nii"), codes)
    values = np.arange(np.prod(source.shape)).reshape(source.shape)  # every voxel its own value
    nib.save(nib.Nifti1Image(values.astype(np.int32), source.affine), tmp_path / "a.nii.gz")
    image = _one(tmp_path / "a.nii.gz")
    for ijk in [(0, 0, 0), tuple(s - 1 for s in source.shape), (3, 17, 9), (20, 1, 24)]:
        ijk = tuple(min(v, s - 1) for v, s in zip(ijk, source.shape))
        assert image.data[image.geometry.display_index(ijk)] == values[ijk]
        assert image.geometry.source_index(image.geometry.display_index(ijk)) == ijk  # and back (a client's clicks)


def test_a_one_slice_file_maps_voxel_indices_to_rows_and_columns(tmp_path):
    values = np.arange(12 * 7, dtype=np.int32).reshape(12, 7, 1)
    nib.save(nib.Nifti1Image(values, np.diag([-0.5, -0.5, 2.0, 1.0])), tmp_path / "s.nii.gz")
    image = _one(tmp_path / "s.nii.gz")
    assert image.data.ndim == 2
    for ijk in [(0, 0, 0), (11, 6, 0), (4, 2, 0)]:
        assert image.data[image.geometry.display_index(ijk)] == values[ijk]
        assert image.geometry.source_index(image.geometry.display_index(ijk)) == ijk
    with pytest.raises(MedicalIOError, match="i, j, k"):
        image.geometry.display_index((1, 2))
    with pytest.raises(MedicalIOError, match="2 values"):
        image.geometry.source_index((1, 2, 3))


def test_4d_nifti_puts_time_first_and_scaled_nifti_gives_values():
    image = _one(NIB_DATA / "example4d.nii.gz")
    assert image.data.shape == (2, 24, 96, 128)
    kwargs = image.layer_data()[1]
    assert kwargs["scale"][0] == 1.0 and np.allclose(kwargs["scale"][1:], (2.2, 2.0, 2.0), atol=1e-5)
    functional = _one(NIB_DATA / "functional.nii")  # int16 with a fractional scl_slope
    expected = nib.load(NIB_DATA / "functional.nii").get_fdata(dtype=np.float32)
    assert functional.data.dtype == np.float32
    assert np.allclose(functional.data[5], np.transpose(expected[..., 5], (2, 1, 0))[:, ::-1, :], rtol=1e-6)


def test_labels_rule(tmp_path):
    ids = np.zeros((6, 7, 8), np.uint8)
    ids[2:4, 2:5, 3:6] = 3
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    ramp = np.arange(6 * 7 * 8, dtype=np.int16).reshape(6, 7, 8)
    cases = {"liver_seg.nii.gz": (ramp.clip(0, 300), True),  # a name that says labels
             "plain.nii.gz": (ids, True),  # few distinct values
             "ramp.nii.gz": (ramp, False),  # many values: an image
             "ct_mask.nii.gz": (ramp - 100, False),  # negative values are never labels
             "float_seg.nii.gz": (ids.astype(np.float32), False)}  # floats are never labels
    for name, (data, labels) in cases.items():
        nib.save(nib.Nifti1Image(data, affine), tmp_path / name)
        assert _one(tmp_path / name).is_labels is labels, name
    intent = nib.Nifti1Image(ramp.clip(0, 300), affine)
    intent.header.set_intent("label")
    nib.save(intent, tmp_path / "intent.nii")
    assert _one(tmp_path / "intent.nii").layer_data()[2] == "labels"


@pytest.mark.parametrize("content", [b"not a nifti file at all", "truncated"])
def test_damaged_nifti_is_one_clear_error(tmp_path, content):
    path = tmp_path / "broken.nii.gz"
    if content == "truncated":
        full = (NIB_DATA / "example4d.nii.gz").read_bytes()
        path.write_bytes(full[: len(full) // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(MedicalIOError, match="broken.nii.gz"):
        read_medical(path)


# --- NIfTI labels out -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("codes", [("L", "A", "S"), ("P", "R", "I"), ("L", "S", "A")], ids="".join)
def test_labels_written_back_on_the_source_grid(tmp_path, codes):
    source = nifti_like(nib.load(NIB_DATA / "anatomical.nii"), codes)
    source.header.set_qform(source.affine, code="aligned")  # codes other than nibabel's defaults must survive
    nib.save(source, tmp_path / "src.nii")
    image = _one(tmp_path / "src.nii")
    labels = np.zeros(image.data.shape, np.int32)
    labels[3:9, 10:20, 5:12] = 7
    labels[15, 20, 20] = 300
    out = write_nifti_labels(tmp_path / "labels.nii.gz", labels, image.geometry)
    written = nib.load(out)
    assert written.shape == source.shape and np.allclose(written.affine, source.affine)
    assert written.header.get_qform(coded=True)[1] == 2 and written.header.get_sform(coded=True)[1] == 2
    assert np.allclose(written.header.get_zooms(), source.header.get_zooms())
    assert written.get_data_dtype() == np.uint16 and written.header.get_intent()[0] == "label"
    back = np.asarray(written.dataobj)
    assert np.array_equal(expected_display(nib.Nifti1Image(back, written.affine)), labels)
    # every labelled voxel sits where the display voxel was: display affine vs the written file's affine
    display_affine = image.geometry.display_affine
    for d in np.argwhere(labels)[::17]:
        world = display_affine @ [*d, 1]
        i, j, k = np.round(np.linalg.solve(written.affine, world)[:3]).astype(int)
        assert back[i, j, k] == labels[tuple(d)]
    reread = _one(out)
    assert reread.is_labels and np.array_equal(reread.data, labels)


def test_nifti2_4d_labels_round_trip(tmp_path):
    image = _one(NIB_DATA / "example_nifti2.nii.gz")
    labels = (image.data > np.percentile(image.data, 90)).astype(np.uint8)
    written = nib.load(write_nifti_labels(tmp_path / "l.nii.gz", labels, image.geometry))
    assert isinstance(written, nib.Nifti2Image) and written.shape == (32, 20, 12, 2)
    assert np.array_equal(_one(tmp_path / "l.nii.gz").data, labels)


def test_labels_without_a_source_are_axial_with_the_layer_scale(tmp_path):
    labels = np.zeros((4, 10, 12), np.uint8)
    labels[1, 2:5, 3:9] = 1
    out = write_nifti_labels(tmp_path / "l.nii", labels, scale=(5.0, 0.5, 0.75), translate=(10.0, -3.0, 2.0))
    image = _one(out)
    placement = image.geometry.layer_placement()
    assert np.array_equal(image.data, labels) and placement["scale"] == (5.0, 0.5, 0.75)
    assert np.allclose(placement["translate"], (10.0, -3.0, 2.0))


@pytest.mark.parametrize("labels, message", [
    (np.full((4, 10, 12), -1, np.int16), "ids ≥ 0"),
    (np.full((4, 10, 12), 0.5, np.float32), "whole numbers"),
    (np.zeros((3, 10, 12), np.uint8), "does not match"),
])
def test_bad_labels_are_refused_and_nothing_is_written(tmp_path, labels, message):
    geometry = _one(write_nifti_labels(tmp_path / "ref.nii.gz", np.zeros((4, 10, 12), np.uint8))).geometry
    with pytest.raises(MedicalIOError, match=message):
        write_nifti_labels(tmp_path / "out.nii.gz", labels, geometry)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.nii.gz"]


# --- DICOM in ---------------------------------------------------------------------------------------------------------
def test_ct_file_is_in_hounsfield_units_with_pixel_spacing():
    ds = pydicom.dcmread(dicom_test_file("CT_small.dcm"))
    image = _one(dicom_test_file("CT_small.dcm"))
    hu = ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
    assert image.data.shape == (128, 128) and np.array_equal(image.data, hu) and image.data.dtype == np.int16
    kwargs = image.layer_data()[1]
    assert kwargs["scale"] == (0.661468, 0.661468) and kwargs["colormap"] == "gray"
    assert np.allclose(kwargs["translate"], [float(ds.ImagePositionPatient[1]), float(ds.ImagePositionPatient[0])])


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_bigendian.dcm"])
def test_compressed_and_big_endian_mr_equal_the_plain_file(name):
    plain = _one(dicom_test_file("MR_small.dcm"))
    _skip_without_decoder(name)
    image = _one(dicom_test_file(name))
    assert np.array_equal(image.data, plain.data) and image.layer_data()[1]["scale"] == (0.3125, 0.3125)


def test_series_folder_sorted_by_position_not_names_or_instance_numbers(tmp_path):
    paths = write_series(tmp_path / "series", n=6, spacing=2.5)
    assert sorted(p.name for p in paths) != [p.name for p in paths]  # file names do not follow positions
    (tmp_path / "series" / "README.txt").write_text("notes that are not DICOM are skipped")
    image = _one(tmp_path / "series")
    assert image.data.shape == (6, 128, 128) and image.name == "test CT"
    assert [int(image.data[k, 0, 0]) for k in range(6)] == [100 * k - 1024 for k in range(6)]
    kwargs = image.layer_data()[1]
    assert np.allclose(kwargs["scale"], (2.5, 0.661468, 0.661468))
    src = pydicom.dcmread(paths[0])
    assert np.allclose(kwargs["translate"], [float(src.ImagePositionPatient[i]) for i in (2, 1, 0)])


def test_real_ct_series_from_pydicom(tmp_path):
    """pydicom's dicomdirtests CT5N: five real slices of one series, positions from the scanner."""
    folder = dicom_test_file("CT_small.dcm").parent / "dicomdirtests" / "98892001" / "CT5N"
    image = _one(folder)
    z = sorted(float(pydicom.dcmread(p).ImagePositionPatient[2]) for p in folder.iterdir())
    assert image.data.shape == (5, 16, 16)
    assert np.isclose(image.layer_data()[1]["scale"][0], z[1] - z[0]) and np.isclose(
        image.layer_data()[1]["translate"][0], z[0])
    for k, path in enumerate(sorted(folder.iterdir(), key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))):
        ds = pydicom.dcmread(path)
        assert np.array_equal(image.data[k], ds.pixel_array * int(ds.RescaleSlope) + int(ds.RescaleIntercept))


def test_sagittal_series_shows_in_its_own_plane(tmp_path):
    # rows along -S (top = superior), columns along +P: a sagittal acquisition
    write_series(tmp_path / "sag", n=4, spacing=3.0, iop=(0, 1, 0, 0, 0, -1))
    image = _one(tmp_path / "sag")
    assert image.geometry.plane == "sagittal" and image.geometry.codes == ("L", "I", "P")
    assert image.data.shape == (4, 128, 128) and np.allclose(image.layer_data()[1]["scale"][0], 3.0)


def test_two_series_in_one_folder_are_two_volumes_named_by_description(tmp_path):
    write_series(tmp_path / "study", n=3, description="CT abdomen", seed=1)
    write_series(tmp_path / "study" / "sub", n=4, spacing=5.0, description="CT abdomen 5mm", seed=2)
    images = {im.name: im for im in read_medical(tmp_path / "study")}
    assert set(images) == {"CT abdomen", "CT abdomen 5mm"}
    assert images["CT abdomen"].data.shape[0] == 3 and images["CT abdomen 5mm"].data.shape[0] == 4


def test_multiframe_rt_dose_and_ultrasound_cine():
    ds = pydicom.dcmread(dicom_test_file("rtdose.dcm"))
    dose = _one(dicom_test_file("rtdose.dcm"))  # classic multi-frame: GridFrameOffsetVector
    offsets = [float(v) for v in ds.GridFrameOffsetVector]  # 0, 5, ..., 70 mm from the first frame
    assert dose.data.shape == (15, 10, 10) and offsets == sorted(offsets)
    kwargs = dose.layer_data()[1]
    assert np.allclose(kwargs["scale"], (5.0, 10.0, 10.0))
    assert np.isclose(kwargs["translate"][0], float(ds.ImagePositionPatient[2]))
    assert np.allclose(dose.data, ds.pixel_array * float(ds.DoseGridScaling))  # stored values -> Gy
    _skip_without_decoder("examples_ybr_color.dcm")
    cine = _one(dicom_test_file("examples_ybr_color.dcm"))  # JPEG baseline, 30 RGB frames, no positions
    assert cine.data.shape == (30, 240, 320, 3) and cine.rgb and cine.layer_data()[1]["rgb"]


def test_enhanced_multiframe_sorted_with_per_frame_rescale(tmp_path):
    """An enhanced file built from CT_small's pixels: frames stored out of order, each with its own rescale."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    src = pydicom.dcmread(dicom_test_file("CT_small.dcm"))
    ds = copy.deepcopy(src)
    z = [10.0, 0.0, 5.0]  # stored order; sorted order is 0, 5, 10
    intercepts = [-1000, -1024, -1010]
    frames = [src.pixel_array + 10 * k for k in range(3)]
    ds.NumberOfFrames = 3
    ds.PixelData = np.stack(frames).astype(np.int16).tobytes()
    for attr in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "RescaleSlope",
                 "RescaleIntercept"):
        del ds[attr]

    def item(**kw):
        d = Dataset()
        for k, v in kw.items():
            setattr(d, k, v)
        return d

    shared = item(PlaneOrientationSequence=Sequence([item(ImageOrientationPatient=[1, 0, 0, 0, 1, 0])]),
                  PixelMeasuresSequence=Sequence([item(PixelSpacing=[0.5, 0.5], SliceThickness=5)]))
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.PerFrameFunctionalGroupsSequence = Sequence([
        item(PlanePositionSequence=Sequence([item(ImagePositionPatient=[0, 0, z[k]])]),
             PixelValueTransformationSequence=Sequence([item(RescaleSlope=1, RescaleIntercept=intercepts[k])]))
        for k in range(3)])
    ds.SOPInstanceUID = generate_uid()
    ds.save_as(tmp_path / "enhanced.dcm")
    image = _one(tmp_path / "enhanced.dcm")
    assert image.data.shape == (3, 128, 128)
    for k, stored in enumerate((1, 2, 0)):
        assert np.array_equal(image.data[k], frames[stored] + intercepts[stored])
    assert np.allclose(image.layer_data()[1]["scale"], (5.0, 0.5, 0.5))


def test_damaged_dicom_in_a_series_names_the_file(tmp_path):
    paths = write_series(tmp_path / "s", n=4)
    paths[2].write_bytes(paths[2].read_bytes()[:-5000])  # pixel data cut short
    with pytest.raises(MedicalIOError, match=paths[2].name):
        read_medical(tmp_path / "s")
    with pytest.raises(MedicalIOError, match="not a DICOM file"):
        (tmp_path / "x.dcm").write_text("hello")
        read_medical(tmp_path / "x.dcm")
    with pytest.raises(MedicalIOError, match="no DICOM images"):
        (tmp_path / "empty").mkdir()
        read_medical(tmp_path / "empty")


def test_slices_at_one_position_are_refused(tmp_path):
    write_series(tmp_path / "s", n=3, spacing=0.0)
    with pytest.raises(MedicalIOError, match="share a slice position"):
        read_medical(tmp_path / "s")


def test_dicom_labels_are_written_on_the_dicom_geometry(tmp_path):
    paths = write_series(tmp_path / "s", n=4, spacing=2.5)
    image = _one(tmp_path / "s")
    labels = np.zeros(image.data.shape, np.uint8)
    labels[1, 10:20, 30:60] = 2
    written = nib.load(write_nifti_labels(tmp_path / "l.nii.gz", labels, image.geometry))
    ds = pydicom.dcmread(paths[0])
    x0, y0, z0 = (float(v) for v in ds.ImagePositionPatient)
    dx = float(ds.PixelSpacing[1])
    expected = np.array([[-dx, 0, 0, -x0], [0, -float(ds.PixelSpacing[0]), 0, -y0], [0, 0, 2.5, z0], [0, 0, 0, 1]])
    assert written.shape == (128, 128, 4) and np.allclose(written.affine, expected)  # DICOM LPS -> NIfTI RAS
    assert np.array_equal(np.asarray(written.dataobj)[:, :, 1].T, labels[1])  # (column, row, slice) order

    single = _one(dicom_test_file("CT_small.dcm"))  # one slice: a 2D layer, written back as one slice
    mask = np.zeros(single.data.shape, bool)
    mask[40:70, 20:90] = True
    flat = nib.load(write_nifti_labels(tmp_path / "one.nii", mask, single.geometry))
    assert flat.shape == (128, 128, 1) and np.array_equal(np.asarray(flat.dataobj)[:, :, 0].T, mask)
    assert np.array_equal(_one(tmp_path / "one.nii").data, mask)


@pytest.mark.parametrize("name", ["a.nii.gz", "a.nii"])
def test_an_image_written_on_a_series_geometry_reads_back_as_the_series(tmp_path, name):
    """What the MONAI Label server keeps for a DICOM series and what the client uploads: the same array, the same
    patient geometry, whichever voxel order the source had."""
    from napari_msa.medical_io.nifti import write_nifti_image

    write_series(tmp_path / "s", n=4)
    series = read_medical(tmp_path / "s")[0]
    write_nifti_image(tmp_path / name, series.data, series.geometry)
    back = read_medical(tmp_path / name)[0]
    assert np.array_equal(back.data, series.data) and back.data.dtype == series.data.dtype
    assert np.allclose(back.geometry.affine, series.geometry.affine)
    assert back.layer_data()[1]["scale"] == pytest.approx(series.layer_data()[1]["scale"])
    with pytest.raises(MedicalIOError, match="written as .nii or .nii.gz"):
        write_nifti_image(tmp_path / "a.tif", series.data, series.geometry)
