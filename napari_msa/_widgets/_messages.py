"""Exceptions from workers → one sentence for a napari notification that says what to do next."""

from __future__ import annotations

from ._layers import PromptError


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's OutOfMemoryError (CUDA/MPS) and Python's MemoryError, without importing torch here."""
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc)


def explain(action: str, exc: BaseException) -> str:
    """A message for ``action`` ('prediction', 'embedding', ...) failing with ``exc``."""
    from napari_msa.engine import Cancelled, CheckpointError  # here: importing this module must not load torch

    if isinstance(exc, Cancelled):
        return f"{action.capitalize()} cancelled; nothing was written."
    if is_out_of_memory(exc):
        return (f"Out of memory during {action}; nothing was written. Choose a smaller model or the CPU device, "
                "close other programs, or crop the image.")
    if isinstance(exc, (PromptError, CheckpointError)):
        return f"{action.capitalize()}: {exc}"
    if isinstance(exc, FileNotFoundError):
        return f"{action.capitalize()}: file not found ({exc.filename}); check the path in the widget."
    return f"{action.capitalize()} failed ({type(exc).__name__}: {exc}); nothing was written. " \
           "Check the model and the layers chosen in the Segment (MSA) widget."
