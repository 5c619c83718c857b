"""Shared fixtures: tiny random-init models built from segment_anything's classes (milliseconds to build), seeds, and
one torch thread. Helpers that tests import live in the *_support.py / *_files.py modules beside this file, imported
by their bare names (pytest puts this folder on sys.path), never from conftest."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from napari_msa import load_model

# Every model the tests load computes in the reference fp32 arithmetic (bit-exact comparisons hold on every
# machine, whatever its CPU or GPU); tests/test_precision.py covers 'auto' and 'bf16' explicitly.
os.environ.setdefault("NAPARI_MSA_PRECISION", "fp32")
# ... and in torch (tests/test_runtime.py covers the OpenVINO runtime and 'auto' explicitly).
os.environ.setdefault("NAPARI_MSA_RUNTIME", "torch")
# The Segment widget loads its chosen model as soon as an image is there; each test gives its widgets the model it
# needs instead (tests/test_segment_widget.py turns preloading on where it is what is tested).
os.environ.setdefault("NAPARI_MSA_PRELOAD", "0")


@pytest.fixture(autouse=True)
def _own_recovery_folder(tmp_path_factory, monkeypatch):
    """Each test writes recovery files (autosave at commit) to a folder of its own, never the user's."""
    monkeypatch.setenv("NAPARI_MSA_RECOVERY_DIR", str(tmp_path_factory.mktemp("recovery")))
    monkeypatch.setenv("NAPARI_MSA_GRAPH_DIR", str(tmp_path_factory.mktemp("encoder-graphs")))


@pytest.fixture(autouse=True)
def _seeded():
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
