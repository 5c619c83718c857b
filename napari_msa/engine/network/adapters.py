"""Medical SAM Adapters (MSA) injected into segment_anything's modules.

The adapters are attached to SAM's own ``Block`` instances under the reference code's attribute
names (``Space_Adapter``, ``MLP_Adapter``, ``Depth_Adapter`` with ``D_fc1``/``D_fc2``), so Meta's
SAM checkpoints and the MSA reference checkpoints load with unchanged key names.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import torch
from segment_anything.modeling.image_encoder import Block, window_partition, window_unpartition
from segment_anything.modeling.transformer import TwoWayAttentionBlock
from torch import nn

from .encoder import ImageEncoder

ADAPTER_KEY = "Adapter"
DEPTH_ADAPTER = "Depth_Adapter"
MLP_ADAPTER_SCALE = 0.5


@dataclass(frozen=True)
class AdapterConfig:
    """Where adapters sit; stored in every adapter file so a mismatch is detected on load."""

    bottleneck_ratio: float = 0.25
    blocks: tuple[int, ...] | None = None  # None: every encoder block; else the adapted block indices
    depth: bool = False  # SD-Trans depth adapter for volumes
    decoder: bool = False  # the paper's decoder adapters (absent from the reference code)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["blocks"] = list(self.blocks) if self.blocks is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> AdapterConfig:
        blocks = d.get("blocks")
        return cls(
            bottleneck_ratio=float(d.get("bottleneck_ratio", 0.25)),
            blocks=tuple(int(b) for b in blocks) if blocks is not None else None,
            depth=bool(d.get("depth", False)),
            decoder=bool(d.get("decoder", False)),
        )

    def adapted_blocks(self, depth: int) -> list[int]:
        return list(range(depth)) if self.blocks is None else sorted(set(self.blocks))


class Adapter(nn.Module):
    """Bottleneck D → D·r → GELU → D, up-projection zero-initialised: a fresh adapter is the identity."""

    def __init__(self, dim: int, ratio: float = 0.25) -> None:
        super().__init__()
        hidden = max(1, int(dim * ratio))
        self.D_fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.D_fc2 = nn.Linear(hidden, dim)
        nn.init.zeros_(self.D_fc2.weight)
        nn.init.zeros_(self.D_fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.D_fc2(self.act(self.D_fc1(x)))


class AdaptedBlock(Block):
    """SAM's ViT block with MSA adapters; instances are converted in place by ``inject_adapters``."""

    Space_Adapter: Adapter
    MLP_Adapter: Adapter
    depth_slices: int = 1

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        if self.window_size > 0:
            h, w = x.shape[1], x.shape[2]
            windows, pad_hw = window_partition(x, self.window_size)
            return window_unpartition(self.attn(windows), self.window_size, pad_hw, (h, w))
        return self.attn(x)

    def _depth_branch(self, xn: torch.Tensor) -> torch.Tensor:
        """Attention across slices for each spatial token, on unpartitioned tokens."""
        d = self.depth_slices
        bd, h, w, c = xn.shape
        tokens = xn.reshape(bd // d, d, h, w, c).permute(0, 2, 3, 1, 4).reshape(-1, 1, d, c)
        out = self.Depth_Adapter(self.attn(tokens))
        return out.reshape(bd // d, h, w, d, c).permute(0, 3, 1, 2, 4).reshape(bd, h, w, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        xn = self.norm1(x)
        attn_out = self._attend(xn)
        attn_out = attn_out + self.Space_Adapter(attn_out)
        if getattr(self, "Depth_Adapter", None) is not None and self.depth_slices > 1:
            if x.shape[0] % self.depth_slices:
                raise ValueError(
                    f"batch of {x.shape[0]} slices is not a multiple of depth_slices={self.depth_slices}"
                )
            attn_out = attn_out + self._depth_branch(xn)
        x = shortcut + attn_out
        xn2 = self.norm2(x)
        return x + self.mlp(xn2) + MLP_ADAPTER_SCALE * self.MLP_Adapter(xn2)


class HyperPromptAdapter(nn.Module):
    """Decoder adapter whose bottleneck is gated per channel by the prompt tokens (hyper-prompting)."""

    def __init__(self, dim: int, ratio: float = 0.25) -> None:
        super().__init__()
        self.adapter = Adapter(dim, ratio)
        self.prompt_gate = nn.Linear(dim, self.adapter.D_fc1.out_features)
        nn.init.zeros_(self.prompt_gate.weight)
        nn.init.zeros_(self.prompt_gate.bias)

    def forward(self, x: torch.Tensor, prompt_tokens: torch.Tensor) -> torch.Tensor:
        gate = 1.0 + torch.tanh(self.prompt_gate(prompt_tokens.mean(dim=1, keepdim=True)))
        hidden = self.adapter.act(self.adapter.D_fc1(x)) * gate
        return self.adapter.D_fc2(hidden)


def _decoder_mlp_hook(layer: TwoWayAttentionBlock, module, args, output):
    return output + MLP_ADAPTER_SCALE * layer.MLP_Adapter(args[0])


def _decoder_image_hook(layer: TwoWayAttentionBlock, module, args, kwargs, output):
    return output + layer.HyP_Adapter(output, kwargs["k"])


def _inject_tinyvit(encoder: ImageEncoder, config: AdapterConfig) -> None:
    if config.depth:
        raise ValueError(
            "depth adapters are not available for LiteMedSAM's TinyViT encoder (its attention biases are sized "
            "per 2D window, so there is no frozen attention to reuse across slices); tune it without depth"
        )
    blocks = encoder.adapter_blocks()
    for i in config.adapted_blocks(len(blocks)):
        dim = blocks[i].attn.norm.normalized_shape[0]
        blocks[i].Space_Adapter = Adapter(dim, config.bottleneck_ratio)
        blocks[i].MLP_Adapter = Adapter(dim, config.bottleneck_ratio)


def _inject_vit(encoder: ImageEncoder, config: AdapterConfig) -> None:
    blocks = encoder.adapter_blocks()
    for i in config.adapted_blocks(len(blocks)):
        block = blocks[i]
        dim = block.norm1.normalized_shape[0]
        block.__class__ = AdaptedBlock
        block.Space_Adapter = Adapter(dim, config.bottleneck_ratio)
        block.MLP_Adapter = Adapter(dim, config.bottleneck_ratio)
        block.Depth_Adapter = Adapter(dim, config.bottleneck_ratio) if config.depth else None
        block.depth_slices = 1


def inject_adapters(sam: nn.Module, config: AdapterConfig) -> nn.Module:
    """Attach zero-initialised adapters to ``sam`` (a segment_anything ``Sam``) in place."""
    encoder: ImageEncoder = sam.image_encoder
    if encoder.adapters_built_in:  # LiteMedSAM's TinyViT: its blocks have adapter slots of their own
        _inject_tinyvit(encoder, config)
    else:
        _inject_vit(encoder, config)
    if config.decoder:
        for layer in sam.mask_decoder.transformer.layers:
            dim = layer.norm1.normalized_shape[0]
            layer.MLP_Adapter = Adapter(dim, config.bottleneck_ratio)
            layer.HyP_Adapter = HyperPromptAdapter(dim, config.bottleneck_ratio)
            layer.mlp.register_forward_hook(functools.partial(_decoder_mlp_hook, layer))
            layer.cross_attn_image_to_token.register_forward_hook(
                functools.partial(_decoder_image_hook, layer), with_kwargs=True
            )
    sam.adapter_config = config
    return sam


def set_depth_slices(sam: nn.Module, slices: int) -> None:
    """Tell the depth adapters that each batch holds volumes of ``slices`` consecutive slices."""
    for block in sam.image_encoder.adapter_blocks():
        if isinstance(block, AdaptedBlock):
            block.depth_slices = int(slices)


def adapter_parameter_names(sam: nn.Module) -> list[str]:
    return [n for n, _ in sam.named_parameters() if ADAPTER_KEY in n]


# The prompt side that tuning may train beside the adapters: the mask decoder and the prompt encoder's
# point/box embeddings (LiteMedSAM was trained with boxes only, so its click embeddings need tuning).
PROMPT_EMBEDDING_KEYS = ("prompt_encoder.point_embeddings.", "prompt_encoder.not_a_point_embed.")


def is_decoder_weight(name: str) -> bool:
    """True for the prompt side's weights: the mask decoder and the prompt encoder's point embeddings."""
    return name.startswith("mask_decoder.") or name.startswith(PROMPT_EMBEDDING_KEYS)


def is_trainable(name: str, *, adapters: bool = True, decoder: bool = False, depth: bool = False) -> bool:
    """Whether tuning trains the weight ``name``: the MSA adapters (``adapters``; the depth adapters only with
    ``depth``, since single slices give them no gradient) and/or the prompt side (``decoder``). The one rule for
    what tuning trains, what a cancelled tuning restores and what an adapter file holds."""
    adapter = ADAPTER_KEY in name and (depth or DEPTH_ADAPTER not in name)
    return (adapters and adapter) or (decoder and is_decoder_weight(name))


def set_trainable(sam: nn.Module, *, adapters: bool = True, decoder: bool = False, depth: bool = False,
                  everything: bool = False) -> list[nn.Parameter]:
    """Set ``requires_grad`` by ``is_trainable`` (every weight with ``everything``); returns the trainable ones."""
    for name, p in sam.named_parameters():
        p.requires_grad = everything or is_trainable(name, adapters=adapters, decoder=decoder, depth=depth)
    return [p for p in sam.parameters() if p.requires_grad]
