"""Small Qt controls for the Segment widget: a layer chooser that follows the viewer, and a file picker."""

from __future__ import annotations

from qtpy.QtCore import QEvent, QSize, Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QStyle,
    QStyleOptionComboBox,
    QStylePainter,
    QToolButton,
    QVBoxLayout,
    QWidget,
)


class ScrollPanel(QScrollArea):
    """A dock widget's contents in a vertical scroll area, so two docked widgets fit a small screen.

    The contents keep their own minimum size (rows are never squeezed or overlapped): when the dock
    is shorter, a vertical scroll bar appears. The panel asks for the contents' full width (plus the
    scroll bar) so nothing is cut at the side, and for a small minimum height, so napari can share
    the dock area between widgets on a 1366×768 screen.
    """

    MIN_HEIGHT = 140  # a few rows stay visible however small the dock gets

    def __init__(self, owner: QWidget) -> None:
        super().__init__()
        self.contents = QWidget()
        self.setWidget(self.contents)
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Expanding)
        outer = QVBoxLayout(owner)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(self)
        self.contents.installEventFilter(self)

    def eventFilter(self, watched, event) -> bool:  # noqa: N802 - Qt's name
        """The contents changed their size needs (a section opened, a long text): the dock must hear of it."""
        if watched is self.contents and event.type() == QEvent.Type.LayoutRequest:
            self.updateGeometry()
        return super().eventFilter(watched, event)

    def _width(self) -> int:
        return self.contents.minimumSizeHint().width() + self.verticalScrollBar().sizeHint().width() + 2

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt's name
        return QSize(self._width(), min(self.MIN_HEIGHT, self.contents.sizeHint().height()))

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt's name
        return QSize(max(self._width(), self.contents.sizeHint().width()), self.contents.sizeHint().height())


class Section(QWidget):
    """A titled group whose body folds away (click the title), to save height in a shared dock.

    ``body`` takes the group's layout. ``user_toggled`` tells whether the user opened or closed it
    by hand (then the widget stops folding it by itself).
    """

    def __init__(self, title: str, expanded: bool = True, tooltip: str = "") -> None:
        super().__init__()
        self.header = QToolButton()
        self.header.setCheckable(True)
        self.header.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.header.setStyleSheet("QToolButton { border: none; font-weight: bold; }")
        self.header.setToolTip(tooltip or "Click to show or hide")
        self.body = QFrame()
        self.body.setFrameShape(QFrame.Shape.StyledPanel)
        self.user_toggled = False
        self._title = title
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(self.header)
        layout.addWidget(self.body)
        self.header.clicked.connect(self._clicked)
        self.set_expanded(expanded)

    @property
    def expanded(self) -> bool:
        return self.header.isChecked()

    def set_title(self, title: str) -> None:
        self._title = title
        self.header.setText(title)

    def set_expanded(self, expanded: bool) -> None:
        self.header.setChecked(expanded)
        self.header.setArrowType(Qt.ArrowType.DownArrow if expanded else Qt.ArrowType.RightArrow)
        self.header.setText(self._title)
        self.body.setVisible(expanded)

    def _clicked(self, checked: bool) -> None:
        self.user_toggled = True
        self.set_expanded(checked)


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
    """A path field with a '…' button that opens a file dialog (a folder dialog with ``folder=True``)."""

    def __init__(self, placeholder: str, file_filter: str, tooltip: str = "", folder: bool = False) -> None:
        super().__init__()
        self.edit = QLineEdit()
        self.edit.setPlaceholderText(placeholder)
        self.edit.setToolTip(tooltip)
        self.edit.setClearButtonEnabled(True)
        self.button = QPushButton("…")
        self.button.setFixedWidth(28)
        self.button.setToolTip("Choose a folder" if folder else "Choose a file")
        self.file_filter = file_filter
        self.folder = folder
        self.button.clicked.connect(self._browse)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.edit)
        row.addWidget(self.button)

    def _browse(self) -> None:
        if self.folder:
            path = QFileDialog.getExistingDirectory(self, "Choose a folder", self.path() or "")
        else:
            path, _ = QFileDialog.getOpenFileName(self, "Choose a file", self.path() or "", self.file_filter)
        if path:
            self.edit.setText(path)

    def path(self) -> str:
        return self.edit.text().strip()
