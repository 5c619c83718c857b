"""Build the evaluation development set: real images + reference masks made by rule (issue 20).

Run from anywhere: ``python benchmarks/devset/build.py``. It reads the source images from installed packages
(pydicom, nilearn, dipy, stardist: nothing is downloaded), makes every reference mask by thresholds, morphology and
connected components with seeds chosen per image (or takes the masks that ship with the data), and writes
``benchmarks/devset/devset.npz`` and one overlay PNG per image in ``benchmarks/devset/overlays/``.
``napari_msa.evaluation.devset.load_devset`` reads the npz with numpy alone.

Every image here is for EVALUATION ONLY (DESIGN.md 2b): ``DEVSET_SOURCES`` in ``napari_msa/evaluation/devset.py``
lists the source files, and ``tests/test_devset.py`` checks that the trainer reads none of them.

Packages needed to rebuild (not to load): numpy, scipy, pillow, tifffile, nibabel, pydicom (with a JPEG 2000
decoder: pillow's), and the data files of nilearn 0.14.1, dipy 1.12.1 and stardist 0.9.2 (``pip install nilearn dipy``
and ``pip install --no-deps stardist``: only their files are read, none is imported).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

HERE = Path(__file__).resolve().parent
OUT_NPZ = HERE / "devset.npz"
OUT_OVERLAYS = HERE / "overlays"


# ----------------------------------------------------------------------------------------------- sources
def package_file(package: str, relpath: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package '{package}' is not installed; it ships {relpath}")
    path = Path(next(iter(spec.submodule_search_locations))) / relpath
    if not path.is_file():
        raise FileNotFoundError(f"{package} has no {relpath} (looked at {path})")
    return path


def dicom_pixels(fname: str) -> tuple[np.ndarray, object]:
    import pydicom

    ds = pydicom.dcmread(package_file("pydicom", f"data/test_files/{fname}"))
    return ds.pixel_array, ds


def dicom_hu(fname: str) -> np.ndarray:
    px, ds = dicom_pixels(fname)
    hu = px.astype(np.float64) * float(getattr(ds, "RescaleSlope", 1)) + float(getattr(ds, "RescaleIntercept", 0))
    return hu


def nifti(package: str, relpath: str) -> np.ndarray:
    import nibabel

    return np.asanyarray(nibabel.load(package_file(package, relpath)).dataobj)


def block_mean(a: np.ndarray, f: int) -> np.ndarray:
    """Downsample (Y, X[, C]) by an integer factor with a box filter (keeps float64; cast afterwards)."""
    y, x = a.shape[0] // f * f, a.shape[1] // f * f
    a = a[:y, :x].astype(np.float64)
    return a.reshape(y // f, f, x // f, f, *a.shape[2:]).mean(axis=(1, 3))


# ----------------------------------------------------------------------------------------------- rules
def component_at(mask: np.ndarray, seed: tuple[int, int], name: str = "") -> np.ndarray:
    """The 4-connected piece of ``mask`` that holds ``seed`` (row, col)."""
    lab, _ = ndi.label(mask)
    v = lab[seed]
    if v == 0:
        raise ValueError(f"{name}: seed {seed} is outside the thresholded region")
    return lab == v


def largest(mask: np.ndarray) -> np.ndarray:
    lab, n = ndi.label(mask)
    if n == 0:
        raise ValueError("empty mask")
    sizes = ndi.sum(mask, lab, range(1, n + 1))
    return lab == (int(np.argmax(sizes)) + 1)


def opened(mask: np.ndarray, it: int) -> np.ndarray:
    return ndi.binary_opening(mask, iterations=it) if it else mask


def closed(mask: np.ndarray, it: int) -> np.ndarray:
    # pad so closing does not glue the mask to the border
    p = np.pad(mask, it + 1)
    return ndi.binary_closing(p, iterations=it)[it + 1:-it - 1, it + 1:-it - 1] if it else mask


fill = ndi.binary_fill_holes


def disk(r: int) -> np.ndarray:
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return yy * yy + xx * xx <= r * r


def box(shape: tuple[int, ...], r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    m = np.zeros(shape[:2], bool)
    m[r0:r1, c0:c1] = True
    return m


@dataclass
class Obj:
    name: str
    mask: np.ndarray
    tags: tuple[str, ...]
    rule: str


@dataclass
class Img:
    key: str
    name: str
    modality: str
    image: np.ndarray
    normalization: str
    source: str
    source_files: tuple[str, ...]
    licence: str
    objects: list[Obj] = field(default_factory=list)

    def add(self, name: str, mask: np.ndarray, tags: tuple[str, ...], rule: str) -> None:
        mask = np.asarray(mask, bool)
        assert mask.shape == self.image.shape[:2], (name, mask.shape, self.image.shape)
        if not mask.any():
            raise ValueError(f"{self.key}/{name}: empty mask")
        self.objects.append(Obj(name, mask, tags, rule))


PYDICOM_LIC = "MIT (pydicom test data)"
MNI_LIC = ("ICBM 2009a template, (c) McConnell Brain Imaging Centre, MNI: free use with copyright notice; "
           "shipped in nilearn (BSD-3-Clause)")
DIPY_LIC = "BSD-3-Clause (dipy test data)"
MNI_T1 = "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
MNI_GM = "datasets/data/mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"
MNI_WM = "datasets/data/mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"


# ----------------------------------------------------------------------------------------------- CT
def ct_small() -> Img:
    hu = np.round(dicom_hu("CT_small.dcm")).astype(np.int16)
    im = Img("ct_small", "pydicom CT_small thoracic vertebra", "CT", hu, "ct",
             "pydicom data/test_files/CT_small.dcm (HU = stored x slope + intercept)",
             ("pydicom/data/test_files/CT_small.dcm",),
             PYDICOM_LIC + "; downsized by pydicom from NEMA's WG04 test image CT1_UNC")
    bone = hu > 200
    canal = fill(component_at(opened(hu < 100, 2), (55, 58), "canal"))
    im.add("spinal canal", canal, ("dark", "small", "nested"),
           "HU<100, opening 2, piece at (55,58), holes filled (as sample_data/ct_slice_reference.tif)")
    aorta = fill(component_at(opened((hu > 100) & (hu < 300), 1), (10, 90), "aorta"))
    im.add("aorta", aorta, ("bright", "small"), "100<HU<300, opening 1, piece at (10,90), holes filled")
    vert = component_at(closed(bone, 1), (70, 60), "vertebra")
    whole = fill(vert | canal)
    im.add("vertebra (bone ring around the canal)", whole & ~canal, ("bright", "ring"),
           "HU>200 closed 1, piece at (70,60), holes and the canal filled, minus the canal")
    body = component_at(ndi.binary_opening(whole & ~canal, disk(4)), (25, 60), "body")
    body = fill(body) & (np.arange(hu.shape[0])[:, None] < canal.nonzero()[0].min() + 2)
    im.add("vertebral body", body, ("bright", "nested"),
           "the vertebra opened by a radius-4 disk (cuts the pedicles), piece at (25,60), rows above the canal")
    for name, seed in (("right lung base", (20, 10)), ("left lung base", (45, 115))):
        lung = fill(component_at(opened(hu < -400, 1), seed, name))
        im.add(name, lung, ("dark", "large"), f"HU<-400, opening 1, piece at {seed}, holes filled")
    return im


def ct_skull_base() -> Img:
    hu = np.round(block_mean(dicom_hu("J2K_pixelrep_mismatch.dcm"), 2)).astype(np.int16)
    im = Img("ct_skull_base", "pydicom J2K_pixelrep_mismatch head CT (skull base), 2x downsampled", "CT", hu, "ct",
             "pydicom data/test_files/J2K_pixelrep_mismatch.dcm (JPEG 2000; 512 px, 2x2 mean to 256 px)",
             ("pydicom/data/test_files/J2K_pixelrep_mismatch.dcm",),
             PYDICOM_LIC + "; a de-identified dataset from pydicom issue 1149 (origin not stated further)")
    head = fill(largest(hu > -300))
    im.add("head", head, ("bright", "large"), "HU>-300, largest piece, holes filled")
    air = opened(hu < -300, 1) & head
    for name, seed, (c0, c1) in (("right frontal sinus", (40, 100), (80, 124)),
                                 ("left frontal sinus", (38, 150), (126, 180))):
        m = fill(component_at(closed(air & box(hu.shape, 20, 75, c0, c1), 2), seed, name))
        im.add(name, m, ("dark", "small"),
               f"HU<-300 inside the head, opening 1, in rows 20:75, cols {c0}:{c1}, closing 2 (joins the locules), "
               f"piece at {seed}, holes filled")
    brain = (hu > 0) & (hu < 80)
    cores = opened(brain, 6)  # a 13-px opening cuts the fossae apart where the petrous ridges nearly meet
    taken = np.zeros_like(brain)
    for name, seed in (("posterior fossa (cerebellum, brainstem)", (175, 128)),
                       ("right middle cranial fossa (temporal lobe)", (100, 75)),
                       ("left middle cranial fossa (temporal lobe)", (100, 180))):
        m = ndi.binary_dilation(component_at(cores, seed, name), iterations=6, mask=brain & ~taken)
        m = fill(closed(m, 2) & (hu < 200)) & ~taken
        taken |= m
        im.add(name, m, ("dark", "nested", "large"),
               f"0<HU<80, opening 6, piece at {seed}, grown back 6 px inside 0<HU<80 (not into a fossa "
               "already taken), closing 2, holes filled")
    return im


def ct_head() -> Img:
    hu = np.round(block_mean(dicom_hu("693_J2KI.dcm"), 2)).astype(np.int16)
    im = Img("ct_head", "pydicom 693_J2KI head CT (lossy JPEG 2000), 2x downsampled", "CT", hu, "ct",
             "pydicom data/test_files/693_J2KI.dcm (lossy JPEG 2000; 512 px, 2x2 mean to 256 px)",
             ("pydicom/data/test_files/693_J2KI.dcm",),
             PYDICOM_LIC + "; a regression dataset from pydicom issue 693 (origin not stated further)")
    skull = fill(component_at(closed(hu > 300, 2), (215, 128), "skull"))
    inner = fill(component_at(opened(skull & (hu < 300), 2), (140, 128), "intracranial"))
    im.add("skull (bone ring)", skull & ~inner, ("bright", "ring"),
           "HU>300 closed 2, piece at (215,128), holes filled, minus the intracranial space")
    im.add("intracranial space", inner, ("dark", "nested", "large"),
           "inside the filled skull, HU<300, opening 2, piece at (140,128), holes filled")
    return im


# ----------------------------------------------------------------------------------------------- MRI
def _mni(axis: int, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One plane of the MNI152 2009a T1 template and its GM/WM probability maps, anterior/superior up."""
    out = []
    for rel in (MNI_T1, MNI_GM, MNI_WM):
        vol = nifti("nilearn", rel)
        out.append(np.ascontiguousarray(np.rot90(np.take(vol, index, axis=axis))))
    return out[0], out[1].astype(np.float32) / 255.0, out[2].astype(np.float32) / 255.0


MNI_SOURCES = tuple(f"nilearn/{p}" for p in (MNI_T1, MNI_GM, MNI_WM))
MNI_SRC = "nilearn datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz"


def mni_axial() -> Img:
    t1, gm, wm = _mni(2, 95)
    im = Img("mni_axial", "nilearn MNI152 T1 axial z=95 (MNI z=+23)", "MRI", t1, "percentile",
             MNI_SRC + " (voxel z=95; neurological: patient left on image left)", MNI_SOURCES, MNI_LIC)
    brain = fill(t1 > 0)
    im.add("brain", brain, ("bright", "large"), "template > 0 (the template is skull-stripped), holes filled")
    csf = opened((t1 < 110) & (gm + wm < 0.5) & brain, 1)
    for name, seed in (("left lateral ventricle", (110, 85)), ("right lateral ventricle", (110, 112))):
        im.add(name, fill(component_at(csf, seed, name)), ("dark", "small", "nested"),
               f"T1<110 and GM+WM probability <0.5 inside the brain, opening 1, piece at {seed}, holes filled")
    white = fill(largest(wm > 0.5))
    im.add("cerebral white matter (with ventricles)", white, ("bright", "nested", "large"),
           "shipped WM probability >0.5, largest piece, holes (ventricles) filled")
    return im


def mni_coronal() -> Img:
    t1, gm, wm = _mni(1, 130)
    im = Img("mni_coronal", "nilearn MNI152 T1 coronal y=130 (MNI y=-4)", "MRI", t1, "percentile",
             MNI_SRC + " (voxel y=130; patient left on image left)", MNI_SOURCES, MNI_LIC)
    brain = fill(t1 > 0)
    im.add("brain", brain, ("bright", "large"), "template > 0, holes filled")
    csf = (t1 < 110) & (gm + wm < 0.5) & brain
    for name, seed in (("left lateral ventricle", (93, 88)), ("right lateral ventricle", (93, 108))):
        im.add(name, fill(component_at(csf, seed, name)), ("dark", "small", "nested"),
               f"T1<110 and GM+WM probability <0.5 inside the brain, piece at {seed}, holes filled")
    return im


def mni_sagittal() -> Img:
    t1, gm, wm = _mni(0, 98)
    im = Img("mni_sagittal", "nilearn MNI152 T1 midsagittal x=98 (MNI x=0)", "MRI", t1, "percentile",
             MNI_SRC + " (voxel x=98; anterior on image right)", MNI_SOURCES, MNI_LIC)
    cc = fill(component_at(opened((wm > 0.5) & (t1 > 180), 1), (91, 120), "corpus callosum"))
    im.add("corpus callosum", cc, ("bright", "small"),
           "WM probability >0.5 and T1>180, opening 1, piece at (91,120), holes filled")
    stem = fill(component_at(opened(t1 > 160, 2), (155, 105), "brainstem"))
    im.add("brainstem (pons, medulla)", stem, ("bright",),
           "T1>160, opening 2, piece at (155,105), holes filled")
    v4 = (t1 > 0) & (t1 < 85) & ~stem & box(t1.shape, 125, 160, 0, t1.shape[1])
    v4 = fill(component_at(v4, (145, 92), "4th ventricle"))
    im.add("fourth ventricle", v4, ("dark", "small"),
           "0<T1<85 outside the brainstem in rows 125:160, piece at (145,92), holes filled")
    # the tentorium: a line fitted to the bright straight sinus (T1>185 in rows 100:136, cols 40:75)
    ys, xs = np.nonzero(t1[100:136, 40:75] > 185)
    slope, icpt = np.polyfit(xs + 40, ys + 100, 1)
    rows, cols = np.mgrid[: t1.shape[0], : t1.shape[1]]
    below = (rows > slope * cols + icpt + 2) & (cols < 96) & (rows > 116)
    cereb = (t1 > 0) & below & ~ndi.binary_dilation(stem | v4, iterations=2)
    cereb = fill(closed(component_at(opened(cereb, 2), (150, 70), "cerebellum"), 2))
    im.add("cerebellum (vermis)", cereb, ("large",),
           "T1>0 below a line fitted to the straight sinus (T1>185), left of col 96, below row 116, 2 px away "
           "from the brainstem and 4th ventricle, opening 2, piece at (150,70), closing 2, holes filled")
    return im


def dipy_t1() -> Img:
    img = np.load(package_file("dipy", "data/files/t1_coronal_slice.npy")).astype(np.float32)[32:176, 48:208]
    im = Img("dipy_t1", "dipy t1_coronal_slice (skull-stripped T1, coronal)", "MRI", img, "percentile",
             "dipy data/files/t1_coronal_slice.npy (rows 32:176, cols 48:208)",
             ("dipy/data/files/t1_coronal_slice.npy",), DIPY_LIC)
    brain = fill(opened(img > 0.05, 1))
    im.add("brain", largest(brain), ("bright", "large"), "intensity >0.05, opening 1, largest piece, holes filled")
    dark = (img < 0.45) & ndi.binary_erosion(brain, iterations=8)
    for name, seed in (("lateral ventricle (image left)", (70, 69)), ("lateral ventricle (image right)", (70, 90))):
        im.add(name, fill(component_at(dark, seed, name)), ("dark", "small", "nested"),
               f"intensity <0.45 at least 8 px inside the brain, piece at {seed}, holes filled")
    return im


def dipy_b0() -> Img:
    vol = nifti("dipy", "data/files/S0_10slices.nii.gz")[..., 9, 0]
    img = np.ascontiguousarray(np.rot90(vol))
    im = Img("dipy_b0", "dipy S0_10slices b=0 diffusion MRI, slice 9", "MRI", img, "percentile",
             "dipy data/files/S0_10slices.nii.gz (slice 9 of 10, rotated so anterior is up)",
             ("dipy/data/files/S0_10slices.nii.gz",), DIPY_LIC)
    brain = fill(largest(closed(opened(img > 100, 2), 2)))
    im.add("brain", brain, ("large",), "intensity >100 (background <50), opening 2, closing 2, largest, holes filled")
    vent = (img > 700) & ndi.binary_erosion(brain, iterations=10)
    vent = fill(component_at(vent, (58, 60), "ventricles"))
    im.add("lateral ventricles (CSF, bright on b=0)", vent, ("bright", "small", "nested"),
           "intensity >700 (tissue ~300) at least 10 px inside the brain, piece at (58,60), holes filled")
    return im


def mr_abdomen() -> Img:
    px, ds = dicom_pixels("examples_overlay.dcm")
    r0, c0 = 30, 40
    img = np.ascontiguousarray(px[r0:r0 + 256, c0:c0 + 256])
    im = Img("mr_abdomen", "pydicom examples_overlay abdominal T1 MRI (liver lesions, right kidney)", "MRI", img,
             "percentile", "pydicom data/test_files/examples_overlay.dcm (rows 30:286, cols 40:296) and its overlay",
             ("pydicom/data/test_files/examples_overlay.dcm",),
             "BSD-3-Clause-style GDCM licence (GDCM's test file MR-SIEMENS-DICOM-WithOverlays.dcm, cropped by "
             "pydicom, whose test_files/README gives that licence for GDCM data)")
    ov = ds.overlay_array(0x6000)[r0:r0 + 256, c0:c0 + 256] > 0
    circle = component_at(fill(ndi.binary_dilation(ov)), (124, 23), "marked circle")  # the file's own mark
    sm = ndi.gaussian_filter(img.astype(np.float32), 1.5)
    spot = fill(component_at(sm > 440, (129, 20), "marked lesion") & circle)
    im.add("liver lesion marked in the file", spot, ("bright", "small"),
           "inside the circle drawn in the file's DICOM overlay, Gaussian(1.5) >440 (liver ~400), piece at (129,20)")
    core = fill(component_at(opened(sm < 260, 2), (100, 100), "mass core"))
    im.add("liver mass (dark centre)", core, ("dark", "nested"),
           "Gaussian(1.5) <260, opening 2, piece at (100,100), holes filled")
    cortex = component_at(opened(sm > 550, 1), (175, 100), "kidney")
    kidney = fill(closed(cortex, 6))
    im.add("right kidney", kidney, ("bright",), "Gaussian(1.5) >550, opening 1, piece at (175,100), closing 6, "
           "holes filled")
    sinus = fill(component_at(kidney & ~cortex & (sm < 350), (188, 111), "renal sinus"))
    im.add("right renal sinus", sinus, ("dark", "nested", "small"),
           "inside the kidney, Gaussian(1.5) <350, piece at (188,128), holes filled")
    aorta = fill(component_at(opened(sm > 450, 1), (137, 213), "aorta"))
    im.add("aorta", aorta, ("bright", "small"), "Gaussian(1.5) >450, opening 1, piece at (137,213), holes filled")
    return im


# ----------------------------------------------------------------------------------------------- US
def us_lymph_node() -> Img:
    px, _ = dicom_pixels("examples_jpeg2k.dcm")
    img = np.round(block_mean(px[100:356, 60:572], 2)).astype(np.uint8)  # 128 x 256 RGB
    im = Img("us_lymph_node", "pydicom examples_jpeg2k power-Doppler ultrasound, lymph node", "US", img, "none",
             "pydicom data/test_files/examples_jpeg2k.dcm (rows 100:356, cols 60:572, 2x2 mean)",
             ("pydicom/data/test_files/examples_jpeg2k.dcm",),
             PYDICOM_LIC + "; NEMA WG04 test image US1_J2KR")
    f = img.astype(np.float32)
    grey = f.mean(axis=2)
    colour = (f.max(axis=2) - f.min(axis=2)) > 40  # the Doppler signal
    dark = ndi.uniform_filter(grey, 5) < 40
    inside = box(img.shape, 26, 95, 2, 254)  # the rows of the two boxes the scanner drew around the node
    node = fill(component_at(opened(closed((dark | colour) & inside, 6), 5), (76, 60), "node"))
    cols = np.arange(img.shape[1])[None, :]
    seam = 129  # the scanner shows two views side by side; the panel border is column 129 here
    for name, side in (("lymph node (left view)", cols < seam - 1), ("lymph node (right view)", cols > seam + 1)):
        im.add(name, largest(node & side), ("large",),
               "5x5-mean grey <40 or Doppler colour, in rows 26:95 (the drawn boxes), closing 6, opening 5, "
               f"piece at (76,60), holes filled, this side of the panel border (col {seam})")
    return im


# ----------------------------------------------------------------------------------------------- microscopy
def nuclei_fluo() -> Img:
    import tifffile

    r0, c0 = 0, 256
    img = tifffile.imread(package_file("stardist", "data/images/img2d.tif"))[r0:r0 + 256, c0:c0 + 256]
    lab = tifffile.imread(package_file("stardist", "data/images/mask2d.tif"))[r0:r0 + 256, c0:c0 + 256]
    im = Img("nuclei_fluo", "stardist img2d fluorescent nuclei (DSB 2018)", "microscopy", np.ascontiguousarray(img),
             "percentile", "stardist data/images/img2d.tif + mask2d.tif (rows 0:256, cols 256:512)",
             ("stardist/data/images/img2d.tif", "stardist/data/images/mask2d.tif"),
             "CC0 1.0 (2018 Data Science Bowl, BBBC038; Caicedo et al. 2019), shipped in stardist (BSD-3-Clause)")
    for i, seed in enumerate(((20, 180), (80, 110), (135, 130), (128, 212), (205, 140), (195, 210), (197, 22))):
        v = lab[seed]
        if v == 0:
            raise ValueError(f"nuclei_fluo: seed {seed} is on background")
        m = lab == v
        if m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any():
            raise ValueError(f"nuclei_fluo: the nucleus at {seed} is cut by the crop")
        tags = ("bright", "small")
        im.add(f"nucleus {i + 1}", m, tags, f"the shipped label at {seed}")
    return im


def nuclei_he() -> Img:
    from PIL import Image

    r0, c0 = 22, 0
    rgb = np.asarray(Image.open(package_file("stardist", "data/images/histo.jpg")).convert("RGB"))
    img = np.ascontiguousarray(rgb[r0:r0 + 256, c0:c0 + 256])
    im = Img("nuclei_he", "stardist histo H&E tissue (nuclei)", "microscopy", img, "none",
             "stardist data/images/histo.jpg (rows 22:278, cols 0:256)", ("stardist/data/images/histo.jpg",),
             "H&E image from The Cancer Imaging Archive (TCIA data: CC BY 3.0/4.0 per collection; the exact "
             "collection is not stated), shipped in stardist (BSD-3-Clause)")
    grey = ndi.gaussian_filter(img.astype(np.float32).mean(axis=2), 1)
    dark = grey < 95
    for i, seed in enumerate(((22, 140), (70, 235), (105, 105), (148, 185), (230, 82))):
        m = fill(component_at(opened(dark, 2), seed, f"nucleus {i + 1}"))
        im.add(f"nucleus {i + 1}", m, ("dark", "small"),
               f"Gaussian(1) grey <95, opening 2, piece at {seed}, holes filled")
    return im


BUILDERS: tuple[Callable[[], Img], ...] = (ct_small, ct_skull_base, ct_head, mni_axial, mni_coronal, mni_sagittal,
                                           dipy_t1, dipy_b0, mr_abdomen, us_lymph_node, nuclei_fluo, nuclei_he)


# ----------------------------------------------------------------------------------------------- output
COLOURS = [(255, 64, 64), (64, 220, 64), (80, 140, 255), (255, 200, 0), (255, 0, 255), (0, 230, 230),
           (255, 128, 0), (170, 110, 255), (160, 255, 120), (255, 140, 180)]


DISPLAY_WINDOWS = {"ct_small": (-250.0, 650.0), "ct_skull_base": (-60.0, 200.0), "ct_head": (-60.0, 200.0)}


def display_rgb(im: Img) -> np.ndarray:
    a = im.image.astype(np.float32)
    if a.ndim == 3:
        return np.clip(a, 0, 255).astype(np.uint8)
    lo, hi = DISPLAY_WINDOWS.get(im.key) or tuple(np.percentile(a, [0.5, 99.5]))
    g = (np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)
    return np.stack([g, g, g], -1)


def overlay_png(im: Img) -> bytes:
    import io

    from PIL import Image, ImageDraw

    base = display_rgb(im)
    scale = max(1, 512 // max(base.shape[:2]))
    big = np.repeat(np.repeat(base, scale, 0), scale, 1)
    for k, ob in enumerate(im.objects):
        m = np.repeat(np.repeat(ob.mask, scale, 0), scale, 1)
        edge = m & ~ndi.binary_erosion(m, iterations=max(1, scale // 2))
        big[edge] = COLOURS[k % len(COLOURS)]
    legend_h = 14 * len(im.objects) + 18
    canvas = Image.new("RGB", (big.shape[1], big.shape[0] + legend_h), (0, 0, 0))
    canvas.paste(Image.fromarray(big), (0, 0))
    d = ImageDraw.Draw(canvas)
    d.text((4, big.shape[0] + 2), f"{im.name} [{im.modality}]", fill=(255, 255, 255))
    for k, ob in enumerate(im.objects):
        y, x = np.argwhere(ob.mask).mean(axis=0) * scale
        d.text((x - 3, y - 5), str(k + 1), fill=COLOURS[k % len(COLOURS)])
        d.text((4, big.shape[0] + 16 + 14 * k), f"{k + 1} {ob.name} ({', '.join(ob.tags)}; {int(ob.mask.sum())} px)",
               fill=COLOURS[k % len(COLOURS)])
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def dark_check(image: np.ndarray, mask: np.ndarray, width: int = 3) -> tuple[float, float]:
    """Mean intensity inside the mask and in a ``width``-px ring around it (RGB: mean of the channels)."""
    a = image.astype(np.float64)
    if a.ndim == 3:
        a = a.mean(axis=2)
    ring = ndi.binary_dilation(mask, iterations=width) & ~mask
    return float(a[mask].mean()), float(a[ring].mean())


def checked(im: Img, overlays: Path) -> Img:
    """Refuse a ``dark`` tag the image does not bear out, write the image's overlay PNG (to check its references by
    eye) and say what it holds."""
    for ob in im.objects:
        if "dark" in ob.tags:
            inside, ring = dark_check(im.image, ob.mask)
            if not inside < ring:
                raise ValueError(f"{im.key}/{ob.name} is tagged dark but its mean {inside:.1f} >= ring {ring:.1f}")
    write_atomic(overlays / f"{im.key}.png", overlay_png(im))
    print(f"{im.key}: {im.image.shape} {im.image.dtype}, {len(im.objects)} objects: "
          + "; ".join(f"{o.name} {int(o.mask.sum())}" for o in im.objects))
    return im


def to_npz(images: list[Img]) -> bytes:
    import io

    arrays: dict[str, np.ndarray] = {}
    meta = []
    for i, im in enumerate(images):
        arrays[f"image_{i}"] = im.image
        objs = []
        for j, ob in enumerate(im.objects):
            arrays[f"mask_{i}_{j}"] = np.packbits(ob.mask, axis=None)
            objs.append({"name": ob.name, "tags": list(ob.tags), "rule": ob.rule, "pixels": int(ob.mask.sum())})
        meta.append({"key": im.key, "name": im.name, "modality": im.modality, "normalization": im.normalization,
                     "source": im.source, "source_files": list(im.source_files), "licence": im.licence,
                     "objects": objs})
    arrays["meta"] = np.array([json.dumps({"version": 1, "images": meta})])
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    only = set(argv)
    images = []
    for b in BUILDERS:
        if only and b.__name__ not in only:
            continue
        images.append(checked(b(), OUT_OVERLAYS))
    if not only:
        data = to_npz(images)
        write_atomic(OUT_NPZ, data)
        n = sum(len(im.objects) for im in images)
        print(f"wrote {OUT_NPZ} ({len(data) / 1e6:.2f} MB): {len(images)} images, {n} objects")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
