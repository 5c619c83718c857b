"""The mask losses tuning and demo training share: per-mask BCE + soft Dice, and the hard IoU the score head
learns to predict. All reduce over the last two (spatial) axes, so (N, M, h, w) logits give (N, M) values."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice of sigmoid(logits) against ``target`` (same shape), smoothed by 1 so empty masks are finite."""
    p = torch.sigmoid(logits)
    inter = (p * target).sum((-2, -1))
    return 1.0 - (2.0 * inter + 1.0) / (p.sum((-2, -1)) + target.sum((-2, -1)) + 1.0)


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-mask mean BCE + soft Dice (SAM's recipe, with Dice for the focal term): logits and target of one shape."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean((-2, -1))
    return bce + soft_dice_loss(logits, target)


def hard_iou(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """IoU of boolean masks (broadcast against each other), 0 where both are empty: the score head's target."""
    inter = (pred & truth).sum((-2, -1)).float()
    return inter / (pred | truth).sum((-2, -1)).float().clamp(min=1)
