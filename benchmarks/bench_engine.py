"""Engine speed, measured side by side in one run (random-init weights; timing does not depend on them).

1. vit_b image encoder with MSA adapters vs plain segment_anything (goal ≤ 1.10×)
2. Session.predict vs SamPredictor.predict on the same cached embedding (goal ≤ 1.2×)
3. encoder time at input size 256 and 512 vs 1024

Usage: python benchmarks/bench_engine.py [--model vit_b] [--repeats 3] [--clicks 50]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from _harness import interleaved, machine_line, median
from segment_anything import SamPredictor

from napari_msa import Session, load_model
from napari_msa.engine import build_sam, get_config


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="vit_b")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clicks", type=int, default=50)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(machine_line())

    adapted = load_model(args.model, random_init=True, device="cpu")
    plain = build_sam(get_config(args.model))
    plain.load_state_dict(adapted.sam.state_dict(), strict=False)
    size = adapted.image_size
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        enc = interleaved({"plain": lambda: plain.image_encoder(x), "adapted": lambda: adapted.sam.image_encoder(x)},
                          args.repeats)
    enc_ratio = median(enc["adapted"]) / median(enc["plain"])
    print(f"[1] encoder {args.model}@{size}: SAM {median(enc['plain']):.2f} s, with adapters "
          f"{median(enc['adapted']):.2f} s -> ratio {enc_ratio:.3f} (goal <= 1.10)")

    rgb = np.random.default_rng(0).integers(0, 256, size=(512, 640, 3), dtype=np.uint8)
    predictor = SamPredictor(plain)
    predictor.set_image(rgb)
    session = Session(adapted)
    session.set_image(rgb)
    session.embedding(0)  # cached from here on, like predictor.features
    rng = np.random.default_rng(1)
    clicks = [(int(rng.integers(0, 512)), int(rng.integers(0, 640))) for _ in range(args.clicks)]
    t_raw, t_ours = [], []
    for r, c in clicks:
        t = interleaved({"raw": lambda r=r, c=c: predictor.predict(point_coords=np.array([[c, r]]),
                                                                   point_labels=np.array([1])),
                         "ours": lambda r=r, c=c: session.predict(points=[(r, c)], labels=[1])}, 1, warmup=False)
        t_raw += t["raw"]
        t_ours += t["ours"]
    p50_raw, p50_ours = median(t_raw) * 1e3, median(t_ours) * 1e3
    print(f"[2] click on cached embedding: SamPredictor.predict p50 {p50_raw:.1f} ms, Session.predict p50 "
          f"{p50_ours:.1f} ms -> ratio {p50_ours / p50_raw:.3f} (goal <= 1.2)")

    base = median(enc["adapted"])
    for small in (512, 256):
        m = load_model(args.model, random_init=True, device="cpu", image_size=small)
        xs = torch.randn(1, 3, small, small)
        with torch.no_grad():
            t = median(interleaved({"small": lambda m=m, xs=xs: m.sam.image_encoder(xs)}, args.repeats)["small"])
        print(f"[3] encoder {args.model}@{small}: {t:.3f} s -> {t / base:.3f} of the {size} time "
              f"({base / t:.1f}x faster)")


if __name__ == "__main__":
    main()
