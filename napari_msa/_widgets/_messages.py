"""Exceptions from workers → one sentence for a napari notification that says what to do next."""

from __future__ import annotations

import re

from ._layers import PromptError

# The engine words its advice for the command line and Python (``--checkpoint PATH``, ``checkpoint=PATH``);
# in napari the same choices are the Segment widget's fields, so the advice is reworded to name them.
_FIELD_WORDS: list[tuple[re.Pattern, str]] = [
    (re.compile(r"pass its path \(--checkpoint PATH on the command line, checkpoint=PATH in Python\)"),
     "choose the file in the Checkpoint field"),
    (re.compile(r"or use the demo model"), "or choose litemedsam or demo in the Model field"),
    (re.compile(r"\(adapter files go to adapter=\)"), "(an adapter file goes in the Adapter field)"),
    (re.compile(r"use device='auto' or 'cpu'"), "choose auto or cpu in the Device field"),
    (re.compile(r"load the model with image_size=(\d+)"),
     r"load a model built at image size \1 (Python: image_size=\1)"),
    (re.compile(r"choose --model (\S+)"), r"choose \1 in the Model field"),
    (re.compile(r"choose the matching model name"), "choose the matching model in the Model field"),
    (re.compile(r"--checkpoint(?: PATH)?|checkpoint=PATH"), "the Checkpoint field"),
    (re.compile(r"--adapter(?: PATH)?|adapter=PATH"), "the Adapter field"),
    (re.compile(r"--model(?: NAME)?"), "the Model field"),
    (re.compile(r"--device(?: DEVICE)?|device='?auto'?"), "the Device field"),
]


def in_widget_terms(message: str) -> str:
    """Advice written for the command line, reworded for the widget's Model/Checkpoint/Adapter/Device fields."""
    for pattern, words in _FIELD_WORDS:
        message = pattern.sub(words, message)
    return message


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's OutOfMemoryError (CUDA/MPS) and Python's MemoryError, without importing torch here."""
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc)


def explain(action: str, exc: BaseException, outcome: str = "nothing was written") -> str:
    """A message for ``action`` ('prediction', 'tuning', ...) failing with ``exc``; ``outcome`` says what that
    left as it was ('nothing was written', 'the model is unchanged')."""
    from napari_msa.engine import Cancelled, CheckpointError  # here: importing this module must not load torch
    from napari_msa.remote import ServerError

    if isinstance(exc, Cancelled):
        return f"{action.capitalize()} cancelled; {outcome}."
    if isinstance(exc, ServerError):  # the message already names the server and what to do
        return f"{action.capitalize()}: {exc} ({outcome.capitalize()}.)"
    if is_out_of_memory(exc):
        return (f"Out of memory during {action}; {outcome}. Choose a smaller model or the cpu device "
                "(Device field), close other programs, or crop the image.")
    if isinstance(exc, (PromptError, CheckpointError)):
        return in_widget_terms(f"{action.capitalize()}: {exc}")
    if isinstance(exc, FileNotFoundError):
        return f"{action.capitalize()}: file not found ({exc.filename}); check the path in the widget's fields."
    if isinstance(exc, ValueError):
        return in_widget_terms(f"{action.capitalize()}: {exc}")
    return f"{action.capitalize()} failed ({type(exc).__name__}: {exc}); {outcome}. " \
           "Check the model and the layers chosen in the widget."
