"""Zoom-in for correction clicks: the window of the slice an object's later clicks are decoded in.

LiteMedSAM sees a slice at 256 px and answers at 64 px, so an object of 80 px on a 200 px MRI slice is a few
low-res pixels: its mask cannot follow the clicks, and the clicks that try make it worse. After the first answer
to a click (at once for a box the user drew), the interaction re-encodes a square window around the object (its
mask, the positive clicks and the box, twice their size, at least ``MIN_SIDE`` px) and decodes there, as RITM's
Zoom-In does (BENCHMARKS.md, "Zoom-in"; the constants below were chosen there, on the development sets).

A window is a (min_row, min_col, max_row, max_col) of half-open pixel bounds on the slice.
"""

from __future__ import annotations

import numpy as np

SCALE = 2.0  # the window's side over the object's larger side (1.6 and 2.5 measured worse)
MIN_SIDE = 96  # px: smaller windows magnify the pixels into blocks the encoder never saw (64 measured worse)
MAX_FRACTION = 0.7  # a window this close to the whole slice gains little for its encoder pass: none

Window = tuple[int, int, int, int]


def zoom_window(shape: tuple[int, int], mask: np.ndarray | None, points: np.ndarray, labels: np.ndarray,
                box: np.ndarray | None = None, *, scale: float = SCALE, min_side: int = MIN_SIDE,
                max_fraction: float = MAX_FRACTION) -> Window | None:
    """The square window around the object (``mask``, positive clicks, ``box``) ``scale`` times its larger side,
    shifted to lie inside the (h, w) slice; None when there is no object or the window would be most of the slice."""
    h, w = shape
    ys: list[np.ndarray] = []
    xs: list[np.ndarray] = []
    if mask is not None:
        rows, cols = np.nonzero(mask)
        ys.append(rows.astype(np.float64))
        xs.append(cols.astype(np.float64))
    positive = np.asarray(points, dtype=np.float64).reshape(-1, 2)[np.asarray(labels).reshape(-1) == 1]
    ys.append(positive[:, 0])
    xs.append(positive[:, 1])
    if box is not None:
        b = np.asarray(box, dtype=np.float64).reshape(4)
        ys.append(b[[0, 2]])
        xs.append(b[[1, 3]])
    y, x = np.concatenate(ys), np.concatenate(xs)
    if y.size == 0:
        return None
    side = max(scale * max(y.max() - y.min() + 1, x.max() - x.min() + 1), float(min_side))
    if side > max_fraction * max(h, w):
        return None
    side_r, side_c = int(round(min(side, h))), int(round(min(side, w)))
    r0 = int(round(np.clip((y.min() + y.max()) / 2 - side_r / 2, 0, h - side_r)))
    c0 = int(round(np.clip((x.min() + x.max()) / 2 - side_c / 2, 0, w - side_c)))
    return r0, c0, r0 + side_r, c0 + side_c


def inside(window: Window, point: np.ndarray) -> bool:
    """Whether a (row, col) point lies in the window (the pixel it falls on, as the slice's pixels count)."""
    r, c = np.round(np.asarray(point, dtype=np.float64).reshape(2)).astype(int)
    return window[0] <= r < window[2] and window[1] <= c < window[3]


def points_in(window: Window, points: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The clicks that fall in the window, in its frame (a negative click outside it says nothing there)."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    labels = np.asarray(labels).reshape(-1)
    keep = np.array([inside(window, p) for p in points], dtype=bool)
    return points[keep] - np.array(window[:2], dtype=np.float64), labels[keep]


def box_in(window: Window, box: np.ndarray) -> np.ndarray:
    """A slice box in the window's frame, clipped to it."""
    r0, c0, r1, c1 = window
    b = np.asarray(box, dtype=np.float64).reshape(4) - np.array([r0, c0, r0, c0], dtype=np.float64)
    return np.clip(b, 0, [r1 - r0 - 1, c1 - c0 - 1] * 2)


def paste(window: Window, masks: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(M, wh, ww) masks of a window as (M, h, w) masks of the slice (nothing outside the window)."""
    out = np.zeros((len(masks), *shape), dtype=bool)
    out[:, window[0]:window[2], window[1]:window[3]] = masks
    return out
