"""Shared fixtures: tiny random-init models built from segment_anything's classes (milliseconds to build)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from napari_msa import load_model

# Every model the tests load computes in the reference fp32 arithmetic (bit-exact comparisons hold on every
# machine, whatever its CPU or GPU); tests/test_precision.py covers 'auto' and 'bf16' explicitly.
os.environ.setdefault("NAPARI_MSA_PRECISION", "fp32")


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    np.random.seed(0)
    yield


@pytest.fixture(scope="module")
def one_torch_thread():
    """The test machine's two cores are shared; one torch thread per process is faster and steadier there."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_model():
    return load_model("tiny", device="cpu")


def randomize_adapters(sam: torch.nn.Module, scale: float = 0.05) -> None:
    """Give zero-initialised adapters non-zero weights, as after tuning."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in sam.named_parameters():
            if "Adapter" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)


def blob_volume(shape=(16, 48, 64), center=(8, 20, 40), radii=(5, 9, 14)) -> tuple[np.ndarray, np.ndarray]:
    """A float volume with one bright off-centre ellipsoid, and its mask."""
    zz, yy, xx = np.indices(shape)
    mask = sum(((g - c) / r) ** 2 for g, c, r in zip((zz, yy, xx), center, radii)) <= 1.0
    rng = np.random.default_rng(0)
    image = rng.normal(0, 0.1, shape).astype(np.float32) + mask.astype(np.float32)
    return image, mask
