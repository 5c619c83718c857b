"""The plugin's dock widgets share one dock area as tabs: stacked, the one above squeezed the other to a sliver.

napari docks each widget opened from the Plugins menu under the ones already in its area; a tab gives each widget
the area's full height, which the Segment widget needs on a 1366×768 screen.
"""

from __future__ import annotations

from itertools import count

from qtpy.QtCore import QEvent, QObject, QTimer
from qtpy.QtWidgets import QDockWidget, QMainWindow, QWidget

MARK = "napari_msa_docked"  # a Qt property of the plugin's dock widgets: in which order they were docked
_docked = count(1)


class TabWithSiblings(QObject):
    """Watches ``owner`` being docked; once napari has placed its dock, tabs it with the plugin's other docks in
    the same area and shows it (the widget just opened is the one the user asked to see)."""

    def __init__(self, owner: QWidget) -> None:
        super().__init__(owner)
        self.owner = owner
        # napari wraps the widget in its dock (the parent changes) and only then adds that dock to the window
        self._timer = QTimer(self, singleShot=True, interval=0)
        self._timer.timeout.connect(self.tabify)
        owner.installEventFilter(self)

    def eventFilter(self, watched, event) -> bool:  # noqa: N802 - Qt's name
        if event.type() == QEvent.Type.ParentChange and watched.parent() is not None:
            self.owner.setProperty(MARK, next(_docked))
            self._timer.start()
        return False

    def tabify(self) -> None:
        """Join the plugin's docks placed before this one (those placed after join this one in their turn)."""
        dock = dock_of(self.owner)
        window = None if dock is None else dock.parentWidget()
        if not isinstance(window, QMainWindow) or dock.isFloating():
            return
        area = window.dockWidgetArea(dock)
        for other in window.findChildren(QDockWidget):
            if other is dock or other.isFloating() or window.dockWidgetArea(other) != area or not other.isVisible():
                continue
            if other in window.tabifiedDockWidgets(dock) or not 0 < _docked_order(other) < self.owner.property(MARK):
                continue
            window.tabifyDockWidget(other, dock)
            window.layout().activate()  # the tab bar now, so that raising picks the new tab
            dock.raise_()  # the widget just opened is the one shown
            return


def dock_of(widget: QWidget) -> QDockWidget | None:
    parent = widget.parentWidget()
    while parent is not None and not isinstance(parent, QDockWidget):
        parent = parent.parentWidget()
    return parent


def _docked_order(dock: QDockWidget) -> int:
    """When the plugin widget in ``dock`` was docked (1, 2, …); 0 for anyone else's dock."""
    inner = dock.widget()
    if inner is None:
        return 0
    return next((int(w.property(MARK)) for w in (inner, *inner.findChildren(QWidget)) if w.property(MARK)), 0)
