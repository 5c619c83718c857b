"""Calibrate the click adapter's IoU head: which of SAM's three masks a lone click keeps.

A lone click gets three masks and a predicted IoU for each; the session keeps the highest. After the click
adapter's training the masks were good but the choice was not, on large organs above all (development phantoms:
liver best-of-3 Dice 0.86, chosen 0.65; ``benchmarks/mask_choice.py``): 500 steps of 2 objects taught the IoU head
little. The head is a small MLP on the decoder's IoU token, so it can be refitted on its own, on many more prompts,
without touching a mask: the decoder runs once per prompt (no gradient), its IoU-token features and the true IoU
of all four outputs are kept, and the MLP is fitted to them (MSE on every output, as SAM trains it). Prompts mix
what the session sends: a lone click (deepest pixel, or a random one of the inner half), a jittered box, and a click
with one correction click.

Data: the click adapter's own training images (its ``--data-cache``: phantom slices of the training seed stream and
the pseudo-labelled real images) plus more phantom slices of the training stream. Never the CT sample, pydicom's
CT/MR files or the phantom evaluation stream. The fit is chosen on images held out from it.

    python -m napari_msa.training.iou_head --data-cache /tmp/train/data.npz \
        --out napari_msa/models/litemedsam_clicks.safetensors
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from napari_msa.engine import Normalization, Session, load_model
from napari_msa.engine.catalog import CLICK_ADAPTER_FILE
from napari_msa.engine.files.formats import read_adapter_metadata
from napari_msa.engine.inference.decoding import decode, image_masks, to_input_frame
from napari_msa.engine.model.msa_model import MSAModel
from napari_msa.engine.prompts.geometry import components, depth_map, dice, interior_click, iou, most_interior
from napari_msa.engine.tuning.data import correction_click, jittered_box

from .click_adapter import extra_phantoms, phantom_slices, read_dataset
from .whole_objects import own_tissue, whole_maps

PROMPT_KINDS = ("deepest click", "random click", "box", "click + correction")
LONE_CLICKS = (0, 1)  # kinds answered with SAM's three masks (outputs 1-3)
MIN_OBJECT_PIXELS = 30


@dataclass
class Decoded:
    """Per prompt: the IoU token features, the head's scores, and the true IoU and Dice of all four outputs."""

    features: np.ndarray  # (N, C)
    predicted: np.ndarray  # (N, 4)
    true_iou: np.ndarray  # (N, 4)
    dice: np.ndarray  # (N, 4)
    kind: np.ndarray  # (N,) index into PROMPT_KINDS
    image: np.ndarray  # (N,) which image

    @staticmethod
    def concat(parts: list[Decoded]) -> Decoded:
        return Decoded(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                         ("features", "predicted", "true_iou", "dice", "kind", "image")))

    def subset(self, keep: np.ndarray) -> Decoded:
        return Decoded(self.features[keep], self.predicted[keep], self.true_iou[keep], self.dice[keep],
                       self.kind[keep], self.image[keep])


class _TokenTap:
    """Keeps what the IoU head was given (the decoder's IoU token) on each decoder pass."""

    def __init__(self, head: torch.nn.Module) -> None:
        self.value: torch.Tensor | None = None
        self._handle = head.register_forward_pre_hook(self._keep)

    def _keep(self, _module, args) -> None:
        self.value = args[0].detach()

    def close(self) -> None:
        self._handle.remove()


def decode_image(session: Session, tap: _TokenTap, image_id: int, objects: list[np.ndarray],
                 rng: np.random.Generator, click_regions: list[np.ndarray] | None = None) -> list[Decoded]:
    """Every prompt kind for every object of one embedded image; lone clicks land in ``click_regions`` (default:
    the objects themselves)."""
    emb = session.embedding(0)
    sam, size = session.model.sam, session.model.image_size
    frame = (emb.original_size, size)
    regions = objects if click_regions is None else click_regions
    deepest = np.array([most_interior(m, depth_map(m)) for m in regions])
    random = np.array([interior_click(m, rng) for m in regions])
    boxes = np.array([jittered_box(m, rng) for m in objects])
    n = len(objects)
    out = []

    def run(kind: int, points, labels, boxes_in) -> np.ndarray:
        with torch.no_grad():
            low, scores = decode(sam, emb.features, points, labels, boxes_in, all_outputs=True)
            masks = image_masks(sam, low, emb.input_size, emb.original_size).cpu().numpy()
        truth = objects
        out.append(Decoded(
            features=tap.value.float().cpu().numpy(), predicted=scores.float().cpu().numpy(),
            true_iou=np.array([[iou(m, t) for m in ms] for ms, t in zip(masks, truth, strict=True)]),
            dice=np.array([[dice(m, t) for m in ms] for ms, t in zip(masks, truth, strict=True)]),
            kind=np.full(n, kind), image=np.full(n, image_id)))
        return masks

    ones = np.ones((n, 1))
    masks = run(0, to_input_frame(deepest, *frame)[:, None], ones, None)
    run(1, to_input_frame(random, *frame)[:, None], ones, None)
    run(2, None, None, to_input_frame(boxes.reshape(n, 2, 2), *frame).reshape(n, 4))
    shown = [masks[i, 1 + int(np.argmax(out[0].predicted[i, 1:]))] for i in range(n)]  # what the user saw
    fixes = [correction_click(s, t, rng) for s, t in zip(shown, objects, strict=True)]
    points = np.stack([deepest, np.array([p for p, _ in fixes])], axis=1)
    labels = np.array([[1, lab] for _, lab in fixes])
    run(3, to_input_frame(points, *frame), labels, None)
    return out


def whole_prompts(labels: np.ndarray, plane: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(wholes, where their lone clicks land): a whole (the body, an object with what it encloses) is what a click
    means on its own tissue, off every labelled object inside it; a click on such an object means that object."""
    wholes, regions = [], []
    for lab in whole_maps(labels, plane, max_maps=2):
        for k in range(1, int(lab.max()) + 1):
            whole = lab == k
            region = own_tissue(whole, labels, plane)
            if region.sum() >= MIN_OBJECT_PIXELS:
                wholes.append(whole)
                regions.append(region)
    return wholes, regions


def collect(model: MSAModel, images: list[np.ndarray], labels: list[np.ndarray], seed: int,
            log=print, with_wholes: np.ndarray | None = None) -> Decoded:
    """Decode every prompt kind on every image; images flagged in ``with_wholes`` (the phantoms: their labels know
    what encloses what) also give their wholes as targets."""
    session = Session(model, normalization=Normalization("none"))
    tap = _TokenTap(model.sam.mask_decoder.iou_prediction_head)
    rng = np.random.default_rng([seed, 91])
    parts: list[Decoded] = []
    t0 = time.time()
    try:
        for i, (img, lab) in enumerate(zip(images, labels, strict=True)):
            objects = components(lab, MIN_OBJECT_PIXELS)
            if not objects:
                continue
            session.set_image(img, rgb=img.ndim == 3)
            parts += decode_image(session, tap, i, objects, rng)
            if with_wholes is not None and with_wholes[i]:
                wholes, regions = whole_prompts(lab, img)
                if wholes:
                    parts += decode_image(session, tap, i, wholes, rng, regions)
            if (i + 1) % 25 == 0:
                log(f"  decoded {i + 1}/{len(images)} images ({time.time() - t0:.0f} s)")
    finally:
        tap.close()
    return Decoded.concat(parts)


def chosen_dice(scores: np.ndarray, data: Decoded) -> float:
    """Mean Dice of the mask the session keeps for a lone click (highest score among outputs 1-3)."""
    lone = np.isin(data.kind, LONE_CLICKS)
    pick = 1 + np.argmax(scores[lone, 1:], axis=1)
    return float(data.dice[lone][np.arange(lone.sum()), pick].mean())


def oracle_dice(data: Decoded) -> float:
    lone = np.isin(data.kind, LONE_CLICKS)
    return float(data.dice[lone, 1:].max(axis=1).mean())


def head_scores(head: torch.nn.Module, data: Decoded) -> np.ndarray:
    with torch.no_grad():
        return head(torch.as_tensor(data.features)).numpy()


def fit_head(head: torch.nn.Module, train: Decoded, val: Decoded, *, epochs: int, lr: float, batch_size: int,
             seed: int, log=print) -> tuple[torch.nn.Module, list[dict]]:
    """Fit a copy of the head on the train prompts; keep the epoch with the best held-out chosen Dice."""
    torch.manual_seed(seed)
    head = copy.deepcopy(head).float().train()
    for p in head.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    x, y = torch.as_tensor(train.features), torch.as_tensor(train.true_iou, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    best = (chosen_dice(head_scores(head, val), val), copy.deepcopy(head.state_dict()), 0)
    history = [{"epoch": 0, "val_chosen_dice": round(best[0], 4),
                "val_mse": round(float(np.mean((head_scores(head, val) - val.true_iou) ** 2)), 4)}]
    for epoch in range(1, epochs + 1):
        for idx in torch.randperm(len(x), generator=gen).split(batch_size):
            loss = F.mse_loss(head(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        scores = head_scores(head, val)
        score = chosen_dice(scores, val)
        history.append({"epoch": epoch, "val_chosen_dice": round(score, 4),
                        "val_mse": round(float(np.mean((scores - val.true_iou) ** 2)), 4)})
        if score > best[0]:
            best = (score, copy.deepcopy(head.state_dict()), epoch)
        if epoch % 10 == 0:
            log(f"  epoch {epoch}: held-out chosen Dice {score:.4f}, MSE {history[-1]['val_mse']:.4f}")
    head.load_state_dict(best[1])
    return head.eval(), history


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--adapter", type=Path, default=CLICK_ADAPTER_FILE, help="the click adapter to calibrate")
    ap.add_argument("--data-cache", type=Path, required=True,
                    help="the click adapter's training data (click_adapter --data-cache)")
    ap.add_argument("--phantoms", type=int, default=300, help="phantom slices of the training stream in all "
                    "(the data cache's first, then the stream's next indices)")
    ap.add_argument("--phantoms-mr", type=int, default=0, help="slices of the second phantom generator (training "
                    "stream)")
    ap.add_argument("--wholes", action="store_true", help="the phantoms' wholes too (the body, objects with what "
                    "they enclose), their clicks off the objects inside them (training.whole_objects)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-fraction", type=float, default=0.15, help="share of images held out to choose the fit")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-cache", type=Path, help="an .npz of the decoded prompts: written after decoding, read "
                    "instead of it when it exists (same adapter, data and seed)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    model = load_model("litemedsam", adapter=args.adapter, device="cpu", precision="fp32")
    cached_images, cached_labels, listing = read_dataset(args.data_cache)
    n_cached = int(str(listing[0]["name"]).split()[0])  # its first entry: "48 phantom slices" (the first indices)
    extra = phantom_slices(max(args.phantoms, n_cached), args.seed)[n_cached:]  # the stream's next indices
    mr_images, mr_labels, _ = extra_phantoms(args.phantoms_mr, args.seed)
    images = cached_images + [img for img, _, _ in extra] + mr_images
    labels = cached_labels + [lab for _, lab, _ in extra] + mr_labels
    n_phantoms, n_real = n_cached + len(extra), len(cached_images) - n_cached
    generated = np.ones(len(images), bool)
    generated[n_cached : len(cached_images)] = False  # the pseudo-labelled real images: flat by construction
    print(f"{n_phantoms} phantom slices, {n_real} real images; decoding…", flush=True)
    if args.prompt_cache is not None and args.prompt_cache.is_file():
        data = Decoded(**dict(np.load(args.prompt_cache)))
    else:
        data = collect(model, images, labels, args.seed, with_wholes=generated if args.wholes else None)
        if args.prompt_cache is not None:
            np.savez_compressed(args.prompt_cache, **vars(data))
    print(f"{len(data.kind)} prompts ({time.time() - t0:.0f} s)", flush=True)

    rng = np.random.default_rng([args.seed, 92])
    held = rng.permutation(len(images))[: max(1, round(args.val_fraction * len(images)))]
    is_val = np.isin(data.image, held)
    train, val = data.subset(~is_val), data.subset(is_val)
    head = model.sam.mask_decoder.iou_prediction_head
    before = {"train": chosen_dice(train.predicted, train), "val": chosen_dice(val.predicted, val),
              "val_oracle": oracle_dice(val)}
    fitted, history = fit_head(head, train, val, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                               seed=args.seed)
    after = {"train": chosen_dice(head_scores(fitted, train), train),
             "val": chosen_dice(head_scores(fitted, val), val)}
    print(f"lone-click Dice of the kept mask: held out {before['val']:.4f} -> {after['val']:.4f} "
          f"(best of 3: {before['val_oracle']:.4f}); train {before['train']:.4f} -> {after['train']:.4f}")
    head.load_state_dict(fitted.state_dict())

    training = read_adapter_metadata(args.adapter)["training"]
    training["iou_head"] = {
        "purpose": "IoU head refitted alone (masks unchanged) so a lone click keeps the right one of SAM's three",
        "command": "python -m napari_msa.training.iou_head " + " ".join(sys.argv[1:] if argv is None else argv),
        "seed": args.seed, "phantoms": n_phantoms, "phantoms_mr": args.phantoms_mr, "wholes": args.wholes,
        "real_images": n_real, "prompts": int(len(data.kind)),
        "prompt_kinds": list(PROMPT_KINDS), "held_out_images": int(len(held)), "epochs": args.epochs,
        "lr": args.lr, "batch_size": args.batch_size,
        "lone_click_kept_dice": {"before": {k: round(v, 4) for k, v in before.items()},
                                 "after": {k: round(v, 4) for k, v in after.items()}},
        "history": history, "wall_time_s": round(time.time() - t0, 1),
    }
    out = model.save_adapter(args.out, training=training, include_decoder=True)
    print("wrote", out, f"{out.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
