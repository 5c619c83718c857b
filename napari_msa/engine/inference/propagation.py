"""Carrying an object through a volume: each slice's prompt from the previous slice's mask, and when to stop.

A slice is prompted with the previous mask's box grown by a margin (the object may be larger there; MedSAM carries
boxes the same way) and its most interior point. What ends the object is the stop rule, measured on volumes no
training drew in ``benchmarks/propagation_stop.py``: past an organ's end the model still answers, often with
confidence and overlapping the last mask, but with something of another brightness (the next organ, fat), so the
rule looks at the mask's intensity against the object's on the start slice as well as the predicted IoU and the
overlap with the previous slice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..prompts.geometry import grown_box, iou, most_interior

BOX_MARGIN = 0.1  # the previous mask's box grows by this share of its size on each side
INTENSITY_FLOOR = 8.0  # 8-bit grey levels: the smallest spread an object's brightness is measured against
# Session.propagate's default brightness stop (with predicted IoU < 0.5 and overlap < 0.5): chosen among the
# STOP_RULES below on the phantom sample and evaluation volumes 9001-9005 of both generators (false-positive
# slices 138 -> 9 from a true mask, 137 -> 15 from a click; BENCHMARKS.md, "Where propagation stops").
MAX_BRIGHTNESS_SHIFT = 1.5


@dataclass(frozen=True)
class StepFacts:
    """What a stop rule may look at for one propagated slice."""

    score: float  # the model's predicted IoU
    overlap: float  # IoU with the previous slice's mask
    area_ratio: float  # area / the previous slice's area
    shift: float  # |mean brightness - the start object's| / its spread (8-bit encoder view)


StopRule = Callable[[StepFacts], bool]  # True: the object has ended before this slice


@dataclass(frozen=True)
class Brightness:
    """The start object's brightness in the encoder's 8-bit view: its mean and spread."""

    mean: float
    spread: float

    @classmethod
    def of(cls, grey: np.ndarray, mask: np.ndarray) -> Brightness:
        values = grey[mask].astype(np.float64)
        return cls(float(values.mean()), max(float(values.std()), INTENSITY_FLOOR))


def step_facts(session, start: Brightness, previous: np.ndarray, z: int,
               box_margin: float = BOX_MARGIN) -> tuple[np.ndarray, StepFacts]:
    """Predict slice ``z`` from ``previous`` (one decoder pass) and measure it against the start object."""
    box, point = grown_box(previous, box_margin), most_interior(previous)
    mask, score = session.predict(points=[(z, *point)], labels=[1], box=box, multimask=False)
    shift = 0.0
    if mask.any():
        shift = abs(float(session.plane_rgb(z)[..., 0][mask].mean()) - start.mean) / start.spread
    area_prev = max(int(previous.sum()), 1)
    return mask, StepFacts(float(score), iou(mask, previous), float(mask.sum()) / area_prev, shift)


def first_stop(facts: Sequence[StepFacts], rule: StopRule) -> int:
    """How many slices of a chain are kept: up to (not including) the first where ``rule`` fires."""
    return next((i for i, f in enumerate(facts) if rule(f)), len(facts))


def stop_rule(min_score: float, min_overlap: float, max_shift: float = np.inf,
              max_growth: float = np.inf) -> StopRule:
    """The object has ended at a slice whose predicted IoU, overlap with the last mask, brightness shift or growth
    crosses its limit (``Session.propagate`` uses this with its arguments; the benchmark scores the candidates)."""

    def stop(f: StepFacts) -> bool:
        return f.score < min_score or f.overlap < min_overlap or f.shift > max_shift or f.area_ratio > max_growth

    return stop


# Candidate rules, scored side by side by benchmarks/propagation_stop.py.
STOP_RULES: dict[str, StopRule] = {
    "never (to the volume's end)": lambda f: False,
    "IoU < 0.5 or overlap < 0.5 (until 2026-12-05)": stop_rule(0.5, 0.5),
    "IoU < 0.6 or overlap < 0.5": stop_rule(0.6, 0.5),
    "IoU < 0.7 or overlap < 0.5": stop_rule(0.7, 0.5),
    "IoU < 0.5 or overlap < 0.6": stop_rule(0.5, 0.6),
    "IoU < 0.5, overlap < 0.5 or brightness shift > 1.5": stop_rule(0.5, 0.5, 1.5),
    "IoU < 0.5, overlap < 0.5 or brightness shift > 2": stop_rule(0.5, 0.5, 2.0),
    "IoU < 0.5, overlap < 0.5 or brightness shift > 3": stop_rule(0.5, 0.5, 3.0),
    "IoU < 0.5, overlap < 0.5 or area x 1.5": stop_rule(0.5, 0.5, max_growth=1.5),
    "IoU < 0.5, overlap < 0.5, shift > 2 or area x 1.5": stop_rule(0.5, 0.5, 2.0, 1.5),
    "IoU < 0.6, overlap < 0.5, shift > 2 or area x 1.5": stop_rule(0.6, 0.5, 2.0, 1.5),
}


def fill_by_propagation(session, masks: dict[int, np.ndarray], iou_threshold: float) -> dict[int, np.ndarray]:
    """Masks for the slices of a volume that got no prompts, each propagated from the nearest slice that did
    (``masks``: slice -> mask of the prompted slices); what ``napari-msa segment --propagate`` and the team
    server's 3D task return."""
    filled: dict[int, tuple[int, np.ndarray]] = {}
    for z0, mask in masks.items():
        if not mask.any():
            continue
        for z, m in session.propagate(mask, z0, iou_threshold=iou_threshold).items():
            if z in masks:
                continue
            if z not in filled or abs(z - z0) < filled[z][0]:
                filled[z] = (abs(z - z0), m)
    return {z: m for z, (_, m) in filled.items()}
