"""Model registry and construction from segment_anything's own classes."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, fields, replace
from functools import partial

import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from .adapters import ADAPTER_KEY, AdapterConfig, inject_adapters
from .encoder import SamViTEncoder
from .tiny_vit import TinyViTConfig, TinyViTEncoder

PATCH_SIZE = 16
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one SAM variant; ``image_size`` may differ from the size it was trained at."""

    name: str
    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    image_size: int = 1024
    window_size: int = 14
    prompt_embed_dim: int = 256
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8
    iou_head_hidden_dim: int = 256
    encoder: str = "vit"  # 'vit' (SAM's ImageEncoderViT) or 'tinyvit' (LiteMedSAM's encoder)
    pixel_norm: str = "sam"  # 'sam': SAM's pixel mean/std; 'minmax': per-image min–max to [0, 1] (LiteMedSAM)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["global_attn_indexes"] = list(self.global_attn_indexes)
        return d

    @classmethod
    def problem(cls, d) -> str | None:
        """What is wrong with a decoded architecture (types, ranges, unknown fields), or None: a model file's
        description is checked before anything is built from it (a huge width would try to allocate tens of GB)."""
        if d in ("", None):
            return "it is empty"
        if not isinstance(d, dict):
            return f"it is {type(d).__name__}, not a mapping"
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            return f"unknown fields {unknown}"
        missing = [k for k in ("name", "embed_dim", "depth", "num_heads", "global_attn_indexes") if k not in d]
        if missing:
            return f"missing fields {missing}"
        limits = {"embed_dim": 4096, "depth": 64, "num_heads": 64, "image_size": 4096, "window_size": 256,
                  "prompt_embed_dim": 4096, "decoder_mlp_dim": 16384, "decoder_heads": 64, "iou_head_hidden_dim": 4096}
        for key, most in limits.items():
            value = d.get(key, 1)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= most:
                return f"{key} {value!r} is not a whole number from 1 to {most}"
        if not isinstance(d["name"], str):
            return f"name {d['name']!r} is not text"
        attn = d["global_attn_indexes"]
        if not isinstance(attn, (list, tuple)) or not all(
                isinstance(i, int) and not isinstance(i, bool) and 0 <= i < d["depth"] for i in attn):
            return f"global_attn_indexes {attn!r} are not block numbers of a {d['depth']}-block encoder"
        if d.get("encoder", "vit") not in ("vit", "tinyvit") or d.get("pixel_norm", "sam") not in ("sam", "minmax"):
            return f"encoder {d.get('encoder')!r} / pixel_norm {d.get('pixel_norm')!r} is not one this package has"
        return None

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        d = dict(d)
        d["global_attn_indexes"] = tuple(d["global_attn_indexes"])
        return cls(**d)


MODEL_REGISTRY: dict[str, ModelConfig] = {
    "vit_b": ModelConfig("vit_b", 768, 12, 12, (2, 5, 8, 11)),
    "vit_l": ModelConfig("vit_l", 1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": ModelConfig("vit_h", 1280, 32, 16, (7, 15, 23, 31)),
    # Small random-init configurations for tests and CPU experiments.
    "tiny": ModelConfig(
        "tiny", 64, 2, 2, (1,), image_size=256, window_size=7,
        prompt_embed_dim=64, decoder_mlp_dim=256, decoder_heads=2, iou_head_hidden_dim=64,
    ),
    "small": ModelConfig(
        "small", 128, 4, 4, (1, 3), image_size=256, window_size=8,
        prompt_embed_dim=128, decoder_mlp_dim=512, decoder_heads=4, iou_head_hidden_dim=128,
    ),
    # LiteMedSAM (bowang-lab/MedSAM, LiteMedSAM branch): TinyViT encoder trained on medical images.
    # embed_dim/depth describe the adapted attention blocks (320-dim last stage, 10 attention blocks).
    "litemedsam": ModelConfig(
        "litemedsam", 320, 10, 10, (), image_size=256, window_size=7, encoder="tinyvit", pixel_norm="minmax",
    ),
    # A small random-init TinyViT of the same design, for fast tests of the LiteMedSAM code paths.
    "tinyvit_test": ModelConfig(
        "tinyvit_test", 64, 4, 4, (), image_size=64, window_size=7, prompt_embed_dim=64, decoder_mlp_dim=128,
        decoder_heads=2, iou_head_hidden_dim=64, encoder="tinyvit", pixel_norm="minmax",
    ),
}
TINYVIT_CONFIGS: dict[str, TinyViTConfig] = {
    "litemedsam": TinyViTConfig(),
    "tinyvit_test": TinyViTConfig(
        image_size=64, embed_dims=(16, 32, 48, 64), depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4),
        window_sizes=(7, 7, 7, 7), out_chans=64,
    ),
}


def get_config(name: str, image_size: int | None = None) -> ModelConfig:
    if name not in MODEL_REGISTRY:
        raise ValueError(f"unknown model '{name}'; choose one of: {', '.join(MODEL_REGISTRY)}")
    config = MODEL_REGISTRY[name]
    if image_size is not None and image_size != config.image_size and config.encoder != "vit":
        raise ValueError(f"model '{name}' runs at {config.image_size} px only (it was trained at that size)")
    if image_size is not None and image_size != config.image_size:
        if image_size % PATCH_SIZE:
            raise ValueError(f"image size must be a multiple of {PATCH_SIZE}, got {image_size}")
        config = replace(config, image_size=int(image_size))
    return config


def build_sam(config: ModelConfig, adapter: AdapterConfig | None = None) -> Sam:
    """A randomly initialised SAM of this architecture, with adapters injected if asked."""
    if config.encoder == "tinyvit":
        encoder = TinyViTEncoder(replace(TINYVIT_CONFIGS[config.name], image_size=config.image_size))
        grid = encoder.embedding_size
    else:
        grid = config.image_size // PATCH_SIZE
        encoder = _vit_encoder(config)
    sam = Sam(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=config.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(config.image_size, config.image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2,
                embedding_dim=config.prompt_embed_dim,
                mlp_dim=config.decoder_mlp_dim,
                num_heads=config.decoder_heads,
            ),
            transformer_dim=config.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=config.iou_head_hidden_dim,
        ),
        pixel_mean=list(SAM_PIXEL_MEAN),
        pixel_std=list(SAM_PIXEL_STD),
    )
    if adapter is not None:
        inject_adapters(sam, adapter)
    sam.model_config = config
    sam.eval()
    return sam


def _vit_encoder(config: ModelConfig) -> SamViTEncoder:
    return SamViTEncoder(
        img_size=config.image_size,
        patch_size=PATCH_SIZE,
        embed_dim=config.embed_dim,
        depth=config.depth,
        num_heads=config.num_heads,
        mlp_ratio=4,
        out_chans=config.prompt_embed_dim,
        qkv_bias=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        window_size=config.window_size,
        global_attn_indexes=config.global_attn_indexes,
    )


def base_fingerprint(sam: torch.nn.Module) -> str:
    """A short, stable hash of the frozen base weights (not adapters), cheap even for vit_h."""
    h = hashlib.sha256()
    for name, tensor in sorted(sam.state_dict().items()):
        if ADAPTER_KEY in name:
            continue
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // 1024)
        sample = flat[::step][:1024].to("cpu", torch.float32).contiguous()
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]
