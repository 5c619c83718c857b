"""Which devices torch can use on this machine, for device menus (the widgets must not import torch)."""

from __future__ import annotations

import torch


def available_devices() -> list[str]:
    """'auto' first, then 'cpu' and whichever accelerators torch sees here."""
    devices = ["auto", "cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices
