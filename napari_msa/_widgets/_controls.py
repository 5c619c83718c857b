"""Small Qt controls for the Segment widget: a layer chooser that follows the viewer, and a file picker."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QStyle,
    QStyleOptionComboBox,
    QStylePainter,
    QWidget,
)


class ElidingComboBox(QComboBox):
    """A combo box that shortens a long current text in the middle ('brain_…_prompts'), never at the end.

    Qt cuts a text that does not fit at its end, so '<image> prompts' in a narrow dock reads as '<image>'
    and the Points field looks like the Image field. The full text is in the tooltip and in each item's
    tooltip; the description given at construction follows it.
    """

    def __init__(self, tooltip: str = "") -> None:
        super().__init__()
        self._description = tooltip
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(10)
        self.currentIndexChanged.connect(self._update_tooltip)
        self.model().rowsInserted.connect(self._tooltip_items)
        self._update_tooltip()

    def setToolTip(self, text: str) -> None:  # noqa: N802 - Qt's name
        self._description = text
        self._update_tooltip()

    def _update_tooltip(self, *_) -> None:
        text = self.currentText()
        super().setToolTip(f"{text}\n\n{self._description}" if text and self._description else
                           text or self._description)

    def _tooltip_items(self, _parent, first: int, last: int) -> None:
        for i in range(first, last + 1):
            if not self.itemData(i, Qt.ItemDataRole.ToolTipRole):
                self.setItemData(i, self.itemText(i), Qt.ItemDataRole.ToolTipRole)

    def _text_rect_width(self, option: QStyleOptionComboBox) -> int:
        rect = self.style().subControlRect(QStyle.ComplexControl.CC_ComboBox, option,
                                           QStyle.SubControl.SC_ComboBoxEditField, self)
        return max(0, rect.width() - 4)

    def displayed_text(self) -> str:
        """The current text as painted: elided in the middle when it does not fit."""
        option = QStyleOptionComboBox()
        self.initStyleOption(option)
        return self.fontMetrics().elidedText(option.currentText, Qt.TextElideMode.ElideMiddle,
                                             self._text_rect_width(option))

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt's name
        painter = QStylePainter(self)
        option = QStyleOptionComboBox()
        self.initStyleOption(option)
        painter.drawComplexControl(QStyle.ComplexControl.CC_ComboBox, option)
        option.currentText = self.fontMetrics().elidedText(option.currentText, Qt.TextElideMode.ElideMiddle,
                                                           self._text_rect_width(option))
        painter.drawControl(QStyle.ControlElement.CE_ComboBoxLabel, option)


class LayerChoice(ElidingComboBox):
    """The viewer's layers of one type, plus optional special entries such as '(new)' or '(none)'.

    ``refresh`` keeps the current choice when that layer still exists, so renaming or adding other
    layers never changes what the user picked.
    """

    def __init__(self, layer_type: type, specials: tuple[str, ...] = (), tooltip: str = "") -> None:
        super().__init__(tooltip)
        self.layer_type = layer_type
        self.specials = specials
        self._layers: list = []

    def refresh(self, layers) -> None:
        current = self.layer()
        special = self.currentText() if current is None else None
        self.blockSignals(True)
        try:
            self.clear()
            self._layers = [layer for layer in layers if isinstance(layer, self.layer_type)]
            for text in self.specials:
                self.addItem(text)
            for layer in self._layers:
                self.addItem(layer.name)
            if current is not None and current in self._layers:
                self.setCurrentIndex(len(self.specials) + self._layers.index(current))
            elif special in self.specials:
                self.setCurrentIndex(self.specials.index(special))
        finally:
            self.blockSignals(False)
        self._update_tooltip()

    def layer(self):
        """The chosen layer, or None when a special entry (or nothing) is chosen."""
        i = self.currentIndex() - len(self.specials)
        return self._layers[i] if 0 <= i < len(self._layers) else None

    def choose(self, layer) -> None:
        """Select ``layer`` (a layer of the viewer) or a special entry by its text."""
        if isinstance(layer, str):
            self.setCurrentIndex(self.specials.index(layer))
        elif layer in self._layers:
            self.setCurrentIndex(len(self.specials) + self._layers.index(layer))
        self._update_tooltip()  # also when the caller blocked the signals


class PathPicker(QWidget):
    """A path field with a '…' button that opens a file dialog."""

    def __init__(self, placeholder: str, file_filter: str, tooltip: str = "") -> None:
        super().__init__()
        self.edit = QLineEdit()
        self.edit.setPlaceholderText(placeholder)
        self.edit.setToolTip(tooltip)
        self.edit.setClearButtonEnabled(True)
        self.button = QPushButton("…")
        self.button.setFixedWidth(28)
        self.button.setToolTip("Choose a file")
        self.file_filter = file_filter
        self.button.clicked.connect(self._browse)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.edit)
        row.addWidget(self.button)

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose a file", self.path() or "", self.file_filter)
        if path:
            self.edit.setText(path)

    def path(self) -> str:
        return self.edit.text().strip()
