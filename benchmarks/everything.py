"""Segment everything: how many reference objects it finds (IoU >= 0.5) and the time per slice.

On the CT slice sample (its two rule-made reference objects), slices of the phantom sample volume and middle slices
of evaluation-stream volumes of the second generator (``demo.phantoms_mr``), none of which any training drew.
Objects are the connected pieces of each label with >= 20 px (CT) or >= 64 px (phantoms). Prints numbers only.

    python benchmarks/everything.py [--model litemedsam] [--points-per-side 16] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from napari_msa import Normalization, Session, load_model  # noqa: E402
from napari_msa.demo import phantoms_mr  # noqa: E402
from napari_msa.engine.inference.everything import EverythingSettings, segment_everything  # noqa: E402
from napari_msa.engine.prompts.geometry import iou  # noqa: E402


def objects(labels: np.ndarray, min_area: int) -> list[np.ndarray]:
    out = []
    for lab in np.unique(labels):
        if lab == 0:
            continue
        pieces, n = ndimage.label(labels == lab)
        out += [pieces == i for i in range(1, n + 1) if (pieces == i).sum() >= min_area]
    return out


def planes():
    from napari_msa import _sample_data

    (ct, _, _), (ref, _, _) = _sample_data.ct_slice()
    yield "CT slice sample", ct, ref, Normalization("ct"), 20
    (hu, _, _), (truth, _, _) = _sample_data.phantom_volume()
    for z in (8, 16, 24):
        yield f"phantom sample z{z}", hu[z], truth[z], Normalization("ct"), 64
    for seed in (9001, 9002, 9003):
        image, labels, _ = phantoms_mr.phantom_volume(seed, shape=(20, 256, 256))
        yield f"mr phantom {seed} z10", image[10], labels[10], Normalization("auto"), 64


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="litemedsam")
    ap.add_argument("--points-per-side", type=int, default=EverythingSettings.points_per_side)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, device="cpu")
    settings = EverythingSettings(points_per_side=args.points_per_side)
    print(f"# {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}; {model.describe()}; "
          f"grid {settings.coarse_per_side}² then {settings.points_per_side}²")
    print("| plane | objects found (IoU ≥ 0.5) | candidates | clicks decoded | seconds (embedding excluded) |")
    print("|---|---|---|---|---|")
    total_found = total = 0
    for name, image, labels, norm, min_area in planes():
        session = Session(model, normalization=norm)
        session.set_image(image)
        session.embedding(0)
        t0 = time.perf_counter()
        found = segment_everything(session, settings=settings)
        seconds = time.perf_counter() - t0
        refs = objects(labels, min_area)
        hits = sum(max((iou(c.mask, o) for c in found), default=0.0) >= 0.5 for o in refs)
        total_found, total = total_found + hits, total + len(refs)
        print(f"| {name} | {hits} of {len(refs)} | {len(found)} | {session.everything_clicks} | {seconds:.1f} |",
              flush=True)
    print(f"| **all** | **{total_found} of {total}** | | | |")


if __name__ == "__main__":
    main()
