"""The field's click protocol (RITM, SAM, SAM-Med2D, micro-sam): an automatic annotator, and what its session says.

The first click goes to the object's deepest pixel; each next one to the deepest pixel of the larger error
region, positive in what the mask misses, negative in what it spills. A session is the Dice after each click;
a model that learnt corrections has a curve that rises. Reported: Dice@k, NoC@85/90 (clicks to reach it, capped
at 20 as usual), how often a click makes the mask worse, and the Normalized Surface Dice at 1 px after k clicks (the
shape without the reference's pixel convention on its edge).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from napari_msa.engine.prompts.geometry import automatic_clicks, dice, surface_dice

NOC_CAP = 20  # the usual convention: a session that never reaches the threshold counts as 20 clicks
STEP_LOSS = 0.05  # a click step that loses more Dice than this counts as a step that made things worse
SURFACE_TOLERANCE = 1.0  # px: the Normalized Surface Dice forgives an edge this far off


@dataclass
class ClickSession:
    """One object's automatic session: Dice after clicks 1..n, and whether click 1's mask was its best candidate."""

    dice: list[float]
    first_choice_best: bool | None = None  # None when the model gave one mask
    first_candidates: list[float] = field(default_factory=list)  # Dice of each candidate of click 1, ranked
    surface: list[float] = field(default_factory=list)  # Normalized Surface Dice (1 px) after each click

    def surface_at(self, k: int) -> float | None:
        """NSD (1 px) after ``k`` clicks, as ``at``; None for a session recorded without it."""
        return self.surface[min(k, len(self.surface)) - 1] if self.surface else None

    def at(self, k: int) -> float:
        """Dice after ``k`` clicks (a session that ended exact keeps its last value)."""
        return self.dice[min(k, len(self.dice)) - 1]

    def noc(self, threshold: float, cap: int = NOC_CAP) -> int:
        return next((k for k in range(1, cap + 1) if self.at(k) >= threshold), cap)


def run_session(session, truth: np.ndarray, *, z: int | None = None, max_clicks: int = NOC_CAP,
                curve_clicks: int = 10, stop_at: float = 0.90) -> ClickSession:
    """Click as the automatic annotator does through ``session.predict`` (one call per click, as the widget
    and a script do), for ``curve_clicks`` clicks and then until Dice reaches ``stop_at`` or ``max_clicks``."""
    truth = np.asarray(truth, dtype=bool)
    out = ClickSession([])

    def predict(points: np.ndarray, labels: list[int]) -> np.ndarray:
        pts = points if z is None else np.column_stack([np.full(len(points), z), points])
        return session.predict(points=pts, labels=labels)[0]

    for n, mask in enumerate(automatic_clicks(predict, truth, max_clicks), start=1):
        out.dice.append(dice(mask, truth))
        out.surface.append(surface_dice(mask, truth, SURFACE_TOLERANCE))
        if n == 1:
            answer = session.last_prediction
            if answer is not None and len(answer.scores) > 1:
                out.first_candidates = [dice(m, truth) for m in answer.masks]
                out.first_choice_best = out.first_candidates[answer.chosen] >= max(out.first_candidates) - 1e-9
        if n >= curve_clicks and out.dice[-1] >= stop_at:
            break
    if not out.dice:  # cannot happen for a non-empty truth; kept so a caller never divides by zero
        out.dice.append(0.0)
        out.surface.append(0.0)
    return out


def summarize(sessions: list[ClickSession], ks: tuple[int, ...] = (1, 2, 3, 5, 10)) -> dict:
    """Mean Dice@k, mean NoC@85/90, the share of click steps (1→2 … 9→10) losing more than ``STEP_LOSS``, the
    mean Dice change per step, and how often click 1 kept its best candidate."""
    if not sessions:
        return {"objects": 0}
    steps = np.array([[s.at(k + 1) - s.at(k) for k in range(1, 10)] for s in sessions])
    chosen = [s.first_choice_best for s in sessions if s.first_choice_best is not None]
    surfaced = [s for s in sessions if s.surface]
    return {
        "objects": len(sessions),
        "dice_at": {k: float(np.mean([s.at(k) for s in sessions])) for k in ks},
        "surface_at": {k: float(np.mean([s.surface_at(k) for s in surfaced])) for k in ks} if surfaced else None,
        "curve": [float(np.mean([s.at(k) for s in sessions])) for k in range(1, 11)],
        "noc85": float(np.mean([s.noc(0.85) for s in sessions])),
        "noc90": float(np.mean([s.noc(0.90) for s in sessions])),
        "step_loss_share": float(np.mean(steps < -STEP_LOSS)),
        "mean_step": float(steps.mean()),
        "worst_mean_step": float(steps.mean(axis=0).min()),
        "first_choice_best": float(np.mean(chosen)) if chosen else None,
        "first_best_of_candidates": float(np.mean([max(s.first_candidates) if s.first_candidates else s.at(1)
                                                   for s in sessions])),
    }


@dataclass(frozen=True)
class PairedDifference:
    """``after`` minus ``before`` on the same objects: the mean, a 95 % bootstrap interval (objects resampled with
    replacement), and how many objects got better / worse. An interval that holds 0 says the data cannot tell."""

    mean: float
    low: float
    high: float
    better: int
    worse: int

    def __str__(self) -> str:
        return f"{self.mean:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


def paired_difference(before: list[float], after: list[float], *, groups: list[str] | None = None,
                      resamples: int = 4000, seed: int = 0) -> PairedDifference:
    """Whether a change is more than which objects happened to be in the set: with 22 or 49 objects a difference
    of 0.01 in mean Dice is often one object, and two rules' sessions on the same objects are paired.
    ``groups``: each object's source (an image, a volume, a patient); the sources are resampled instead of the
    objects, because objects of one source are not independent (neighbouring slices of one tumour)."""
    a = np.asarray(before, dtype=np.float64)
    b = np.asarray(after, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired values must be two equal, non-empty lists (got {a.shape} and {b.shape})")
    diff = b - a
    rng = np.random.default_rng(seed)
    if groups is None:
        means = diff[rng.integers(0, diff.size, size=(resamples, diff.size))].mean(axis=1)
    else:
        if len(groups) != diff.size:
            raise ValueError(f"one group per object: {len(groups)} groups for {diff.size} objects")
        keys, index = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
        sums = np.bincount(index, weights=diff, minlength=len(keys))
        counts = np.bincount(index, minlength=len(keys)).astype(np.float64)
        picks = rng.integers(0, len(keys), size=(resamples, len(keys)))
        means = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return PairedDifference(float(diff.mean()), float(low), float(high), int(np.count_nonzero(diff > 1e-9)),
                            int(np.count_nonzero(diff < -1e-9)))
