"""Does bf16 (or an fp16 embedding cache) change the masks? Dice between fp32 and each variant, per prompt.

The reference is the default model (LiteMedSAM + click adapter) in the exact fp32 arithmetic. For every
object: one positive click at its most interior pixel and its tight box; each variant's mask is scored
against the fp32 mask for the same prompt (not against ground truth: the question is whether the number
format changes what the user gets). Variants:

* ``fp32, fp16 cache``: the fp32 embedding stored as fp16 (what 'auto' does on CPUs without native bf16);
* ``bf16``: the encoder under bf16 autocast, channels-last, its embedding kept in fp32;
* ``bf16, fp16 cache`` / ``bf16, bf16 cache``: the same stored as fp16 / bf16;
* ``openvino f32`` / ``openvino f32, fp16 cache``: the encoder as an OpenVINO graph (``--runtime openvino``, issue
  25), its embedding kept in fp32 / fp16 (what 'auto' does on CPUs).

Images (none trained on; DESIGN.md §2b): the CT sample (pydicom's CT_small, reference masks), phantom
slices from the evaluation seed stream (every object >= 64 px), every 4th slice of the phantom sample
volume (its labels), and pydicom's MR_small (objects LiteMedSAM segments confidently from boxes, else
Otsu foreground pieces); with ``--sets dev`` (or ``all``) also the development set of real images
(``napari_msa.evaluation.devset``: CT, MRI, ultrasound, microscopy). Gate (issue 14): mean Dice >= 0.99 and none
< 0.95 per variant.

bf16 is computed the same way (inputs rounded to bf16, fp32 accumulation) whether the CPU has native
bf16 instructions or oneDNN emulates them, so the table holds for both; only the speed differs.

    python benchmarks/precision_accuracy.py [--phantom-slices 30] [--sets held-out|dev|all] [--threads 2]
        [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from litemedsam_quality import CT, ct_sample_objects  # noqa: E402

from napari_msa import Session, load_model  # noqa: E402
from napari_msa.demo import evaluation as ev  # noqa: E402
from napari_msa.engine.inference.session import Embedding  # noqa: E402
from napari_msa.engine.prompts.geometry import components, dice, mask_box, most_interior  # noqa: E402

GATE_MEAN, GATE_MIN = 0.99, 0.95
VARIANTS = ("fp32, fp16 cache", "bf16", "bf16, fp16 cache", "bf16, bf16 cache", "openvino f32",
            "openvino f32, fp16 cache")


def mr_small_objects(session: Session, image: np.ndarray) -> list[np.ndarray]:
    """Objects on MR_small: LiteMedSAM's confident box masks; Otsu foreground pieces if it finds none."""
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    from napari_msa.training.click_adapter import pseudo_labels

    labels = pseudo_labels(session, image, np.random.default_rng(5))
    objects = [labels == k for k in range(1, int(labels.max()) + 1)]
    if not objects:
        pieces, n = ndimage.label(image > threshold_otsu(image))
        sizes = np.bincount(pieces.ravel())[1:]
        objects = [pieces == k + 1 for k in np.argsort(sizes)[::-1][:6] if sizes[k] >= ev.EVAL_MIN_AREA]
    return objects


def datasets(phantom_slices: int, sets: str = "held-out") -> list[tuple[str, np.ndarray, list[np.ndarray], object]]:
    """(set name, 2D image, object masks, normalisation) for every held-out image."""
    import pydicom
    from pydicom.data import get_testdata_file

    from napari_msa._sample_data import phantom_volume
    from napari_msa.engine.network.preprocessing import Normalization

    out = []
    if sets in ("dev", "all"):
        from napari_msa.evaluation.devset import load_devset

        for im in load_devset():
            out.append((f"dev: {im.modality}", im.image, [o.mask for o in im.objects], Normalization(im.normalization)))
        if sets == "dev":
            return out
    hu, truths, _ = ct_sample_objects()
    out.append(("CT sample", hu, truths, CT))
    for s in ev.evaluation_slices(phantom_slices, seed=0):
        out.append(("phantoms (eval stream)", s.image, components(s.labels, ev.EVAL_MIN_AREA), CT))
    (vol, _, _), (labels, _, _) = phantom_volume()
    for z in range(0, vol.shape[0], 4):
        objects = components(labels[z], ev.EVAL_MIN_AREA)
        if objects:
            out.append(("phantom sample volume", vol[z], objects, CT))
    mr = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array.astype(np.float32)
    out.append(("MR_small", mr, None, None))
    return out


def masks_for(session: Session, features: torch.Tensor, emb: Embedding,
              prompts: list[dict]) -> list[np.ndarray]:
    """The session's masks for ``prompts`` with ``features`` in place of its cached embedding."""
    session.cache.put(session._key(0), Embedding(features, emb.input_size, emb.original_size), write_disk=False)
    return [session.predict(**p)[0] for p in prompts]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--phantom-slices", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sets", choices=("held-out", "dev", "all"), default="held-out")
    ap.add_argument("--out", type=Path, help="write the per-prompt Dice values as JSON")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    fp32 = load_model(device="cpu", precision="fp32")
    bf16 = load_model(device="cpu", precision="bf16")
    ov = load_model(device="cpu", precision="fp32", runtime="openvino")
    ov.encoder_graph(wait=True)
    print(f"reference: {fp32.describe()} ({fp32.precision.key}); bf16: {bf16.describe()} ({bf16.precision.key})")
    scores: dict[str, dict[str, list[float]]] = {}
    rel: list[float] = []
    t0 = time.perf_counter()
    for name, image, objects, norm in datasets(args.phantom_slices, args.sets):
        session = Session(fp32, normalization=norm)
        session.set_image(image, rgb=image.ndim == 3 and image.shape[-1] == 3)
        if objects is None:
            objects = mr_small_objects(session, image)
        ref = session.embedding(0)
        x, _ = bf16.preprocess(session.plane_rgb(0))
        low = bf16.encode(x)
        graph = ov.encode(x)
        rel.append(float((low - ref.features).norm() / ref.features.norm()))
        prompts = []
        for obj in objects:
            prompts.append({"points": [most_interior(obj)], "labels": [1]})
            prompts.append({"box": mask_box(obj)})
        kinds = ["click", "box"] * len(objects)
        truth = masks_for(session, ref.features, ref, prompts)
        variants = {
            "fp32, fp16 cache": ref.features.half().float(),
            "bf16": low,
            "bf16, fp16 cache": low.half().float(),
            "bf16, bf16 cache": low.bfloat16().float(),
            "openvino f32": graph,
            "openvino f32, fp16 cache": graph.half().float(),
        }
        for variant, features in variants.items():
            got = masks_for(session, features, ref, prompts)
            per = scores.setdefault(variant, {})
            for kind, a, b in zip(kinds, truth, got):
                per.setdefault(f"{name}|{kind}", []).append(dice(a, b))
        print(f"{name}: {len(objects)} objects, embedding rel. diff bf16 {rel[-1]:.4f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)

    sets = sorted({k for per in scores.values() for k in per})
    print("\nMask Dice against fp32, per prompt (mean / min / n):\n")
    print("| set, prompt | " + " | ".join(VARIANTS) + " |")
    print("|---|" + "---|" * len(VARIANTS))
    for s in sets:
        cells = [f"{np.mean(scores[v][s]):.4f} / {np.min(scores[v][s]):.3f} / {len(scores[v][s])}" for v in VARIANTS]
        print(f"| {s.replace('|', ', ')} | " + " | ".join(cells) + " |")
    verdict = {}
    cells = []
    for v in VARIANTS:
        every = [d for s in sets for d in scores[v][s]]
        ok = np.mean(every) >= GATE_MEAN and np.min(every) >= GATE_MIN
        verdict[v] = {"mean": float(np.mean(every)), "min": float(np.min(every)), "n": len(every),
                      "below_0.95": int(np.sum(np.asarray(every) < GATE_MIN)), "gate": bool(ok)}
        cells.append(f"**{np.mean(every):.4f}** / {np.min(every):.3f} / {len(every)} "
                     f"({'meets' if ok else 'misses'} the gate)")
    print("| **all** | " + " | ".join(cells) + " |")
    print(f"\nbf16 embedding vs fp32: relative L2 difference mean {np.mean(rel):.4f}, max {np.max(rel):.4f}")
    emb = ref.features
    print(f"embedding per slice: fp32 {emb.nelement() * 4 / 2**20:.1f} MiB, fp16 {emb.nelement() * 2 / 2**20:.1f} MiB "
          f"({tuple(emb.shape)})")
    if args.out:
        args.out.write_text(json.dumps({"verdict": verdict, "scores": scores, "rel_diff": rel}, indent=1))


if __name__ == "__main__":
    main()
