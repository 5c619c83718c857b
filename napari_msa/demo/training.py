"""Train and evaluate the shipped demo model: a small SAM-architecture network learnt from synthetic phantoms.

No SAM weights can be downloaded where this project is built, so the plugin ships a model it trained
itself, from scratch, on 2D slices drawn on the fly by :mod:`napari_msa.demo.phantoms` (abdominal CT-like phantoms
of random layout, contrast, size and noise, plus a share of generic shape scenes). Reproduce the
shipped file with the command recorded in its metadata (``extra["command"]``; files trained before issue #13
name this module ``napari_msa.engine.demo_training``), e.g.::

    python -m napari_msa.demo.training --steps 2400 --seed 0

The data of step ``k`` depends only on ``(seed, TRAIN_STREAM, k)`` and the weights start from
``torch.manual_seed(seed)``, so the same command, thread count and torch build give the same file.
Evaluation (:mod:`napari_msa.demo.evaluation`) draws from ``EVAL_STREAM``, which training never touches.

The training path feeds the network what :class:`~napari_msa.engine.inference.session.Session` feeds it at run
time: an 8-bit rendering (CT windows of varied level/width, or percentiles, as users load images)
through SAM's resize / normalise / pad transform, and clicks in the resized frame, decoded by
:func:`~napari_msa.engine.inference.decoding.decode` as at run time. Each
image is encoded once and prompted for several objects (SAM's own recipe), which is what makes CPU
training affordable.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from napari_msa.engine.catalog import DEMO_MODEL_FILE
from napari_msa.engine.files.formats import read_model_file, save_model_file
from napari_msa.engine.inference.decoding import decode, upscale_logits
from napari_msa.engine.model.msa_model import MSAModel
from napari_msa.engine.network.architectures import SAM_PIXEL_MEAN, SAM_PIXEL_STD, ModelConfig, build_sam, get_config
from napari_msa.engine.network.preprocessing import Normalization, encoder_input, to_uint8_rgb
from napari_msa.engine.prompts.geometry import components, exact_depth
from napari_msa.engine.tuning.losses import bce_dice_loss, hard_iou, soft_dice_loss

from . import phantoms
from .evaluation import evaluate_heldout, format_summary

DEMO_DESCRIPTION = (
    "napari-msa DEMO model: a small SAM-architecture network (segment_anything classes) trained from scratch by "
    "napari-msa on synthetic abdominal CT-like phantoms to segment the structure under a click. It is not Meta's "
    "SAM; use a SAM checkpoint for real work."
)
MIN_TARGET_AREA = 12  # pixels in the model's input frame; smaller pieces are never a training target
MODULE = "napari_msa.demo.training"
# The module's name before issue #13 moved demo code out of the engine, as the shipped model file records it.
EARLIER_MODULES = ("napari_msa.engine.demo_training",)


# --- data -----------------------------------------------------------------------------------------------------------


@dataclass
class Prompt:
    """One object's prompt in the resized frame: clicks as (row, col), an optional box (min_row, min_col, max_row,
    max_col); ``engine.inference.decoding.decode`` hands them to SAM as (x, y)."""

    points: np.ndarray  # (P, 2) float32
    labels: np.ndarray  # (P,) int64, 1 positive / 0 negative
    box: np.ndarray | None
    target: np.ndarray  # (S, S) float32, zero in the padding
    single_click: bool  # SAM answers a lone click with three masks; the best one is trained


def _negative_click(mask: np.ndarray, rng: np.random.Generator) -> tuple[int, int] | None:
    """A background pixel near the object, where annotators put negative clicks."""
    ring = ndimage.binary_dilation(mask, iterations=int(rng.integers(2, 8))) & ~mask
    rows, cols = np.nonzero(ring)
    if not len(rows):
        return None
    i = int(rng.integers(len(rows)))
    return int(rows[i]), int(cols[i])


def _deep_click(mask: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    """(row, col) of a random pixel well inside ``mask`` (depth at least 20-80 % of the deepest, and 1 px)."""
    depth = exact_depth(mask)
    rows, cols = np.nonzero(depth >= max(1.0, rng.uniform(0.2, 0.8) * depth.max()))
    i = int(rng.integers(len(rows)))
    return int(rows[i]), int(cols[i])


def make_prompt(mask: np.ndarray, rng: np.random.Generator, size: int) -> Prompt:
    """Prompts as users give them: mostly one click deep inside, sometimes more clicks or a box."""
    kind = str(rng.choice(["click", "clicks", "box"], p=[0.6, 0.2, 0.2]))
    rows, cols = np.nonzero(mask)
    points: list[tuple[int, int]] = [_deep_click(mask, rng)]
    labels = [1]
    box = None
    if kind == "clicks":
        for _ in range(int(rng.integers(1, 3))):
            neg = _negative_click(mask, rng) if rng.random() < 0.5 else None
            if neg is not None:
                points.append(neg)
                labels.append(0)
            else:
                i = int(rng.integers(len(rows)))
                points.append((int(rows[i]), int(cols[i])))
                labels.append(1)
    elif kind == "box":
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        jitter = rng.normal(0, 0.06, 4) * np.array([w, h, w, h])
        box = np.array([cols.min(), rows.min(), cols.max(), rows.max()], dtype=np.float64) + jitter
        box = np.clip(box, 0, size - 1).astype(np.float32)
        if rng.random() < 0.5:
            points, labels = [], []
    target = np.zeros((size, size), dtype=np.float32)
    target[: mask.shape[0], : mask.shape[1]] = mask
    rc = np.array(points, dtype=np.float32).reshape(-1, 2)
    box_rc = None if box is None else box[[1, 0, 3, 2]]
    return Prompt(rc, np.array(labels, dtype=np.int64), box_rc, target, kind == "click")


def training_batch(seed: int, step: int, n_images: int, n_objects: int,
                   size: int) -> tuple[torch.Tensor, list[list[Prompt]]]:
    """Encoder inputs (B,3,S,S) and each image's prompts for step ``step``: a pure function of (seed, step)."""
    rng = np.random.default_rng([seed, phantoms.TRAIN_STREAM, step])
    mean, std = torch.tensor(SAM_PIXEL_MEAN).view(3, 1, 1), torch.tensor(SAM_PIXEL_STD).view(3, 1, 1)
    images, prompts = [], []
    while len(images) < n_images:
        sample = phantoms.random_slice(rng, size_range=(96, 384))
        rgb = to_uint8_rgb(phantoms.window_to_uint8(sample.image, rng, sample.kind), None)
        x, (h, w) = encoder_input(rgb, size, mean, std)
        lab = torch.from_numpy(sample.labels.astype(np.float32))[None, None]
        lab = F.interpolate(lab, size=(h, w), mode="nearest")[0, 0].numpy().astype(np.int32)
        objects = components(lab, MIN_TARGET_AREA)
        if not objects:
            continue
        chosen = rng.choice(len(objects), size=n_objects, replace=len(objects) < n_objects)
        images.append(x[0])
        prompts.append([make_prompt(objects[int(i)], rng, size) for i in chosen])
    return torch.stack(images), prompts


def _as_is(item):
    return item


class _Batches(torch.utils.data.IterableDataset):
    """Steps [start, steps) in order; a worker process makes them while the model trains."""

    def __init__(self, seed: int, start: int, steps: int, n_images: int, n_objects: int, size: int) -> None:
        self.args = (seed, start, steps, n_images, n_objects, size)

    def __iter__(self):
        seed, start, steps, n_images, n_objects, size = self.args
        for step in range(start, steps):
            yield step, training_batch(seed, step, n_images, n_objects, size)


# --- loss -----------------------------------------------------------------------------------------------------------


def _decode(sam, embedding: torch.Tensor, group: list[Prompt], with_box: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """All four mask outputs (N,4,S,S logits, input frame) and IoU predictions (N,4) for one image's prompts."""
    n_pts = max(len(p.points) for p in group)
    coords = np.zeros((len(group), n_pts, 2), dtype=np.float32)
    labels = -np.ones((len(group), n_pts), dtype=np.int64)  # -1: SAM's "not a point" padding
    for i, p in enumerate(group):
        coords[i, : len(p.points)] = p.points
        labels[i, : len(p.labels)] = p.labels
    boxes = np.stack([p.box for p in group]) if with_box else None
    low, iou = decode(sam, embedding, coords, labels, boxes, all_outputs=True)
    size = sam.image_encoder.img_size
    return upscale_logits(low, size, (size, size)), iou


def training_loss(sam, images: torch.Tensor, prompts: list[list[Prompt]]) -> tuple[torch.Tensor, dict]:
    """SAM's recipe at CPU scale: BCE + Dice on the best of three masks for a lone click (output 0 for
    several prompts, as SAM's ``multimask_output`` does), plus MSE of the IoU head on the masks it scores."""
    embeddings = sam.image_encoder(images)
    mask_losses, iou_losses, dices = [], [], []
    for b, image_prompts in enumerate(prompts):
        for with_box in (False, True):
            group = [p for p in image_prompts if (p.box is not None) == with_box]
            if not group:
                continue
            logits, iou_pred = _decode(sam, embeddings[b : b + 1], group, with_box)
            target = torch.from_numpy(np.stack([p.target for p in group]))[:, None].expand_as(logits)
            per_mask = bce_dice_loss(logits, target)
            single = torch.tensor([p.single_click for p in group])
            best = per_mask[:, 1:].min(1)
            mask_losses.append(torch.where(single, best.values, per_mask[:, 0]))
            with torch.no_grad():
                iou_true = hard_iou(logits > 0, target > 0.5)
                chosen = torch.where(single, 1 + best.indices, torch.zeros_like(best.indices))
                dices.append(1 - soft_dice_loss(logits, target).gather(1, chosen[:, None])[:, 0])
            scored = torch.zeros_like(iou_pred, dtype=torch.bool)
            scored[single, 1:] = True
            scored[~single, 0] = True
            iou_losses.append(((iou_pred - iou_true) ** 2)[scored])
    mask_loss, iou_loss = torch.cat(mask_losses).mean(), torch.cat(iou_losses).mean()
    stats = {"mask": mask_loss.item(), "iou": iou_loss.item(), "dice": torch.cat(dices).mean().item()}
    return mask_loss + iou_loss, stats


# --- training -------------------------------------------------------------------------------------------------------


def _lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return peak * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def _load_for_resume(path: Path):
    """A model file written by this module: (sam in train mode, its ``extra``)."""
    meta, state = read_model_file(Path(path))
    sam = build_sam(ModelConfig.from_dict(json.loads(meta["model"])))
    sam.load_state_dict(state)
    extra = json.loads(meta.get("extra") or "{}")
    if extra.get("trained_by") not in (MODULE, *EARLIER_MODULES) or extra.get("steps") != extra.get("planned_steps"):
        raise ValueError(f"{Path(path).name} is not a finished run of {MODULE}")
    return sam, extra


def train(steps: int, seed: int, out: Path, *, model_name: str = "small", image_size: int = 256,
          n_images: int = 4, n_objects: int = 6, lr: float = 4e-4, warmup: int = 100, workers: int = 1,
          eval_slices: int = 60, save_every: int = 200, resume_from: Path | None = None, log=print) -> dict:
    """Train every weight of a fresh SAM from scratch (or continue a finished run, ``resume_from``, on the
    next, never-seen data steps with a new warm-up and cosine schedule) and write the model file, also every
    ``save_every`` steps so an interrupted run leaves a usable file; returns the metadata stored as ``extra``."""
    torch.manual_seed(seed)
    previous: dict = {}
    if resume_from is not None:
        sam, previous = _load_for_resume(resume_from)
        if previous["seed"] != seed:
            raise ValueError(f"resume with the seed of the first run ({previous['seed']}), not {seed}")
        model_name, image_size = sam.model_config.name, sam.model_config.image_size
    else:
        sam = build_sam(get_config(model_name, image_size))
    offset = int(previous.get("steps", 0))  # data steps already used
    sam.train()
    decay = [p for n, p in sam.named_parameters() if p.ndim >= 2 and "pos" not in n]
    no_decay = [p for n, p in sam.named_parameters() if p.ndim < 2 or "pos" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr)
    batches = _Batches(seed, offset, offset + steps, n_images, n_objects, image_size)
    loader = torch.utils.data.DataLoader(batches, batch_size=None, collate_fn=_as_is, num_workers=workers,
                                         prefetch_factor=4 if workers else None)
    command = (f"python -m {MODULE} --steps {steps} --seed {seed} --model {model_name} "
               f"--image-size {image_size} --images {n_images} --objects {n_objects} --lr {lr} --warmup {warmup} "
               f"--threads {torch.get_num_threads()}")
    if previous:
        command = f"{previous['command']} && {command} --resume-from napari_msa/models/{DEMO_MODEL_FILE.name}"
    earlier = previous.get("stages") or ([{"steps": offset, "data_steps": [0, offset]}] if previous else [])
    stages = earlier + [{"steps": steps, "lr": lr, "warmup": warmup, "objects_per_image": n_objects,
                       "data_steps": [offset, offset + steps]}]
    start = time.time()
    ema: dict[str, float] = {}
    extra: dict = {}
    for data_step, (images, prompts) in loader:
        step = data_step - offset
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, steps, lr, warmup)
        loss, stats = training_loss(sam, images, prompts)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(sam.parameters(), 1.0)
        opt.step()
        for k, v in stats.items():
            ema[k] = v if k not in ema else 0.95 * ema[k] + 0.05 * v
        last = step == steps - 1
        if step % 25 == 0 or last:
            log(f"step {step + 1:5d}/{steps}  mask loss {ema['mask']:.3f}  iou mse {ema['iou']:.4f}  "
                f"train dice {ema['dice']:.3f}  lr {opt.param_groups[0]['lr']:.1e}  {time.time() - start:.0f} s")
        if (save_every and (step + 1) % save_every == 0) or last:
            sam.eval()
            extra = {"trained_by": MODULE, "command": command, "seed": seed,
                     "steps": offset + step + 1, "planned_steps": offset + steps, "stages": stages,
                     "train_seconds": previous.get("train_seconds", 0) + round(time.time() - start),
                     "threads": torch.get_num_threads(), "torch": torch.__version__,
                     "images_per_step": n_images, "objects_per_image": n_objects}
            if last and eval_slices:
                model = MSAModel(sam, name="demo", device=torch.device("cpu"), source="training", is_demo=True)
                result = evaluate_heldout(model, eval_slices, seed)
                extra["heldout_one_click"] = {"slices": eval_slices, "normalization": "ct", **result}
                log(format_summary(result))
            save_model_file(sam, out, description=DEMO_DESCRIPTION, normalization=Normalization(), extra=extra)
            log(f"wrote {out} after {step + 1} steps")
            sam.train()
    sam.eval()
    return extra


def main(argv: list[str] | None = None) -> int:
    """Train the demo model, or with --eval-only measure a model file on held-out phantoms."""
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}",
                                     description="Train napari-msa's demo model on synthetic phantoms (CPU is fine).")
    parser.add_argument("--steps", type=int, default=2400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEMO_MODEL_FILE, help="output .safetensors file")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--model", default="small", help="an architecture of the model registry [small]")
    parser.add_argument("--images", type=int, default=4, help="images per step [4]")
    parser.add_argument("--objects", type=int, default=6, help="prompted objects per image [6]")
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--workers", type=int, default=1, help="data-making processes (0: in this process)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--eval-slices", type=int, default=60, help="held-out slices evaluated at the end")
    parser.add_argument("--save-every", type=int, default=200, help="also write the file every N steps (0: never)")
    parser.add_argument("--warmup", type=int, default=100, help="warm-up steps of the learning rate [100]")
    parser.add_argument("--resume-from", type=Path,
                        help="continue a finished run from its model file, on the data steps after it")
    parser.add_argument("--eval-only", action="store_true", help="evaluate the model file at --out and exit")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.eval_only:
        from napari_msa.engine.model.loading import load_model

        model = load_model("demo", checkpoint=args.out, device="cpu")
        result = evaluate_heldout(model, args.eval_slices, args.seed)
        print(format_summary(result))
        print(json.dumps(result))
        return 0
    train(args.steps, args.seed, args.out, model_name=args.model, image_size=args.image_size, n_images=args.images,
          n_objects=args.objects, lr=args.lr, workers=args.workers, eval_slices=args.eval_slices,
          save_every=args.save_every, warmup=args.warmup, resume_from=args.resume_from)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
