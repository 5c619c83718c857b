"""Few-shot adapter tuning from an annotator's labels.

``tune(model, images, labels)`` turns every labelled slice and every object id in it into an
(image, object mask) pair, holds some slices (or, with a single slice, some objects) out, and trains
the MSA adapters (optionally the mask decoder) with prompts simulated the way an annotator clicks:

* a positive click deep inside the object (or, for a share of samples, a jittered box), then
* 1-3 correction rounds: the model predicts, and the next click goes to the centre of the largest
  error region: positive in a missed part, negative in a false positive.

The loss is BCE + soft Dice on the mask logits of every round (for a lone click SAM answers with three
masks and the best one is trained, as in SAM), plus SAM's IoU-score regression so the mask the session
picks by its score is the good one. AdamW, flips/90° rotations/intensity jitter, held-out Dice after
every epoch, early stopping that keeps the best weights, a fixed seed reproduces the result.

Geometry: each slice is resized once so its longest side is the model's image size (SAM's own resize,
the same as the session), and all training happens in that frame: points are (row, col) there and go
to SAM as (x, y) = (col, row) in ``decode``. Augmentations act on that frame before padding, so the
padding stays bottom/right as at inference. Held-out Dice is measured in that frame too.

Frozen-prefix cache: with adapters only in the last blocks (``AdapterConfig(blocks=...)``), the
tokens after the frozen first blocks depend on the input pixels only, so they are computed once per
(slice, augmentation) and reused. Flipping/rotating the image is not the same as flipping the token
grid (each patch's content is flipped too, and the patch embedding is not flip-equivariant), so the
cache holds one entry per dihedral variant (at most 8 per slice, filled lazily) and intensity jitter,
which would make every input unique, is switched off while caching.

Cancel or an error leaves the model as it was: by default a copy is tuned and returned; with
``inplace=True`` the trainable weights are snapshotted first and restored on failure.
"""

from __future__ import annotations

import datetime
import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from scipy import ndimage
from segment_anything.utils.transforms import ResizeLongestSide
from torch import nn

from . import distributed
from .adapters import ADAPTER_KEY, AdaptedBlock, set_depth_slices
from .loading import MSAModel
from .preprocessing import ImageLayout, Normalization, intensity_window, to_uint8_rgb
from .session import Cancelled

CancelFn = Callable[[], bool]


# --------------------------------------------------------------------------------------------------
# Progress and result
# --------------------------------------------------------------------------------------------------
@dataclass
class TuneProgress:
    """One progress report: ``phase`` is 'prepare', 'eval', 'train' or 'done'."""

    phase: str
    step: int
    total_steps: int
    loss: float | None = None  # this step's training loss
    val_dice: float | None = None  # latest held-out Dice (1 click), None without a held-out split
    best_val_dice: float | None = None
    epoch: int = 0
    elapsed_s: float = 0.0
    eta_s: float | None = None
    message: str = ""


@dataclass
class TuneResult:
    """The tuned model and a JSON-able summary (stored in the adapter file's metadata)."""

    model: MSAModel
    summary: dict
    losses: list[float] = field(default_factory=list)  # every step's loss
    val_history: list[tuple[int, float]] = field(default_factory=list)  # (step, held-out Dice)
    step_times: list[float] = field(default_factory=list)  # seconds per optimiser step (for benchmarks)

    def save(self, path) -> object:
        """Write the tuned adapter (and decoder, if it was trained) atomically as safetensors."""
        return self.model.save_adapter(path, training=self.summary,
                                       include_decoder=bool(self.summary.get("train_decoder")))


# --------------------------------------------------------------------------------------------------
# Training pairs
# --------------------------------------------------------------------------------------------------
@dataclass
class TrainingSlice:
    """One labelled plane at the model's input scale (longest side = image size)."""

    rgb: np.ndarray  # (h, w, 3) uint8
    labels: np.ndarray  # (h, w) int, nearest-resized
    image_index: int
    z: int | None  # slice index in a volume, None for a 2D image


@dataclass(frozen=True)
class Pair:
    slice_id: int
    object_id: int


def _resize_nearest(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * labels.shape[0] / shape[0]).astype(int), labels.shape[0] - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * labels.shape[1] / shape[1]).astype(int), labels.shape[1] - 1)
    return labels[rows[:, None], cols[None, :]]


def _as_list(x) -> list[np.ndarray]:
    if isinstance(x, np.ndarray) or not isinstance(x, (list, tuple)):
        return [np.asarray(x)]
    return [np.asarray(a) for a in x]


def build_pairs(
    images: np.ndarray | Sequence[np.ndarray],
    labels: np.ndarray | Sequence[np.ndarray],
    *,
    image_size: int,
    normalization: Normalization | None = None,
    rgb: bool | None = None,
    min_pixels: int = 8,
) -> tuple[list[TrainingSlice], list[Pair]]:
    """(slices, pairs): every slice with any label, every object id on it with ≥ ``min_pixels`` pixels.

    Images are (Y,X), (Y,X,3), (Z,Y,X) or (Z,Y,X,3); labels are integer arrays of the spatial shape.
    Volumes are windowed once for the whole volume, like the session does.
    """
    norm = normalization or Normalization()
    imgs, labs = _as_list(images), _as_list(labels)
    if len(imgs) != len(labs):
        raise ValueError(f"{len(imgs)} images but {len(labs)} label arrays")
    resize = ResizeLongestSide(image_size)
    slices: list[TrainingSlice] = []
    pairs: list[Pair] = []
    for i, (image, lab) in enumerate(zip(imgs, labs, strict=True)):
        layout = ImageLayout.of(image, rgb)
        spatial = image.shape[: image.ndim - (1 if layout.rgb else 0)]
        if lab.shape != spatial:
            raise ValueError(
                f"labels of shape {lab.shape} do not match the image's spatial shape {spatial}; "
                "use a labels layer drawn on this image"
            )
        if not (np.issubdtype(lab.dtype, np.integer) or lab.dtype == bool):
            raise ValueError(f"labels must be integers (object ids), got dtype {lab.dtype}")
        window = intensity_window(image, norm, layout.rgb)
        planes = range(image.shape[0]) if layout.is_volume else [None]
        for z in planes:
            plane_lab = lab[z] if z is not None else lab
            if not plane_lab.any():
                continue
            plane = image[z] if z is not None else image
            small = resize.apply_image(to_uint8_rgb(plane, window))
            small_lab = _resize_nearest(np.asarray(plane_lab, dtype=np.int64), small.shape[:2])
            ids, counts = np.unique(small_lab, return_counts=True)
            objects = [int(o) for o, c in zip(ids, counts, strict=True) if o != 0 and c >= min_pixels]
            if not objects:
                continue
            sid = len(slices)
            slices.append(TrainingSlice(small, small_lab, i, z))
            pairs.extend(Pair(sid, o) for o in objects)
    return slices, pairs


def split_pairs(slices: list[TrainingSlice], pairs: list[Pair], val_fraction: float,
                rng: np.random.Generator) -> tuple[list[Pair], list[Pair], str]:
    """(train, held-out, 'slice' | 'object' | 'none'): by slice when there are several, else by object."""
    if not pairs:
        raise ValueError("no labelled objects found: paint at least two objects (or one object on two slices)")
    if val_fraction <= 0:
        return list(pairs), [], "none"
    if not 0 < val_fraction < 1:
        raise ValueError(f"the held-out share must be between 0 and 1, got {val_fraction}")
    slice_ids = sorted({p.slice_id for p in pairs})
    if len(slice_ids) >= 2:
        n_val = min(len(slice_ids) - 1, max(1, round(val_fraction * len(slice_ids))))
        held = set(rng.permutation(slice_ids)[:n_val].tolist())
        return [p for p in pairs if p.slice_id not in held], [p for p in pairs if p.slice_id in held], "slice"
    if len(pairs) >= 2:
        n_val = min(len(pairs) - 1, max(1, round(val_fraction * len(pairs))))
        order = rng.permutation(len(pairs))
        held = set(order[:n_val].tolist())
        return ([p for i, p in enumerate(pairs) if i not in held],
                [p for i, p in enumerate(pairs) if i in held], "object")
    raise ValueError(
        "only one labelled object: label at least one more object or slice so some can be held out "
        "to measure progress (or set the held-out share to 0)"
    )


# --------------------------------------------------------------------------------------------------
# Prompts (row, col in the model's input frame) and SAM's decoder
# --------------------------------------------------------------------------------------------------
def depth_map(mask: np.ndarray) -> np.ndarray:
    """Distance to the nearest pixel outside ``mask`` (image borders count as outside).

    The mean of the taxicab and chessboard chamfer distances: close to Euclidean for picking a
    point "deep inside", and ~5x cheaper than the exact transform, which matters in the step loop.
    """
    padded = np.pad(mask, 1)
    d = ndimage.distance_transform_cdt(padded, metric="taxicab").astype(np.float32)
    d += ndimage.distance_transform_cdt(padded, metric="chessboard")
    return d[1:-1, 1:-1] * 0.5


def interior_click(mask: np.ndarray, rng: np.random.Generator | None = None,
                   depth: np.ndarray | None = None) -> np.ndarray:
    """(row, col) deep inside ``mask``: the most interior pixel, or a random one of the inner half."""
    depth = depth_map(mask) if depth is None else depth
    if rng is None:
        return np.array(np.unravel_index(np.argmax(depth), depth.shape), dtype=np.float64)
    candidates = np.argwhere(depth >= 0.5 * depth.max())
    return candidates[rng.integers(len(candidates))].astype(np.float64)


def correction_click(pred: np.ndarray, gt: np.ndarray, rng: np.random.Generator | None = None,
                     max_side: int = 256) -> tuple[np.ndarray, int]:
    """((row, col), label): at the centre of the largest error; 1 in a missed region, 0 in a false positive.

    Large frames are searched on a grid of at most ``max_side`` pixels a side (the click lands within
    that grid's cell), which keeps the simulation cheap at 1024 px.
    """
    f = max(1, -(-max(gt.shape) // max_side))
    p, g = pred[::f, ::f], gt[::f, ::f]
    missed, extra = g & ~p, p & ~g
    if not missed.any() and not extra.any():
        return interior_click(gt, rng), 1
    d_missed, d_extra = depth_map(missed), depth_map(extra)
    positive = d_missed.max() >= d_extra.max()
    depth = d_missed if positive else d_extra
    if rng is None:
        point = np.array(np.unravel_index(np.argmax(depth), depth.shape))
    else:
        candidates = np.argwhere(depth >= 0.8 * depth.max())
        point = candidates[rng.integers(len(candidates))]
    point = np.minimum(point * f + f // 2, np.array(gt.shape) - 1)
    return point.astype(np.float64), int(positive)


def mask_box(mask: np.ndarray) -> np.ndarray:
    """(min_row, min_col, max_row, max_col) of a mask."""
    rows, cols = np.nonzero(mask)
    return np.array([rows.min(), cols.min(), rows.max(), cols.max()], dtype=np.float64)


def jittered_box(mask: np.ndarray, rng: np.random.Generator, scale: float = 0.1) -> np.ndarray:
    """The mask's box with each edge moved by noise of 10 % of the side (at most 20 %), as SAM trains."""
    box = mask_box(mask)
    h, w = box[2] - box[0] + 1, box[3] - box[1] + 1
    sides = np.array([h, w, h, w])
    noise = np.clip(rng.normal(0.0, scale, 4), -2 * scale, 2 * scale) * sides
    box = box + noise
    box[[0, 2]] = np.clip(box[[0, 2]], 0, mask.shape[0] - 1)
    box[[1, 3]] = np.clip(box[[1, 3]], 0, mask.shape[1] - 1)
    if box[2] <= box[0] or box[3] <= box[1]:
        return mask_box(mask)
    return box


def decode(sam: nn.Module, embedding: torch.Tensor, points_rc: np.ndarray | None, point_labels: np.ndarray | None,
           box_rc: np.ndarray | None, multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's prompt encoder + mask decoder on one (1,C,g,g) embedding: (low-res logits, IoU scores).

    Points are (row, col) and the box (min_row, min_col, max_row, max_col) in the model's input frame;
    SAM wants (x, y) = (col, row), which is the swap done here and nowhere else in tuning.
    """
    device = embedding.device
    points = None
    if points_rc is not None and len(points_rc):
        xy = torch.as_tensor(np.asarray(points_rc, dtype=np.float32)[:, ::-1].copy(), device=device)[None]
        lab = torch.as_tensor(np.asarray(point_labels, dtype=np.int64), device=device)[None]
        points = (xy, lab)
    boxes = None
    if box_rc is not None:
        boxes = torch.as_tensor(np.asarray(box_rc, dtype=np.float32)[[1, 0, 3, 2]], device=device)[None]
    sparse, dense = sam.prompt_encoder(points=points, boxes=boxes, masks=None)
    return sam.mask_decoder(
        image_embeddings=embedding,
        image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
    )


def upscale_logits(low_res: torch.Tensor, image_size: int, hw: tuple[int, int]) -> torch.Tensor:
    """Low-res logits → the unpadded (h, w) input frame, as SAM's postprocessing does."""
    up = F.interpolate(low_res.float(), (image_size, image_size), mode="bilinear", align_corners=False)
    return up[..., : hw[0], : hw[1]]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return float(2.0 * np.logical_and(a, b).sum() / s) if s else 1.0


# --------------------------------------------------------------------------------------------------
# Encoder with an optional frozen-prefix cache
# --------------------------------------------------------------------------------------------------
def dihedral(a: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 flips/90° rotations of the first two axes (k = 0 is the identity)."""
    if k >= 4:
        a = a[:, ::-1]
    return np.ascontiguousarray(np.rot90(a, k % 4))


def first_adapted_block(sam: nn.Module) -> int:
    """Index of the first encoder block with adapters (number of blocks when none has)."""
    blocks = sam.image_encoder.blocks
    return next((i for i, b in enumerate(blocks) if isinstance(b, AdaptedBlock)), len(blocks))


class PrefixCache:
    """LRU of the frozen first blocks' output tokens, keyed by (slice, dihedral variant), under a byte budget."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = int(budget_bytes)
        self._items: OrderedDict[tuple[int, int], torch.Tensor] = OrderedDict()
        self.nbytes = 0
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: tuple[int, int]) -> torch.Tensor | None:
        t = self._items.get(key)
        if t is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return t

    def put(self, key: tuple[int, int], tokens: torch.Tensor) -> None:
        size = tokens.element_size() * tokens.nelement()
        if size > self.budget_bytes:
            return
        self._items[key] = tokens
        self.nbytes += size
        while self.nbytes > self.budget_bytes:
            _, old = self._items.popitem(last=False)
            self.nbytes -= old.element_size() * old.nelement()


class _Encoder:
    """Runs SAM's image encoder in two parts so the frozen prefix can be cached."""

    def __init__(self, model: MSAModel, start: int, cache: PrefixCache | None, checkpoint: bool = False) -> None:
        self.model = model
        self.encoder = model.sam.image_encoder
        self.start = start  # first block that must run with gradients
        self.cache = cache
        self.checkpoint = checkpoint  # recompute block activations in backward instead of keeping them
        sam = model.sam
        self.mean = sam.pixel_mean.to(model.device)
        self.std = sam.pixel_std.to(model.device)

    def pixels(self, rgb: np.ndarray, contrast: float = 1.0, brightness: float = 0.0) -> torch.Tensor:
        """(3,S,S) normalised, padded input from an (h,w,3) uint8 plane already at the input scale."""
        size = self.model.image_size
        x = torch.as_tensor(rgb, device=self.model.device).permute(2, 0, 1).float()
        if contrast != 1.0 or brightness != 0.0:
            x = ((x - 127.5) * contrast + 127.5 + brightness * 255.0).clamp(0, 255)
        x = (x - self.mean) / self.std
        return F.pad(x, (0, size - x.shape[2], 0, size - x.shape[1]))

    def _autocast(self):
        dtype = self.model.autocast_dtype
        if dtype is None:
            return torch.autocast("cpu", enabled=False)
        return torch.autocast(self.model.device.type, dtype=dtype)

    def prefix(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), self._autocast():
            t = self.encoder.patch_embed(x)
            if self.encoder.pos_embed is not None:
                t = t + self.encoder.pos_embed
            for blk in self.encoder.blocks[: self.start]:
                t = blk(t)
        return t.float()

    def _blocks(self, t: torch.Tensor, blocks) -> torch.Tensor:
        for blk in blocks:
            needs_graph = t.requires_grad or any(p.requires_grad for p in blk.parameters())
            if self.checkpoint and torch.is_grad_enabled() and needs_graph:
                t = torch.utils.checkpoint.checkpoint(blk, t, use_reentrant=False)
            else:
                t = blk(t)
        return t

    def suffix(self, t: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            t = self._blocks(t, self.encoder.blocks[self.start:])
            return self.encoder.neck(t.permute(0, 3, 1, 2)).float()

    def full(self, x: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            if not self.checkpoint:
                return self.encoder(x).float()
            t = self.encoder.patch_embed(x)
            if self.encoder.pos_embed is not None:
                t = t + self.encoder.pos_embed
            t = self._blocks(t, self.encoder.blocks)
            return self.encoder.neck(t.permute(0, 3, 1, 2)).float()

    def tokens(self, keys: list[tuple[int, int]],
               make_input: Callable[[tuple[int, int]], torch.Tensor]) -> torch.Tensor:
        """Prefix tokens for a batch, from the cache where possible."""
        out: list[torch.Tensor | None] = [self.cache.get(k) if self.cache is not None else None for k in keys]
        todo = [i for i, t in enumerate(out) if t is None]
        if todo:
            fresh = self.prefix(torch.stack([make_input(keys[i]) for i in todo]))
            for j, i in enumerate(todo):
                out[i] = fresh[j : j + 1]
                if self.cache is not None:
                    self.cache.put(keys[i], out[i])
        return torch.cat(out)


# --------------------------------------------------------------------------------------------------
# One training step as a module (so DistributedDataParallel can wrap it)
# --------------------------------------------------------------------------------------------------
@dataclass
class _Sample:
    slice_id: int
    object_id: int
    variant: int  # dihedral 0..7
    contrast: float
    brightness: float
    use_box: bool
    rounds: int  # correction rounds after the first prompt
    rng: np.random.Generator


class _StepModule(nn.Module):
    """Computes the loss of a batch of samples: encoder once per sample, decoder once per prompt round."""

    def __init__(self, model: MSAModel, encoder: _Encoder, slices: list[TrainingSlice], iou_weight: float) -> None:
        super().__init__()
        self.sam = model.sam
        self.image_size = model.image_size
        self.enc = encoder
        self.slices = slices
        self.iou_weight = iou_weight
        self._depths: dict[tuple[int, int], np.ndarray] = {}

    def depth(self, slice_id: int, object_id: int) -> np.ndarray:
        """The object's depth map, computed once (a flipped depth map is the flipped mask's depth map)."""
        key = (slice_id, object_id)
        if key not in self._depths:
            self._depths[key] = depth_map(self.slices[slice_id].labels == object_id)
        return self._depths[key]

    def _views(self, s: _Sample) -> tuple[np.ndarray, np.ndarray]:
        sl = self.slices[s.slice_id]
        return dihedral(sl.rgb, s.variant), dihedral(self.depth(s.slice_id, s.object_id), s.variant)

    def forward(self, samples: list[_Sample]) -> torch.Tensor:
        views = [self._views(s) for s in samples]
        if self.enc.cache is not None:
            def make_input(key: tuple[int, int]) -> torch.Tensor:
                return self.enc.pixels(dihedral(self.slices[key[0]].rgb, key[1]))

            keys = [(s.slice_id, s.variant) for s in samples]
            emb = self.enc.suffix(self.enc.tokens(keys, make_input))
        else:
            x = torch.stack([self.enc.pixels(v[0], s.contrast, s.brightness) for v, s in zip(views, samples,
                                                                                               strict=True)])
            emb = self.enc.full(x)
        losses = [self._sample_loss(emb[i : i + 1], views[i][1], samples[i]) for i in range(len(samples))]
        return torch.stack(losses).mean()

    def _sample_loss(self, emb: torch.Tensor, depth: np.ndarray, s: _Sample) -> torch.Tensor:
        rng = s.rng
        gt_np = depth > 0
        hw = gt_np.shape
        gt = torch.as_tensor(gt_np, dtype=torch.float32, device=emb.device)
        points: list[np.ndarray] = []
        labels: list[int] = []
        box = jittered_box(gt_np, rng) if s.use_box else None
        if box is None:
            points.append(interior_click(gt_np, rng, depth))
            labels.append(1)
        total = emb.new_zeros(())
        for r in range(1 + s.rounds):
            multimask = len(points) == 1 and box is None
            low, iou_pred = decode(self.sam, emb, np.array(points) if points else None,
                                   np.array(labels) if labels else None, box, multimask)
            logits = upscale_logits(low, self.image_size, hw)[0]  # (M, h, w)
            mask_loss = _bce_dice(logits, gt)
            with torch.no_grad():
                pred = logits > 0
                inter = (pred & (gt > 0)).sum((1, 2)).float()
                union = (pred | (gt > 0)).sum((1, 2)).float().clamp(min=1)
                iou_true = inter / union
            iou_loss = F.mse_loss(iou_pred[0].float(), iou_true)
            total = total + mask_loss.min() + self.iou_weight * iou_loss
            if r < s.rounds:
                shown = int(torch.argmax(iou_pred[0])) if multimask else 0  # what the session would show
                point, label = correction_click(pred[shown].cpu().numpy(), gt_np, rng)
                points.append(point)
                labels.append(label)
        return total / (1 + s.rounds)


def _bce_dice(logits: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Per-mask BCE + soft Dice, (M,h,w) logits against one (h,w) mask."""
    target = gt.expand_as(logits)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean((1, 2))
    p = torch.sigmoid(logits)
    inter = (p * target).sum((1, 2))
    soft_dice = 1.0 - (2.0 * inter + 1.0) / (p.sum((1, 2)) + target.sum((1, 2)) + 1.0)
    return bce + soft_dice


# --------------------------------------------------------------------------------------------------
# Held-out evaluation
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def _evaluate(step_module: _StepModule, pairs: list[Pair], dist_info: distributed.DistInfo,
              device: torch.device) -> tuple[float, float] | None:
    """Mean held-out Dice for (one most-interior click, the exact box), over all processes' shares."""
    if not pairs:
        return None
    enc, sam, size = step_module.enc, step_module.sam, step_module.image_size
    mine = pairs[dist_info.rank :: dist_info.world_size]
    sums = [0.0, 0.0, 0.0]
    by_slice: dict[int, list[Pair]] = {}
    for p in mine:
        by_slice.setdefault(p.slice_id, []).append(p)
    for sid, group in by_slice.items():
        sl = step_module.slices[sid]
        if enc.cache is not None:
            emb = enc.suffix(enc.tokens([(sid, 0)], lambda key: enc.pixels(step_module.slices[key[0]].rgb)))
        else:
            emb = enc.full(enc.pixels(sl.rgb)[None])
        for p in group:
            gt = sl.labels == p.object_id
            click_point = interior_click(gt, depth=step_module.depth(sid, p.object_id))
            low, iou = decode(sam, emb, click_point[None], np.array([1]), None, True)
            best = int(torch.argmax(iou[0]))
            click = upscale_logits(low, size, gt.shape)[0, best] > 0
            low, _ = decode(sam, emb, None, None, mask_box(gt), False)
            boxed = upscale_logits(low, size, gt.shape)[0, 0] > 0
            sums[0] += dice(click.cpu().numpy(), gt)
            sums[1] += dice(boxed.cpu().numpy(), gt)
            sums[2] += 1
    click_sum, box_sum, n = distributed.all_reduce_sum(sums, device)
    return click_sum / n, box_sum / n


# --------------------------------------------------------------------------------------------------
# tune()
# --------------------------------------------------------------------------------------------------
def _state_digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:12]


def tune(
    model: MSAModel,
    images: np.ndarray | Sequence[np.ndarray],
    labels: np.ndarray | Sequence[np.ndarray],
    *,
    steps: int = 200,
    lr: float = 1e-4,
    weight_decay: float = 0.01,
    batch_size: int = 2,
    val_fraction: float = 0.2,
    seed: int = 0,
    train_decoder: bool = False,
    augment: bool = True,
    box_share: float = 0.3,
    max_correction_rounds: int = 3,
    iou_weight: float = 1.0,
    patience: int = 5,
    min_delta: float = 1e-3,
    eval_every: int | None = None,
    cache_prefix: bool | None = None,
    cache_budget_bytes: int = 1 << 30,
    checkpoint_blocks: bool = False,
    normalization: Normalization | None = None,
    rgb: bool | None = None,
    inplace: bool = False,
    full_finetune: bool = False,
    progress: Callable[[TuneProgress], None] | None = None,
    cancel: CancelFn | None = None,
) -> TuneResult:
    """Tune ``model``'s adapters on labelled images; returns the tuned model and a summary.

    ``steps`` optimiser steps of ``batch_size`` samples per process. Held-out Dice (one interior
    click) is measured before training and after every epoch (one pass over the training pairs, at
    least steps/20 steps, or ``eval_every``); training stops early after ``patience`` evaluations
    without improvement and the best weights are kept. ``cache_prefix`` (default: when adapters start
    after block 0) caches the frozen blocks' tokens. ``checkpoint_blocks`` recomputes each trained
    block's activations during the backward pass instead of keeping them (much less memory, a
    slower step; for large images or small GPUs). ``full_finetune`` trains every weight (for the
    benchmark's comparison only: the result cannot be saved as an adapter). Under an initialised
    torch.distributed group, gradients are averaged with DistributedDataParallel, samples are
    sharded by rank and only rank 0 reports progress. Raises ``Cancelled`` when ``cancel()`` turns true.
    """
    if steps < 0:
        raise ValueError(f"steps must be ≥ 0, got {steps}")
    if batch_size < 1:
        raise ValueError(f"batch size must be ≥ 1, got {batch_size}")
    if model.adapter_config is None and not full_finetune:
        raise ValueError("the model has no adapters to tune; load it with adapters (the default)")
    t0 = time.perf_counter()
    dist_info = distributed.current()
    norm = normalization or model.normalization
    rng = np.random.default_rng(seed)

    def report(p: TuneProgress) -> None:
        if progress is not None and dist_info.is_main:
            p.elapsed_s = time.perf_counter() - t0
            progress(p)

    def check_cancel() -> None:
        flag = cancel is not None and cancel()
        if dist_info.enabled:
            flag = distributed.any_true(flag, model.device)
        if flag:
            raise Cancelled("tuning was cancelled; the model is unchanged")

    report(TuneProgress("prepare", 0, steps, message="preparing training pairs"))
    slices, pairs = build_pairs(images, labels, image_size=model.image_size, normalization=norm, rgb=rgb)
    train_pairs, val_pairs, split = split_pairs(slices, pairs, val_fraction, rng)
    check_cancel()

    target = model if inplace else model.clone()
    sam = target.sam
    snapshot = model.trainable_state() if inplace else None
    flags = {n: p.requires_grad for n, p in sam.named_parameters()}
    try:
        result = _train(
            target, slices, train_pairs, val_pairs, split, dist_info=dist_info, steps=steps, lr=lr,
            weight_decay=weight_decay, batch_size=batch_size, seed=seed, train_decoder=train_decoder,
            augment=augment, box_share=box_share, max_rounds=max_correction_rounds, iou_weight=iou_weight,
            patience=patience, min_delta=min_delta, eval_every=eval_every, cache_prefix=cache_prefix,
            cache_budget_bytes=cache_budget_bytes, checkpoint_blocks=checkpoint_blocks,
            full_finetune=full_finetune, report=report,
            check_cancel=check_cancel, t0=t0,
        )
    except BaseException:
        if snapshot is not None:
            target.restore_state(snapshot)
        raise
    finally:
        for n, p in sam.named_parameters():
            p.requires_grad = flags[n]
        sam.eval()
    state = target.trainable_state()
    target.normalization = norm
    target.adapter_source = f"tuned-{_state_digest(state)}"  # a unique weights key for embedding caches
    target.adapter_metadata = {"training": result.summary}
    target.version += 1
    result.model = target
    result.summary["normalization"] = norm.to_dict()
    result.summary["time_s"] = round(time.perf_counter() - t0, 2)
    report(TuneProgress("done", result.summary["steps_done"], steps, val_dice=result.summary["val_dice_after"],
                        best_val_dice=result.summary["val_dice_after"], message="done"))
    return result


def _set_trainable(sam: nn.Module, train_decoder: bool, full_finetune: bool) -> list[nn.Parameter]:
    for name, p in sam.named_parameters():
        if full_finetune:
            p.requires_grad = True
        else:
            # Depth adapters get no gradient from single slices: leave them out of 2D tuning.
            p.requires_grad = (ADAPTER_KEY in name and "Depth_Adapter" not in name) or (
                train_decoder and name.startswith("mask_decoder.")
            )
    return [p for p in sam.parameters() if p.requires_grad]


def _train(model: MSAModel, slices, train_pairs, val_pairs, split, *, dist_info, steps, lr, weight_decay,
           batch_size, seed, train_decoder, augment, box_share, max_rounds, iou_weight, patience, min_delta,
           eval_every, cache_prefix, cache_budget_bytes, checkpoint_blocks, full_finetune, report, check_cancel,
           t0) -> TuneResult:
    sam = model.sam
    device = model.device
    set_depth_slices(sam, 1)
    params = _set_trainable(sam, train_decoder, full_finetune)
    start = 0 if full_finetune else first_adapted_block(sam)
    use_cache = (start > 0) if cache_prefix is None else bool(cache_prefix)
    if use_cache and start == 0:
        raise ValueError("the prefix cache needs adapters only in the last blocks (AdapterConfig(blocks=...))")
    encoder = _Encoder(model, start, PrefixCache(cache_budget_bytes) if use_cache else None, checkpoint_blocks)
    step_module = _StepModule(model, encoder, slices, iou_weight)
    runner: nn.Module = step_module
    if dist_info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        # Broadcasts rank 0's weights to all processes first, so every process starts the same. Every
        # trainable weight gets a gradient each step (Depth adapters are frozen in 2D tuning), except
        # in full fine-tuning, where e.g. the negative-point embedding may be unused in a step.
        runner = DistributedDataParallel(step_module, device_ids=None, find_unused_parameters=full_finetune)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)

    world = dist_info.world_size
    global_batch = batch_size * world
    epoch_steps = max(1, math.ceil(len(train_pairs) / global_batch))
    interval = eval_every or max(epoch_steps, math.ceil(steps / 20))
    order: list[int] = []
    epoch = 0

    def next_indices(step: int) -> list[int]:
        while len(order) < (step + 1) * global_batch:
            order.extend(np.random.default_rng([seed, 1, len(order)]).permutation(len(train_pairs)).tolist())
        return order[step * global_batch : (step + 1) * global_batch]

    def make_sample(step: int, slot: int, pair_index: int) -> _Sample:
        r = np.random.default_rng([seed, 2, step, slot])
        pair = train_pairs[pair_index]
        return _Sample(
            slice_id=pair.slice_id,
            object_id=pair.object_id,
            variant=int(r.integers(8)) if augment else 0,
            contrast=float(r.uniform(0.8, 1.2)) if augment and not use_cache else 1.0,
            brightness=float(r.uniform(-0.1, 0.1)) if augment and not use_cache else 0.0,
            use_box=bool(r.random() < box_share),
            rounds=int(r.integers(1, max_rounds + 1)) if max_rounds > 0 else 0,
            rng=r,
        )

    val_history: list[tuple[int, float]] = []
    box_history: list[tuple[int, float]] = []
    first = _evaluate(step_module, val_pairs, dist_info, device)
    if first is not None:
        val_history.append((0, first[0]))
        box_history.append((0, first[1]))
    best = first[0] if first is not None else None
    best_step = 0
    best_state = _trainable_copy(sam) if first is not None else None
    report(TuneProgress("eval", 0, steps, val_dice=best, best_val_dice=best, message="held-out Dice before tuning"))

    losses: list[float] = []
    step_times: list[float] = []
    stale = 0
    stopped = "completed"
    train_time = 0.0
    step = 0
    for step in range(1, steps + 1):
        check_cancel()
        ts = time.perf_counter()
        idx = next_indices(step - 1)
        local = [(slot, i) for slot, i in enumerate(idx) if slot % world == dist_info.rank]
        samples = [make_sample(step, slot, i) for slot, i in local]
        loss = runner(samples)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        loss_value = distributed.all_reduce_sum([float(loss.detach())], device)[0] / world
        losses.append(loss_value)
        step_times.append(time.perf_counter() - ts)
        train_time += step_times[-1]
        epoch = (step * global_batch) // max(1, len(train_pairs))
        eta = train_time / step * (steps - step)
        latest = val_history[-1][1] if val_history else None
        report(TuneProgress("train", step, steps, loss=loss_value, val_dice=latest, best_val_dice=best,
                            epoch=epoch, eta_s=eta))
        if val_pairs and (step % interval == 0 or step == steps):
            check_cancel()
            click, boxed = _evaluate(step_module, val_pairs, dist_info, device)
            val_history.append((step, click))
            box_history.append((step, boxed))
            if click > best + min_delta:
                best, best_step, best_state, stale = click, step, _trainable_copy(sam), 0
            else:
                stale += 1
            report(TuneProgress("eval", step, steps, loss=loss_value, val_dice=click, best_val_dice=best,
                                epoch=epoch, eta_s=eta))
            if patience and stale >= patience:
                stopped = "early_stopping"
                break
    steps_done = step if steps else 0
    if best_state is not None:
        with torch.no_grad():
            for p, saved in zip(params, best_state, strict=True):
                p.copy_(saved)
    del runner

    n = len(losses)
    k = max(1, n // 10)
    box_at_best = dict(box_history).get(best_step) if box_history else None
    summary = {
        "method": "napari-msa few-shot adapter tuning",
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": model.config.name,
        "image_size": model.image_size,
        "steps_planned": steps,
        "steps_done": steps_done,
        "stopped": stopped,
        "epochs": round(steps_done * global_batch / max(1, len(train_pairs)), 2),
        "best_step": best_step,
        "n_train_pairs": len(train_pairs),
        "n_val_pairs": len(val_pairs),
        "n_slices": len(slices),
        "split": split,
        "val_dice_before": _r(first[0]) if first else None,
        "val_dice_after": _r(best),
        "val_box_dice_before": _r(first[1]) if first else None,
        "val_box_dice_after": _r(box_at_best),
        "loss_first": _r(float(np.mean(losses[:k]))) if n else None,
        "loss_last": _r(float(np.mean(losses[-k:]))) if n else None,
        "val_history": [[s, _r(d)] for s, d in val_history],
        "lr": lr,
        "weight_decay": weight_decay,
        "batch_size": batch_size,
        "world_size": world,
        "seed": seed,
        "augment": augment,
        "train_decoder": bool(train_decoder),
        "full_finetune": bool(full_finetune),
        "trainable_parameters": sum(p.numel() for p in params),
        "prefix_cache": use_cache,
        "prefix_cache_entries": len(encoder.cache) if encoder.cache is not None else 0,
        "prefix_cache_hits": encoder.cache.hits if encoder.cache is not None else 0,
        "first_trained_block": start,
        "checkpoint_blocks": bool(checkpoint_blocks),
        "step_time_s": _r(train_time / max(1, n)),
    }
    return TuneResult(model=model, summary=summary, losses=losses, val_history=val_history, step_times=step_times)


def _trainable_copy(sam: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in sam.parameters() if p.requires_grad]


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 5)
