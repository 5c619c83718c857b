"""The real-image development set (issue 20): it loads with numpy alone, has the promised breadth, its "dark" tags
are true, and the trainer never reads any of its source files (DESIGN.md 2b: evaluation-only)."""

from __future__ import annotations

import ast
import itertools
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_msa.evaluation.devset import (
    DEVSET_SOURCES,
    MODALITIES,
    REPO_ROOT,
    TAGS,
    DevImage,
    load_devset,
    load_metadata,
)

NPZ = REPO_ROOT / "benchmarks" / "devset" / "devset.npz"
REAL_IMAGES = REPO_ROOT / "napari_msa" / "training" / "real_images.py"


@pytest.fixture(scope="module")
def devset() -> list[DevImage]:
    return load_devset()


def test_loads_and_is_small(devset):
    assert NPZ.stat().st_size < 3_000_000
    assert all(isinstance(im, DevImage) for im in devset)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="build.py"):
        load_devset(tmp_path / "nothing.npz")


def test_breadth(devset):
    assert len(devset) >= 8
    modalities = {im.modality for im in devset}
    assert {"CT", "MRI"} <= modalities and modalities & {"US", "fundus", "dermoscopy", "microscopy"}
    assert len(modalities) >= 3 and modalities <= set(MODALITIES)
    objects = [o for im in devset for o in im.objects]
    assert len(objects) >= 30
    assert sum("dark" in o.tags for o in objects) >= 4
    assert sum(bool({"ring", "nested"} & set(o.tags)) for o in objects) >= 2
    assert sum("ring" in o.tags for o in objects) >= 1
    assert any("small" in o.tags for o in objects) and any("large" in o.tags for o in objects)


def test_images_and_masks_are_well_formed(devset):
    for im in devset:
        assert im.image.ndim == 2 or (im.image.ndim == 3 and im.image.shape[2] == 3), im.name
        assert max(im.image.shape[:2]) <= 256, im.name
        assert im.image.dtype == np.float32 or np.issubdtype(im.image.dtype, np.integer), im.name
        assert im.normalization in ("ct", "percentile", "none"), im.name
        assert im.source and im.licence and im.objects, im.name
        for o in im.objects:
            assert o.mask.dtype == bool and o.mask.shape == im.image.shape[:2], (im.name, o.name)
            assert o.mask.any() and not o.mask.all(), (im.name, o.name)
            assert set(o.tags) <= set(TAGS), (im.name, o.name, o.tags)


def _assert_dark_tags_true(images: list[DevImage]) -> int:
    """Mean intensity inside a 'dark' object is below the mean in a 3-px ring around it (RGB: channel mean);
    returns how many were checked."""
    checked = 0
    for im in images:
        a = im.image.astype(np.float64)
        if a.ndim == 3:
            a = a.mean(axis=2)
        for o in im.objects:
            if "dark" not in o.tags:
                continue
            ring = ndi.binary_dilation(o.mask, iterations=3) & ~o.mask
            inside, around = a[o.mask].mean(), a[ring].mean()
            assert inside < around, f"{im.name} / {o.name}: inside {inside:.1f} >= ring {around:.1f}"
            checked += 1
    return checked


def test_dark_tags_are_true(devset):
    assert _assert_dark_tags_true(devset) >= 4


def test_every_source_file_is_listed():
    meta = load_metadata()
    for m in meta["images"]:
        assert m["source_files"], m["name"]
        for f in m["source_files"]:
            assert f in DEVSET_SOURCES, f"{m['name']}: {f} is missing from DEVSET_SOURCES"


def _basename(entry: str) -> str:
    return entry.rsplit("/", 1)[-1].lower()


def test_trainer_source_names_no_devset_file():
    """Every file name and skimage/pydicom data name written in real_images.py is checked against the dev set."""
    tree = ast.parse(REAL_IMAGES.read_text(encoding="utf-8"))
    literals = {n.value.lower() for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    names = {Path(s).name for s in literals if "." in s and " " not in s}
    assert "anatomical.nii" in names, "the scan of real_images.py found none of the file names it knows it reads"
    devset_names = {_basename(e) for e in DEVSET_SOURCES}
    stems = {n.split(".", 1)[0] for n in devset_names}
    assert not names & devset_names, f"the trainer names dev-set files: {sorted(names & devset_names)}"
    # a dev-set file named without its extension (e.g. get_testdata_file("CT_small")) counts too
    assert not literals & stems, f"the trainer names dev-set files: {sorted(literals & stems)}"


_OPENED: list[str] = []
_RECORDING = [False]


def _audit(event: str, args: tuple) -> None:
    if _RECORDING[0] and event == "open" and args and isinstance(args[0], (str, bytes, Path)):
        p = args[0].decode(errors="replace") if isinstance(args[0], bytes) else str(args[0])
        _OPENED.append(p.replace("\\", "/"))


def test_trainer_opens_no_devset_file():
    """Run the trainer's real-image loaders and record every file they open (Python's audit hook)."""
    try:
        from napari_msa.training.real_images import load_real_images
    except ImportError as e:  # the trainer's own dependencies are missing here
        pytest.skip(f"napari_msa.training.real_images does not import: {e}")
    if not getattr(sys, "_devset_audit_installed", False):
        sys.addaudithook(_audit)
        sys._devset_audit_installed = True
    _OPENED.clear()
    _RECORDING[0] = True
    try:
        images = load_real_images()
    finally:
        _RECORDING[0] = False
    assert images and _OPENED, "the loaders opened no file: the check would prove nothing"
    bad = sorted({p for p in _OPENED for e in DEVSET_SOURCES if p.endswith(e)})
    assert not bad, f"training read evaluation-only files: {bad}"


FRESH = REPO_ROOT / "benchmarks" / "devset" / "fresh.npz"


def test_second_confirmation_set_is_other_sources_and_well_formed():
    """benchmarks/devset/fresh.py's set: loads, has its breadth, true dark tags, and shares no source with the dev
    set or the first confirmation set (which reuse the dev set's files)."""
    fresh = load_devset(FRESH)
    objects = [o for im in fresh for o in im.objects]
    assert len(fresh) >= 15 and len(objects) >= 25
    assert {"CT", "MRI", "X-ray", "NM"} <= {im.modality for im in fresh} <= set(MODALITIES)
    assert any("ring" in o.tags for o in objects) and _assert_dark_tags_true(fresh) >= 4
    for im in fresh:
        for o in im.objects:
            assert o.mask.dtype == bool and o.mask.shape == im.image.shape[:2] and o.mask.any(), (im.name, o.name)
            assert set(o.tags) <= set(TAGS), (im.name, o.name, o.tags)
    fresh_files = {f for m in load_metadata(FRESH)["images"] for f in m["source_files"]}
    dev_files = {f for m in load_metadata()["images"] for f in m["source_files"]}
    assert fresh_files and fresh_files <= set(DEVSET_SOURCES)
    assert not {_basename(f) for f in fresh_files} & {_basename(f) for f in dev_files}


def test_reserve_builder_reads_brats_layout_and_keeps_rings(tmp_path):
    """benchmarks/devset/reserve.py on a small BRATS-like case written to disk: eligible slices picked, the core's
    hole filled, the enhancing ring kept as a ring, a dark necrosis tagged dark; the npz loads back."""
    import nibabel

    sys.path.insert(0, str(REPO_ROOT / "benchmarks" / "devset"))
    import reserve

    patient = reserve.PATIENTS[0]
    case = tmp_path / reserve.DATA / patient
    case.mkdir(parents=True)
    shape = (64, 64, 30)
    yy, xx = np.mgrid[:64, :64]
    r = np.hypot(yy - 32, xx - 32)
    labels = np.zeros(shape, np.int16)
    for z in range(8, 22):  # a tumour on 14 slices: necrosis inside an enhancing ring, oedema around
        labels[..., z][r < 16] = 2
        labels[..., z][r < 11] = 4
        labels[..., z][r < 6] = 1
    t1c = np.where(labels == 1, -1.0, np.where(labels == 4, 3.0, 0.5)).astype(np.float32)
    flair = np.where(labels > 0, 2.0, 0.0).astype(np.float32)
    for name, vol in (("OTMultiClass", labels), ("T1c_subtrMeanDivStd", t1c), ("Flair_subtrMeanDivStd", flair)):
        nibabel.save(nibabel.Nifti1Image(vol, np.eye(4)), case / f"{name}.nii.gz")
    images = reserve.patient_images(tmp_path, patient)
    assert len(images) == 2 * reserve.SLICES_PER_PATIENT
    t1 = [im for im in images if im.key.endswith("t1c")][0]
    objs = {o.name: o for o in t1.objects}
    plane = np.rot90(labels[..., 8])
    assert objs["tumour core"].mask.sum() == np.isin(plane, (1, 4)).sum()
    assert "ring" in objs["enhancing tumour"].tags and not objs["enhancing tumour"].mask[32, 32]
    assert "dark" in objs["necrosis"].tags
    out = tmp_path / "reserve.npz"
    from build import to_npz, write_atomic

    write_atomic(out, to_npz(images))
    back = load_devset(out)
    assert [len(im.objects) for im in back] == [len(im.objects) for im in images]


def test_wide_builder_reads_each_source_and_names_its_files(tmp_path):
    """benchmarks/devset/wide.py on small stand-ins for its five sources' files: the fetal head's outline filled, the
    two lungs named by image side and tagged dark, two polyps kept apart and a JPEG speck dropped, images scaled to
    256 px and masks with them; every file it reads is in DEVSET_SOURCES; the npz loads back."""
    import io

    from PIL import Image

    sys.path.insert(0, str(REPO_ROOT / "benchmarks" / "devset"))
    import wide

    def png(a: np.ndarray, fmt: str = "PNG") -> bytes:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format=fmt)
        return buf.getvalue()

    yy, xx = np.mgrid[:540, :800]
    ellipse = ((yy - 270) / 150.0) ** 2 + ((xx - 400) / 220.0) ** 2
    outline = (np.abs(ellipse - 1) < 0.02).astype(np.uint8) * 255
    us = np.where(ellipse < 1, 60, 120).astype(np.uint8)
    cy, cx = np.mgrid[:512, :512]
    lungs = (((cy - 250) / 150.0) ** 2 + ((cx - 150) / 70.0) ** 2 < 1) | (((cy - 250) / 150.0) ** 2
                                                                          + ((cx - 360) / 70.0) ** 2 < 1)
    xray = np.where(lungs, 40, 200).astype(np.uint8)
    rgb = np.full((400, 600, 3), 90, np.uint8)
    disc = (yy[:400, :600] - 200) ** 2 + (xx[:400, :600] - 420) ** 2 < 40 ** 2
    rgb[disc] = 230
    polyp = np.zeros((400, 600), np.uint8)
    polyp[50:150, 50:200] = polyp[250:350, 400:550] = 255
    polyp[10:12, 580:582] = 255  # a speck, as JPEG noise leaves
    files = {}
    for source, path in wide.files(wide.SETS["wide"]):
        name = path.rsplit("/", 1)[1]
        if source is wide.HC18:
            data = png(outline if "Annotation" in name else us)
        elif source is wide.CXR:
            data = png((lungs * 255).astype(np.uint8) if "/masks/" in path else xray)
        elif source is wide.KVASIR:
            data = png(polyp if "/masks/" in path else rgb, "JPEG" if "/masks/" in path else "PNG")
        else:
            data = png((disc * 255).astype(np.uint8) if "mask" in path or "groundtruth" in path else rgb)
        files[(source.repo, path)] = data

    images = wide.wide_images(lambda source, path: files[(source.repo, path)], wide.SETS["wide"])
    assert len(images) == 38 and max(max(im.image.shape[:2]) for im in images) == 256
    by_key = {im.key: im for im in images}
    head = by_key["hc18_000"].objects[0]
    assert head.mask.shape == by_key["hc18_000"].image.shape == (173, 256)
    assert abs(head.mask.sum() - (ellipse < 1).sum() * (256 / 800) ** 2) < 0.03 * head.mask.sum()
    chest = by_key["cxr_MCUCXR_0001_0"].objects
    assert [o.name for o in chest] == ["lung on the image left", "lung on the image right"]
    assert all("dark" in o.tags for o in chest) and "dark" in by_key["hc18_000"].objects[0].tags
    kvasir = [im for im in images if im.modality == "endoscopy"][0]
    assert [o.name for o in kvasir.objects] == ["polyp 1 of 2 (left to right)", "polyp 2 of 2 (left to right)"]
    assert "bright" in by_key["fundus_image_091"].objects[0].tags
    for selection in wide.SETS.values():
        assert set(wide.source_files(selection)) <= set(DEVSET_SOURCES)
    assert {f for im in images for f in im.source_files} == set(wide.source_files(wide.SETS["wide"]))
    for a, b in itertools.combinations(wide.SETS, 2):
        assert not set(wide.source_files(wide.SETS[a])) & set(wide.source_files(wide.SETS[b]))
    from build import to_npz, write_atomic

    write_atomic(tmp_path / "wide.npz", to_npz(images))
    back = load_devset(tmp_path / "wide.npz")
    assert sum(len(im.objects) for im in back) == sum(len(im.objects) for im in images)
    assert {im.modality for im in back} <= set(MODALITIES)
