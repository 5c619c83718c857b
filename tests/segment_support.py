"""Helpers for the Segment widget tests: a deterministic mask source and waiting for workers."""

from __future__ import annotations

import threading

import numpy as np


def disk(shape: tuple[int, int], center: tuple[float, float], radius: float) -> np.ndarray:
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - center[0]) ** 2 + (cols - center[1]) ** 2 <= radius**2


class DiskMasks:
    """Stands in for ``Session.predict``: disks around positive points minus smaller disks around negatives.

    It keeps the engine's calling convention ((z,) row, col points; a box alone gives the box's
    inscribed disk), records every call, and can hold the first call on a gate or raise, so the tests
    can check what the widget does with slow, superseded and failing predictions.
    """

    def __init__(self, radius: float = 6.0, hold_first: bool = False, error: BaseException | None = None) -> None:
        self.radius = radius
        self.error = error
        self.calls: list[dict] = []
        self.hold_first = hold_first
        self.first_started = threading.Event()
        self.release = threading.Event()
        self.after_call = None  # called on the worker with the number of calls so far (e.g. to cancel)

    def expected(self, shape: tuple[int, int], points, labels) -> np.ndarray:
        mask = np.zeros(shape, dtype=bool)
        for (r, c), lab in zip(points, labels, strict=True):
            if lab:
                mask |= disk(shape, (r, c), self.radius)
        for (r, c), lab in zip(points, labels, strict=True):
            if not lab:
                mask &= ~disk(shape, (r, c), self.radius / 2)
        return mask

    def __call__(self, session, points=None, labels=None, box=None, mask_input=None, *, z=None, multimask=None,
                 prior=None, candidate=0):
        self.calls.append({"points": None if points is None else np.asarray(points, float).copy(),
                           "labels": None if labels is None else np.asarray(labels).copy(), "box": box, "z": z,
                           "prior": None if prior is None else np.asarray(prior).copy(), "candidate": candidate})
        if self.hold_first and len(self.calls) == 1:
            self.first_started.set()
            assert self.release.wait(20), "test never released the first prediction"
        if self.after_call is not None:
            self.after_call(len(self.calls))
        if self.error is not None:
            raise self.error
        shape = session.plane_shape
        pts = np.zeros((0, 2)) if points is None else np.asarray(points, float)
        if len(pts) and pts.shape[1] == 3:
            pts = pts[:, 1:]
        labs = np.ones(len(pts), int) if labels is None else np.asarray(labels)
        if len(pts) == 0 and box is not None:
            r0, c0, r1, c1 = box
            return disk(shape, ((r0 + r1) / 2, (c0 + c1) / 2), min(r1 - r0, c1 - c0) / 2), 0.5
        return self.expected(shape, pts, labs), 0.9


def install(monkeypatch, masks: DiskMasks) -> DiskMasks:
    """Route every Session.predict (clicks and propagation) through ``masks``."""
    from napari_msa.engine.inference.session import Session

    monkeypatch.setattr(Session, "predict", lambda self, *a, **k: masks(self, *a, **k))
    return masks


def press_key(viewer, key: str) -> None:
    """A key press as napari dispatches it: the active layer's keymap first, then the viewer's."""
    handler = viewer.window._qt_viewer._key_map_handler
    handler.press_key(key)
    handler.release_key(key)


def wait_idle(qtbot, widget, timeout: int = 30_000) -> None:
    qtbot.waitUntil(lambda: widget.idle, timeout=timeout)


def notifications_since(start: int) -> list[str]:
    from napari.utils.notifications import notification_manager

    return [str(n.message) for n in notification_manager.records[start:]]


def notification_count() -> int:
    from napari.utils.notifications import notification_manager

    return len(notification_manager.records)
