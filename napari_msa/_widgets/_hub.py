"""One model per napari viewer, shared by the Segment and Tune widgets (no global singleton), and each
widget's ties to its viewer, let go when the widget is undocked or closed."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from psygnal import Signal
from qtpy.QtCore import QEvent, QObject
from qtpy.QtCore import Signal as QtSignal
from qtpy.QtWidgets import QWidget

if TYPE_CHECKING:  # the engine (torch) loads when a model does, not with this module
    from napari_msa.engine import MSAModel


class ModelHub:
    """Holds the viewer's current model; ``model_changed`` fires when tuning or loading replaces it."""

    model_changed = Signal(object)
    # The model's adapter was written to a file: same weights (the session and its caches stay), a new name
    # to show (no longer "tuned in this session (not saved)"). Emitted on the GUI thread.
    adapter_saved = Signal(object)

    def __init__(self) -> None:
        self.model: MSAModel | None = None
        # The Segment widget's live preview is painted into a labels layer but is not the user's annotation:
        # each source answers for the layer it previews in (None: not mine), so tuning never learns a preview.
        self.preview_sources: list = []  # callables: labels layer -> (committed array copy, preview only) | None

    def committed(self, layer) -> tuple[np.ndarray, bool]:
        """A copy of ``layer``'s labels without any uncommitted preview, and whether the preview was all of it."""
        for source in self.preview_sources:
            answer = source(layer)
            if answer is not None:
                return answer
        data = np.array(layer.data, copy=True)
        return data, False

    def preview_only(self, layer) -> bool:
        """The layer holds nothing but a preview (cheap: no copy)."""
        for source in self.preview_sources:
            answer = source(layer, copy=False)
            if answer is not None:
                return answer[1]
        return False

    def set_model(self, model: MSAModel | None) -> None:
        self.model = model
        self.model_changed.emit(model)


_hubs: weakref.WeakKeyDictionary[object, ModelHub] = weakref.WeakKeyDictionary()


def hub_for(viewer) -> ModelHub:
    """The hub of this viewer, created on first use and dropped with the viewer."""
    viewer = getattr(viewer, "__wrapped__", viewer)  # plugins get a PublicOnlyProxy; key by the real viewer
    if viewer not in _hubs:
        _hubs[viewer] = ModelHub()
    return _hubs[viewer]


class _ModelRelay(QObject):
    """The hub may be fed from any thread; this queued Qt signal brings its news to the widget's thread."""

    arrived = QtSignal(object)


class _ParentWatcher(QObject):
    """napari's remove_dock_widget detaches (does not delete) a widget: that is when it must let go."""

    def __init__(self, owner: QWidget, on_undocked: Callable[[], None]) -> None:
        super().__init__(owner)
        self._docked = False
        self._on_undocked = on_undocked
        owner.installEventFilter(self)

    def eventFilter(self, watched, event) -> bool:  # noqa: N802 - Qt's name
        if event.type() == QEvent.Type.ParentChange:
            if watched.parent() is not None:
                self._docked = True
            elif self._docked:
                self._docked = False
                self._on_undocked()
        return False


class ViewerLink:
    """A dock widget's ties to its viewer: the viewer's events it follows, its model hub's news, and what to stop.

    Everything is let go when the widget is undocked (napari keeps the object) or destroyed, exactly once;
    until then ``connect`` and ``on_release`` collect what to undo, which must not need the widget's Qt
    objects (they may be gone). ``on_undocked`` runs first on undocking only: the widget stops its own work.
    """

    def __init__(self, owner: QWidget, hub: ModelHub, on_model: Callable[[MSAModel | None], None],
                 on_undocked: Callable[[], None] | None = None) -> None:
        self.hub = hub  # the viewer's (hub_for): its model_changed is followed until release
        self.released = False
        self._connections: list[tuple[object, Callable]] = []
        self._cleanups: list[Callable[[], None]] = []
        self._relay = _ModelRelay(owner)
        self._relay.arrived.connect(on_model)
        self.hub.model_changed.connect(self._forward)
        self._on_undocked = on_undocked
        self._watcher = _ParentWatcher(owner, self._undocked)
        owner.destroyed.connect(self.release)

    def _undocked(self) -> None:
        if not self.released and self._on_undocked is not None:
            self._on_undocked()
        self.release()

    def _forward(self, model) -> None:
        try:
            self._relay.arrived.emit(model)
        except RuntimeError:  # the widget is being deleted; release() disconnects us
            pass

    def connect(self, emitter, callback: Callable) -> None:
        """Follow ``emitter`` (a napari/psygnal event) until release."""
        emitter.connect(callback)
        self._connections.append((emitter, callback))

    def on_release(self, cleanup: Callable[[], None]) -> None:
        """Run ``cleanup`` on release (first registered, first run)."""
        self._cleanups.append(cleanup)

    def release(self, *_) -> None:
        """Stop listening to the hub and the viewer and run the cleanups (safe to call again)."""
        if self.released:
            return
        self.released = True
        self.hub.model_changed.disconnect(self._forward)
        for emitter, callback in self._connections:
            emitter.disconnect(callback)
        self._connections.clear()
        for cleanup in self._cleanups:
            cleanup()
        self._cleanups.clear()
