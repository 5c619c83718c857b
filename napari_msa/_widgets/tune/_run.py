"""The Tune widget's run: ``tune()`` on a worker, cancellable between steps, its progress in the activity dock."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_msa.engine import catalog

from .._workers import CancellableRun, Failure
from ._curve import TuneRelay, fmt_time

if TYPE_CHECKING:  # annotations only: importing this module must not load torch
    from napari_msa.engine import MSAModel
    from napari_msa.engine.tuning.api import TuneProgress, TuneResult


class TuneRun(CancellableRun):
    """One tuning run. ``on_progress`` gets each ``TuneProgress`` on the GUI thread; the result goes to
    ``on_done``, a cancel to ``on_cancelled``, anything else to ``on_error`` (the model is unchanged then).
    ``started_from`` is the model it tuned a copy of (the default one, loaded on the worker, when none was)."""

    def __init__(self, on_progress: Callable[[TuneProgress], None], on_done: Callable[[TuneResult], None],
                 on_cancelled: Callable[[], None], on_error: Callable[[BaseException], None],
                 on_change: Callable[[], None] | None = None) -> None:
        super().__init__(on_change)  # on_change: told when it starts, is cancelled and ends
        self.on_progress, self.on_done, self.on_cancelled, self.on_error = on_progress, on_done, on_cancelled, on_error
        self.started_from: MSAModel | None = None
        self._progress = TuneRelay()
        self._progress.progressed.connect(self._progressed)

    def start(self, model: MSAModel | None, image: np.ndarray, labels: np.ndarray, settings: dict) -> None:
        self.started_from = model
        token = self._token
        self._launch("MSA: tuning, preparing", settings["steps"] or 0, self._run, model, image, labels, settings,
                     on_returned=lambda value: self._returned(token, value))

    def _run(self, model: MSAModel | None, image: np.ndarray, labels: np.ndarray, settings: dict) -> TuneResult:
        """On the worker: (load the default model,) tune a copy of the model."""
        from napari_msa.engine import load_model
        from napari_msa.engine.tuning.api import TuneProgress, tune

        if model is None:
            self._progress.progressed.emit(TuneProgress("prepare", 0, settings["steps"] or 0,
                                                        message="loading the default model (LiteMedSAM)"))
            model = load_model(catalog.DEFAULT_MODEL)
            self.started_from = model
        return tune(model, image, labels, progress=self._progress.progressed.emit, cancel=self._cancel.is_set,
                    **settings)

    def _progressed(self, p: TuneProgress) -> None:
        if self._bar is not None:
            if p.phase == "prepare":
                self._bar.set(desc=f"MSA: tuning, {p.message}")
            else:
                eta = {"train": f", ETA {fmt_time(p.eta_s)}", "eval": ", measuring held-out Dice"}.get(p.phase, "")
                self._bar.set(done=p.step, total=p.total_steps, desc=f"MSA: tuning step {p.step}/{p.total_steps}{eta}")
        self.on_progress(p)

    def _returned(self, token: int, value: Any) -> None:
        from napari_msa.engine import Cancelled

        if token != self._token:
            return
        if isinstance(value, Failure) and isinstance(value.error, Cancelled):
            self.on_cancelled()
        elif isinstance(value, Failure):
            self.on_error(value.error)
        else:
            self.on_done(value)
