"""Whole objects as extra training targets: the body, and each object with what it encloses.

A click deep inside a large structure (a brain, a head, a liver) gave the click adapter a small blob: its training
labels are flat maps of organs, so nothing large and nothing that holds other objects was ever a target. SAM learns
nesting from its three masks (the loss takes the best of them), so the same click may mean the part or the whole;
adding the wholes as further label maps of the same image teaches that, and a lone click's candidates then span
the hierarchy the annotator cycles through with **N**.

Wholes come from the labels alone (a label's holes filled, when that adds something) and, for CT-like planes with
air around the body, from the image (the body outline). They overlap each other, so they are spread over as few
flat maps as hold them without overlap. A whole is clicked on its own tissue, off the labelled objects inside it
(``own_tissue``): a click on an inner object means that object, so training never asks it to mean the whole.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from napari_msa.engine.prompts.geometry import components

MIN_GAIN = 0.10  # a filled object counts as a new whole when filling adds at least this share
MIN_PIXELS = 200


def filled_objects(labels: np.ndarray) -> list[np.ndarray]:
    """Each connected piece of each label with its holes filled, where that adds ≥ ``MIN_GAIN`` of its area."""
    out = []
    for piece in components(labels, MIN_PIXELS):
        filled = ndimage.binary_fill_holes(piece)
        if filled.sum() >= (1 + MIN_GAIN) * piece.sum():
            out.append(filled)
    return out


def body_outline(plane: np.ndarray) -> np.ndarray | None:
    """The body of a plane with dark air around it: the largest piece above Otsu's level of the smoothed plane,
    holes filled; None when it is not a body surrounded by background (it touches much of the border, fills
    nearly the whole plane or under a tenth of it, or what lies around it is not clearly darker)."""
    from skimage.filters import threshold_otsu

    grey = plane.mean(axis=-1) if plane.ndim == 3 else plane.astype(np.float32)
    grey = ndimage.gaussian_filter(grey, 2.0)
    if grey.max() - grey.min() < 1e-6:
        return None
    parts, n = ndimage.label(ndimage.binary_opening(grey > threshold_otsu(grey), iterations=2))
    if n == 0:
        return None
    sizes = np.bincount(parts.ravel())[1:]
    body = ndimage.binary_fill_holes(parts == 1 + int(np.argmax(sizes)))
    raw = plane.mean(axis=-1) if plane.ndim == 3 else plane.astype(np.float32)
    if body.all() or raw[body].mean() - raw[~body].mean() < 2 * raw[~body].std():  # not air around a body
        return None
    border = np.concatenate([body[0], body[-1], body[:, 0], body[:, -1]])
    if body.sum() < MIN_PIXELS or not 0.1 <= body.mean() <= 0.9 or border.mean() > 0.25:
        return None
    return body


def whole_maps(labels: np.ndarray, plane: np.ndarray | None = None, max_maps: int = 2) -> list[np.ndarray]:
    """Flat int32 label maps holding the wholes of ``labels`` (and the body of ``plane`` when given), largest
    first, each whole in the first map where it overlaps nothing; at most ``max_maps`` maps."""
    wholes = filled_objects(labels)
    if plane is not None:
        body = body_outline(plane)
        if body is not None:
            wholes.append(body)
    wholes.sort(key=lambda m: -int(m.sum()))
    maps: list[np.ndarray] = []
    for whole in wholes:
        for lab in maps:
            if not lab[whole].any():
                lab[whole] = lab.max() + 1
                break
        else:
            if len(maps) < max_maps:
                lab = np.zeros(labels.shape, dtype=np.int32)
                lab[whole] = 1
                maps.append(lab)
    return maps


def own_tissue(whole: np.ndarray, labels: np.ndarray, plane: np.ndarray | None = None, margin: int = 2,
               band: tuple[float, float] = (25.0, 75.0)) -> np.ndarray:
    """Where a click means ``whole`` rather than something inside it: the whole off every labelled object in it
    (and ``margin`` pixels around them) and, given the ``plane``, only where its smoothed intensity lies within the
    ``band`` percentiles of the rest: a dark pocket or a bright speck inside a body is a structure of its own
    (a sinus in a head), so a click there must not be taught to mean the whole body."""
    inner = (labels > 0) & whole
    region = whole & ~ndimage.binary_dilation(inner, iterations=margin) if inner.any() else whole.copy()
    if plane is None or region.sum() < MIN_PIXELS:
        return region
    grey = plane.mean(axis=-1) if plane.ndim == 3 else plane.astype(np.float32)
    grey = ndimage.gaussian_filter(grey.astype(np.float32), 1.5)
    low, high = np.percentile(grey[region], band)
    typical = region & (grey >= low) & (grey <= high)
    return typical if typical.sum() >= MIN_PIXELS else region


def whole_maps_with_clicks(labels: np.ndarray, plane: np.ndarray | None = None, max_maps: int = 2
                           ) -> list[tuple[np.ndarray, np.ndarray]]:
    """``whole_maps`` with, for each map, where its wholes are clicked (``own_tissue`` of each, on ``plane``'s
    typical intensities when it is given)."""
    out = []
    for lab in whole_maps(labels, plane, max_maps):
        clickable = np.zeros(lab.shape, dtype=bool)
        for k in range(1, int(lab.max()) + 1):
            clickable |= own_tissue(lab == k, labels, plane)
        out.append((lab, clickable))
    return out
