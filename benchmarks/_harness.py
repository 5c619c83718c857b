"""What every benchmark script here shares: the machine line printed first, wall-clock timing (synchronised on
CUDA), candidates run interleaved so background load hits them alike, and side-by-side ratio tables.

The scripts run as ``python benchmarks/<script>.py``, which puts this folder on ``sys.path``:
``from _harness import machine_line, timed, ...``.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

import torch


def machine_line(device: str | torch.device | None = None, threads: int | None = None, extra: str = "") -> str:
    """'machine: <cpu>, N cores, torch X, threads T, cuda|device ...' for the top of every benchmark's output."""
    where = f"device {device}" if device is not None else f"cuda {torch.cuda.is_available()}"
    cpu = platform.processor() or platform.machine()
    line = (f"machine: {cpu}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"threads {threads or torch.get_num_threads()}, {where}")
    return f"{line}; {extra}" if extra else line


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device | None = None) -> float:
    """Seconds ``fn()`` takes, with CUDA work finished before and after."""
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t


def interleaved(candidates: dict[str, Callable[[], object]], repeats: int, device: torch.device | None = None,
                warmup: bool = True) -> dict[str, list[float]]:
    """Seconds per run of each candidate, ``repeats`` rounds of every candidate once (after one warm-up run each)."""
    if warmup:
        for fn in candidates.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            times[name].append(timed(fn, device))
    return times


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def ratio_table(values: dict[str, float], baseline: str | None, *, header: str, unit: str = "s", digits: int = 4,
                baseline_title: str | None = None, references: dict[str, float] | None = None) -> str:
    """A markdown table: each candidate's value, its ratio to the ``baseline`` row ('–' where there is none) and to
    each fixed reference value (``references``: column title -> value, e.g. a compute floor)."""
    base = values.get(baseline) if baseline is not None else None
    references = references or {}
    titles = [f"vs {t}" for t in ([baseline_title or baseline] if baseline is not None else []) + list(references)]
    lines = ["| " + " | ".join([header, unit, *titles]) + " |", "|" + "---|" * (2 + len(titles))]
    for name, value in values.items():
        ratios = ([f"{value / base:.2f}×" if base else "–"] if baseline is not None else [])
        ratios += [f"{value / ref:.2f}×" for ref in references.values()]
        lines.append("| " + " | ".join([name, f"{value:.{digits}f}", *ratios]) + " |")
    return "\n".join(lines)
