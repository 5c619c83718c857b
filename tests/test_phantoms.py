"""The synthetic phantom generator: seeded, varied, and its labels agree with its pixels."""

from __future__ import annotations

import numpy as np

from napari_msa.demo import phantoms as P


def test_same_seed_same_slice_other_seed_other_slice():
    a = P.random_slice(np.random.default_rng([4, P.TRAIN_STREAM, 0]), shapes_share=0.0)
    b = P.random_slice(np.random.default_rng([4, P.TRAIN_STREAM, 0]), shapes_share=0.0)
    c = P.random_slice(np.random.default_rng([4, P.EVAL_STREAM, 0]), shapes_share=0.0)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.image.shape != c.image.shape or not np.array_equal(a.image, c.image)


def test_slices_vary_in_size_contrast_and_content():
    rng = np.random.default_rng(0)
    samples = [P.random_slice(rng, shapes_share=0.0) for _ in range(12)]
    assert len({s.image.shape for s in samples}) > 3
    liver_hu = []
    for s in samples:
        liver = s.labels == P.ORGAN_LABELS["liver"]
        if liver.sum() > 200:
            liver_hu.append(float(np.median(s.image[liver])))
    assert len(liver_hu) >= 3 and np.ptp(liver_hu) > 20  # contrast phases and jitter differ
    noise = [float(np.std(s.image[:8, :8])) for s in samples]  # air outside the body: noise only
    assert np.ptp(noise) > 5


def test_volume_labels_agree_with_intensities():
    hu, labels, names = P.phantom_volume(seed=3, shape=(12, 128, 128))
    assert hu.dtype == np.int16 and labels.shape == hu.shape
    body = hu > -500
    assert 0.2 < body.mean() < 0.8  # a body outline inside air
    assert np.all(labels[~body] == 0)
    bone = labels == P.ORGAN_LABELS["vertebra"]
    canal = labels == P.ORGAN_LABELS["spinal canal"]
    assert np.median(hu[bone]) > np.median(hu[canal]) + 100
    aorta = labels == P.ORGAN_LABELS["aorta"]
    assert aorta.any() and np.all(aorta.sum(axis=(1, 2)) > 0)  # a vessel through every slice
    assert {"liver", "spleen", "aorta", "vertebra"} <= set(names.values())


def test_volume_organs_change_along_z():
    hu, labels, _ = P.phantom_volume(seed=5, shape=(16, 96, 96))
    liver = (labels == P.ORGAN_LABELS["liver"]).sum(axis=(1, 2))
    assert liver.max() > 0 and liver.min() < liver.max() * 0.5
