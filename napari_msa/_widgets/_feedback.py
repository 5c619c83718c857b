"""What a dock widget tells the user, in one style for both widgets.

The status line says the last outcome (a result, a problem, what to do next); napari notifications carry
answers to an action (``tell``) and problems (``problem``: notified once while they last, and in the status).
Worker errors become one sentence through ``_messages.explain``.
"""

from __future__ import annotations

import logging

import numpy as np
from napari.utils.notifications import show_info, show_warning
from qtpy.QtWidgets import QLabel

from ._messages import explain

log = logging.getLogger(__name__)


class Feedback:
    """A widget's status line and notifications; also notices when the commit it reports is undone."""

    def __init__(self, status: QLabel, ready: str = "Ready") -> None:
        self.status = status
        self.result_line = ready  # what the last result showed (the status returns to it)
        self._problems: set[str] = set()  # problems already notified while they last
        self._ignored: list[str] = []  # messages about prompts outside the image, as last told
        self._committed: tuple = ()  # (labels layer, id, on_undone, undone) while the status reports a commit

    def set(self, text: str) -> None:
        """The outcome line: a new outcome replaces the report of the last commit (no longer watched)."""
        self.unwatch_commit()
        try:
            self.status.setText(text)
        except RuntimeError:  # the widget was closed while a worker finished
            pass

    def result(self, text: str) -> None:
        """A result: it works again (a problem that comes back is told again), and the status returns to it."""
        self._problems.clear()
        self.result_line = text
        self.set(text + self.ignored_note())

    def outcome(self, text: str) -> None:
        """What an action did (a commit, a clear): the status says it, and returns to it after a note."""
        self.result_line = text
        self.set(text)

    def fresh(self) -> None:
        """Something new starts (a tuning run): problems seen before are told again if they come back."""
        self._problems.clear()

    def tell(self, message: str, warning: bool = False) -> None:
        """An answer to something the user did: one notification, and the status line says it too."""
        (show_warning if warning else show_info)(message)
        self.set(message)

    def problem(self, message: str) -> None:
        """A problem with the inputs: one notification while it lasts, and the status says it."""
        if message not in self._problems:
            show_warning(message)
            self._problems.add(message)
        self.set(message)

    def report(self, action: str, exc: BaseException, outcome: str = "nothing was written") -> None:
        """A worker error becomes a problem (told once while it repeats) that says what to do."""
        message = explain(action, exc, outcome)
        log.info("%s", message)
        self.problem(message)

    # --- prompts outside the image ------------------------------------------------------------------
    def show_ignored(self, ignored: list[str]) -> None:
        """Prompts outside the image: each is told once while it stays; the status counts them."""
        for message in ignored:
            if message not in self._ignored:
                show_warning(message)
        changed = ignored != self._ignored
        self._ignored = list(ignored)
        if ignored and changed:
            self.set(ignored[-1] if len(ignored) == 1 else
                     f"{len(ignored)} prompts outside the image are ignored; delete them. {ignored[-1]}")
        elif changed:
            self.set(self.result_line + self.ignored_note())

    def ignored_note(self) -> str:
        n = len(self._ignored)
        return "" if not n else f" ({n} prompt{'s' if n > 1 else ''} outside the image ignored)"

    # --- a commit the status reports ------------------------------------------------------------------
    def watch_commit(self, layer, obj: int, on_undone, undone=None) -> None:
        """While the status reports a commit, notice when Ctrl+Z takes it back (the status must not say it is
        there): ``on_undone(layer, obj)`` then says what happened. ``undone()`` tells whether it was taken back
        (default: the object is gone)."""
        self._committed = (layer, obj, on_undone, undone or (lambda: not np.any(np.asarray(layer.data) == obj)))
        layer.events.set_data.connect(self._check_commit)

    def unwatch_commit(self) -> None:
        if self._committed:
            layer = self._committed[0]
            self._committed = ()
            layer.events.set_data.disconnect(self._check_commit)

    def _check_commit(self, *_) -> None:
        if not self._committed:
            return
        layer, obj, on_undone, undone = self._committed
        if undone():
            on_undone(layer, obj)
