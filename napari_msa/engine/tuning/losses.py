"""The mask losses tuning and demo training share: per-mask BCE + soft Dice, and the hard IoU the score head
learns to predict. All reduce over the last two (spatial) axes, so (N, M, h, w) logits give (N, M) values."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice of sigmoid(logits) against ``target`` (same shape), smoothed by 1 so empty masks are finite."""
    p = torch.sigmoid(logits)
    inter = (p * target).sum((-2, -1))
    return 1.0 - (2.0 * inter + 1.0) / (p.sum((-2, -1)) + target.sum((-2, -1)) + 1.0)


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Per-mask mean BCE + soft Dice (SAM's recipe, with Dice for the focal term): logits and target of one shape.
    ``weight`` (broadcast to them): the BCE's per-pixel weights, normalised per mask (e.g. the object's edge
    weighing more, ``edge_band``)."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    if weight is None:
        bce = bce.mean((-2, -1))
    else:
        weight = weight.expand_as(bce)
        bce = (bce * weight).sum((-2, -1)) / weight.sum((-2, -1)).clamp(min=1e-6)
    return bce + soft_dice_loss(logits, target)


EDGE_BAND_PX = 2  # pixels on either side of an object's edge that ``edge_band`` marks


def edge_band(truth: np.ndarray, width: int = EDGE_BAND_PX) -> np.ndarray:
    """(N, h, w) bool: the pixels within ``width`` px of each object's edge, inside or outside: where the
    click protocol finds what sessions leave wrong (BENCHMARKS.md, "Where the last per cents are")."""
    out = np.zeros(truth.shape, dtype=bool)
    for i, t in enumerate(np.asarray(truth, dtype=bool)):
        out[i] = ndimage.binary_dilation(t, iterations=width) & ~ndimage.binary_erosion(t, iterations=width,
                                                                                            border_value=1)
    return out


def hard_iou(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """IoU of boolean masks (broadcast against each other), 0 where both are empty: the score head's target."""
    inter = (pred & truth).sum((-2, -1)).float()
    return inter / (pred | truth).sum((-2, -1)).float().clamp(min=1)
