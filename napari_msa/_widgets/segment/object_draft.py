"""The object being segmented, before it is committed: its predicted masks per slice and what they answer.

Qt-free, napari-free and torch-free (numpy only), so its rules are tested without a viewer. The Segment
widget turns layers into per-slice prompt signatures, asks the draft what to do, and carries out the answer
on napari's layers and workers: which requests in flight went stale, which slices' previews to take back,
which slices to predict, which masks to paint, commit, repaint or propagate from.

A slice's preview is *up to date* when it was predicted from exactly the prompts the slice has now (equal
``PlanePrompts.signature()``), or when propagation made it (it then has no prompts of its own and stays
until the object is committed or cleared).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field

import numpy as np

PROPAGATED = "propagated"  # the mark of a slice whose preview came from propagation, not from its own prompts


@dataclass(frozen=True)
class Update:
    """What the prompts as they are now ask for.

    ``stale``: requests in flight answer prompts that no longer exist (their results must be dropped);
    ``dropped``: slices whose prompts are gone, so their previews must be taken back from the labels;
    ``todo``: slices to predict, with the signature their answer will show (empty: nothing to send).
    """

    stale: bool = False
    dropped: tuple[int, ...] = ()
    todo: dict[int, Hashable] = field(default_factory=dict)


class ObjectDraft:
    """One uncommitted object: predicted masks per slice, the prompts each answers, the requests in flight."""

    def __init__(self) -> None:
        self.masks: dict[int, np.ndarray] = {}  # slice → predicted mask (bool), as shown in the preview
        self._answers: dict[int, Hashable] = {}  # slice → signature of the prompts its mask answers, or PROPAGATED
        self._asked: dict[int, dict[int, Hashable]] = {}  # request id → {slice: signature} it was sent with

    # --- what is shown ---------------------------------------------------------------------------
    @property
    def planes(self) -> list[int]:
        """The slices with a preview, in order."""
        return sorted(self.masks)

    def __bool__(self) -> bool:
        return bool(self.masks)

    def answers(self, z: int) -> Hashable | None:
        """The signature slice ``z``'s preview answers (PROPAGATED for propagated slices), or None."""
        return self._answers.get(z)

    # --- prompts → requests ------------------------------------------------------------------------
    def update(self, prompts: Mapping[int, Hashable], in_flight: int | None = None) -> Update:
        """Compare the prompts now (slice → signature) with the previews and the request ``in_flight``.

        Slices whose prompts are gone are forgotten here (the caller takes their previews back). Nothing to
        send when every prompted slice is up to date or the request in flight already answers exactly them.
        """
        asked = self._asked.get(in_flight, {}) if in_flight is not None else {}
        gone = tuple(z for z, s in self._answers.items() if s != PROPAGATED and z not in prompts)
        stale = bool(gone) or any(prompts.get(z) != sig for z, sig in asked.items())
        if stale:
            asked = {}
            for z in gone:
                self.drop(z)
        todo = {z: sig for z, sig in prompts.items() if self._answers.get(z) != sig}
        if not todo or all(asked.get(z) == sig for z, sig in todo.items()):
            todo = {}
        return Update(stale, gone, todo)

    def sent(self, request: int, todo: Mapping[int, Hashable]) -> None:
        """``request`` now answers ``todo``; earlier requests are superseded (their results never land)."""
        self._asked = {request: dict(todo)}

    def answered(self, request: int, masks: Mapping[int, np.ndarray]) -> dict[int, np.ndarray]:
        """The newest request's masks arrived: they become the preview of their slices; returns them as bool."""
        asked = self._asked.pop(request, {})
        out = {}
        for z, mask in masks.items():
            out[z] = self.masks[z] = np.asarray(mask, dtype=bool)
            self._answers[z] = asked.get(z)
        return out

    def unanswered(self, request: int) -> None:
        """The newest request's result could not be shown (its labels layer is gone): nothing is in flight."""
        self._asked.pop(request, None)

    def propagated(self, masks: Mapping[int, np.ndarray]) -> dict[int, np.ndarray]:
        """Propagation's masks become the preview of their slices (kept until commit or clear)."""
        out = {}
        for z, mask in masks.items():
            out[z] = self.masks[z] = np.asarray(mask, dtype=bool)
            self._answers[z] = PROPAGATED
        return out

    def outdated(self) -> None:
        """The model, the normalisation or the prompt layers changed: prompted slices are predicted again.

        Their previews stay shown until the new answers replace them; propagated slices stay as they are.
        """
        self._answers = {z: s for z, s in self._answers.items() if s == PROPAGATED}

    # --- taking back, committing, propagating --------------------------------------------------------
    def drop(self, z: int | None = None) -> None:
        """Forget the preview of slice ``z``, or the whole draft (it was taken back or its labels are gone)."""
        if z is None:
            self.masks.clear()
            self._answers.clear()
            self._asked.clear()
        else:
            self.masks.pop(z, None)
            self._answers.pop(z, None)

    def take(self) -> dict[int, np.ndarray]:
        """Commit: hand over every slice's mask and start a new, empty object."""
        masks = dict(self.masks)
        self.drop()
        return masks

    def seed(self, z: int, committed: np.ndarray | None = None) -> np.ndarray | None:
        """The mask propagation starts from on slice ``z``: the preview there, else the object as committed
        there (``committed``, a bool plane); None when the object is empty on that slice."""
        mask = self.masks.get(z)
        if mask is None and committed is not None:
            mask = np.asarray(committed, dtype=bool)
        if mask is None or not mask.any():
            return None
        return mask.copy()
