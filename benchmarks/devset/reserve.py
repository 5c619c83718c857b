"""The reserve set: expert-labelled brain tumours (BRATS 2013/2015, six patients), kept for confirming the next model.

Every real set the project has is spent: the dev set was chosen on, the first confirmation set helped choose run
KZ's corrector, the second (``fresh.py``) rejected it. This one is built now and **measured only once a model has
been chosen on the others** (BENCHMARKS.md says when it was first used). It is also larger: 28–49 objects give a
mean whose noise (±0.03) is as large as the differences between the models compared, so choices made on them fit
noise; here about a hundred objects from six patients.

Source: the six BRATS 2013 cases that DeepMedic ships for its examples (github.com/deepmedic/deepmedic,
``examples/dataForExamples/brats2015TrainingData``), contrast-enhanced T1 and FLAIR, skull-stripped, resampled to
1 mm and normalised to zero mean and unit variance in the brain by DeepMedic, with the challenge's expert labels
(1 necrosis, 2 oedema, 3 non-enhancing tumour, 4 enhancing tumour). **Licence CC BY-NC-SA 3.0** (Menze et al.,
IEEE TMI 2015; modified by K. Kamnitsas): so the set is **not committed**: build it locally, into a git-ignored file::

    python benchmarks/devset/reserve.py --deepmedic DIR     # a checkout of deepmedic/deepmedic

``click_protocol.py --datasets reserve`` reads ``benchmarks/devset/reserve.npz`` (or ``$NAPARI_MSA_RESERVE``).
Per patient, five axial slices evenly spread over those where the whole tumour covers at least 300 px; per slice:
the whole tumour on FLAIR (labels 1–4, largest piece, holes filled), the tumour core on T1c (labels 1, 3, 4,
largest piece, holes filled), the enhancing tumour on T1c (label 4, largest piece, holes not filled: often a ring)
and, where it has at least 60 px, the necrosis on T1c (label 1, largest piece). Pieces under 40 px are left out.
Evaluation only: nothing may train on it (its files are in ``DEVSET_SOURCES``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import build  # noqa: E402  (the dev set's Img, overlays, npz writer)
from build import fill, largest  # noqa: E402

DEEPMEDIC_COMMIT = "e10ba7c3570d06194f5dadca91d99d5e7bba7de5"
DATA = "examples/dataForExamples/brats2015TrainingData"
PATIENTS = ("test/brats_2013_pat0001_1", "test/brats_2013_pat0002_1", "validation/brats_2013_pat0003_1",
            "validation/brats_2013_pat0004_1", "train/brats_2013_pat0005_1", "train/brats_2013_pat0006_1")
LICENCE = ("CC BY-NC-SA 3.0 (BRATS 2013/2015, Menze et al. 2015; intensity-normalised by K. Kamnitsas for "
           f"DeepMedic, github.com/deepmedic/deepmedic at {DEEPMEDIC_COMMIT[:10]})")
SLICES_PER_PATIENT = 5
MIN_TUMOUR = 300  # px of whole tumour for a slice to be eligible
MIN_PIECE = 40  # px: smaller pieces are left out
MIN_NECROSIS = 60
DEFAULT_OUT = HERE / "reserve.npz"
OVERLAYS = Path("/tmp/napari-msa-reserve-overlays")  # not committed either: the images are CC BY-NC-SA


def reserve_path() -> Path:
    return Path(os.environ.get("NAPARI_MSA_RESERVE", DEFAULT_OUT))


def _volume(root: Path, patient: str, name: str) -> np.ndarray:
    import nibabel

    return np.asanyarray(nibabel.load(root / DATA / patient / f"{name}.nii.gz").dataobj)


def _plane(volume: np.ndarray, z: int) -> np.ndarray:
    """Axial plane z as (rows, cols), anterior up (the arrays are x, y, z)."""
    return np.ascontiguousarray(np.rot90(volume[:, :, z]))


def _piece(mask: np.ndarray) -> np.ndarray | None:
    if mask.sum() < MIN_PIECE:
        return None
    piece = largest(mask)
    return piece if piece.sum() >= MIN_PIECE else None


def patient_images(root: Path, patient: str) -> list[build.Img]:
    labels = _volume(root, patient, "OTMultiClass").astype(np.int16)
    flair, t1c = _volume(root, patient, "Flair_subtrMeanDivStd"), _volume(root, patient, "T1c_subtrMeanDivStd")
    area = (labels > 0).sum(axis=(0, 1))
    eligible = np.flatnonzero(area >= MIN_TUMOUR)
    picks = sorted({int(eligible[int(round(q * (len(eligible) - 1)))])
                    for q in np.linspace(0.1, 0.9, SLICES_PER_PATIENT)})
    case = patient.split("_")[-2]  # e.g. pat0001
    files = tuple(f"deepmedic/{DATA}/{patient}/{n}.nii.gz" for n in ("Flair_subtrMeanDivStd", "T1c_subtrMeanDivStd",
                                                                     "OTMultiClass"))
    out = []
    for z in picks:
        lab = _plane(labels, z)
        src = f"deepmedic {DATA}/{patient} (axial z={z}, anterior up)"
        fl = build.Img(f"brats_{case}_z{z}_flair", f"BRATS {case} FLAIR z={z}", "MRI",
                       _plane(flair, z).astype(np.float32), "percentile", src, files, LICENCE)
        whole = _piece(lab > 0)
        if whole is not None:
            fl.add("whole tumour (oedema and core)", fill(whole), ("bright", "nested"),
                   "expert labels 1-4, largest piece, holes filled")
        tc = build.Img(f"brats_{case}_z{z}_t1c", f"BRATS {case} contrast-enhanced T1 z={z}", "MRI",
                       _plane(t1c, z).astype(np.float32), "percentile", src, files, LICENCE)
        core = _piece(np.isin(lab, (1, 3, 4)))
        if core is not None:
            tc.add("tumour core", fill(core), ("nested",), "expert labels 1, 3, 4, largest piece, holes filled")
        enhancing = _piece(lab == 4)
        if enhancing is not None:
            ring = fill(enhancing).sum() > 1.2 * enhancing.sum()
            tc.add("enhancing tumour", enhancing, ("bright", "ring") if ring else ("bright",),
                   "expert label 4, largest piece (holes kept)")
        necrosis = _piece(lab == 1) if (lab == 1).sum() >= MIN_NECROSIS else None
        if necrosis is not None:
            inside, around = build.dark_check(tc.image, necrosis)
            tc.add("necrosis", necrosis, ("dark", "nested") if inside < around else ("nested",),
                   "expert label 1, largest piece")
        out += [im for im in (fl, tc) if im.objects]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--deepmedic", type=Path, required=True, help="a checkout of deepmedic/deepmedic")
    ap.add_argument("--out", type=Path, default=None, help=f"default: $NAPARI_MSA_RESERVE or {DEFAULT_OUT}")
    ap.add_argument("--overlays", action="store_true", help=f"also write overlay PNGs to {OVERLAYS}")
    args = ap.parse_args(argv)
    images = [im for p in PATIENTS for im in patient_images(args.deepmedic, p)]
    if args.overlays:
        for im in images:
            build.write_atomic(OVERLAYS / f"{im.key}.png", build.overlay_png(im))
    out = args.out or reserve_path()
    data = build.to_npz(images)
    build.write_atomic(out, data)
    objects = [o for im in images for o in im.objects]
    print(f"wrote {out} ({len(data) / 1e6:.1f} MB): {len(images)} images, {len(objects)} objects "
          f"({sum('dark' in o.tags for o in objects)} dark, {sum('ring' in o.tags for o in objects)} rings)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
