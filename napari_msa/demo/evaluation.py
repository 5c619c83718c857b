"""Measuring a model the way a user meets it: one positive click at the most interior pixel of every object of
held-out phantom slices (a seed stream demo training never draws), through ``Session.predict``. Used by demo
training, the benchmarks and the tests; Dice is reported overall and per object size."""

from __future__ import annotations

import numpy as np

from napari_msa.engine.model.msa_model import MSAModel
from napari_msa.engine.network.preprocessing import Normalization
from napari_msa.engine.prompts.geometry import components, dice, most_interior

from . import phantoms

EVAL_MIN_AREA = 64  # pixels in the image's own frame (8x8): the smallest object evaluated
EVAL_SEED = 1000  # held-out slices come from [EVAL_SEED + seed, EVAL_STREAM, i]
SIZE_BINS = ((0, 400, "small (<400 px)"), (400, 2500, "medium (400-2500 px)"), (2500, 10**9, "large (>=2500 px)"))


def evaluation_slices(n: int, seed: int = 0, shapes_share: float = 0.0) -> list[phantoms.SliceSample]:
    """Held-out phantom slices: the evaluation seed stream, never drawn by training."""
    return [phantoms.random_slice(np.random.default_rng([EVAL_SEED + seed, phantoms.EVAL_STREAM, i]),
                                  shapes_share=shapes_share, size_range=(128, 320)) for i in range(n)]


def evaluation_slices_mr(n: int, seed: int = 0) -> list:
    """Held-out slices of the second phantom generator (``phantoms_mr``): its evaluation stream, never trained on."""
    from . import phantoms_mr

    return [phantoms_mr.random_slice(np.random.default_rng([EVAL_SEED + seed, phantoms.EVAL_STREAM, i]))
            for i in range(n)]


def evaluate_clicks(model: MSAModel, samples: list[tuple[np.ndarray, np.ndarray]],
                    normalization: Normalization | None = None, min_area: int = EVAL_MIN_AREA) -> list[dict]:
    """One positive click at the most interior pixel of every object (connected piece of a label),
    through ``Session.predict``; one record (area, Dice, predicted IoU) per object."""
    from napari_msa.engine.inference.session import Session

    session = Session(model, normalization=normalization)
    records = []
    for k, (image, labels) in enumerate(samples):
        session.set_image(image)
        for truth in components(labels, min_area):
            mask, score = session.predict(points=[most_interior(truth)], labels=[1])
            records.append({"sample": k, "area": int(truth.sum()), "dice": dice(mask, truth), "score": score})
    return records


def summarize(records: list[dict]) -> dict:
    """Mean Dice overall and per object-size bin (area in the image's own pixels)."""
    out: dict = {"objects": len(records),
                 "mean_dice": round(float(np.mean([r["dice"] for r in records])), 4) if records else None, "bins": {}}
    for lo, hi, name in SIZE_BINS:
        sel = [r["dice"] for r in records if lo <= r["area"] < hi]
        if sel:
            out["bins"][name] = {"objects": len(sel), "mean_dice": round(float(np.mean(sel)), 4),
                                 "median_dice": round(float(np.median(sel)), 4)}
    return out


def format_summary(result: dict) -> str:
    lines = [f"mean Dice {result['mean_dice']:.3f} over {result['objects']} objects"]
    for name, b in result["bins"].items():
        lines.append(f"  {name:22s} n={b['objects']:4d}  mean {b['mean_dice']:.3f}  median {b['median_dice']:.3f}")
    return "\n".join(lines)


def evaluate_heldout(model: MSAModel, n_slices: int = 60, seed: int = 0,
                     normalization: Normalization | None = None) -> dict:
    samples = [(s.image, s.labels) for s in evaluation_slices(n_slices, seed)]
    return summarize(evaluate_clicks(model, samples, normalization or Normalization("ct")))
