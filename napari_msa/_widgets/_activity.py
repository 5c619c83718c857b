"""Progress in napari's activity dock, owned by the GUI thread and applied outside the widgets' handlers.

Two things in napari make a naive bar fragile. Its worker option ``_progress`` opens the bar from the
worker's ``started`` signal and closes it from ``finished``; for a short task (a model loaded from a
small file) the close could come first, leaving a dead bar in the dock. And the dock's bar calls
``QApplication.processEvents()`` on every change, so updating a bar from inside a handler runs other
queued handlers (a worker's ``finished``, a cancel) in the middle of it, which then see a half-updated
widget. An ``ActivityBar`` therefore only records what it should show; a queued call applies it,
re-entrance-safe, from the event loop. It is opened when the work starts and closed exactly once.
"""

from __future__ import annotations

from napari.utils import progress
from qtpy.QtCore import QTimer

_LIVE: set[ActivityBar] = set()  # bars not yet closed in the dock: kept alive until their close is applied


class ActivityBar:
    """One bar in the activity dock: ``total`` 0 is indeterminate (a busy bar), otherwise done/total."""

    def __init__(self, desc: str, total: int = 0) -> None:
        self._desc = desc
        self._total = max(0, int(total))
        self._done = 0
        self._closed = False
        self._bar: progress | None = None
        self._scheduled = False
        self._applying = False
        self._dirty = False
        _LIVE.add(self)  # owners drop a bar right after close(); its queued close must still run
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(0)
        self._timer.timeout.connect(self._apply)
        self._schedule()

    @classmethod
    def closed_bar(cls) -> ActivityBar:
        """A bar that is already closed: every call on it does nothing."""
        bar = cls.__new__(cls)
        bar._closed, bar._bar, bar._scheduled, bar._applying = True, None, False, False
        bar._desc, bar._total, bar._done, bar._dirty, bar._timer = "", 0, 0, False, None
        return bar

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def n(self) -> int:
        return self._done

    @property
    def total(self) -> int:
        return self._total

    def set(self, done: int | None = None, total: int | None = None, desc: str | None = None) -> None:
        """Move the bar to ``done`` (of ``total``) and/or change its description."""
        if self._closed:
            return
        if total is not None:
            self._total = max(0, int(total))
        if desc is not None:
            self._desc = desc
        if done is not None:
            self._done = max(self._done, int(done))
        self._schedule()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._schedule()

    # --- applied from the event loop ------------------------------------------------------------
    def _schedule(self) -> None:
        self._dirty = True
        if not self._scheduled and not self._applying:
            self._scheduled = True
            self._timer.start()

    def _apply(self) -> None:
        self._scheduled = False
        if self._applying:  # a nested call from napari's processEvents: the running loop below applies it
            return
        self._applying = True
        try:
            while self._dirty:
                self._dirty = False
                if self._closed:
                    _LIVE.discard(self)
                    if self._bar is not None:
                        bar, self._bar = self._bar, None
                        if self._done > bar.n:  # the last step before closing, so the dock shows it done
                            bar.update(self._done - bar.n)
                        bar.close()
                    return
                if self._bar is None:
                    self._bar = progress(total=self._total, desc=self._desc)
                    self._dirty = True  # then apply ``done``, or a close the dock's processEvents ran meanwhile
                    continue
                bar = self._bar
                if bar.total != self._total:
                    bar.total = self._total
                if bar.desc != self._desc:
                    bar.set_description(self._desc)
                if self._done > bar.n:
                    bar.update(self._done - bar.n)
        finally:
            self._applying = False
