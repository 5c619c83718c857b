"""Mask geometry and metrics on numpy arrays: a mask's box, how deep each pixel lies, where to click inside it,
its connected pieces, and Dice / IoU between masks. The session, tuning, demo training, benchmarks and tests all
measure and prompt with these, so a click "deep inside" or a Dice means one thing everywhere.

Coordinates are numpy's: (row, col), boxes (min_row, min_col, max_row, max_col) with inclusive maxima.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from scipy import ndimage


def mask_box(mask: np.ndarray) -> np.ndarray:
    """(min_row, min_col, max_row, max_col) of a non-empty 2D mask, as float64."""
    rows, cols = np.nonzero(mask)
    return np.array([rows.min(), cols.min(), rows.max(), cols.max()], dtype=np.float64)


def grown_box(mask: np.ndarray, margin: float, include: np.ndarray | None = None) -> np.ndarray:
    """The mask's box grown by ``margin`` × its size on each side (at least 2 px when ``margin`` > 0), clipped to
    the plane: a box for the next slice of an object that may be a little larger there. ``include``: (N, 2)
    points the box must hold as well (before growing)."""
    box = mask_box(mask)
    if include is not None and len(include):
        pts = np.asarray(include, dtype=np.float64).reshape(-1, 2)
        box = np.concatenate([np.minimum(box[:2], pts.min(0)), np.maximum(box[2:], pts.max(0))])
    if margin > 0:
        grow = np.maximum(2.0, margin * np.array([box[2] - box[0], box[3] - box[1]]))
        box += np.array([-grow[0], -grow[1], grow[0], grow[1]])
        box = np.clip(box, 0, [mask.shape[0] - 1, mask.shape[1] - 1] * 2)
    return box


def clicked_object_box(mask: np.ndarray, points: np.ndarray, labels: np.ndarray, margin: float = 0.05
                       ) -> np.ndarray | None:
    """The box that goes with clicks on an object the user sees (``mask``): around it and the positive clicks,
    grown by ``margin``; None when the mask is empty. SAM reads clicks relative to a box: a negative click then
    trims the object, a positive one outside extends it (the Segment widget's correction clicks and refining)."""
    if not mask.any():
        return None
    positive = np.asarray(points, dtype=np.float64).reshape(-1, 2)[np.asarray(labels).reshape(-1) == 1]
    return grown_box(mask, margin, include=positive)


def exact_depth(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance of every pixel (any number of axes) to the nearest one outside ``mask``; the array's
    borders count as outside."""
    inner = (slice(1, -1),) * mask.ndim
    return ndimage.distance_transform_edt(np.pad(mask, 1))[inner]


def depth_map(mask: np.ndarray) -> np.ndarray:
    """A fast approximation of ``exact_depth`` for 2D masks (float32).

    The mean of the taxicab and chessboard chamfer distances: close to Euclidean for picking a point "deep
    inside", and ~5x cheaper than the exact transform, which matters in tuning's step loop.
    """
    padded = np.pad(mask, 1)
    d = ndimage.distance_transform_cdt(padded, metric="taxicab").astype(np.float32)
    d += ndimage.distance_transform_cdt(padded, metric="chessboard")
    return d[1:-1, 1:-1] * 0.5


def most_interior(mask: np.ndarray, depth: np.ndarray | None = None) -> np.ndarray:
    """Index of the pixel deepest inside ``mask`` (float64 array, one entry per axis; the first one on ties):
    the click an annotator puts on an object, inside it even where its centroid is not. ``depth`` defaults to
    ``exact_depth(mask)``."""
    depth = exact_depth(mask) if depth is None else depth
    return np.array(np.unravel_index(np.argmax(depth), depth.shape), dtype=np.float64)


def interior_click(mask: np.ndarray, rng: np.random.Generator | None = None,
                   depth: np.ndarray | None = None) -> np.ndarray:
    """(row, col) deep inside ``mask``: the most interior pixel, or with ``rng`` a random one of its inner half
    (depth at least half the maximum). ``depth`` defaults to ``depth_map(mask)``."""
    depth = depth_map(mask) if depth is None else depth
    if rng is None:
        return most_interior(mask, depth)
    candidates = np.argwhere(depth >= 0.5 * depth.max())
    return candidates[rng.integers(len(candidates))].astype(np.float64)


def next_click(mask: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, int] | None:
    """Where the field's automatic annotator clicks next: ((row, col), 1 | 0), the deepest pixel of the larger
    error region (exact Euclidean depth, the image border counting as outside), positive in what ``mask`` misses,
    negative in what it spills; None when the mask is exact. Ties go to the positive click."""
    missed, spilled = truth & ~mask, mask & ~truth
    if not missed.any() and not spilled.any():
        return None
    d_missed = exact_depth(missed) if missed.any() else np.zeros(truth.shape)
    d_spilled = exact_depth(spilled) if spilled.any() else np.zeros(truth.shape)
    positive = d_missed.max() >= d_spilled.max()
    depth = d_missed if positive else d_spilled
    return np.array(np.unravel_index(np.argmax(depth), depth.shape), dtype=np.float64), int(positive)


def automatic_clicks(predict: Callable[[np.ndarray, list[int]], np.ndarray], truth: np.ndarray,
                     max_clicks: int) -> Iterator[np.ndarray]:
    """The automatic annotator's session on ``truth``: each click (``next_click`` on the mask shown) goes with all
    the earlier ones to ``predict(points, labels) -> mask``, one call per click as the widget makes them; yields
    the mask after each click, until ``max_clicks`` or an exact mask (the caller may stop earlier)."""
    truth = np.asarray(truth, dtype=bool)
    points: list[np.ndarray] = []
    labels: list[int] = []
    mask = np.zeros_like(truth)
    while len(points) < max_clicks:
        click = next_click(mask, truth)
        if click is None:
            return
        points.append(click[0])
        labels.append(click[1])
        mask = predict(np.array(points), list(labels))
        yield mask


def components(labels: np.ndarray, min_area: int) -> list[np.ndarray]:
    """Every connected piece of every label with at least ``min_area`` pixels, as boolean masks (by label, then
    piece): what one click on a label image can mean."""
    out = []
    for value in np.unique(labels):
        if value == 0:
            continue
        comp, n = ndimage.label(labels == value)
        sizes = np.bincount(comp.ravel())
        out.extend(comp == i for i in range(1, n + 1) if sizes[i] >= min_area)
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean masks; two empty masks agree (1.0)."""
    total = a.sum() + b.sum()
    return float(2.0 * np.logical_and(a, b).sum() / total) if total else 1.0


def surface_dice(a: np.ndarray, b: np.ndarray, tolerance: float = 1.0) -> float:
    """Normalized Surface Dice (Nikolov et al. 2018; MedSAM's second metric): the share of both masks' edge pixels
    that lie within ``tolerance`` pixels of the other's edge. Unlike Dice it forgives a rim of that width, which
    on a small object is most of what Dice counts; two empty masks agree (1.0), one empty one does not (0.0)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    edge_a, edge_b = a & ~ndimage.binary_erosion(a), b & ~ndimage.binary_erosion(b)
    total = int(edge_a.sum() + edge_b.sum())
    if not edge_a.any() or not edge_b.any():
        return 1.0 if total == 0 else 0.0
    near_b = ndimage.distance_transform_edt(~edge_b) <= tolerance
    near_a = ndimage.distance_transform_edt(~edge_a) <= tolerance
    return float((np.count_nonzero(edge_a & near_b) + np.count_nonzero(edge_b & near_a)) / total)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks; 0.0 when both are empty (nothing was found to overlap)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0
