"""The image encoder as the engine uses it beyond its forward pass: the stem, the units between stem and head in run
order, the head, and the blocks MSA adapters go into. Both encoders provide it (SAM's ViT here, LiteMedSAM's TinyViT
in ``tiny_vit``), so the prefix cache, tuning and adapter injection call it instead of asking which encoder they
hold. ``forward`` is each encoder's own: ``head(units(stem(x)))`` computes the same numbers.
"""

from __future__ import annotations

from typing import ClassVar, Protocol

import torch
from segment_anything.modeling import ImageEncoderViT
from torch import nn


class ImageEncoder(Protocol):
    """What an image encoder offers the engine; ``sam.image_encoder`` is one."""

    img_size: int  # the input size; segment_anything's Sam and SamPredictor read this name
    adapters_built_in: ClassVar[bool]  # its blocks have adapter slots (TinyViT); else they are converted (SAM's ViT)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) pixels -> the first units' input tokens."""
        ...

    def units(self) -> list[nn.Module]:
        """Every module between the stem and the head, in the order the forward pass runs them."""
        ...

    def head(self, tokens: torch.Tensor) -> torch.Tensor:
        """The last unit's tokens -> the (B, C, H, W) image embedding."""
        ...

    def adapter_blocks(self) -> list[nn.Module]:
        """The blocks MSA adapters go into, in order (``AdapterConfig.blocks`` numbers them)."""
        ...

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


class SamViTEncoder(ImageEncoderViT):
    """SAM's ViT image encoder: segment_anything's own class, weights and forward pass, with the interface."""

    adapters_built_in: ClassVar[bool] = False

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch_embed(x)
        return t + self.pos_embed if self.pos_embed is not None else t

    def units(self) -> list[nn.Module]:
        return list(self.blocks)

    def head(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.neck(tokens.permute(0, 3, 1, 2))

    def adapter_blocks(self) -> list[nn.Module]:
        return list(self.blocks)
