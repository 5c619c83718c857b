"""One model per napari viewer, shared by the Segment and Tune widgets (no global singleton)."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

from psygnal import Signal

if TYPE_CHECKING:  # the engine (torch) loads when a model does, not with this module
    from napari_msa.engine import MSAModel


class ModelHub:
    """Holds the viewer's current model; ``model_changed`` fires when tuning or loading replaces it."""

    model_changed = Signal(object)

    def __init__(self) -> None:
        self.model: MSAModel | None = None

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
