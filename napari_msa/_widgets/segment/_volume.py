"""Every slice of a volume embedded in the background, with progress and time left in napari's activity dock.

Once a volume is embedded, a click on any slice goes straight to the mask decoder. The work runs on a
napari worker through ``Session.embed_slices`` (the engine's batching, the path ``napari-msa embed``
takes too), stops between encoder passes when cancelled, and skips slices the session already has in
memory or in its disk folder, so a volume embedded earlier (in napari or by ``napari-msa embed
--cache-dir``) costs only the reading.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._workers import CancellableRun, Failure, ImageFeed, ImageSource

if TYPE_CHECKING:  # annotations only: importing this module must not load torch
    from napari_msa.engine import Session

RECENT_STEPS = 8  # the time left is read from the last few slices' pace, not from cache hits at the start


def format_eta(seconds: float | None) -> str:
    """'0:42', '1:05:07', or '' when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return ""
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class EtaClock:
    """Time left from the pace of the most recent slices (slices found in a cache take no time and would
    make a plain average promise too much)."""

    def __init__(self) -> None:
        self._marks: deque[tuple[float, int]] = deque(maxlen=RECENT_STEPS + 1)

    def start(self, done: int = 0) -> None:
        self._marks.clear()
        self._marks.append((time.monotonic(), done))

    def step(self, done: int) -> None:
        self._marks.append((time.monotonic(), done))

    def left(self, done: int, total: int) -> float | None:
        if len(self._marks) < 2 or done >= total:
            return None if done < total else 0.0
        (t0, d0), (t1, d1) = self._marks[0], self._marks[-1]
        if d1 <= d0:
            return None
        return (t1 - t0) / (d1 - d0) * (total - done)


class VolumeEmbedder(CancellableRun):
    """Embeds all slices of the session's volume on a worker; one run at a time, cancellable."""

    def __init__(self, feed: ImageFeed, on_error: Callable[[BaseException], None],
                 on_change: Callable[[], None] | None = None,
                 on_finished: Callable[[bool], None] | None = None) -> None:
        super().__init__(on_change)
        self.feed = feed
        self.on_error = on_error
        self.on_finished = on_finished  # told (completed?) when a run ends
        self.eta = EtaClock()
        self._completed = False

    def seconds_left(self) -> float | None:
        return self.eta.left(self.done, self.total)

    def describe(self) -> str:
        """'Embedding the volume: 12/40 slices, about 0:35 left' (for the activity line)."""
        left = format_eta(self.seconds_left())
        return f"Embedding the volume: {self.done}/{self.total} slices" + (f", about {left} left" if left else "")

    def start(self, session: Session, source: ImageSource, n_slices: int) -> None:
        if self.running:
            return
        self._completed = False
        self.eta.start()
        self._launch("MSA: embedding the volume", int(n_slices), self._run, session, source,
                     on_returned=self._returned)

    def _run(self, session: Session, source: ImageSource) -> bool:
        from napari_msa.engine import Cancelled

        self.feed.prepare(session, source)
        try:
            session.embed_slices(range(session.num_slices), progress=self._relay.stepped.emit,
                                 cancel=self._cancel.is_set)
        except Cancelled:
            return False
        return True

    def _stepped(self, done: int, total: int) -> None:
        self.eta.step(done)
        super()._stepped(done, total)

    def _describe_bar(self) -> str:
        left = format_eta(self.seconds_left())
        return "MSA: embedding the volume" + (f" (about {left} left)" if left else "")

    def _returned(self, value: Any) -> None:
        if isinstance(value, Failure):
            self.on_error(value.error)
        else:
            self._completed = bool(value)

    def _ended(self) -> None:
        if self.on_finished is not None:
            self.on_finished(self._completed)
