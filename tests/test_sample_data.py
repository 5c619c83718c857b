"""Every sample in the npe2 manifest loads offline and carries what napari needs to show it right."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
MANIFEST = REPO / "napari_msa" / "napari.yaml"


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("sample data tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _sample_generators():
    import npe2

    manifest = npe2.PluginManifest.from_file(MANIFEST)
    commands = {c.id: c for c in manifest.contributions.commands}
    return [(s.key, commands[s.command].python_name) for s in manifest.contributions.sample_data]


def _call(python_name: str):
    import importlib

    module, func = python_name.split(":")
    return getattr(importlib.import_module(module), func)()


def test_manifest_lists_the_four_samples():
    keys = {key for key, _ in _sample_generators()}
    assert keys == {"ct_slice", "mri_volume", "fundus", "phantom"}


@pytest.mark.parametrize("key,python_name", _sample_generators())
def test_sample_loads_offline_as_layer_data(key, python_name, no_network):
    layers = _call(python_name)
    assert isinstance(layers, list) and layers
    for data, kwargs, kind in layers:
        assert kind in ("image", "labels")
        assert isinstance(data, np.ndarray) and data.size > 0
        assert kwargs["name"]
        assert kwargs["metadata"]["source"] and kwargs["metadata"]["licence"]
        spatial = data.ndim - (1 if kwargs.get("rgb") else 0)
        if "scale" in kwargs:
            assert len(kwargs["scale"]) == spatial and all(s > 0 for s in kwargs["scale"])
        if kind == "image" and not kwargs.get("rgb"):
            assert data.std() > 0, "a flat image"
        if kind == "labels":
            assert np.issubdtype(data.dtype, np.integer)
            present = set(np.unique(data).tolist()) - {0}
            assert present and present <= set(kwargs["metadata"]["label_names"])


def test_ct_slice_is_in_hounsfield_units(no_network):
    from napari_msa._sample_data import ct_slice

    (hu, kwargs, _), (ref, _, _) = ct_slice()
    assert hu.shape == (128, 128) and hu.dtype == np.int16
    assert kwargs["scale"] == pytest.approx((0.661468, 0.661468))
    # Lung is air-like, the canal and aorta are soft tissue / contrast, the vertebra is bone.
    assert hu[5:10, 5:10].mean() < -700
    assert -50 < hu[ref == 1].mean() < 100
    assert 100 < hu[ref == 2].mean() < 300
    assert hu.max() > 700


def test_volumes_are_zyx_with_spacing(no_network):
    from napari_msa._sample_data import mri_volume, phantom_volume

    (mri, kw, _), = mri_volume()
    assert mri.shape == (24, 96, 128)
    assert kw["scale"] == pytest.approx((2.2, 2.0, 2.0))
    (ph, kw_img, _), (lab, kw_lab, _) = phantom_volume()
    assert ph.shape == lab.shape and ph.ndim == 3
    assert kw_img["scale"] == kw_lab["scale"]
    assert kw_img["contrast_limits"][0] < kw_img["contrast_limits"][1]
    assert ph.min() <= -900 and ph.max() >= 300  # air outside the body, bone inside
    names = kw_lab["metadata"]["label_names"]
    assert {"liver", "aorta", "vertebra"} <= set(names.values())
    # Ground truth matches the picture: the liver is soft tissue, the vertebra bright.
    liver = [k for k, v in names.items() if v == "liver"][0]
    vertebra = [k for k, v in names.items() if v == "vertebra"][0]
    assert 0 < np.median(ph[lab == liver]) < 200 < np.median(ph[lab == vertebra])


def test_fundus_is_small_rgb(no_network):
    from napari_msa._sample_data import fundus

    (rgb, kw, _), = fundus()
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[-1] == 3
    assert max(rgb.shape[:2]) <= 1024 and kw["rgb"] is True


def test_samples_ship_inside_the_package():
    """setup.py's package_data lists napari_msa/sample_data/*: the folder must be there (a symlink in git)."""
    folder = REPO / "napari_msa" / "sample_data"
    assert (folder / "samples.json").is_file()
    meta = json.loads((folder / "samples.json").read_text(encoding="utf-8"))
    for name in meta:
        assert (folder / name).is_file(), name
    total = sum((folder / name).stat().st_size for name in meta)
    assert total < 8e6, f"sample data grew to {total / 1e6:.1f} MB"


def test_phantom_sample_is_reproducible():
    """The shipped phantom is exactly what the seeded generator makes (so the script in the repo made it)."""
    from napari_msa._sample_data import phantom_volume
    from napari_msa.demo.phantoms import SAMPLE_SEED
    from napari_msa.demo.phantoms import phantom_volume as generate

    (ph, _, _), (lab, _, _) = phantom_volume()
    hu, labels, _ = generate(SAMPLE_SEED, ph.shape)
    np.testing.assert_array_equal(hu, ph)
    np.testing.assert_array_equal(labels, lab)


@pytest.mark.gui
def test_samples_open_in_napari(make_napari_viewer, no_network):
    """Through napari's own File → Open Sample path: the layer kwargs are ones napari accepts."""
    viewer = make_napari_viewer()
    for key, _ in _sample_generators():
        viewer.open_sample("napari-msa", key)
    names = [layer.name for layer in viewer.layers]
    assert {"CT slice (HU)", "CT reference masks", "MRI volume (EPI)", "Fundus photograph",
            "abdominal phantom (HU)", "phantom ground truth"} <= set(names)
    phantom = viewer.layers["abdominal phantom (HU)"]
    assert tuple(phantom.scale) == pytest.approx((5.0, 1.6, 1.6))
    assert viewer.layers["phantom ground truth"].visible is False
    assert viewer.layers["Fundus photograph"].rgb
