"""Engine calls on napari workers: last click wins, neighbouring slices prefetched, propagation cancellable.

The GUI thread only hands plain arrays and prompts to these classes and gets masks back in callbacks
(worker signals arrive on the GUI thread). Three kinds of work, each with its own rule:

* ``LatestWins`` – predictions. One runs at a time; a newer request replaces the one waiting, and the
  result of any request that is not the newest is dropped, so a burst of clicks costs at most two
  decoder passes and the labels always show the last click.
* ``Prefetcher`` – embeddings of the current slice, then its neighbours, with a napari progress bar in
  the activity dock. A slice change restarts it (between slices: an encoder pass cannot be interrupted).
* ``Propagation`` – one object through the volume, with progress and a cancel flag (the running/cancelling
  bookkeeping is ``CancellableRun``'s, shared with the whole-volume embedding in ``segment._volume``,
  segment-everything in ``segment._everything``, the model panel's load and the Tune widget's run in ``tune._run``).

Every engine call goes through ``ImageFeed.prepare`` first, which gives the session the image once per
(session, layer data, normalisation) instead of hashing a whole volume on every click.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.qt.threading import create_worker
from qtpy.QtCore import QObject, QThreadPool, Signal

from ._activity import ActivityBar
from ._layers import PlanePrompts

if TYPE_CHECKING:  # annotations only: importing this module must not load torch
    from napari_msa.engine import Normalization, Session

log = logging.getLogger(__name__)

MIN_POOL_THREADS = 4  # a click must not queue behind an embedding and a tuning run on a 2-core machine


def ensure_thread_capacity(minimum: int = MIN_POOL_THREADS) -> None:
    """Workers mostly wait on torch; make sure the pool never makes a click wait for a free thread."""
    pool = QThreadPool.globalInstance()
    if pool.maxThreadCount() < minimum:
        pool.setMaxThreadCount(minimum)


@dataclass(frozen=True)
class ImageSource:
    """What a worker needs to give the session its image; ``key`` tells whether it changed."""

    data: Any = field(compare=False)
    rgb: bool
    normalization: Normalization
    key: tuple


@dataclass
class Failure:
    """A worker's exception, handed to the GUI thread as a value (never raised into the event loop)."""

    error: BaseException


def relay_warnings(worker) -> None:
    """Warnings raised on ``worker`` (e.g. an image's NaN pixels) become napari notifications. napari's workers
    mean to do this themselves, but their notifying mixin's __init__ never runs (it sits past QRunnable in the
    MRO; napari 0.9.2, superqt 0.9.0), so they were lost. napari's manager shows each warning once."""
    from napari.utils.notifications import notification_manager

    worker.warned.connect(lambda args: notification_manager.receive_warning(*args))


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``fn``; on error return Failure so the widget turns it into a notification."""

    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - every error becomes a user message
            log.debug("worker failed", exc_info=True)
            return Failure(exc)

    return run


class ImageFeed:
    """Gives a session its image on a worker, once per change of session, layer data or normalisation."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._prepared: tuple[int, tuple] | None = None

    def prepare(self, session: Session, source: ImageSource) -> None:
        with self._lock:
            if self._prepared == (id(session), source.key) and session.image is not None:
                return
            session.set_image(np.asarray(source.data), normalization=source.normalization, rgb=source.rgb)
            self._prepared = (id(session), source.key)

    def forget(self) -> None:
        with self._lock:
            self._prepared = None


def predict_planes(session: Session, feed: ImageFeed, source: ImageSource, volume: bool,
                   prompts: dict[int, PlanePrompts]) -> dict[int, tuple[np.ndarray, float]]:
    """Masks for each slice's prompts (runs on a worker); how clicks become prompts is the engine's rule."""
    feed.prepare(session, source)
    out = {}
    for z, p in prompts.items():
        pts = p.points
        if volume and len(pts):
            pts = np.column_stack([np.full(len(pts), z, dtype=float), pts])
        out[z] = session.predict(points=pts if len(pts) else None, labels=p.labels if len(pts) else None,
                                 box=p.box, z=z if volume else None, prior=p.prior, candidate=p.candidate)
    return out


class LatestWins:
    """One prediction in flight; newer requests supersede older ones, whose results are dropped."""

    def __init__(self, on_result: Callable[[int, Any], None], on_error: Callable[[BaseException], None],
                 on_change: Callable[[], None] | None = None) -> None:
        self.on_result = on_result
        self.on_error = on_error
        self.on_change = on_change or (lambda: None)  # told when a prediction starts or ends (the activity line)
        self.latest = 0
        self.dropped = 0  # results thrown away because a newer request existed (for tests and the benchmark)
        self._running = False
        self._waiting: tuple[int, Callable[[], Any]] | None = None

    @property
    def idle(self) -> bool:
        return not self._running and self._waiting is None

    def submit(self, job: Callable[[], Any]) -> int:
        """Queue ``job``; returns its request id. Only the newest request's result reaches ``on_result``."""
        self.latest += 1
        if self._running:
            self._waiting = (self.latest, job)
        else:
            self._start(self.latest, job)
        return self.latest

    def invalidate(self) -> None:
        """Make whatever is in flight or waiting stale (the model, image or layers changed)."""
        self.latest += 1
        self._waiting = None

    def _start(self, request: int, job: Callable[[], Any]) -> None:
        self._running = True
        worker = create_worker(guarded(job), _start_thread=False, _ignore_errors=True)
        relay_warnings(worker)
        worker.returned.connect(lambda value, r=request: self._returned(r, value))
        worker.finished.connect(self._next)
        self.on_change()
        worker.start()

    def _returned(self, request: int, value: Any) -> None:
        if request != self.latest:
            self.dropped += 1
        elif isinstance(value, Failure):
            self.on_error(value.error)
        else:
            self.on_result(request, value)

    def _next(self) -> None:
        self._running = False
        if self._waiting is not None:
            request, job = self._waiting
            self._waiting = None
            self._start(request, job)
        else:
            self.on_change()


def prefetch_order(z: int, n_slices: int, radius: int) -> list[int]:
    """The current slice first, then neighbours alternating outwards."""
    order = [z]
    for d in range(1, radius + 1):
        order += [s for s in (z + d, z - d) if 0 <= s < n_slices]
    return order


class Prefetcher:
    """Embeds the current slice and its neighbours in the background, one restartable worker at a time."""

    def __init__(self, feed: ImageFeed, on_error: Callable[[BaseException], None],
                 on_change: Callable[[], None] | None = None, radius: int = 2) -> None:
        self.feed = feed
        self.on_error = on_error
        self.on_change = on_change or (lambda: None)  # told when a slice's encoder pass starts or ends
        self.radius = radius
        self._worker = None
        self._wanted: tuple[Session, ImageSource, int, int] | None = None
        self._pbar: ActivityBar | None = None
        self.computed: list[int] = []  # slices this prefetcher encoded (not found in the cache)
        self.encoding: int | None = None  # the slice whose encoder pass is running now, if any
        self.requested: int | None = None  # the slice asked for (the one shown); the others are neighbours

    @property
    def idle(self) -> bool:
        return self._worker is None and self._wanted is None

    def request(self, session: Session, source: ImageSource, z: int, n_slices: int) -> None:
        """Embed slice ``z`` (then neighbours); supersedes any earlier request."""
        self._wanted = (session, source, z, n_slices)
        if self._worker is not None:
            self._worker.quit()  # it stops at its next slice boundary; _finished starts the wanted one
        else:
            self._start()

    def stop(self) -> None:
        self._wanted = None
        if self._worker is not None:
            self._worker.quit()

    def _start(self) -> None:
        session, source, z, n_slices = self._wanted
        self._wanted = None
        self.requested = z
        planes = prefetch_order(z, n_slices, self.radius)
        worker = create_worker(self._embed, session, source, planes, _start_thread=False, _ignore_errors=True)
        relay_warnings(worker)
        worker.yielded.connect(self._yielded)
        worker.returned.connect(self._returned)
        worker.finished.connect(self._finished)
        self._worker = worker
        worker.start()

    def _embed(self, session: Session, source: ImageSource, planes: Sequence[int]):
        """Generator run on the worker; yields around each slice so ``quit()`` takes effect between slices."""
        try:
            self.feed.prepare(session, source)
            for i, z in enumerate(planes):
                cached = session.is_cached(z)
                yield ("start", i, len(planes), z, cached)
                if not cached:
                    session.embedding(z)
                yield ("done", i, len(planes), z, cached)
        except Exception as exc:  # noqa: BLE001 - reported as a notification
            log.debug("prefetch failed", exc_info=True)
            return Failure(exc)
        return None

    def _yielded(self, event: tuple) -> None:
        stage, i, n, z, cached = event
        if stage == "start" and not cached:
            self.encoding = z
            desc = f"MSA: embedding slice {z}" + (" (prefetch)" if i else "")
            if self._pbar is None:  # opened at the first slice that needs the encoder (cached ones are instant)
                self._pbar = ActivityBar(desc, total=n)
                self._pbar.set(done=i)
            self._pbar.set(desc=desc)
            self.on_change()
        elif stage == "done":
            if not cached:
                self.encoding = None
                self.computed.append(z)
            if self._pbar is not None:
                self._pbar.set(done=i + 1)
            if not cached:
                self.on_change()

    def _returned(self, value: Any) -> None:
        if isinstance(value, Failure):
            self.on_error(value.error)

    def _finished(self) -> None:
        self._worker = None
        self.encoding = None
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        if self._wanted is not None:
            self._start()
        self.on_change()


@dataclass
class Stopped:
    """A cancelled propagation: the slices it had finished (kept as a preview the user commits or clears)."""

    masks: dict[int, np.ndarray]


class _ProgressRelay(QObject):
    """Carries (done, total) from a worker thread to the GUI thread (a queued Qt signal)."""

    stepped = Signal(int, int)


class CancellableRun:
    """One cancellable worker at a time, stepping through slices, with a bar in napari's activity dock.

    The bookkeeping propagation and volume embedding share: ``running`` while the worker lives,
    ``cancelling`` once asked to stop, ``done``/``total`` from the worker's progress, ``on_change`` told
    whenever any of them changes. Subclasses give the job and what its result means.
    """

    def __init__(self, on_change: Callable[[], None] | None = None) -> None:
        self.on_change = on_change or (lambda: None)
        self.done = 0  # slices finished so far in the current run, of ``total``
        self.total = 0
        self._cancel = threading.Event()
        self._worker = None
        self._bar: ActivityBar | None = None
        self._relay = _ProgressRelay()
        self._relay.stepped.connect(self._stepped)
        self._token = 0  # bumped by discard(): a result that arrives after it is dropped

    @property
    def running(self) -> bool:
        return self._worker is not None

    @property
    def cancelling(self) -> bool:
        return self.running and self._cancel.is_set()

    def _launch(self, desc: str, total: int, job: Callable[..., Any], *args,
                on_returned: Callable[[Any], None]) -> None:
        """Run ``job(*args)`` on a worker; its value (or Failure) goes to ``on_returned``."""
        self._cancel.clear()
        self.done, self.total = 0, total
        self._bar = ActivityBar(desc, total=total)
        worker = create_worker(guarded(job), *args, _start_thread=False, _ignore_errors=True)
        relay_warnings(worker)
        worker.returned.connect(on_returned)
        worker.finished.connect(self._finished)
        self._worker = worker
        self.on_change()  # before the thread starts: the activity line must name the job before its first step
        worker.start()

    def discard(self) -> None:
        """Cancel and drop the result (its layers or model are gone)."""
        self._token += 1
        self._cancel.set()
        if self.running:
            self.on_change()

    def cancel(self) -> None:
        """Stop between slices; what was finished is kept (see the subclass)."""
        if self.running:
            self._cancel.set()
            self.on_change()

    def _stepped(self, done: int, total: int) -> None:
        self.done, self.total = done, total
        if self._bar is not None:
            self._bar.set(done=done, total=total, desc=self._describe_bar())
        self.on_change()

    def _describe_bar(self) -> str | None:
        """The bar's description while it runs (None: unchanged)."""
        return None

    def _ended(self) -> None:
        """The worker is gone (done, cancelled, failed or discarded)."""

    def _finished(self) -> None:
        self._worker = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._ended()
        self.on_change()


class Propagation(CancellableRun):
    """Carries one object through the volume on a worker; cancellable between slices, with progress."""

    def __init__(self, feed: ImageFeed, on_done: Callable[..., None],
                 on_error: Callable[[BaseException], None], on_finished: Callable[[], None] | None = None,
                 on_change: Callable[[], None] | None = None) -> None:
        super().__init__(on_change)  # on_change: told when it starts, steps, is cancelled or ends
        self.feed = feed
        self.on_done = on_done
        self.on_error = on_error
        self.on_finished = on_finished

    def start(self, session: Session, source: ImageSource, mask: np.ndarray, z: int) -> None:
        total = max(1, session.num_slices - 1) if session.image is not None else 0
        token = self._token
        self._launch(f"MSA: propagating from slice {z}", total, self._run, session, source, mask, z,
                     on_returned=lambda value: self._returned(token, value))

    def _run(self, session: Session, source: ImageSource, mask: np.ndarray, z: int) -> dict[int, np.ndarray] | Stopped:
        from napari_msa.engine import Cancelled

        self.feed.prepare(session, source)
        try:
            return session.propagate(mask, z, progress=self._relay.stepped.emit, cancel=self._cancel.is_set)
        except Cancelled as exc:  # keep what was done: the engine hands the finished slices over as ``partial``
            return Stopped(dict(exc.partial))

    def _returned(self, token: int, value: Any) -> None:
        if token != self._token:
            return
        if isinstance(value, Failure):
            self.on_error(value.error)
        elif isinstance(value, Stopped):
            self.on_done(value.masks, cancelled=True)
        else:
            self.on_done(value, cancelled=False)

    def _ended(self) -> None:
        if self.on_finished is not None:
            self.on_finished()

