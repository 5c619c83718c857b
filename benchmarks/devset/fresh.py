"""A second confirmation set, from sources the development set does not use (issue 20).

The first confirmation set (``heldout.py``) takes the dev set's own sources elsewhere, and it helped choose run KZ's
corrector: it no longer confirms anything. This set comes from two public repositories that nothing in the project
has read before, never looked at while choosing a model, a rule or a constant until its first use (2026-12-07),
which rejected run KZ's corrector (BENCHMARKS.md); since then it is a development set too:

* pyradiomics' test cases (github.com/AIM-Harvard/pyradiomics, ``data/``, BSD-3-Clause): two contrast-enhanced T1
  brain MRIs with a tumour and a breast MRI with a lesion, each with the **hand-drawn label it ships** (the
  references here are those labels, slice by slice);
* pydicom's external test data (github.com/pydicom/pydicom-data, ``data_store/data/``, MIT): an abdominal CT from
  The Cancer Imaging Archive (``explicit_VR-UN.dcm``), and three NEMA WG04 test images — a shoulder MRI
  (``MR2_UNCR.dcm``), a lower-leg radiograph (``RG3_J2KR.dcm``) and a whole-body bone scintigram
  (``JPEG2000_UNC.dcm``, NM) — with references by rule (thresholds + morphology + a seeded piece, as ``build.py``),
  each checked by eye on its overlay in ``overlays_fresh/``.

Build (once, by hand: it reads two git checkouts and writes ``fresh.npz`` and the overlays, which are committed so
that the benchmark needs neither repository)::

    python benchmarks/devset/fresh.py --pyradiomics DIR --pydicom-data DIR

``click_protocol.py --datasets fresh`` reads ``fresh.npz``. Evaluation only (DESIGN.md 2b): its source files are in
``napari_msa.evaluation.devset.DEVSET_SOURCES``.
"""

from __future__ import annotations

import argparse
import gzip
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import build  # noqa: E402  (the dev set's Img, rules, overlays, npz writer)
from build import block_mean, closed, component_at, fill, largest, opened  # noqa: E402

OUT_NPZ = HERE / "fresh.npz"
build.DISPLAY_WINDOWS["ct_abdomen"] = (-160.0, 240.0)
OUT_OVERLAYS = HERE / "overlays_fresh"
PYRADIOMICS_COMMIT = "8ed579383b44806651c463d5e691f3b2b57522ab"
PYDICOM_DATA_COMMIT = "b0d40d1e0a42c5696936043bbd8059984259cd33"
PYR_LIC = ("BSD-3-Clause (pyradiomics test cases, github.com/AIM-Harvard/pyradiomics data/ at "
           f"{PYRADIOMICS_COMMIT[:10]}; the images' origin is not stated there)")
PDD_LIC = f"MIT (pydicom-data, github.com/pydicom/pydicom-data at {PYDICOM_DATA_COMMIT[:10]})"


def nrrd(path: Path) -> np.ndarray:
    """A gzip-encoded NRRD volume as (z, y, x) — the only kind pyradiomics' test cases use."""
    raw = path.read_bytes()
    end = raw.index(b"\n\n")
    fields = dict(line.split(": ", 1) for line in raw[:end].decode().splitlines()[1:] if ": " in line)
    if fields.get("encoding") != "gzip" or fields.get("endian", "little") != "little":
        raise ValueError(f"{path}: only little-endian gzip NRRD is read here")
    dtype = {"short": "<i2", "int": "<i4", "ushort": "<u2", "uchar": "u1"}[fields["type"]]
    sizes = [int(s) for s in fields["sizes"].split()]
    return np.frombuffer(gzip.decompress(raw[end + 2:]), dtype).reshape(sizes[::-1])


def nearest_piece(mask: np.ndarray, seed: tuple[int, int]) -> np.ndarray:
    """The piece of ``mask`` that holds ``seed``, or the one nearest to it (seeds were placed by eye, in the middle of
    an organ whose centre may be a hole of the thresholded mask)."""
    pieces, _ = ndi.label(mask)
    if pieces[seed]:
        return pieces == pieces[seed]
    rows, cols = ndi.distance_transform_edt(pieces == 0, return_indices=True)[1]
    return pieces == pieces[rows[seed], cols[seed]]


def dicom(path: Path) -> tuple[np.ndarray, object]:
    import pydicom

    ds = pydicom.dcmread(path)
    return ds.pixel_array, ds


# ----------------------------------------------------------------------------------------------- pyradiomics
def pyradiomics_slices(root: Path, case: str, title: str, slices: tuple[int, ...], obj: str,
                       tags: tuple[str, ...]) -> list[build.Img]:
    image, label = nrrd(root / "data" / f"{case}_image.nrrd"), nrrd(root / "data" / f"{case}_label.nrrd")
    files = (f"pyradiomics/data/{case}_image.nrrd", f"pyradiomics/data/{case}_label.nrrd")
    out = []
    for z in slices:
        im = build.Img(f"pyr_{case}_z{z}", f"pyradiomics {case}: {title}, slice {z}", "MRI",
                       np.ascontiguousarray(image[z]), "percentile", f"pyradiomics data/{case}_image.nrrd + "
                       f"{case}_label.nrrd (slice {z} of {image.shape[0]}, as stored)", files, PYR_LIC)
        im.add(obj, fill(label[z] > 0), tags, "the label shipped with the image (hand-drawn), holes filled")
        out.append(im)
    return out


# ----------------------------------------------------------------------------------------------- pydicom-data
def ct_abdomen(root: Path) -> build.Img:
    px, ds = dicom(root / "data_store/data/explicit_VR-UN.dcm")
    hu = block_mean(px.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept), 2)
    im = build.Img("ct_abdomen", "TCIA contrast-enhanced abdominal CT (pancreas study), 2x downsampled", "CT",
                   hu.astype(np.int16), "ct", "pydicom-data data_store/data/explicit_VR-UN.dcm (512 px, 2x2 mean "
                   "to 256 px; the patient lies prone: the table is at the top)",
                   ("pydicom-data/data_store/data/explicit_VR-UN.dcm",),
                   PDD_LIC + "; the image is from The Cancer Imaging Archive (pydicom issue 968)")
    bone = opened(hu > 150, 1)
    vertebra = fill(closed(component_at(bone, (100, 130), "vertebra"), 2))
    canal = fill(component_at(vertebra & (hu < 100), (83, 132), "canal"))
    im.add("spinal canal", canal, ("dark", "small", "nested"), "HU<100 inside the filled vertebra, piece at (83,132), "
           "holes filled")
    im.add("vertebra (bone ring around the canal)", vertebra & ~canal, ("bright", "ring"),
           "HU>150 opened 1, piece at (100,130), closed 2, holes filled, minus the canal")
    enhancing = opened(hu > 110, 1)
    for side, seed in (("image left", (99, 100)), ("image right", (97, 160))):
        im.add(f"kidney ({side})", fill(closed(nearest_piece(enhancing, seed), 3)), ("bright",),
               f"HU>110 opened 1, the piece nearest ({seed[0]},{seed[1]}), closed 3, holes filled (pelvis and "
               "medulla included)")
    im.add("spleen", fill(closed(nearest_piece(enhancing, (105, 188)), 2)), ("bright",),
           "HU>110 opened 1, the piece nearest (105,188), closed 2, holes filled")
    im.add("aorta", fill(nearest_piece(bone, (118, 133))), ("bright", "small"),
           "HU>150 opened 1, the piece nearest (118,133), holes filled")
    im.add("liver", fill(closed(nearest_piece(opened((hu > 60) & (hu < 130), 3), (135, 85)), 2)), ("large",),
           "60<HU<130 opened 3, the piece nearest (135,85), closed 2, holes filled")
    gas = hu < -500
    for k, seed in enumerate(((154, 150), (156, 174))):
        im.add(f"bowel gas {k + 1}", fill(nearest_piece(gas, seed)), ("dark", "small"),
               f"HU<-500, the piece nearest ({seed[0]},{seed[1]}), holes filled")
    return im


def shoulder_mr(root: Path) -> build.Img:
    px, _ = dicom(root / "data_store/data/MR2_UNCR.dcm")
    a = block_mean(px, 4)
    im = build.Img("mr_shoulder", "NEMA WG04 MR2: coronal shoulder MRI, 4x downsampled", "MRI", a.astype(np.uint16),
                   "percentile", "pydicom-data data_store/data/MR2_UNCR.dcm (1024 px, 4x4 mean to 256 px)",
                   ("pydicom-data/data_store/data/MR2_UNCR.dcm",), PDD_LIC + "; NEMA WG04 test image MR2")
    smooth = ndi.gaussian_filter(a, 1)
    im.add("humerus (head and proximal shaft, marrow)", fill(opened(component_at(smooth > 180, (150, 110)), 2)),
           ("bright", "large"), "Gaussian(1) >180 (muscle and cortex ~60), piece at (150,110), opened 2, holes filled")
    im.add("subcutaneous fat over the deltoid", nearest_piece(opened(smooth > 180, 1), (150, 44)), ("bright", "ring"),
           "Gaussian(1) >180 opened 1, the piece nearest (150,44)")
    return im


def leg_radiograph(root: Path) -> build.Img:
    px, ds = dicom(root / "data_store/data/RG3_J2KR.dcm")
    a = block_mean(float(px.max()) - px.astype(np.float64), 7)  # MONOCHROME1: invert so that bone is bright
    im = build.Img("xr_leg", "NEMA WG04 RG3: radiograph of the distal lower leg (non-ossifying fibroma of the "
                   "tibia), 7x downsampled", "X-ray", a.astype(np.uint16), "percentile",
                   "pydicom-data data_store/data/RG3_J2KR.dcm (1760 px, MONOCHROME1 inverted, 7x7 mean to 251 px)",
                   ("pydicom-data/data_store/data/RG3_J2KR.dcm",), PDD_LIC + "; NEMA WG04 test image RG3")
    smooth = ndi.gaussian_filter(a, 1)
    exposed = smooth < 900  # the collimator's shutters are at the top of the range once inverted
    im.add("lower leg (soft tissue and bone)", fill(opened(component_at(exposed & (smooth > 120), (125, 125)), 2)),
           ("bright", "large"), "inside the exposed field (<900), Gaussian(1) >120 (air <70), piece at (125,125), "
           "opened 2, holes filled")
    return im


def bone_scan(root: Path) -> build.Img:
    px, _ = dicom(root / "data_store/data/JPEG2000_UNC.dcm")
    a = block_mean(px, 2)[:256]
    im = build.Img("nm_bone_scan", "NEMA WG04 NM1: whole-body bone scintigram, upper body, 2x downsampled", "NM",
                   a.astype(np.float32), "percentile", "pydicom-data data_store/data/JPEG2000_UNC.dcm (1024x256, 2x2 "
                   "mean, rows 0:256)", ("pydicom-data/data_store/data/JPEG2000_UNC.dcm",),
                   PDD_LIC + "; NEMA WG04 test image NM1 (edited by pydicom)")
    smooth = ndi.gaussian_filter(a, 1)
    peak = np.unravel_index(int(np.argmax(ndi.gaussian_filter(a, 2))), a.shape)
    im.add("bladder (hot spot)", fill(component_at(smooth > 0.5 * smooth[peak], peak)), ("bright", "small"),
           "Gaussian(1) above half the uptake at the image's hottest point (the bladder), that piece, holes filled")
    im.add("body", fill(largest(opened(ndi.gaussian_filter(a, 1.5) > 20, 1))), ("bright", "large"),
           "Gaussian(1.5) >20 counts (background <11), opened 1, largest piece, holes filled")
    return im


def images(pyradiomics: Path, pydicom_data: Path) -> list[build.Img]:
    brain1 = pyradiomics_slices(pyradiomics, "brain1", "contrast-enhanced T1 brain MRI with a tumour",
                                tuple(range(11, 18)), "tumour (the shipped label)", ("bright", "nested"))
    brain2 = pyradiomics_slices(pyradiomics, "brain2", "contrast-enhanced T1 brain MRI with a tumour", (8, 9, 10),
                                "tumour (the shipped label)", ("bright", "small", "nested"))
    eye_slice = brain2[0]
    eye_slice.add("eyeball (vitreous, image left)",
                  fill(nearest_piece(ndi.gaussian_filter(eye_slice.image.astype(np.float64), 1) < 250, (228, 95))),
                  ("dark", "small"), "Gaussian(1) <250 (its rim >800), the piece nearest (228,95), holes filled")
    breast = pyradiomics_slices(pyradiomics, "breast1", "breast MRI with a lesion", (8, 9, 10),
                                "lesion (the shipped label)", ("bright", "small"))
    return [*brain1, *brain2, *breast, ct_abdomen(pydicom_data), shoulder_mr(pydicom_data),
            leg_radiograph(pydicom_data), bone_scan(pydicom_data)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pyradiomics", type=Path, required=True, help="a checkout of AIM-Harvard/pyradiomics")
    ap.add_argument("--pydicom-data", type=Path, required=True, help="a checkout of pydicom/pydicom-data")
    ap.add_argument("--no-npz", action="store_true", help="overlays only")
    args = ap.parse_args(argv)
    built = images(args.pyradiomics, args.pydicom_data)
    for im in built:
        build.checked(im, OUT_OVERLAYS)
    if not args.no_npz:
        data = build.to_npz(built)
        build.write_atomic(OUT_NPZ, data)
        print(f"wrote {OUT_NPZ} ({len(data) / 1e6:.2f} MB): {len(built)} images, "
              f"{sum(len(im.objects) for im in built)} objects")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
