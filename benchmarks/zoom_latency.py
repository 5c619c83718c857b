"""What zoom-in costs the annotator: the wait for a correction click with and without it, side by side.

Each object of the development set gets the automatic annotator's first two clicks, then a third; timed: click 2
(with zoom-in its window's encoder pass, once per object), click 3 (the same window: a decoder pass, as without
zoom). The third row encodes the window while the annotator looks at click 1's mask (``Session.prefetch_window``,
as the Segment widget does on an idle worker), untimed, before click 2. Default model as shipped (its runtime and
precision as loaded), embeddings of the whole slices cached before timing, as after a slice is shown. Medians over
objects; the three ways alternate per object.

    python benchmarks/zoom_latency.py [--threads 2]
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


def time_clicks(sessions: dict[str, Session], clicks: int, prefetched: tuple[str, ...] = ()
                ) -> tuple[dict[str, dict[int, list[float]]], int]:
    """The automatic annotator's first ``clicks`` clicks on every object of the development set through each
    session, the sessions alternating per object; the seconds each click after the first waited, by click, and how
    many objects the second session's last answer was zoomed in for. Sessions named in ``prefetched`` encode the
    next window while the annotator looks at click 1's mask (``Session.prefetch_window``), untimed."""
    times: dict[str, dict[int, list[float]]] = {name: {k: [] for k in range(2, clicks + 1)} for name in sessions}
    zoomed = 0
    for im in load_devset():
        for s in sessions.values():
            s.set_image(im.image, normalization=Normalization(im.normalization), rgb=im.image.ndim == 3)
            s.embedding(0)
        for obj in im.objects:
            for i, (name, s) in enumerate(sessions.items()):
                points, labels, mask = [], [], np.zeros_like(obj.mask)
                for k in range(1, clicks + 1):
                    click = next_click(mask, obj.mask)
                    if click is None:
                        break
                    points.append(click[0])
                    labels.append(click[1])
                    t = time.perf_counter()
                    mask, _ = s.predict(points=np.array(points), labels=labels)
                    if k > 1:
                        times[name][k].append(time.perf_counter() - t)
                    elif name in prefetched:
                        s.prefetch_window(0)  # while the annotator looks at the mask
                if i == 1 and s.last_prediction.window is not None:
                    zoomed += 1
    return times, zoomed


def default_model_sessions(description: str, names: tuple[str, ...]) -> dict[str, Session]:
    """``--threads`` read, the default model loaded as shipped and named with the machine, and one session per
    name, its rule the name up to a comma (the rest says how it is timed)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(device="cpu")
    print(machine_line(threads=args.threads, extra=f"{model.describe()}, runtime {model.runtime}"))
    sessions = {name: Session(model) for name in names}
    for name, s in sessions.items():
        s.rule = name.split(",")[0]
    return sessions


def main() -> None:
    sessions = default_model_sessions(__doc__.splitlines()[0],
                                      ("logits", "logits+zoom", "logits+zoom, window prefetched"))
    times, zoomed = time_clicks(sessions, clicks=3, prefetched=("logits+zoom, window prefetched",))
    n = len(times["logits"][2])
    print(f"{n} objects of the development set; {zoomed} decoded zoomed in")
    print("| rule | click 2 (median, max) | click 3 (median) |")
    print("|---|---|---|")
    for rule, t in times.items():
        print(f"| {rule} | {1e3 * statistics.median(t[2]):.0f} ms, {1e3 * max(t[2]):.0f} ms "
              f"| {1e3 * statistics.median(t[3]):.0f} ms |")


if __name__ == "__main__":
    main()
