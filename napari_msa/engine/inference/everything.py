"""Segment everything on a slice: a grid of single clicks, the confident and stable masks, duplicates removed.

SAM's automatic mask generator, reduced to what an annotator needs as a start: each grid point is one positive
click (all three of SAM's masks kept as candidates), decoded in batches on the slice's embedding. A decoder pass per
click is the cost (LiteMedSAM's decoder works on 64×64 tokens: about a quarter of a second per click on one CPU
core), so the grid is coarse to fine: a coarse grid first, then the fine grid's points that no candidate found so
far covers (most of a slice is covered by then). A candidate stays
when its predicted IoU and its stability (how little the mask changes when the logit threshold moves by ±1) are
high enough and it is not tiny; overlapping candidates are reduced by non-maximum suppression on their boxes, then
on the masks themselves. The result is a list of candidates, or one labels plane (larger objects first, so a
structure inside another stays visible).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..cancel import Cancelled
from ..prompts.geometry import iou, mask_box


@dataclass(frozen=True)
class EverythingSettings:
    points_per_side: int = 16  # the fine grid: at most points_per_side² clicks
    coarse_per_side: int = 6  # the first grid; the fine one only where its candidates leave the plane uncovered
    batch: int = 64  # clicks per decoder pass
    min_score: float = 0.7  # predicted IoU (the click adapter's head scores true kidneys at 0.7)
    min_stability: float = 0.85  # area(logit > +1) / area(logit > -1)
    min_area_share: float = 0.0005  # of the plane (and at least 16 px)
    max_area_share: float = 0.9  # a mask covering (nearly) all of the plane is background, not an object
    box_nms: float = 0.7  # candidates whose boxes overlap more (IoU) than this: the better one stays
    mask_nms: float = 0.6  # then the same on the masks themselves


@dataclass
class Candidate:
    mask: np.ndarray  # (h, w) bool
    score: float  # predicted IoU
    stability: float

    @property
    def area(self) -> int:
        return int(self.mask.sum())


def grid_points(shape: tuple[int, int], per_side: int) -> np.ndarray:
    """(per_side², 2) (row, col) points at the centres of a per_side × per_side grid over the plane."""
    h, w = shape
    rows = (np.arange(per_side) + 0.5) * h / per_side
    cols = (np.arange(per_side) + 0.5) * w / per_side
    return np.stack(np.meshgrid(rows, cols, indexing="ij"), -1).reshape(-1, 2)


@torch.no_grad()
def segment_everything(session, z: int | None = None, settings: EverythingSettings | None = None, *,
                       progress: Callable[[int, int], None] | None = None,
                       cancel: Callable[[], bool] | None = None) -> list[Candidate]:
    """The slice's candidate objects, best first (predicted IoU × stability)."""
    s = settings or EverythingSettings()
    z = 0 if z is None else int(z)
    emb = session.embedding(z)
    h, w = emb.original_size
    coarse = grid_points((h, w), s.coarse_per_side) if s.coarse_per_side else np.zeros((0, 2))
    fine = grid_points((h, w), s.points_per_side)
    total = len(coarse) + len(fine)  # progress counts the fine points that were skipped as done
    done = [0]

    def report(n: int) -> None:
        done[0] += n
        if progress is not None:
            progress(done[0], total)

    covered = np.zeros((h, w), dtype=bool)  # what the coarse clicks answered with a stable mask, kept or not
    found = _candidates(session, emb, coarse, s, report, cancel, covered)
    rows, cols = np.clip(fine.round().astype(int), 0, [h - 1, w - 1]).T
    open_points = fine[~covered[rows, cols]]
    report(len(fine) - len(open_points))
    found += _candidates(session, emb, open_points, s, report, cancel)
    session.everything_clicks = len(coarse) + len(open_points)  # benchmarks report it
    return deduplicate(found, s.box_nms, s.mask_nms)


def _candidates(session, emb, points: np.ndarray, s: EverythingSettings, report: Callable[[int], None],
                cancel: Callable[[], bool] | None, covered: np.ndarray | None = None) -> list[Candidate]:
    """Each point a single click, decoded ``s.batch`` at a time; the candidates that pass the filters. ``covered``
    gets every stable mask, passing or not (background, a too-large region): places already explored."""
    h, w = emb.original_size
    min_area = max(16, int(s.min_area_share * h * w))
    max_area = int(s.max_area_share * h * w)
    found: list[Candidate] = []
    for start in range(0, len(points), s.batch):
        if cancel is not None and cancel():
            raise Cancelled("segmenting everything was cancelled")
        chunk = points[start : start + s.batch]
        logits, scores = session.lone_clicks(emb, chunk)
        logits, scores = logits.flatten(0, 1), scores.flatten()
        threshold = session.model.sam.mask_threshold
        masks = logits > threshold
        stable = (logits > threshold + 1.0).flatten(1).sum(1).float() / \
            (logits > threshold - 1.0).flatten(1).sum(1).clamp(min=1).float()
        areas = masks.flatten(1).sum(1)
        if covered is not None:
            for i in torch.nonzero(stable >= s.min_stability).flatten().tolist():
                covered |= masks[i].cpu().numpy()
        keep = (scores >= s.min_score) & (stable >= s.min_stability) & (areas >= min_area) & (areas <= max_area)
        for i in torch.nonzero(keep).flatten().tolist():
            found.append(Candidate(masks[i].cpu().numpy(), float(scores[i]), float(stable[i])))
        report(len(chunk))
    return found


def deduplicate(candidates: list[Candidate], box_nms: float, mask_nms: float) -> list[Candidate]:
    """Best first; a candidate goes when its box, then its mask, overlaps a better one's by more than the limits."""
    if not candidates:
        return []
    from torchvision.ops import nms  # segment_anything needs torchvision: it is there

    rank = torch.tensor([c.score * c.stability for c in candidates])
    boxes = torch.tensor(np.array([mask_box(c.mask)[[1, 0, 3, 2]] for c in candidates]), dtype=torch.float32)
    order = nms(boxes, rank, box_nms).tolist()
    kept: list[Candidate] = []
    for i in order:
        if all(iou(candidates[i].mask, k.mask) <= mask_nms for k in kept):
            kept.append(candidates[i])
    return kept


def to_labels(candidates: list[Candidate], shape: tuple[int, int], first_id: int = 1) -> np.ndarray:
    """One labels plane: ids first_id, first_id + 1, … in the candidates' order, the larger painted first so a
    structure inside another keeps its own id."""
    labels = np.zeros(shape, dtype=np.uint32)
    ids = {id(c): first_id + i for i, c in enumerate(candidates)}
    for c in sorted(candidates, key=lambda c: -c.area):
        labels[c.mask] = ids[id(c)]
    return labels
