"""The encoder's number format per device, decided once from measurements (never by trial at run time).

Three settings, chosen with ``load_model(precision=...)``, ``--precision`` or the Segment widget:

* ``fp32`` – the reference arithmetic: fp32, the default memory layout, fp32 embeddings in the caches.
  Identity and exactness tests use it (an untuned model equals LiteMedSAM/SAM bit for bit).
* ``bf16`` – the image encoder under bf16 autocast (fp32 weights; matmuls and convolutions in bf16),
  channels-last; embeddings cached as fp16.
* ``auto`` – per device, what ``benchmarks/precision_accuracy.py`` and ``benchmarks/bench_speed.py``
  showed to keep the masks and to be faster (BENCHMARKS.md, "Precision and speed"): bf16 on CUDA and on
  CPUs with native bf16 instructions (AVX512-BF16 or AMX) while ``BF16_KEEPS_MASKS`` holds (since
  2026-12-05 it does not: bf16 missed the gate on the development set); elsewhere fp32, channels-last,
  embeddings cached as fp16. On CPUs ``engine.model.runtime`` runs 'auto' on OpenVINO in fp32.

The environment variable ``NAPARI_MSA_PRECISION`` (fp32, bf16 or auto) sets what ``precision=None``
means, e.g. to make every model of a process exact (the test suite does so).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from ..catalog import PRECISION_ENV, PRECISIONS, check_setting

# --- decided from the benchmarks' tables (BENCHMARKS.md, "Precision and speed", "The accuracy gate again"); change
# them only with new figures. bf16 masks failed the gate (mean Dice >= 0.99, none < 0.95) on the development set of
# real images, and bf16 rounds the same way on every device, so 'auto' stays exact until a bf16 path passes again
# (``--precision bf16`` still asks for it).
BF16_KEEPS_MASKS = False
# Embeddings stored as fp16 (after an fp32 or a bf16 encoder) passed the same gate.
HALF_CACHE_KEEPS_MASKS = True


@dataclass(frozen=True)
class Precision:
    """What the encoder computes in, how embeddings are kept, and why (for the model's description)."""

    name: str  # 'fp32' or 'bf16': the encoder's arithmetic
    cache_dtype: torch.dtype  # how embeddings are stored in memory and on disk
    channels_last: bool
    reason: str = ""

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.name == "bf16" else None

    @property
    def key(self) -> str:
        """Part of an embedding's cache key: everything here that changes the stored numbers."""
        cache = str(self.cache_dtype).removeprefix("torch.")
        return f"{self.name}-{cache}" + ("-cl" if self.channels_last else "")

    @property
    def exact(self) -> bool:
        return self.name == "fp32" and self.cache_dtype == torch.float32 and not self.channels_last


FP32_EXACT = Precision("fp32", torch.float32, False, "asked for fp32: the reference arithmetic")


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX), where bf16 autocast is faster than fp32.

    torch's own probes first (the same ones oneDNN's kernels are chosen by); /proc/cpuinfo when a torch
    build lacks them.
    """
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    probes = [p for p in probes if p is not None]
    if probes:
        try:
            return any(bool(p()) for p in probes)
        except RuntimeError:
            pass
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})


def cuda_has_bf16(device: torch.device) -> bool:
    """Whether a CUDA device computes bf16 in hardware (Ampere and later); older GPUs only emulate it."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch before 2.3 has no including_emulation and does not count emulation
        return bool(torch.cuda.is_bf16_supported())


def check_precision(precision: str | None) -> str:
    """'auto', 'fp32' or 'bf16' (None: the environment's default); anything else is a clear error."""
    return check_setting(precision, PRECISIONS, PRECISION_ENV, "precision")


def resolve_precision(precision: str | None, device: torch.device) -> Precision:
    """The precision a model on ``device`` runs in for the setting ``precision`` (see the module's docstring)."""
    precision = check_precision(precision)
    half = torch.float16 if HALF_CACHE_KEEPS_MASKS else torch.float32
    if precision == "fp32":
        return FP32_EXACT
    if precision == "bf16":
        if device.type == "mps":
            raise ValueError("bf16 is not supported on Apple GPUs (mps) here; use precision fp32 or auto")
        slow = device.type == "cpu" and not cpu_has_native_bf16()
        return Precision("bf16", half, True, "asked for bf16" + (" (this CPU emulates bf16: slower than fp32)"
                                                                  if slow else ""))
    if device.type == "cuda" and BF16_KEEPS_MASKS and cuda_has_bf16(device):
        return Precision("bf16", half, True, "auto: bf16 on this GPU")
    if device.type == "cpu" and BF16_KEEPS_MASKS and cpu_has_native_bf16():
        return Precision("bf16", half, True, "auto: this CPU has native bf16 (AVX512-BF16/AMX)")
    if not BF16_KEEPS_MASKS:
        where = "bf16 missed the accuracy gate (BENCHMARKS.md)"
    else:
        where = "this CPU has no native bf16" if device.type == "cpu" else f"{device.type}"
    return Precision("fp32", half, device.type == "cpu", f"auto: fp32 ({where})")


def openvino_precision(precision: str) -> Precision:
    """The precision of an encoder run by OpenVINO (engine.model.runtime): its fp32, the exact numbers; ``auto`` keeps
    embeddings as fp16 like torch's ``auto`` (measured to keep the masks)."""
    if precision == "fp32":
        return FP32_EXACT
    half = torch.float16 if HALF_CACHE_KEEPS_MASKS else torch.float32
    return Precision("fp32", half, False, "auto: fp32 in OpenVINO on this CPU (torch's numbers, faster)")

