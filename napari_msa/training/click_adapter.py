"""Train LiteMedSAM's click adapter: the file that makes clicks work on a box-trained model.

LiteMedSAM was trained with boxes only; one click gives it almost nothing. This trains, with the
project's own ``tune``, the MSA adapters of its last attention stage, its mask decoder and the
prompt encoder's point embeddings, on

* phantom slices from the project's generator (exact labels; training seed stream only), and
* real images that installed packages ship (``real_images``), labelled by LiteMedSAM itself: random
  boxes, kept when its predicted IoU is high, the mask fills its box plausibly, and re-prompting with
  the mask's own box gives the same mask. A click inside such a mask should give that mask.

Boxes stay in the training mix (a share of samples is box-prompted), so box quality is kept; the
result is measured on held-out images by ``benchmarks/litemedsam_quality.py``.

    python -m napari_msa.training.click_adapter --out napari_msa/models/litemedsam_clicks.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from napari_msa.demo import phantoms
from napari_msa.engine import AdapterConfig, Normalization, Session, load_model, tune
from napari_msa.engine.model.msa_model import MSAModel
from napari_msa.engine.prompts.geometry import mask_box
from napari_msa.engine.prompts.interaction import RULE_NAMES

from .appearance import KINDS, augmented
from .real_images import RealImage, load_real_images
from .whole_objects import whole_maps_with_clicks

PHANTOM_STREAM_OFFSET = 500_000  # phantom slices drawn at [seed, TRAIN_STREAM, offset + i]


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    inter_r = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_c = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_r * inter_c
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area if area > 0 else 0.0


def candidate_boxes(plane: np.ndarray, rng: np.random.Generator, n_random: int = 20,
                    max_candidates: int = 40) -> list[np.ndarray]:
    """Box proposals (min_row, min_col, max_row, max_col): around connected pieces of the image at a few
    thresholds (both polarities), with a little margin, plus some random boxes."""
    grey = plane.mean(axis=-1) if plane.ndim == 3 else plane.astype(np.float32)
    grey = ndimage.gaussian_filter(grey.astype(np.float32), 1.0)
    h, w = grey.shape
    boxes: list[np.ndarray] = []
    for q in (25, 40, 60, 75, 90):
        level = np.percentile(grey, q)
        for fg in (grey > level, grey < level):
            lab, n = ndimage.label(ndimage.binary_opening(fg, iterations=1))
            for sl in ndimage.find_objects(lab):
                if sl is None:
                    continue
                bh, bw = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start
                if not (0.04 * h <= bh <= 0.7 * h and 0.04 * w <= bw <= 0.7 * w):
                    continue
                m = rng.uniform(0.0, 0.1)
                boxes.append(np.array([max(0, sl[0].start - m * bh), max(0, sl[1].start - m * bw),
                                       min(h - 1, sl[0].stop + m * bh), min(w - 1, sl[1].stop + m * bw)]))
    rng.shuffle(boxes)
    boxes = boxes[:max_candidates]
    for _ in range(n_random):
        bh = h * np.exp(rng.uniform(np.log(0.08), np.log(0.6)))
        bw = w * np.exp(rng.uniform(np.log(0.08), np.log(0.6)))
        r0, c0 = rng.uniform(0, h - bh), rng.uniform(0, w - bw)
        boxes.append(np.array([r0, c0, r0 + bh, c0 + bw]))
    return boxes


def pseudo_labels(session: Session, plane: np.ndarray, rng: np.random.Generator, *,
                  min_score: float = 0.75, max_objects: int = 12) -> np.ndarray:
    """Objects LiteMedSAM itself segments confidently and consistently from proposed boxes."""
    labels = np.zeros(plane.shape[:2], dtype=np.int32)
    for box in candidate_boxes(plane, rng):
        if labels.max() >= max_objects:
            break
        bh, bw = box[2] - box[0], box[3] - box[1]
        mask, score = session.predict(box=box)
        if score < min_score or mask.sum() < 30:
            continue
        lab, n = ndimage.label(mask)
        if n > 1:  # keep the main piece only when it is nearly all of the mask
            sizes = np.bincount(lab.ravel())[1:]
            if sizes.max() < 0.9 * mask.sum():
                continue
            mask = lab == (np.argmax(sizes) + 1)
        fill = mask.sum() / max(1.0, bh * bw)
        if not 0.15 <= fill <= 0.95:
            continue
        tight = mask_box(mask)
        if _box_iou(tight, box) < 0.5:  # the box was not really around this object
            continue
        again, score2 = session.predict(box=tight)
        if score2 < min_score or (again & mask).sum() / max(1, (again | mask).sum()) < 0.85:
            continue
        if (labels[mask] > 0).mean() > 0.05:
            continue
        labels[mask & (labels == 0)] = labels.max() + 1
    return labels


def phantom_slices(n: int, seed: int) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """Windowed 8-bit phantom slices with exact labels, from the training seed stream only."""
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, phantoms.TRAIN_STREAM, PHANTOM_STREAM_OFFSET + i])
        s = phantoms.random_slice(rng, shapes_share=0.2)
        out.append((phantoms.window_to_uint8(s.image, rng, s.kind), s.labels.astype(np.int32), s.kind))
    return out


def build_dataset(model: MSAModel, n_phantoms: int, seed: int, real: list[RealImage] | None = None,
                  log=print) -> tuple[list[np.ndarray], list[np.ndarray], list[dict]]:
    images, labels, listing = [], [], []
    for img, lab, _kind in phantom_slices(n_phantoms, seed):
        images.append(img)
        labels.append(lab)
    listing.append({"name": f"{n_phantoms} phantom slices", "source": "napari_msa.demo.phantoms, seed stream "
                    f"[{seed}, TRAIN_STREAM, {PHANTOM_STREAM_OFFSET}+i]", "licence": "BSD-3-Clause (napari-msa)"})
    session = Session(model, normalization=Normalization("none"))
    rng = np.random.default_rng([seed, 77])
    for item in real if real is not None else load_real_images():
        session.set_image(item.plane, rgb=item.plane.ndim == 3)
        lab = pseudo_labels(session, item.plane, rng)
        n = int(lab.max())
        log(f"  {item.name}: {n} pseudo-labelled objects")
        if n == 0:
            continue
        images.append(item.plane)
        labels.append(lab)
        listing.append({"name": item.name, "source": item.source, "licence": item.licence, "objects": n})
    return images, labels, listing


def write_dataset(path: Path, images, labels, listing) -> None:
    arrays = {f"image{i}": a for i, a in enumerate(images)} | {f"labels{i}": a for i, a in enumerate(labels)}
    np.savez_compressed(path, listing=np.array(json.dumps(listing)), **arrays)


def read_dataset(path: Path):
    with np.load(path) as f:
        n = sum(1 for k in f.files if k.startswith("image"))
        return ([f[f"image{i}"] for i in range(n)], [f[f"labels{i}"] for i in range(n)],
                json.loads(str(f["listing"])))


def extra_phantoms(n: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray], list[dict]]:
    """Slices of the second phantom generator (MRI/ultrasound-like, dark objects, rings), training stream only."""
    if n <= 0:
        return [], [], []
    from napari_msa.demo import phantoms_mr

    images, labels = [], []
    for i in range(n):
        rng = np.random.default_rng([seed, phantoms.TRAIN_STREAM, PHANTOM_STREAM_OFFSET + i])
        s = phantoms_mr.random_slice(rng)
        images.append(phantoms_mr.window_to_uint8(s.image, rng, s.kind))
        labels.append(s.labels.astype(np.int32))
    return images, labels, [{"name": f"{n} phantoms_mr slices", "source": "napari_msa.demo.phantoms_mr, seed "
                             f"stream [{seed}, TRAIN_STREAM, {PHANTOM_STREAM_OFFSET}+i]",
                             "licence": "BSD-3-Clause (napari-msa)"}]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--phantoms", type=int, default=60)
    ap.add_argument("--phantoms-mr", type=int, default=0, help="slices of the second phantom generator")
    ap.add_argument("--real", default="all", help="real images to pseudo-label: 'all', 'none' or names of "
                    "training.real_images.LOADERS, comma-separated")
    ap.add_argument("--real-copies", type=int, default=1, help="how many times each pseudo-labelled real image "
                    "enters the data (each copy gets its own appearance copies): real images weigh more than "
                    "their number among the phantoms")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--blocks", type=str, default="8,9", help="attention blocks that get adapters")
    ap.add_argument("--init-adapter", type=Path, help="start from this adapter file (e.g. the shipped one)")
    ap.add_argument("--train", choices=("adapters", "decoder", "both"), default="both",
                    help="decoder: the encoder (and its adapters) frozen, embeddings computed once per image")
    ap.add_argument("--interaction", choices=RULE_NAMES, default=None,
                    help="the rule sessions are simulated with, recorded in the file (the model then uses it)")
    ap.add_argument("--box-share", type=float, default=0.35)
    ap.add_argument("--rounds", type=int, default=2, help="most correction clicks after the first prompt")
    ap.add_argument("--grad-rounds", type=int, default=2, help="rounds that carry the loss (first + last ones)")
    ap.add_argument("--appearance", default="", help=f"comma-separated copies of every image: {', '.join(KINDS)}")
    ap.add_argument("--wholes", action="store_true", help="also train on whole objects of the phantoms (the body, "
                    "objects with what they enclose), so a click on a large structure can mean all of it")
    ap.add_argument("--wholes-share", type=float, default=0.5, help="share of phantom slices that get a map of "
                    "their wholes (each such map is one more training slice)")
    ap.add_argument("--whole-clicks", choices=("own-tissue", "anywhere"), default="own-tissue",
                    help="where a whole's first click lands: on its own tissue, off the objects inside it (a "
                    "click on an inner object then always means that object), or anywhere inside it")
    ap.add_argument("--anchor-first-clicks", type=float, default=0.0, help="keep a lone click's masks and "
                    "scores as the starting adapter gives them (a distillation term of this weight in place of "
                    "their task loss): train corrections without costing the first click")
    ap.add_argument("--anchor-adapter", type=Path, help="whose first clicks --anchor-first-clicks keeps (default: "
                    "the adapter training starts from)")
    ap.add_argument("--corrector", action="store_true", help="train a corrector: lone clicks answered by the "
                    "--anchor-adapter's (default: the starting) decoder, the model trained on what follows them")
    ap.add_argument("--edge-weight", type=float, default=0.0, help="extra weight of the pixels within 2 px of "
                    "each object's edge in the mask loss (TuneConfig.edge_weight)")
    ap.add_argument("--honour-edits", action="store_true", help="simulate the honour rule's edits in the "
                    "sessions (TuneConfig.honour_edits); needs an --interaction rule that honours clicks")
    ap.add_argument("--zoom-views", type=float, default=0.0, help="share of samples drawn from the window a "
                    "zooming rule decodes each object's corrections in (TuneConfig.zoom_views)")
    ap.add_argument("--no-augment", action="store_true", help="no flips/rotations (fewer prefix-cache entries)")
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data-cache", type=Path, help="an .npz holding the training data: written after "
                    "pseudo-labelling, read instead of it when it exists (same seed and data)")
    ap.add_argument("--work-dir", type=Path, help="resumable run: a checkpoint here every --chunk-steps steps; a "
                    "run started again goes on from the last one")
    ap.add_argument("--chunk-steps", type=int, default=100)
    ap.add_argument("--keep-checkpoints", action="store_true", help="with --work-dir: keep every checkpoint as "
                    "step<N>.safetensors beside latest.safetensors (to measure where a run was best)")
    ap.add_argument("--eval-every", type=int, default=100)
    args = ap.parse_args(argv)
    if args.honour_edits and "honour" not in (args.interaction or "").split("+"):
        ap.error("--honour-edits needs an --interaction rule that honours clicks (e.g. logits+honour)")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.time()
    blocks = tuple(int(b) for b in args.blocks.split(",") if b.strip())
    if args.init_adapter is not None:
        model = load_model("litemedsam", adapter=args.init_adapter, device="cpu")
    else:
        model = load_model("litemedsam", adapter=None, adapter_config=AdapterConfig(blocks=blocks), device="cpu")
    print("pseudo-labelling real images with LiteMedSAM's own box predictions…")
    if args.data_cache is not None and args.data_cache.is_file():
        images, labels, listing = read_dataset(args.data_cache)
    else:
        real = None if args.real == "all" else [] if args.real == "none" else \
            load_real_images([k for k in args.real.split(",") if k])
        images, labels, listing = build_dataset(model, args.phantoms, args.seed, real)
        if args.data_cache is not None:
            write_dataset(args.data_cache, images, labels, listing)
    if args.real_copies > 1:  # the data's real images follow its phantom slices (build_dataset)
        real_images, real_labels = images[args.phantoms:], labels[args.phantoms:]
        images = images + real_images * (args.real_copies - 1)
        labels = labels + real_labels * (args.real_copies - 1)
        listing.append({"name": f"the {len(real_images)} real images {args.real_copies} times each",
                        "source": "the pseudo-labelled real images above", "licence": "as above"})
    more_images, more_labels, more_listing = extra_phantoms(args.phantoms_mr, args.seed)
    images, labels, listing = images + more_images, labels + more_labels, listing + more_listing
    regions: list[np.ndarray | None] = [None] * len(images)
    if args.wholes:  # phantoms only: pseudo-labels are flat by construction, phantoms know their nesting
        generated = list(range(min(args.phantoms, len(images)))) + \
            list(range(len(images) - len(more_images), len(images)))
        chosen = np.random.default_rng([args.seed, 79]).random(len(generated)) < args.wholes_share
        extra = [(images[i], m, clickable) for i, c in zip(generated, chosen, strict=True) if c
                 for m, clickable in whole_maps_with_clicks(labels[i], images[i], max_maps=1)]
        images, labels = images + [im for im, _, _ in extra], labels + [m for _, m, _ in extra]
        regions += [clickable if args.whole_clicks == "own-tissue" else None for _, _, clickable in extra]
        listing.append({"name": f"{len(extra)} whole-object label maps of the phantom slices (body outlines, "
                        f"objects with what they enclose), first clicks: {args.whole_clicks}",
                        "source": "napari_msa.training.whole_objects", "licence": "BSD-3-Clause (napari-msa)"})
    kinds = tuple(k for k in args.appearance.split(",") if k)
    if kinds:
        images, labels, regions = augmented(images, labels, kinds, np.random.default_rng([args.seed, 78]), regions)
        listing.append({"name": f"appearance copies of every image: {', '.join(kinds)}", "source": "napari_msa."
                        "training.appearance (each with a random flip or quarter turn)",
                        "licence": "derived from the images above, under their licences"})
    print(f"{len(images)} images, {sum(int(lab.max() > 0) for lab in labels)} labelled; {time.time() - t0:.0f} s")

    def progress(p) -> None:
        if p.phase == "eval" or p.step % 50 == 0:
            print(f"  {p.phase} step {p.step}/{p.total_steps} loss {p.loss} val {p.val_dice} best "
                  f"{p.best_val_dice} ({p.elapsed_s:.0f} s)", flush=True)

    done, history = 0, []
    latest = None if args.work_dir is None else args.work_dir / "latest.safetensors"
    if latest is not None and latest.is_file():  # a stopped run goes on from its last checkpoint
        model = load_model("litemedsam", adapter=latest, device="cpu")
        done = int(model.adapter_metadata["training"].get("steps_done", 0))
        history = list(model.adapter_metadata["training"].get("history", []))
        print(f"resuming after step {done} from {latest}")
    # the decoder trained here answers every prompt; a corrector for it is made apart (training.add_corrector)
    model.corrector_change = None
    rule = args.interaction or model.interaction.name

    def checkpoint(p) -> None:
        progress(p)
        if latest is not None and p.phase == "train" and p.step % args.chunk_steps == 0:
            latest.parent.mkdir(parents=True, exist_ok=True)
            training = {"steps_done": done + p.step, "interaction": rule,
                        "history": history + [[done + p.step, p.loss]]}
            kept = [latest.with_name(f"step{done + p.step:05d}.safetensors")] if args.keep_checkpoints else []
            for path in [latest, *kept]:
                model.save_adapter(path, training=training, include_decoder=True)
            history.append([done + p.step, p.loss])
            print(f"  checkpoint at step {done + p.step} ({time.time() - t0:.0f} s)", flush=True)

    teacher = None if args.anchor_adapter is None else load_model("litemedsam", adapter=args.anchor_adapter,
                                                                   device="cpu", runtime="torch")
    summary = {}
    if args.steps > done:
        result = tune(
            model, images, labels, steps=args.steps - done, lr=args.lr, batch_size=args.batch_size,
            val_fraction=args.val_fraction, seed=args.seed + done, train_decoder=args.train != "adapters",
            train_adapters=args.train != "decoder", augment=not args.no_augment, box_share=args.box_share,
            patience=0, accept_margin=-1.0, max_correction_rounds=args.rounds, grad_rounds=args.grad_rounds,
            interaction=args.interaction, eval_every=args.eval_every, cache_prefix=True, inplace=True,
            cache_budget_bytes=12 << 30, normalization=Normalization("none"), progress=checkpoint,
            click_regions=regions, anchor_first_clicks=args.anchor_first_clicks, first_click_teacher=teacher,
            zoom_views=args.zoom_views, corrector=args.corrector, edge_weight=args.edge_weight,
            honour_edits=args.honour_edits,
        )
        model = result.model
        summary = {k: v for k, v in result.summary.to_dict().items() if k not in ("config",)}
    tuned = model
    tuned.normalization = Normalization()  # users' images get the usual automatic windowing
    provenance = {
        "purpose": "click adapter for LiteMedSAM (click sessions and boxes)",
        "command": "python -m napari_msa.training.click_adapter " + " ".join(sys.argv[1:] if argv is None else argv),
        "seed": args.seed, "steps": args.steps, "lr": args.lr, "batch_size": args.batch_size,
        "blocks": list(blocks), "box_share": args.box_share, "threads": args.threads, "rounds": args.rounds,
        "grad_rounds": args.grad_rounds, "train": args.train, "appearance": list(kinds),
        "init_adapter": None if args.init_adapter is None else args.init_adapter.name,
        "interaction": rule,
        "augment": not args.no_augment, "wholes": args.wholes and args.wholes_share,
        "whole_clicks": args.whole_clicks if args.wholes else None,
        "anchor_first_clicks": args.anchor_first_clicks or None,
        "anchor_adapter": None if args.anchor_adapter is None else args.anchor_adapter.name, "phantoms": args.phantoms,
        "zoom_views": args.zoom_views or None, "edge_weight": args.edge_weight or None,
        "honour_edits": args.honour_edits or None,
        "corrector": args.corrector or None,  # answers every step but a lone click's (that: the anchor adapter's)
        "phantoms_mr": args.phantoms_mr, "real_copies": args.real_copies,
        "data": listing,
        "held_out": "pydicom CT_small.dcm (the CT sample), MR_small.dcm and every other pydicom CT/MR file; "
                    "the development set (napari_msa.evaluation.devset); phantom evaluation seed streams",
        "resumed_after_step": done or None, "loss_history": history, "tune_summary": summary,
        "wall_time_s": round(time.time() - t0, 1),
    }
    out = tuned.save_adapter(args.out, training=provenance, include_decoder=True)
    print(json.dumps({k: v for k, v in provenance.items() if k not in ("data", "loss_history", "tune_summary")},
                     indent=1))
    print("wrote", out, f"{out.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
