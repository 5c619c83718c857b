"""The second phantom generator (MRI / ultrasound / microscopy / fundus-like): seeded, dark objects, rings, volumes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_msa.demo import phantoms as P1
from napari_msa.demo import phantoms_mr as P


def _rng(seed: int, stream: int, i: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, i])


def test_streams_are_the_first_generators():
    assert (P.TRAIN_STREAM, P.EVAL_STREAM) == (P1.TRAIN_STREAM, P1.EVAL_STREAM)


def test_deterministic_and_streams_differ():
    a = P.random_slice(_rng(4, P.TRAIN_STREAM, 0))
    b = P.random_slice(_rng(4, P.TRAIN_STREAM, 0))
    c = P.random_slice(_rng(4, P.EVAL_STREAM, 0))
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.kind == b.kind and a.names == b.names
    assert a.image.shape != c.image.shape or not np.array_equal(a.image, c.image)
    v1, l1, n1 = P.phantom_volume(seed=2, shape=(6, 64, 64))
    v2, l2, n2 = P.phantom_volume(seed=2, shape=(6, 64, 64))
    np.testing.assert_array_equal(v1, v2)
    np.testing.assert_array_equal(l1, l2)
    assert n1 == n2


@pytest.mark.parametrize("scene", P.SCENES)
def test_every_scene_shapes_dtypes_and_labels(scene):
    s = P.random_slice(_rng(1, P.TRAIN_STREAM, 0), scene=scene, size_range=(96, 128))
    assert s.image.dtype == np.float32 and s.labels.dtype == np.int32
    assert s.image.shape == s.labels.shape and s.image.ndim == 2 and 96 <= max(s.image.shape) <= 128
    assert np.isfinite(s.image).all() and s.image.min() >= 0 and np.ptp(s.image) > 0
    assert s.kind in P.KINDS and s.scene == scene
    present = {int(v) for v in np.unique(s.labels) if v}
    assert present and present == set(s.names) == set(s.tags)
    u8 = P.window_to_uint8(s.image, None, s.kind)
    assert u8.dtype == np.uint8 and u8.shape == s.image.shape and np.ptp(u8) > 50


def _dark_and_rings(n: int, stream: int):
    dark = total = rings = 0
    kinds = set()
    for i in range(n):
        s = P.random_slice(_rng(7, stream, i), size_range=(128, 160))
        kinds.add(s.kind)
        for lab in s.names:
            m = s.labels == lab
            if m.sum() < 20:
                continue
            around = ndimage.binary_dilation(m, iterations=3) & ~m
            if around.any():
                total += 1
                dark += s.image[m].mean() < s.image[around].mean()
            filled = ndimage.binary_fill_holes(m)
            rings += bool((filled & ~m).sum() >= 4)  # a hole held by another label or the background
    return dark, total, rings, kinds


def test_dark_objects_rings_and_modalities():
    dark, total, rings, kinds = _dark_and_rings(50, P.TRAIN_STREAM)
    assert total > 100
    assert dark / total >= 0.4, f"{dark}/{total} objects darker than their surroundings"
    assert rings >= 5
    assert {"mr_t1", "mr_t2", "ultrasound"} <= kinds and len(kinds) >= 4


def test_sizes_and_contrast_vary():
    areas, contrasts = [], []
    for i in range(30):
        s = P.random_slice(_rng(3, P.TRAIN_STREAM, i), size_range=(256, 256))
        lo, hi = np.percentile(s.image, [1, 99])
        for lab in s.names:
            m = s.labels == lab
            areas.append(m.sum() / m.size)
            around = ndimage.binary_dilation(m, iterations=3) & ~m
            if m.sum() >= 40 and around.any():
                contrasts.append(abs(np.median(s.image[m]) - np.median(s.image[around])) / (hi - lo))
    assert min(areas) * 256 * 256 <= 60 and max(areas) >= 0.2
    assert np.mean(np.array(contrasts) < 0.2) > 0.1  # low-contrast objects are common


@pytest.mark.parametrize("scene", P.VOLUME_SCENES)
def test_volume_objects_start_and_end_inside(scene):
    vol, labels, names = P.phantom_volume(seed=5, shape=(16, 96, 96), scene=scene)
    assert vol.dtype == np.float32 and labels.dtype == np.uint8 and vol.shape == labels.shape == (16, 96, 96)
    assert names and set(names) == {int(v) for v in np.unique(labels) if v}
    for lab in names:
        area = (labels == lab).sum(axis=(1, 2))
        assert area[0] == 0 and area[-1] == 0, f"{names[lab]} reaches the volume's ends"
    # Objects change smoothly: neighbouring slices share most of their labels' pixels.
    overlaps = []
    for z in range(1, 15):
        a, b = labels[z - 1] > 0, labels[z] > 0
        if a.sum() > 50 and b.sum() > 50:
            overlaps.append((a & b).sum() / (a | b).sum())
    assert overlaps and np.median(overlaps) > 0.5
