"""How long operations (embedding a volume, propagation, tuning) report progress and learn they should stop."""

from __future__ import annotations

from collections.abc import Callable

ProgressFn = Callable[[int, int], None]  # (done, total)
CancelFn = Callable[[], bool]  # polled between units of work; True: stop


class Cancelled(Exception):
    """Raised when a long operation sees its cancel flag; ``partial`` holds what it finished (propagation:
    {slice: mask}), so a cancel keeps the work done."""

    def __init__(self, message: str = "cancelled", partial: dict | None = None) -> None:
        super().__init__(message)
        self.partial: dict = dict(partial or {})
