"""Regenerate docs/nifti_screenshot.png: a NIfTI study segmented on the command line, opened in napari at its true
proportions (a coronal reslice of 1.6 x 1.6 x 5 mm voxels), with the labels NIfTI on top.

The walkthrough of README's "Medical files" section, run for real:
1. the shipped abdominal phantom (32 x 224 x 224, HU) is written as ``phantom_ct.nii.gz`` the way scanners' converters
   store axial CT (voxels i toward the patient's left, j toward anterior, k toward superior; 1.6 x 1.6 x 5 mm);
2. ``napari-msa segment phantom_ct.nii.gz -b boxes.csv -o phantom_ct_labels.nii.gz --propagate`` (the default
   model) segments five organs from one box each on one slice (boxes in the reader's display order, as napari would
   save a shapes layer drawn on the image);
3. napari opens both files with napari-msa's reader and shows a coronal reslice with the data's bounding box and a
   scale bar: 358 mm wide (224 x 1.6), 160 mm high (32 slices x 5 mm).
It prints the layers' scale, checks that the labels file has the image's affine, and prints each organ's Dice
against the phantom's ground truth, read back with nibabel in the file's own voxel order.

Needs a display: ``xvfb-run -a python docs/make_nifti_screenshot.py [out.png]``.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import napari
import nibabel as nib
import numpy as np
import tifffile

from napari_msa._sample_data import sample_dir
from napari_msa.cli import main as cli
from napari_msa.engine.prompts.geometry import dice, most_interior

OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "nifti_screenshot.png"
ORGANS = ("liver", "spleen", "right kidney", "left kidney", "aorta")
MODEL = "litemedsam"  # the default model (LiteMedSAM + click adapter)


def write_study(folder: Path) -> tuple[Path, np.ndarray, dict[str, int]]:
    """The phantom as an axial CT NIfTI stored L-A-S; returns its path, ground truth (display order) and ids."""
    meta = json.loads((sample_dir() / "samples.json").read_text())
    ct = tifffile.imread(sample_dir() / "phantom_ct.tif").astype(np.int16)  # (Z, Y, X): S, P, L
    truth = tifffile.imread(sample_dir() / "phantom_labels.tif")
    sz, sy, sx = meta["phantom_ct.tif"]["scale"]
    source = np.ascontiguousarray(np.transpose(ct, (2, 1, 0))[:, ::-1, :])  # i: L, j: A (rows flipped), k: S
    affine = np.array([[-sx, 0, 0, 179.0], [0, sy, 0, -190.0], [0, 0, sz, -420.0], [0, 0, 0, 1]])
    img = nib.Nifti1Image(source, affine)
    img.set_qform(affine, code="scanner")
    img.set_sform(affine, code="scanner")
    img.header.set_xyzt_units("mm")
    path = folder / "phantom_ct.nii.gz"
    nib.save(img, path)
    ids = {v: int(k) for k, v in meta["phantom_labels.tif"]["label_names"].items()}
    return path, truth, ids


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="napari-msa-nifti-"))
    image_path, truth, ids = write_study(work)
    rows = []  # one box per organ (objects 1, 2, ... in this order), on the slice where the organ is largest
    for n, organ in enumerate(ORGANS):
        mask = truth == ids[organ]
        z = int(np.argmax(mask.sum(axis=(1, 2))))
        ys, xs = np.nonzero(mask[z])
        (y0, x0), (y1, x1) = (ys.min() - 2, xs.min() - 2), (ys.max() + 2, xs.max() + 2)
        corners = [(y0, x0), (y0, x1), (y1, x1), (y1, x0)]
        rows += [f"{n},rectangle,{v},{z},{y},{x}" for v, (y, x) in enumerate(corners)]
    boxes = work / "boxes.csv"
    boxes.write_text("index,shape-type,vertex-index,axis-0,axis-1,axis-2\n" + "\n".join(rows) + "\n")
    labels_path = work / "phantom_ct_labels.nii.gz"
    code = cli(["-q", "segment", str(image_path), "-b", str(boxes), "-o", str(labels_path),
                "--model", MODEL, "--normalize", "ct", "--propagate"])
    if code:
        return code

    source, written = nib.load(image_path), nib.load(labels_path)
    assert written.shape == source.shape and np.allclose(written.affine, source.affine), "labels off the image grid"
    back = np.transpose(np.asarray(written.dataobj)[:, ::-1, :], (2, 1, 0))  # the file's voxel order -> (Z, Y, X)
    for n, organ in enumerate(ORGANS, start=1):
        print(f"{organ:13s} Dice vs ground truth (whole volume, read back with nibabel): "
              f"{dice(back == n, truth == ids[organ]):.3f}")

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 940)
    (image,) = viewer.open(str(image_path), plugin="napari-msa")
    (labels,) = viewer.open(str(labels_path), plugin="napari-msa")
    image.contrast_limits = (-160, 240)
    labels.opacity = 0.45
    print(f"layers: {image.name} {image.data.shape} scale {tuple(image.scale)} mm; {labels.name} "
          f"({labels._type_string}) scale {tuple(labels.scale)} mm")
    aorta_row = int(most_interior((truth == ids["aorta"]).any(axis=0))[0])  # a coronal plane through the aorta
    image.bounding_box.visible = True  # the data's extent: 358 mm wide, 160 mm high
    viewer.dims.order = (1, 0, 2)  # slice along Y (anterior -> posterior): a coronal reslice, Z shown vertically
    viewer.dims.set_current_step(1, aorta_row)
    viewer.scene.camera.orientation2d = ("up", "right")  # superior at the top
    viewer.reset_view()
    viewer.canvas.overlays["scale_bar"].visible = True
    viewer.screenshot(str(OUT), canvas_only=False, flash=False)
    print(f"wrote {OUT}")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
