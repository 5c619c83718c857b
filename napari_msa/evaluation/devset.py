"""The evaluation development set: real images with reference masks the model did not make (issue 20).

``benchmarks/devset/build.py`` makes it from files that installed packages ship (pydicom, nilearn, dipy, stardist)
and writes ``benchmarks/devset/devset.npz``; this module reads that npz with numpy alone. Every image is for
evaluation only (DESIGN.md 2b): ``DEVSET_SOURCES`` names each source file, and training must never read one
(``tests/test_devset.py`` checks the trainer's loaders).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PATH = Path("benchmarks") / "devset" / "devset.npz"
TAGS = ("dark", "bright", "ring", "nested", "small", "large")
MODALITIES = ("CT", "MRI", "US", "fundus", "dermoscopy", "microscopy", "X-ray", "NM", "endoscopy")

# Every file the development set is made from, as "<package>/<path inside the installed package>" (what a file
# path ends with when the package reads it). Training must never read any of them.
DEVSET_SOURCES: tuple[str, ...] = (
    "pydicom/data/test_files/CT_small.dcm",
    "pydicom/data/test_files/J2K_pixelrep_mismatch.dcm",
    "pydicom/data/test_files/693_J2KI.dcm",
    "pydicom/data/test_files/examples_overlay.dcm",
    "pydicom/data/test_files/examples_jpeg2k.dcm",
    "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "nilearn/datasets/data/mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "nilearn/datasets/data/mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
    "dipy/data/files/t1_coronal_slice.npy",
    "dipy/data/files/S0_10slices.nii.gz",
    "stardist/data/images/img2d.tif",
    "stardist/data/images/mask2d.tif",
    "stardist/data/images/histo.jpg",
    # the project's CT sample and its reference masks are CT_small.dcm, converted: evaluation-only as well
    "sample_data/ct_slice.tif",
    "sample_data/ct_slice_reference.tif",
    # the second confirmation set (benchmarks/devset/fresh.py), from two public repositories' test data
    "pyradiomics/data/brain1_image.nrrd",
    "pyradiomics/data/brain1_label.nrrd",
    "pyradiomics/data/brain2_image.nrrd",
    "pyradiomics/data/brain2_label.nrrd",
    "pyradiomics/data/breast1_image.nrrd",
    "pyradiomics/data/breast1_label.nrrd",
    "pydicom-data/data_store/data/explicit_VR-UN.dcm",
    "pydicom-data/data_store/data/MR2_UNCR.dcm",
    "pydicom-data/data_store/data/RG3_J2KR.dcm",
    "pydicom-data/data_store/data/JPEG2000_UNC.dcm",
    # the same NM image, compressed, ships inside pydicom (a non-CT/MR file 2b would otherwise let training read)
    "pydicom/data/test_files/JPEG2000.dcm",
    # the reserve set (benchmarks/devset/reserve.py: BRATS cases shipped by deepmedic; built locally, not committed)
    *(f"deepmedic/examples/dataForExamples/brats2015TrainingData/{case}/{name}.nii.gz"
      for case in ("test/brats_2013_pat0001_1", "test/brats_2013_pat0002_1", "validation/brats_2013_pat0003_1",
                   "validation/brats_2013_pat0004_1", "train/brats_2013_pat0005_1", "train/brats_2013_pat0006_1")
      for name in ("Flair_subtrMeanDivStd", "T1c_subtrMeanDivStd", "OTMultiClass")),
    # the wide set (benchmarks/devset/wide.py: HC18, Montgomery/Shenzhen, DRIONS-DB, HAM10000 and Kvasir-SEG samples
    # from five repositories; built locally, not committed); wide.source_files() gives the same names
    *(f"Tensorflow-Keras-UNET-model-for-Fetal-dataset/training_set/{i:03d}_HC{s}.png"
      for i in (*range(10), *range(20, 60), *range(100, 120), *range(200, 220), *range(300, 320),
                *range(400, 420), *range(500, 520), *range(600, 620), *range(700, 720)) for s in ("", "_Annotation")),
    *(f"MultiResUNet-lung-segmentation/data/{d}/{site}_{i:04d}_0.png"
      for site, numbers in (("MCUCXR", (1, 2, 3, 4, 5, 6, 8, 11, 13, 15, 16, 17, 19, 20, 21, 22, 23, 24, 26, 27,
                                        28, 29, 30, 31, 35, 38, 40, 41, *range(42, 50), *range(51, 65), 68, 69,
                                        70, 71, 72, 74, 75, 77, 79, 80, *range(81, 88), 89, 90, 91, 92, 94,
                                        95, 96, 97, 99)),
                            ("CHNCXR", (*range(1, 25), *range(26, 36), *range(41, 65), *range(66, 84))))
      for i in numbers for d in ("cxr", "masks")),
    *(f"Optic-Disc-Segmentation/sample_dataset/{d}/image_{i:03d}.jpg"
      for i in (*range(91, 101), *range(102, 111)) for d in ("origin1", "groundtruth1")),
    *(f"artefact_insertion/data/{p}"
      for n in ("ISIC_0024311", "ISIC_0027001", "ISIC_0027287", "ISIC_0027533", "ISIC_0027800")
      for p in (f"test_images/{n}.jpg", f"test_masks/{n}.png")),
    *(f"latent-diffusion-inpainting/Kvasir-SEG/{d}/{n}.jpg"
      for n in ("cju0qkwl35piu0993l0dewei2", "cju0qoxqj9q6s0835b43399p4", "cju0qx73cjw570799j4n5cjze",
                "cju0roawvklrq0799vmjorwfv", "cju0rx1idathl0835detmsp84") for d in ("images", "masks")),
)


@dataclass
class DevObject:
    name: str  # e.g. "left lateral ventricle"
    mask: np.ndarray  # bool (Y, X)
    tags: tuple[str, ...]  # any of "dark", "bright", "ring", "nested", "small", "large"


@dataclass
class DevImage:
    name: str  # e.g. "nilearn MNI152 T1 axial z=95"
    modality: str  # one of MODALITIES
    image: np.ndarray  # (Y, X) or (Y, X, 3), float32 or native ints, as the user would open it
    normalization: str  # "ct" | "percentile" | "none" (napari_msa.engine.network.preprocessing.Normalization presets)
    source: str  # package + file
    licence: str
    objects: list[DevObject]


def _resolve(path: str | Path | None) -> Path:
    p = Path(DEFAULT_PATH if path is None else path)
    return p if p.is_absolute() else REPO_ROOT / p


def load_devset(path: str | Path | None = None) -> list[DevImage]:
    """Read the development set (default: ``benchmarks/devset/devset.npz`` under the repository root)."""
    p = _resolve(path)
    if not p.is_file():
        raise FileNotFoundError(f"the development set {p} is missing: it is committed with the repository; rebuild "
                                "it with `python benchmarks/devset/build.py` (needs pydicom, nibabel, nilearn, dipy "
                                "and stardist's data files)")
    out: list[DevImage] = []
    with np.load(p, allow_pickle=False) as npz:
        meta = json.loads(str(npz["meta"][0]))
        for i, m in enumerate(meta["images"]):
            image = npz[f"image_{i}"]
            shape = image.shape[:2]
            objects = []
            for j, o in enumerate(m["objects"]):
                bits = npz[f"mask_{i}_{j}"]
                mask = np.unpackbits(bits, count=shape[0] * shape[1]).astype(bool).reshape(shape)
                objects.append(DevObject(o["name"], mask, tuple(o["tags"])))
            out.append(DevImage(m["name"], m["modality"], image, m["normalization"], m["source"], m["licence"],
                                objects))
    return out


def load_metadata(path: str | Path | None = None) -> dict:
    """The npz's metadata (per image: key, source files, and per object its rule and pixel count)."""
    with np.load(_resolve(path), allow_pickle=False) as npz:
        return json.loads(str(npz["meta"][0]))
