"""One tuning step: up to ``batch_size`` objects of one slice, prompted the way an annotator prompts, decoded
together, and their loss.

A sample is one slice (one dihedral variant) and several of its objects: a click deep inside (or, for a share,
a jittered box), then 0..n correction clicks at the centre of the largest error. The loss is BCE + soft Dice on
the masks of every round (for a lone click SAM answers with three masks; the best one is trained, as in SAM) plus
SAM's IoU-score regression, so the mask the session picks by its score is the good one. The step is an
``nn.Module`` so DistributedDataParallel can wrap it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .loading import MSAModel
from .prefix_cache import _Encoder, dihedral
from .tuning_data import (
    TrainingSlice,
    correction_click,
    decode_batch,
    depth_map,
    interior_click,
    jittered_box,
    upscale_logits,
)


@dataclass
class Sample:
    """One step's work for one process: several objects of one slice (one dihedral variant), prompted
    together, so the decoder runs once per prompt kind and round for all of them."""

    slice_id: int
    object_ids: list[int]
    use_box: list[bool]  # per object: a jittered box first instead of a click
    variant: int  # dihedral 0..7
    contrast: float
    brightness: float
    rounds: int  # correction rounds after the first prompt
    rng: np.random.Generator


class StepModule(nn.Module):
    """Computes the loss of one sample: the encoder once, the decoder once per prompt kind and round."""

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
            self._depths[key] = depth_map(self.slices[slice_id].mask(object_id))
        return self._depths[key]

    def forward(self, samples: list[Sample]) -> torch.Tensor:
        return torch.stack([self._sample_loss(s) for s in samples]).mean()

    def _sample_loss(self, s: Sample) -> torch.Tensor:
        rgb = dihedral(self.slices[s.slice_id].rgb, s.variant)
        if self.enc.cache is not None:
            def make_input(key: tuple[int, int]) -> torch.Tensor:
                return self.enc.pixels(dihedral(self.slices[key[0]].rgb, key[1]))

            emb = self.enc.suffix(self.enc.tokens([(s.slice_id, s.variant)], make_input))
        else:
            emb = self.enc.full(self.enc.pixels(rgb, s.contrast, s.brightness)[None])
        depths = [dihedral(self.depth(s.slice_id, o), s.variant) for o in s.object_ids]
        losses = []
        for use_box in (False, True):  # clicks and boxes are decoded apart (different prompt shapes)
            chosen = [d for d, b in zip(depths, s.use_box, strict=True) if b == use_box]
            if chosen:
                losses.append(self._loss(emb, chosen, use_box, s.rounds, s.rng) * len(chosen))
        return torch.stack(losses).sum() / len(depths)

    def _loss(self, emb: torch.Tensor, depths: list[np.ndarray], use_box: bool, rounds: int,
              rng: np.random.Generator) -> torch.Tensor:
        """Mean loss over objects and rounds: first prompt, then ``rounds`` correction clicks."""
        truth_np = np.stack([d > 0 for d in depths])  # (N, h, w)
        hw = truth_np.shape[1:]
        truth = torch.as_tensor(truth_np, dtype=torch.float32, device=emb.device)
        boxes = np.stack([jittered_box(t, rng) for t in truth_np]) if use_box else None
        points = [[] if use_box else [interior_click(t, rng, d)] for t, d in zip(truth_np, depths, strict=True)]
        labels = [[] if use_box else [1] for _ in depths]
        total = emb.new_zeros(())
        for r in range(1 + rounds):
            multimask = r == 0 and not use_box  # a lone click: SAM answers with three masks
            low, iou_pred = decode_batch(self.sam, emb, np.array(points) if points[0] else None,
                                         np.array(labels) if labels[0] else None, boxes, multimask)
            logits = upscale_logits(low, self.image_size, hw)  # (N, M, h, w)
            mask_loss = bce_dice(logits, truth)  # (N, M)
            with torch.no_grad():
                pred = logits > 0
                gt = truth[:, None] > 0
                iou_true = (pred & gt).sum((2, 3)).float() / (pred | gt).sum((2, 3)).float().clamp(min=1)
            iou_loss = F.mse_loss(iou_pred.float(), iou_true)
            total = total + mask_loss.min(1).values.mean() + self.iou_weight * iou_loss
            if r < rounds:
                shown = iou_pred.argmax(1) if multimask else torch.zeros(len(depths), dtype=torch.long)
                shown_np = pred[torch.arange(len(depths)), shown.cpu()].cpu().numpy()
                for i in range(len(depths)):
                    point, label = correction_click(shown_np[i], truth_np[i], rng)
                    points[i].append(point)
                    labels[i].append(label)
        return total / (1 + rounds)


def bce_dice(logits: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Per-mask BCE + soft Dice: (N,M,h,w) logits against (N,h,w) masks → (N,M)."""
    target = truth[:, None].expand_as(logits)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean((2, 3))
    p = torch.sigmoid(logits)
    inter = (p * target).sum((2, 3))
    soft_dice = 1.0 - (2.0 * inter + 1.0) / (p.sum((2, 3)) + target.sum((2, 3)) + 1.0)
    return bce + soft_dice
