"""3D propagation with the default model on the phantom sample volume: Dice per slice and predicted IoU.

Each labelled structure starts from its true mask on the slice where it is largest and is carried both ways with
``Session.propagate`` (the previous slice's box grown by 10 % plus its most interior click). Every propagated
slice is scored against the ground truth, with the model's predicted IoU beside it, so the table shows what a
``min_score`` stop would keep and drop.

    python benchmarks/propagation_quality.py [--model litemedsam] [--adapter PATH]

Prints numbers only; nothing here asserts a threshold.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from napari_msa import Normalization, Session, load_model  # noqa: E402
from napari_msa.engine.prompts.geometry import dice  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="litemedsam")
    ap.add_argument("--adapter", default="auto")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from napari_msa._sample_data import phantom_volume

    (hu, _, _), (truth, truth_kwargs, _) = phantom_volume()
    names = truth_kwargs["metadata"]["label_names"]
    model = load_model(args.model, adapter=None if args.adapter == "none" else args.adapter, device="cpu")
    session = Session(model, normalization=Normalization("ct"))
    session.set_image(hu)
    scores_seen: list[tuple[float, float]] = []  # (predicted IoU, Dice) per propagated slice
    original = session.predict

    print(f"{model.describe()} on the phantom sample {hu.shape}")
    print("| structure | slices with it | reached | mean Dice on reached slices |")
    print("|---|---|---|---|")
    for label, name in names.items():
        gt = truth == int(label)
        areas = gt.sum((1, 2))
        if areas.max() < 64:
            continue
        z0 = int(np.argmax(areas))
        record: dict[int, float] = {}

        def predict(points=None, labels=None, box=None, multimask=None, _record=record, **kw):
            mask, score = original(points=points, labels=labels, box=box, multimask=multimask, **kw)
            _record[int(round(points[0][0]))] = score
            return mask, score

        session.predict = predict
        result = session.propagate(gt[z0], z0, iou_threshold=0.0)
        session.predict = original
        dices = {z: dice(m, gt[z]) for z, m in result.items()}
        for z, d in dices.items():
            scores_seen.append((record[z], d))
        present = int((areas > 0).sum()) - 1
        print(f"| {name} | {present} | {len(dices)} | {np.mean(list(dices.values())) if dices else float('nan'):.3f} |")
    s = np.array(scores_seen)
    print("\npredicted IoU threshold → slices kept, mean Dice kept, mean Dice dropped")
    for t in (0.0, 0.3, 0.5, 0.6, 0.7, 0.8):
        keep = s[:, 0] >= t
        kept = s[keep, 1].mean() if keep.any() else float("nan")
        dropped = s[~keep, 1].mean() if (~keep).any() else float("nan")
        print(f"  {t:.1f}: {int(keep.sum())}/{len(s)} kept, Dice kept {kept:.3f}, dropped {dropped:.3f}")


if __name__ == "__main__":
    main()
