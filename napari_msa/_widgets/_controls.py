"""Small Qt controls for the Segment widget: a layer chooser that follows the viewer, and a file picker."""

from __future__ import annotations

from qtpy.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QLineEdit, QPushButton, QWidget


class LayerChoice(QComboBox):
    """The viewer's layers of one type, plus optional special entries such as '(new)' or '(none)'.

    ``refresh`` keeps the current choice when that layer still exists, so renaming or adding other
    layers never changes what the user picked.
    """

    def __init__(self, layer_type: type, specials: tuple[str, ...] = (), tooltip: str = "") -> None:
        super().__init__()
        self.layer_type = layer_type
        self.specials = specials
        self._layers: list = []
        self.setToolTip(tooltip)
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(12)

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
