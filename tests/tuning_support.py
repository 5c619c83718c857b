"""A small synthetic tuning task shared by the tuning tests: bright discs on noise, two per slice."""

from __future__ import annotations

import numpy as np


def blob_task(n_slices: int = 6, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(image (Z,Y,X) float32, labels (Z,Y,X) int32): two non-touching bright discs per slice, ids 1 and 2."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = rng.normal(0.0, 0.3, (n_slices, size, size)).astype(np.float32)
    labels = np.zeros((n_slices, size, size), np.int32)
    for z in range(n_slices):
        placed = 0
        while placed < 2:
            cy, cx = rng.uniform(0.2 * size, 0.8 * size, 2)
            r = rng.uniform(0.1, 0.16) * size
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            if (labels[z][disc] != 0).any():
                continue
            labels[z][disc] = placed + 1
            images[z][disc] += 1.5
            placed += 1
    return images, labels
