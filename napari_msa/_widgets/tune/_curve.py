"""The Tune widget's live curve: training loss and held-out Dice against the step, and its time format."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtCore import QObject, QPointF, Signal
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QWidget

if TYPE_CHECKING:  # annotations only: importing this module must not load torch
    from napari_msa.engine.tuning.api import TuneProgress

LOSS_COLOR = QColor(255, 165, 0)
DICE_COLOR = QColor(0, 200, 255)


class TuneRelay(QObject):
    """Carries progress reports from the worker thread to the GUI thread."""

    progressed = Signal(object)


class CurveWidget(QWidget):
    """A small live plot: training loss (own scale) and held-out Dice (0..1) against the step."""

    def __init__(self) -> None:
        super().__init__()
        self.setMinimumHeight(90)
        self.setToolTip("orange: training loss (scaled to its range); blue: held-out Dice (0 to 1)")
        self.total = 1
        self.loss: list[tuple[int, float]] = []
        self.dice: list[tuple[int, float]] = []

    def reset(self, total: int) -> None:
        self.total = max(1, total)
        self.loss, self.dice = [], []
        self.update()

    def add(self, p: TuneProgress) -> None:
        if p.phase == "train" and p.loss is not None:
            self.loss.append((p.step, p.loss))
        elif p.phase == "eval" and p.val_dice is not None:
            self.dice.append((p.step, p.val_dice))
        self.update()

    def _polyline(self, points: list[tuple[int, float]], lo: float, hi: float, rect) -> QPolygonF:
        span = hi - lo if hi > lo else 1.0
        poly = QPolygonF()
        for step, value in points:
            x = rect.left() + rect.width() * step / self.total
            y = rect.bottom() - rect.height() * (value - lo) / span
            poly.append(QPointF(x, y))
        return poly

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt's name
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.fillRect(self.rect(), QColor(38, 41, 48))
        rect = self.rect().adjusted(6, 16, -6, -6)
        painter.setPen(QPen(QColor(90, 90, 90)))
        painter.drawRect(rect)
        painter.setPen(LOSS_COLOR)
        painter.drawText(8, 12, "loss")
        painter.setPen(DICE_COLOR)
        painter.drawText(48, 12, "held-out Dice")
        if len(self.loss) > 1:
            values = [v for _, v in self.loss]
            painter.setPen(QPen(LOSS_COLOR, 1.5))
            painter.drawPolyline(self._polyline(self.loss, min(values), max(values), rect))
        if self.dice:
            painter.setPen(QPen(DICE_COLOR, 2))
            poly = self._polyline(self.dice, 0.0, 1.0, rect)
            if len(self.dice) > 1:
                painter.drawPolyline(poly)
            painter.setBrush(DICE_COLOR)
            for i in range(poly.count()):
                painter.drawEllipse(poly.at(i), 2.5, 2.5)
        painter.end()


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "…"
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"
