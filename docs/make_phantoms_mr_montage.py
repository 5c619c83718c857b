"""Render docs/phantoms_mr.png: 12 training-stream slices of ``napari_msa.demo.phantoms_mr`` and 3 slices of one
volume, 8-bit windowed as users would load them, with the label outlines drawn in colour.

    python3 docs/make_phantoms_mr_montage.py [--out docs/phantoms_mr.png] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from skimage.segmentation import find_boundaries  # noqa: E402

from napari_msa.demo import phantoms_mr as P  # noqa: E402


def overlay(gray: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """RGB of an 8-bit image with each label's outline in its own colour."""
    rgb = np.repeat(gray[..., None], 3, axis=2).astype(np.float32) / 255.0
    colours = plt.get_cmap("tab20")
    edges = find_boundaries(labels, mode="inner")
    for lab in np.unique(labels[edges]):
        if lab:
            rgb[edges & (labels == lab)] = colours(int(lab) % 20)[:3]
    return rgb


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("phantoms_mr.png"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    panels = []
    for i in range(12):
        rng = np.random.default_rng([args.seed, P.TRAIN_STREAM, i])
        s = P.random_slice(rng, size_range=(256, 256))
        gray = P.window_to_uint8(s.image, None, s.kind)
        panels.append((gray, overlay(gray, s.labels), f"{s.kind} · {s.scene} · {len(s.names)} labels"))
    vol, lab, names = P.phantom_volume(P.MR_SAMPLE_SEED + args.seed, shape=(32, 256, 256))
    for z in (8, 16, 24):
        gray = P.window_to_uint8(vol[z], None, "mr")
        panels.append((gray, overlay(gray, lab[z]), f"volume z={z}/32 · {len(np.unique(lab[z])) - 1} labels"))
    cols = 5
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows * 2, cols, figsize=(cols * 2.6, rows * 5.3))
    for k, (gray, rgb, title) in enumerate(panels):
        r, c = divmod(k, cols)
        axes[2 * r, c].imshow(gray, cmap="gray", vmin=0, vmax=255)
        axes[2 * r, c].set_title(title, fontsize=7)
        axes[2 * r + 1, c].imshow(rgb)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout(pad=0.3)
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
