"""A confirmation set: other slices and another crop of the development set's sources, never looked at while
choosing anything (issue 20).

The development set (``build.py``) is where rules and constants were chosen (the interaction rule, zoom-in's
window); a figure there is a development figure. This set takes the same sources elsewhere — MNI152 T1 planes
the dev set does not use (axial z=80 and z=101, coronal y=115 and y=145) and the bottom-left 256² crop of
stardist's fluorescence image (the dev set has the top-right one) — with references by the same kind of rule,
made without a model: the brain (template > 0, holes filled), its white matter (WM probability > 0.5,
largest piece, holes filled), its two largest interior CSF pieces (the lateral
ventricles: T1 < 110 and GM+WM probability < 0.5, opened once, away from the brain's edge), and the nuclei
stardist ships masks for. Evaluation only, like the dev set (its source files are in ``DEVSET_SOURCES``).

``python benchmarks/devset/heldout.py`` writes one overlay PNG per image to ``benchmarks/devset/overlays_heldout/``
(to check the references by eye); ``click_protocol.py --datasets heldout`` builds it in memory.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import build  # noqa: E402  (the dev set's readers and rules)

MNI_PLANES = ((2, 80, "axial z=80"), (2, 101, "axial z=101"), (1, 115, "coronal y=115"), (1, 145, "coronal y=145"))
MIN_CSF = 30  # px: a ventricle piece smaller than this is a sulcus or a horn's tip
EDGE = 8  # px: CSF this close to the brain's edge is in the sulci, not a ventricle
NUCLEI_CROP = (256, 0)  # rows, cols of the 256² crop (the dev set uses (0, 256))
MIN_NUCLEUS = 80
MAX_NUCLEI = 8


def mni_plane(axis: int, index: int, label: str) -> build.Img:
    t1, gm, wm = build._mni(axis, index)
    im = build.Img(f"mni_{label.replace(' ', '_').replace('=', '')}", f"nilearn MNI152 T1 {label}", "MRI", t1,
                   "percentile", build.MNI_SRC + f" ({label})", build.MNI_SOURCES, build.MNI_LIC)
    brain = ndi.binary_fill_holes(t1 > 0)
    im.add("brain", brain, ("bright", "large"), "template > 0, holes filled")
    im.add("cerebral white matter (largest piece)", ndi.binary_fill_holes(build.largest(wm > 0.5)),
           ("bright", "nested", "large"), "shipped WM probability >0.5, largest piece, holes filled")
    inner = ndi.binary_erosion(brain, iterations=EDGE)
    csf = build.opened((t1 < 110) & (gm + wm < 0.5) & brain, 1)
    pieces, n = ndi.label(csf)
    sizes = ndi.sum(csf, pieces, range(1, n + 1))
    interior = [i + 1 for i in np.argsort(-sizes) if sizes[i] >= MIN_CSF
                and not ((pieces == i + 1) & ~inner).any()][:2]
    for k, i in enumerate(sorted(interior, key=lambda i: ndi.center_of_mass(pieces == i)[1])):
        im.add(f"ventricle piece {k + 1}", ndi.binary_fill_holes(pieces == i), ("dark", "small", "nested"),
               f"T1<110 and GM+WM<0.5 in the brain, opened 1, one of the two largest pieces >= {MIN_CSF} px at least "
               f"{EDGE} px inside the brain, holes filled")
    return im


def nuclei_crop() -> build.Img:
    import tifffile

    r0, c0 = NUCLEI_CROP
    img = tifffile.imread(build.package_file("stardist", "data/images/img2d.tif"))[r0:r0 + 256, c0:c0 + 256]
    lab = tifffile.imread(build.package_file("stardist", "data/images/mask2d.tif"))[r0:r0 + 256, c0:c0 + 256]
    im = build.Img("nuclei_fluo_bl", "stardist img2d fluorescent nuclei (DSB 2018), bottom-left crop", "microscopy",
                   np.ascontiguousarray(img), "percentile", f"stardist img2d.tif + mask2d.tif (rows {r0}:{r0 + 256}, "
                   f"cols {c0}:{c0 + 256})", ("stardist/data/images/img2d.tif", "stardist/data/images/mask2d.tif"),
                   "CC0 1.0 (2018 Data Science Bowl), shipped in stardist (BSD-3-Clause)")
    border = np.zeros(lab.shape, bool)
    border[[0, -1]] = border[:, [0, -1]] = True
    kept = 0
    for v in np.unique(lab[lab > 0]):
        m = lab == v
        if kept < MAX_NUCLEI and m.sum() >= MIN_NUCLEUS and not (m & border).any():
            im.add(f"nucleus {kept + 1}", m, ("bright", "small"), "the shipped label, whole in the crop")
            kept += 1
    return im


def heldout_images() -> list[build.Img]:
    return [*(mni_plane(*p) for p in MNI_PLANES), nuclei_crop()]


def main() -> int:
    out = HERE / "overlays_heldout"
    out.mkdir(exist_ok=True)
    for im in heldout_images():
        build.write_atomic(out / f"{im.key}.png", build.overlay_png(im))
        print(im.key, [(o.name, int(o.mask.sum())) for o in im.objects])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
