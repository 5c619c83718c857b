"""Appearance variants of an 8-bit training plane, so the click adapter meets both polarities.

LiteMedSAM, boxed around a structure darker than its surroundings (a T1 ventricle), segments the brighter tissue
beside it; with the image inverted the same boxes work (DESIGN.md §2b). Training on inverted copies, on gamma and
contrast curves, noise and blur teaches the decoder that an object is what the clicks say, whichever way its
contrast goes. Each variant also takes a random flip or 90° turn, for shape variety at no extra cost (the
encoder runs once per variant, so variants are new images rather than per-step jitter).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

KINDS = ("invert", "gamma", "curve", "noise_blur")


def variant(plane: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """``plane`` (Y,X) or (Y,X,3) uint8 under one appearance change; labels are unchanged by it."""
    x = plane.astype(np.float32) / 255.0
    if kind == "invert":
        x = 1.0 - x
        if rng.random() < 0.5:
            x = x ** float(rng.uniform(0.7, 1.4))
    elif kind == "gamma":
        x = x ** float(np.exp(rng.uniform(np.log(0.4), np.log(2.5))))
    elif kind == "curve":  # a smooth monotone or V-shaped transfer curve: contrast reshaped, sometimes folded
        knots = np.sort(rng.uniform(0, 1, 3))
        values = rng.uniform(0, 1, 5)
        if rng.random() < 0.5:
            values = np.sort(values)
        x = np.interp(x, np.concatenate([[0.0], knots, [1.0]]), values)
    elif kind == "noise_blur":
        sigma = float(rng.uniform(0.5, 2.0))
        x = ndimage.gaussian_filter(x, (sigma, sigma, 0) if x.ndim == 3 else sigma)
        x = x + rng.normal(0, rng.uniform(0.02, 0.08), x.shape).astype(np.float32)
    else:
        raise ValueError(f"unknown appearance variant {kind!r}; choose one of {', '.join(KINDS)}")
    lo, hi = np.percentile(x, (0.5, 99.5))
    x = np.clip((x - lo) / max(hi - lo, 1e-6), 0, 1)
    return (x * 255).round().astype(np.uint8)


def augmented(images: list[np.ndarray], labels: list[np.ndarray], kinds: tuple[str, ...], rng: np.random.Generator,
              regions: list[np.ndarray | None] | None = None
              ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray | None]]:
    """(images, labels, click regions): the originals plus one copy per kind, each with a random flip or quarter
    turn (labels and click regions turned alike)."""
    regions = [None] * len(images) if regions is None else regions
    out_images, out_labels, out_regions = list(images), list(labels), list(regions)

    def turned(a: np.ndarray | None, k: int, flip: bool) -> np.ndarray | None:
        if a is None:
            return None
        a = np.rot90(a, k, axes=(0, 1))
        return np.ascontiguousarray(a[:, ::-1] if flip else a)

    for image, lab, region in zip(images, labels, regions, strict=True):
        for kind in kinds:
            k, flip = int(rng.integers(4)), bool(rng.integers(2))
            out_images.append(turned(variant(image, kind, rng), k, flip))
            out_labels.append(turned(lab, k, flip))
            out_regions.append(turned(region, k, flip))
    return out_images, out_labels, out_regions
