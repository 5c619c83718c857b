"""A correction click the answer ignores: the thing under it added or taken away, within the click's reach.

The model leaves about four correction clicks in ten as they were (a positive click stays outside the mask, a
negative one inside); the annotator, or the field's automatic clicker, then clicks the same miss again and the
session stalls. The model's own decoder, asked about a lone click at that pixel, says what it sees there: its
smallest candidate that holds the pixel is *the thing under the click*. The click says what the user meant about
it. The edit is cut to a disc around the click whose radius is twice the click's distance from the mask's edge (a
click that deep in a miss or a spill says how wide the error is), and it is not made for a click on the shown edge
itself, where a reference's own pixel convention decides and edits undo each other click after click — unless the
click insists (the same pixel clicked again with the same label). An edit
stays in force at the object's later steps (``interaction``): the corrector, fed the edited logits, would give back
a quarter of it. Measured on real images of seven modalities (BENCHMARKS.md, "Off the rim", "Sticky edits", "A
click that insists").
"""

from __future__ import annotations

import numpy as np

REACH = 2.0  # the edit's disc: this many times the click's distance from the mask's edge
RIM = 1.5  # px: a click this close to the shown edge keeps the model's answer
ADD_MAX = 1.0  # an addition no larger than the mask shown
REMOVE_MAX = 0.5  # a removal at most half the mask shown
EDIT_LOGIT = 8.0  # what the edited pixels feed back: as sure as a mask given whole (decoding.mask_to_logits)


def click_pixel(point: np.ndarray, shape: tuple[int, int]) -> tuple[int, int]:
    """The (row, col) pixel a click falls on, inside the slice."""
    r, c = np.clip(np.round(np.asarray(point, dtype=np.float64).reshape(2)).astype(int), 0, np.array(shape) - 1)
    return int(r), int(c)


def honoured(mask: np.ndarray, point: np.ndarray, label: int) -> bool:
    """Whether the mask agrees with the click at its pixel: inside for a positive click, outside for a negative."""
    return bool(mask[click_pixel(point, mask.shape)]) == bool(label)


def click_edit(mask: np.ndarray, candidates: np.ndarray, point: np.ndarray, label: int, *,
               rim: float = RIM) -> np.ndarray | None:
    """The pixels to flip so that ``mask`` honours the click: the smallest of a lone click's ``candidates`` (M, h, w)
    that holds the clicked pixel, within the click's reach; None where no edit is made (the click is honoured, on
    the shown edge, nothing holds it, or the edit is larger than the guards allow). An empty mask and a positive
    click: the thing whole. ``rim``: a click this close to the shown edge gets no edit (0 for a click that insists,
    ``insists``)."""
    mask = np.asarray(mask, dtype=bool)
    if honoured(mask, point, label):
        return None
    r, c = click_pixel(point, mask.shape)
    holding = [m for m in np.asarray(candidates, dtype=bool) if m[r, c]]
    if not holding:
        return None
    thing = min(holding, key=lambda m: int(np.count_nonzero(m)))
    area = int(np.count_nonzero(mask))
    if area == 0:
        return thing.copy()  # only a positive click goes unhonoured by an empty mask
    distance = click_depth(mask, point, label)
    if distance <= rim:
        return None
    edit = thing & reach_disc(mask.shape, point, distance) & (~mask if label == 1 else mask)
    limit = ADD_MAX if label == 1 else REMOVE_MAX
    return edit if 0 < np.count_nonzero(edit) <= limit * area else None


def click_depth(shown: np.ndarray, point: np.ndarray, label: int, *, within: float | None = None) -> float:
    """How deep a click lies in the error it marks: its distance from the shown edge (the nearest pixel of the other
    side; 0 for a click on the wrong side). ``within``: only a depth below it matters; the search stays in a square
    that size around the click and a deeper click gets inf."""
    shown = np.asarray(shown, dtype=bool)
    r, c = click_pixel(point, shown.shape)
    side = ~shown if label == 1 else shown
    if not side[r, c]:
        return 0.0
    other, r0, c0 = ~side, 0, 0
    if within is not None:
        k = int(np.ceil(within))
        r0, c0 = max(r - k, 0), max(c - k, 0)
        other = other[r0:r + k + 1, c0:c + k + 1]
    rows, cols = np.nonzero(other)
    if rows.size == 0:
        return float("inf")
    return float(np.sqrt(np.min((rows + r0 - r) ** 2 + (cols + c0 - c) ** 2)))


def reach_disc(shape: tuple[int, int], point: np.ndarray, depth: float) -> np.ndarray:
    """A click's reach: the disc ``REACH`` times its depth around it."""
    r, c = click_pixel(point, shape)
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - r) ** 2 + (cols - c) ** 2 <= (REACH * depth) ** 2


def insists(points: np.ndarray, labels: np.ndarray) -> bool:
    """Whether the last click falls on the pixel of an earlier click of the same label: the user says again what
    the answer left as it was, and is honoured on the shown edge too (BENCHMARKS.md, "A click that insists")."""
    points = np.round(np.asarray(points, dtype=np.float64).reshape(-1, 2)).astype(int)
    labels = np.asarray(labels).reshape(-1)
    return bool(np.any((points[:-1] == points[-1]).all(axis=1) & (labels[:-1] == labels[-1])))


def edge_rim(points: np.ndarray, labels: np.ndarray) -> float:
    """How close to the shown edge the last click may be and still get no edit: ``RIM``, or 0 when it insists. One
    place for the session's rule and the trainer's simulated sessions."""
    return 0.0 if insists(points, labels) else RIM


Edit = tuple[np.ndarray, int]  # (pixels, the label of the click that made it)


def edits_in_force(earlier: tuple[Edit, ...], edit: Edit | None, point: np.ndarray, label: int,
                   shape: tuple[int, int]) -> tuple[Edit, ...]:
    """The edits in force after a correction click: the earlier ones, but those of the other sign that the click
    falls inside, then the click's own (None: it made none)."""
    pixel = click_pixel(point, shape)
    kept = tuple((e, lab) for e, lab in earlier if lab == label or not e[pixel])
    return kept + ((edit,) if edit is not None else ())


def with_edits(mask: np.ndarray, edits: tuple[Edit, ...]) -> np.ndarray:
    """The mask with every edit written in, in order (a later edit wins where two overlap)."""
    target = np.array(mask, dtype=bool, copy=True)
    for e, lab in edits:
        target[e] = lab == 1
    return target
