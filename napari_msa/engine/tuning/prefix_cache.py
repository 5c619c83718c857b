"""The encoder as tuning uses it, with an optional cache of the frozen blocks before the first adapter.

The tokens after the frozen first blocks depend on the input pixels only, so they are computed once per
(slice, dihedral variant) and reused; flipping the image is not flipping the token grid, hence one
entry per variant.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from ..model.msa_model import MSAModel
from ..network.encoder import ImageEncoder
from ..network.preprocessing import normalize_pixels


# --------------------------------------------------------------------------------------------------
# Encoder with an optional frozen-prefix cache
# --------------------------------------------------------------------------------------------------
def dihedral(a: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 flips/90° rotations of the first two axes (k = 0 is the identity)."""
    if k >= 4:
        a = a[:, ::-1]
    return np.ascontiguousarray(np.rot90(a, k % 4))


def first_adapted_block(sam: nn.Module) -> int:
    """Index of the first encoder unit with adapters (number of units when none has)."""
    units = sam.image_encoder.units()
    return next((i for i, u in enumerate(units) if getattr(u, "Space_Adapter", None) is not None), len(units))


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


class SplitEncoder:
    """Runs SAM's image encoder in two parts so the frozen prefix can be cached."""

    def __init__(self, model: MSAModel, start: int, cache: PrefixCache | None, checkpoint: bool = False) -> None:
        self.model = model
        self.encoder: ImageEncoder = model.sam.image_encoder
        self.start = start  # first block that must run with gradients
        self.cache = cache
        self.checkpoint = checkpoint  # recompute block activations in backward instead of keeping them
        self.units = self.encoder.units()
        # With the whole encoder frozen (decoder-only tuning) the cache holds finished embeddings: a step
        # then costs one decoder pass per prompt round.
        self.frozen_head = start >= len(self.units) and not any(p.requires_grad for p in self.encoder.parameters())
        sam = model.sam
        self.mean = sam.pixel_mean.to(model.device)
        self.std = sam.pixel_std.to(model.device)

    def pixels(self, rgb: np.ndarray, contrast: float = 1.0, brightness: float = 0.0) -> torch.Tensor:
        """(3,S,S) normalised, padded input from an (h,w,3) uint8 plane already at the input scale."""
        size = self.model.image_size
        x = torch.as_tensor(rgb, device=self.model.device).permute(2, 0, 1).float()
        if contrast != 1.0 or brightness != 0.0:
            x = ((x - 127.5) * contrast + 127.5 + brightness * 255.0).clamp(0, 255)
        x = normalize_pixels(x, self.model.config.pixel_norm, self.mean, self.std)
        return F.pad(x, (0, size - x.shape[2], 0, size - x.shape[1]))

    def _autocast(self):
        dtype = self.model.autocast_dtype
        if dtype is None:
            return torch.autocast("cpu", enabled=False)
        return torch.autocast(self.model.device.type, dtype=dtype)

    def prefix(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), self._autocast():
            t = self.encoder.stem(x)
            for unit in self.units[: self.start]:
                t = unit(t)
            if self.frozen_head:
                t = self.encoder.head(t)
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
        if self.frozen_head:
            return t
        with self._autocast():
            t = self._blocks(t, self.units[self.start:])
            return self.encoder.head(t).float()

    def full(self, x: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            if not self.checkpoint:
                return self.encoder(x).float()
            t = self._blocks(self.encoder.stem(x), self.units)
            return self.encoder.head(t).float()

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


