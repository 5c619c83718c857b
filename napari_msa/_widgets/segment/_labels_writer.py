"""Writes masks into a napari Labels layer: a live preview per slice, and a commit that Ctrl+Z undoes.

The masks themselves belong to the object draft (``object_draft.ObjectDraft``); this module only paints
them and takes them back.

The preview is painted straight into the layer's array (it changes on every click, so it must not
flood the undo history) and remembers the values it covered, so it can always be taken back. A commit
first takes the preview back and then writes the final object through ``Labels.data_setitem`` inside
``block_history``: one undo step per commit. Pixels of other objects are never touched unless
``overwrite`` is set. With ``replace`` (refining an object) the new mask *is* the object on its slice: the
object's pixels outside it are shown as background in the preview and cleared by the commit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from napari.layers import Labels


@dataclass
class _PlanePreview:
    rows: np.ndarray  # pixels the preview painted
    cols: np.ndarray
    previous: np.ndarray  # their values before painting
    erased: tuple[np.ndarray, np.ndarray] = (np.zeros(0, np.intp), np.zeros(0, np.intp))  # the object's own
    # pixels outside a replacing mask, shown as background


class LabelsWriter:
    """The preview of one object (the current id) in one labels layer, slice by slice."""

    def __init__(self, layer: Labels, volume: bool, made: bool = False) -> None:
        self.layer = layer
        self.volume = volume
        self._preview: dict[int, _PlanePreview] = {}
        self._preview_id = 0
        # The widget made this layer for its first mask and nothing was committed or painted in it since: all it
        # holds is the preview (known without scanning the array on every redraw).
        self._fresh = made
        if made:
            layer.events.paint.connect(self._painted)  # a commit or the user's brush: no longer only a preview

    def _painted(self, *_) -> None:
        self._fresh = False
        self.layer.events.paint.disconnect(self._painted)

    # --- helpers -------------------------------------------------------------------------------
    def _plane(self, z: int) -> np.ndarray:
        """A writable view of slice ``z`` of the labels (the whole array for 2D)."""
        return self.layer.data[z] if self.volume else self.layer.data

    def _index(self, z: int, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, ...]:
        if self.volume:
            return np.full(rows.shape, z, dtype=np.intp), rows, cols
        return rows, cols

    @staticmethod
    def _allowed(plane: np.ndarray, object_id: int, overwrite: bool) -> np.ndarray:
        """Where the object may be written: background and its own pixels, or anywhere with overwrite."""
        if overwrite:
            return np.ones(plane.shape, dtype=bool)
        return (plane == 0) | (plane == object_id)

    def _restore(self, z: int) -> None:
        """Take the preview of slice ``z`` back, leaving alone any pixel changed since (e.g. by a brush)."""
        item = self._preview.pop(z, None)
        if item is None:
            return
        plane = self._plane(z)
        still = plane[item.rows, item.cols] == self._preview_id
        plane[item.rows[still], item.cols[still]] = item.previous[still]
        rows, cols = item.erased
        still = plane[rows, cols] == 0
        plane[rows[still], cols[still]] = self._preview_id

    def committed(self, z: int, object_id: int) -> np.ndarray:
        """The object's pixels on slice ``z`` as they are without the preview (bool plane)."""
        plane = self._plane(z)
        mask = plane == object_id
        item = self._preview.get(z)
        if item is not None and object_id == self._preview_id:
            mask[item.rows, item.cols] = item.previous == object_id
            mask[item.erased] = True
        return mask

    def preview_only(self) -> bool:
        """The layer holds nothing but the preview: the widget made it, and nothing was committed or painted since."""
        return self._fresh and bool(self._preview)

    def committed_labels(self) -> np.ndarray:
        """A copy of the whole labels array as it is without the preview (what a recovery file keeps)."""
        data = np.array(self.layer.data, copy=True)
        for z, item in self._preview.items():
            plane = data[z] if self.volume else data
            still = plane[item.rows, item.cols] == self._preview_id
            plane[item.rows[still], item.cols[still]] = item.previous[still]
            rows, cols = item.erased
            back = plane[rows, cols] == 0
            plane[rows[back], cols[back]] = self._preview_id
        return data

    # --- preview -------------------------------------------------------------------------------
    @property
    def planes(self) -> list[int]:
        return sorted(self._preview)

    def set_preview(self, z: int, mask: np.ndarray, object_id: int, overwrite: bool = False,
                    refresh: bool = True, replace: bool = False) -> int:
        """Show ``mask`` as the object on slice ``z``, replacing its earlier preview; returns pixels painted.
        ``replace``: the mask is all of the object there (its pixels outside are shown as background)."""
        mask = np.asarray(mask, dtype=bool)
        plane = self._plane(z)
        if mask.shape != plane.shape:
            raise ValueError(f"mask shape {mask.shape} does not match the labels slice {plane.shape}")
        if object_id != self._preview_id:
            self.clear(refresh=False)
            self._preview_id = int(object_id)
        self._restore(z)
        erased = np.nonzero((plane == object_id) & ~mask) if replace else _PlanePreview.erased
        plane[erased] = 0
        rows, cols = np.nonzero(mask & self._allowed(plane, object_id, overwrite))
        previous = plane[rows, cols].copy()
        plane[rows, cols] = object_id
        self._preview[z] = _PlanePreview(rows, cols, previous, erased)
        if refresh:
            self.layer.refresh()
        return len(rows)

    def clear(self, z: int | None = None, refresh: bool = True) -> None:
        """Drop the preview of slice ``z``, or of every slice."""
        for plane in [z] if z is not None else list(self._preview):
            self._restore(plane)
        if refresh:
            self.layer.refresh()

    # --- commit --------------------------------------------------------------------------------
    def commit(self, masks: dict[int, np.ndarray], object_id: int, overwrite: bool = False,
               replace: bool = False) -> int:
        """Take the preview back and write ``masks`` (slice → mask) as one undo step; returns pixels written.
        ``replace``: on each slice of ``masks`` the object's pixels outside its mask become background."""
        self.clear(refresh=False)
        indices: list[tuple[np.ndarray, ...]] = []
        erased: list[tuple[np.ndarray, ...]] = []
        for z, mask in sorted(masks.items()):
            plane = self._plane(z)
            if replace:
                erased.append(self._index(z, *np.nonzero((plane == object_id) & ~mask)))
            rows, cols = np.nonzero(mask & self._allowed(plane, object_id, overwrite))
            indices.append(self._index(z, rows, cols))
        written = sum(len(ix[0]) for ix in indices)
        if written or any(len(ix[0]) for ix in erased):
            with self.layer.block_history():  # both changes are one undo step
                for parts, value in ((erased, 0), (indices, object_id)):
                    if any(len(ix[0]) for ix in parts):
                        joined = tuple(np.concatenate(p) for p in zip(*parts, strict=True))
                        self.layer.data_setitem(joined, value, refresh=False)
        self.layer.refresh()
        return written
