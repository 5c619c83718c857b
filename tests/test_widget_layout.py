"""Both dock widgets fit a 1366×768 screen: small minimum size hints, nothing squeezed, clipped or overlapping."""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QRect
from qtpy.QtWidgets import (
    QAbstractButton,
    QAbstractSpinBox,
    QComboBox,
    QLabel,
    QLineEdit,
    QProgressBar,
    QWidget,
)
from segment_support import wait_idle

from napari_msa import load_model
from napari_msa._widgets._docking import dock_of
from napari_msa._widgets._hub import hub_for

SCREEN = (1366, 768)
WINDOW_FRAME = 40  # a title bar and borders around napari's window
CONTROLS = (QLabel, QComboBox, QAbstractButton, QLineEdit, QAbstractSpinBox, QProgressBar)


def controls(widget) -> list[QWidget]:
    """The visible leaf controls of a dock widget's contents."""
    contents = widget.panel.contents
    found = [w for w in contents.findChildren(QWidget) if isinstance(w, CONTROLS) and w.isVisibleTo(contents)]
    return [w for w in found if not any(isinstance(p, (QComboBox, QAbstractSpinBox)) for p in _parents(w, contents))]


def _parents(widget, stop):
    parent = widget.parentWidget()
    while parent is not None and parent is not stop:
        yield parent
        parent = parent.parentWidget()


def rect_in(widget, contents) -> QRect:
    return QRect(widget.mapTo(contents, widget.rect().topLeft()), widget.size())


def shown(widget) -> bool:
    """On screen (a dock behind another tab stays 'visible' to Qt but has nothing of itself on screen)."""
    return widget.isVisible() and not widget.visibleRegion().isEmpty()


def check_nothing_clipped(qtbot, widget) -> None:
    contents = widget.panel.contents
    viewport = widget.panel.viewport()
    # scrolled, never squeezed (once Qt has laid out the change: it does so from the event loop)
    qtbot.waitUntil(lambda: contents.height() >= contents.minimumSizeHint().height(), timeout=3000)
    assert contents.width() <= viewport.width()  # no part hidden at the side (no horizontal scrolling)
    placed = []
    for control in controls(widget):
        rect = rect_in(control, contents)
        hint = control.minimumSizeHint()
        need = control.heightForWidth(rect.width()) if control.hasHeightForWidth() else hint.height()
        name = f"{type(control).__name__} {getattr(control, 'text', lambda: '')()!r}"
        assert rect.height() >= min(need, hint.height()) - 1, f"{name} squeezed: {rect.height()} < {need}"
        assert rect.left() >= 0 and rect.right() <= contents.width(), f"{name} clipped at the side"
        for other, other_rect in placed:
            assert not rect.intersects(other_rect), f"{name} overlaps {type(other).__name__}"
        placed.append((control, rect))


def test_both_widgets_docked_fit_a_1366x768_screen(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.random.default_rng(0).random((8, 64, 64), dtype=np.float32),
                     name="ct_abdomen_patient_0042_portal_venous_phase")
    _, segment = viewer.window.add_plugin_dock_widget("napari-msa", "Segment (MSA)")
    _, tune = viewer.window.add_plugin_dock_widget("napari-msa", "Tune (MSA)")
    window = viewer.window._qt_window

    for widget in (segment, tune):
        hint = widget.minimumSizeHint()
        assert hint.height() <= 200 and hint.width() <= 420, hint  # the docks can share a small screen
    hint = window.minimumSizeHint()
    assert hint.width() <= SCREEN[0] and hint.height() <= SCREEN[1] - WINDOW_FRAME, hint

    window.resize(*SCREEN)
    qtbot.waitUntil(lambda: window.width() == SCREEN[0] and window.height() <= SCREEN[1], timeout=5000)
    # Docked as tabs of one area (stacked, Tune squeezed Segment to a ~100 px sliver): each, when its tab is
    # shown, gets the area's full height; the widget opened last is the one shown.
    segment_dock, tune_dock = dock_of(segment), dock_of(tune)
    qtbot.waitUntil(lambda: tune_dock in window.tabifiedDockWidgets(segment_dock), timeout=3000)
    qtbot.waitUntil(lambda: shown(tune) and not shown(segment), timeout=3000)
    for dock, widget, other in ((segment_dock, segment, tune), (tune_dock, tune, segment)):
        dock.raise_()
        qtbot.waitUntil(lambda widget=widget, other=other: shown(widget) and not shown(other), timeout=3000)
        qtbot.waitUntil(lambda widget=widget: widget.panel.viewport().height() >= 0.6 * SCREEN[1], timeout=3000)
    # a long status (it wraps) and the model fields open: rows scroll, nothing is squeezed or overlaps
    segment.feedback.set("Out of memory during prediction; nothing was written. Choose a smaller model or the cpu "
                        "device (Device field), close other programs, or crop the image. " * 2)
    segment.model_panel.section.set_expanded(True)
    tune.training_section.set_expanded(True)
    qtbot.wait(50)
    for widget in (segment, tune):
        check_nothing_clipped(qtbot, widget)

    # with a model loaded the Model fields fold away (its line names the model) and the workflow shows
    hub_for(viewer).set_model(load_model("tiny"))
    segment.model_panel.section.user_toggled = False
    segment._show_model(hub_for(viewer).model)
    wait_idle(qtbot, segment)
    assert not segment.model_panel.section.expanded and "Model: tiny" in segment.model_panel.label.text()
    qtbot.wait(50)
    check_nothing_clipped(qtbot, segment)
    assert segment.panel.contents.sizeHint().height() <= segment.panel.viewport().height() + 200
    segment.model_panel.section.header.click()  # the user opens it again; it then stays as the user left it
    assert segment.model_panel.section.expanded and segment.model_panel.section.user_toggled
    assert tune.training_section.header.text().startswith("Training: ")  # folded, it still says what it will do
    assert f"{tune.train_what.currentText()}, auto steps" in tune.training_section.header.text()
