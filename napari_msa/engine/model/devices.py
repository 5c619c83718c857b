"""Which devices torch can use here: ``pick_device`` for loading a model, ``available_devices`` for device menus
(the widgets must not import torch, so they call this module from their model panel)."""

from __future__ import annotations

import torch


def _accelerators() -> list[str]:
    """The accelerators torch sees on this machine, best first."""
    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return found


# Slices per encoder pass when a whole volume is embedded: one on CPUs (batches only helped threads that waited for
# each other on a busy machine; BENCHMARKS.md, "Precision and speed"), eight on a GPU until GPU figures exist.
CPU_BATCH = 1
CUDA_BATCH = 8


def volume_batch_size(device: torch.device) -> int:
    """Slices per encoder pass when a whole volume is embedded (``--batch-size`` overrides it)."""
    return CUDA_BATCH if device.type == "cuda" else CPU_BATCH


def available_devices() -> list[str]:
    """'auto' first, then 'cpu' and whichever accelerators torch sees here."""
    return ["auto", "cpu", *_accelerators()]


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """cuda > mps > cpu for 'auto'; an explicit device is checked so the error is clear."""
    if str(device) == "auto":
        return torch.device((_accelerators() or ["cpu"])[0])
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device '{device}'; use auto, cpu, cuda, cuda:N or mps") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA GPU is available; use device='auto' or 'cpu'")
    return dev
