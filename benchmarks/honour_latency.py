"""What the honour rule costs the annotator: the wait for correction clicks with and without it, side by side.

Each object of the development set gets the automatic annotator's first six clicks under the shipped rule
(``logits+zoom``) and under ``logits+zoom+honour`` (``engine.prompts.honour``: an ignored click costs one more
decoder pass, a lone click at it, and every edit in force is written into the logits fed back). Clicks 2-6 are
timed; the window each object zooms into is encoded while the annotator looks at click 1's mask, as the Segment
widget does (``Session.prefetch_window``), so the times are decoder passes and what the rules add to them. Default
model as shipped (its runtime and precision as loaded), whole-slice embeddings cached before timing. The two rules
alternate per object.

    python benchmarks/honour_latency.py [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from _harness import machine_line

from napari_msa import Normalization, Session, load_model
from napari_msa.engine.prompts.geometry import next_click
from napari_msa.evaluation.devset import load_devset

RULES = ("logits+zoom", "logits+zoom+honour")
CLICKS = 6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(device="cpu")
    print(machine_line(threads=args.threads, extra=f"{model.describe()}, runtime {model.runtime}"))
    sessions = {rule: Session(model) for rule in RULES}
    for rule, s in sessions.items():
        s.rule = rule
    times: dict[str, list[float]] = {rule: [] for rule in RULES}
    for im in load_devset():
        for s in sessions.values():
            s.set_image(im.image, normalization=Normalization(im.normalization), rgb=im.image.ndim == 3)
            s.embedding(0)
        for obj in im.objects:
            for rule, s in sessions.items():
                points, labels, mask = [], [], np.zeros_like(obj.mask)
                for k in range(1, CLICKS + 1):
                    click = next_click(mask, obj.mask)
                    if click is None:
                        break
                    points.append(click[0])
                    labels.append(click[1])
                    t = time.perf_counter()
                    mask, _ = s.predict(points=np.array(points), labels=labels)
                    if k > 1:
                        times[rule].append(time.perf_counter() - t)
                    else:
                        s.prefetch_window(0)  # while the annotator looks at the mask
    print(f"clicks 2-{CLICKS} of the development set's objects")
    print("| rule | clicks timed | median | 90th percentile | max | mean |")
    print("|---|---|---|---|---|---|")
    for rule, t in times.items():
        ms = 1e3 * np.asarray(t)
        print(f"| {rule} | {len(t)} | {statistics.median(ms):.0f} ms | {np.percentile(ms, 90):.0f} ms "
              f"| {ms.max():.0f} ms | {ms.mean():.0f} ms |")


if __name__ == "__main__":
    main()
