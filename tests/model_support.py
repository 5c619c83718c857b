"""Test helpers for models and images: adapters with non-zero weights, a volume with one blob."""

from __future__ import annotations

import numpy as np
import torch


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
