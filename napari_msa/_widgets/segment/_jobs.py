"""The Segment widget's engine work: one session on the viewer's model, and the workers that use it.

Predictions (newest wins), prefetched slice embeddings, propagation, whole-volume embedding and 'segment
everything' share one ``ImageFeed``, so the session gets each image once. What runs is described for the widget's
activity line.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from napari.qt.threading import create_worker

from .._workers import ImageFeed, LatestWins, Prefetcher, Propagation, guarded
from ._everything import EverythingRun
from ._volume import VolumeEmbedder

if TYPE_CHECKING:  # annotations only: importing this module must not load torch
    from napari_msa.engine import MSAModel, Session


class SegmentJobs:
    """A session (None until a model is there) and its five kinds of worker."""

    def __init__(self, on_predicted: Callable, on_propagated: Callable, on_propagation_ended: Callable[[], None],
                 on_volume_ended: Callable[[bool], None], report: Callable[[str, BaseException], None],
                 on_change: Callable[[], None], on_everything: Callable[[int, object, int], None]) -> None:
        self.session: Session | None = None
        self.feed = ImageFeed()
        self.predictions = LatestWins(on_predicted, partial(report, "prediction"), on_change=on_change)
        self.prefetcher = Prefetcher(self.feed, partial(report, "embedding"), on_change)
        self.propagation = Propagation(self.feed, on_propagated, partial(report, "propagation"),
                                       on_finished=on_propagation_ended, on_change=on_change)
        self.volume = VolumeEmbedder(self.feed, partial(report, "embedding the volume"), on_change,
                                     on_volume_ended)
        self.everything = EverythingRun(self.feed, on_everything, partial(report, "segmenting everything"),
                                        on_change)
        self._window_worker = None  # encodes the zoom-in window the next click will likely need

    def prefetch_windows(self, slices: list[int]) -> None:
        """After an answer is shown: encode the windows its next clicks will likely be decoded in (engine.prompts.zoom),
        so the click does not wait for them. A failure costs nothing: the click encodes the window itself."""
        if self.session is None or self._window_worker is not None:
            return
        session = self.session
        worker = create_worker(guarded(lambda: [session.prefetch_window(z) for z in slices]), _start_thread=False,
                               _ignore_errors=True)
        worker.finished.connect(self._window_prefetched)
        self._window_worker = worker
        worker.start()

    def _window_prefetched(self) -> None:
        self._window_worker = None

    def use(self, model: MSAModel | None, cache_dir: str | None) -> None:
        """A new model: everything running or waiting is dropped, and a new session starts on it."""
        self.drop_results()
        self.prefetcher.stop()
        self.volume.cancel()
        self.everything.discard()
        self.feed.forget()
        old = self.session
        if model is None:
            self.session = None
        elif getattr(model, "remote", False):  # a MONAI Label server (napari_msa.remote): the model runs there
            self.session = model.new_session()
        else:
            from napari_msa.engine import Session  # the model is loaded: so is the engine

            self.session = Session(model, cache_dir=cache_dir)
        if getattr(old, "remote", False):
            self._close_later(old)

    @property
    def remote(self) -> bool:
        """The session is on a MONAI Label server: what runs only here (embed volume, everything) says so."""
        return bool(getattr(self.session, "remote", False))

    @staticmethod
    def _close_later(session) -> None:
        """A server session no longer used: its image is removed from the server on a worker (a request)."""
        create_worker(guarded(session.close), _start_thread=True, _ignore_errors=True)

    def drop_results(self) -> None:
        """Results on their way answer layers or prompts that changed: they are never shown."""
        self.predictions.invalidate()
        self.propagation.discard()

    def stop(self) -> None:
        """Stop the background work (the widget closes)."""
        self.prefetcher.stop()
        self.volume.cancel()
        self.everything.discard()
        if self.remote:
            self._close_later(self.session)
            self.session = None

    @property
    def idle(self) -> bool:
        return (self.predictions.idle and self.prefetcher.idle and not self.propagation.running
                and not self.volume.running and not self.everything.running and self._window_worker is None)

    def activity(self) -> list[str]:
        """What runs now, for the activity line (empty when nothing runs)."""
        parts = []
        if self.propagation.cancelling:
            parts.append("Cancelling propagation…")
        elif self.propagation.running:
            parts.append(f"Propagating: {self.propagation.done}/{self.propagation.total} slices…")
        z = self.prefetcher.encoding
        if z is not None:
            parts.append(f"Embedding slice {z}…" if z == self.prefetcher.requested else f"Prefetching slice {z}…")
        if self.volume.cancelling:
            parts.append("Stopping the volume embedding…")
        elif self.volume.running:
            parts.append(self.volume.describe() + "…")
        if self.everything.running:
            parts.append(f"Segmenting everything: {self.everything.done}/{self.everything.total} clicks…")
        if not self.predictions.idle:
            parts.append("Predicting…")
        return parts
