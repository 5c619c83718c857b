"""A correction click changes the mask where it was clicked, not elsewhere (FocalClick's local update, as a rule).

Most correction steps that lose Dice on real images are clicks the answer *honours* while the mask floods or
shrinks somewhere the annotator did not click (BENCHMARKS.md, "Where the losing steps are"). With ``local`` the rule
keeps, of an honoured click's answer, only the change connected to the clicked pixel; every other pixel stays as it
was shown. A click the answer does not honour keeps the answer whole: the model may need to move the mask to
follow it, and the annotator's next click would otherwise land where this one did.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def honours(mask: np.ndarray, shown: np.ndarray, point: np.ndarray, label: int) -> bool:
    """Whether the answer puts the clicked pixel where the click asked and the shown mask did not have it."""
    r, c = np.round(np.asarray(point, dtype=np.float64).reshape(2)).astype(int)
    if not (0 <= r < mask.shape[0] and 0 <= c < mask.shape[1]):
        return False
    wanted = label == 1
    return bool(mask[r, c]) == wanted and bool(shown[r, c]) != wanted


def local_change(mask: np.ndarray, shown: np.ndarray, point: np.ndarray, label: int) -> np.ndarray:
    """``shown`` changed only by the part of ``mask``'s change that holds the clicked pixel (8-connected); ``mask``
    itself when the click is not honoured."""
    if not honours(mask, shown, point, label):
        return mask
    changed = mask ^ shown
    parts, _ = ndimage.label(changed, structure=_EIGHT_CONNECTED)
    r, c = np.round(np.asarray(point, dtype=np.float64).reshape(2)).astype(int)
    return np.where(parts == parts[r, c], mask, shown)
