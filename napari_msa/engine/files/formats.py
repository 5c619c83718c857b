"""The project's own file formats.

A *model file* is a whole model (base weights + adapters) as one safetensors file with its architecture in the
metadata (the demo model); an *adapter file* holds tuned weights only (adapters, optionally the prompt side)
with what is needed to check them against the base weights on load. Both are written atomically.
Meta's and the MSA reference ``.pth`` checkpoints are read by ``checkpoints``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..file_checks import CheckpointError, existing_file
from ..network.adapters import AdapterConfig, is_trainable
from ..network.preprocessing import Normalization
from .checkpoints import atomic_write

if TYPE_CHECKING:
    from ..network.corrector import CorrectorChange

MODEL_FORMAT = "napari-msa-model/1"
ADAPTER_FORMAT = "napari-msa-adapter/1"



# --- model files ------------------------------------------------------------------------------------------------
def save_model_file(sam: torch.nn.Module, path: str | os.PathLike, *, description: str,
                    normalization: Normalization | None = None, extra: dict | None = None) -> Path:
    """A whole model (base + adapters) as one safetensors file with its architecture in the metadata."""
    state = {k: v.detach().cpu().contiguous() for k, v in sam.state_dict().items()}
    meta = {
        "format": MODEL_FORMAT,
        "model": json.dumps(sam.model_config.to_dict()),
        "adapter_config": json.dumps(sam.adapter_config.to_dict() if getattr(sam, "adapter_config", None) else None),
        "description": description,
        "normalization": json.dumps((normalization or Normalization()).to_dict()),
        "extra": json.dumps(extra or {}),
    }
    return atomic_write(path, lambda tmp: save_file(state, tmp, metadata=meta))


def read_model_file(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(metadata, tensors) of a model file; one clear error for anything else."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != MODEL_FORMAT:
                raise CheckpointError(f"{path.name} is not a napari-msa model file (adapter files go to adapter=)")
            return meta, {k: f.get_tensor(k) for k in f.keys()}
    except CheckpointError:
        raise
    except Exception as err:  # not safetensors at all, or truncated
        raise CheckpointError(f"{path.name} is not a readable safetensors model file ({err})") from err


# --- adapter files ----------------------------------------------------------------------------------------------
def save_adapter(
    sam: torch.nn.Module,
    path: str | os.PathLike,
    *,
    base_fingerprint: str,
    normalization: dict | None = None,
    training: dict | None = None,
    include_decoder: bool = False,
    corrector: CorrectorChange | None = None,
) -> Path:
    """Write adapters (and tuned decoder weights) with the metadata needed to check them on load. A
    ``corrector``'s change (``network.corrector``) goes with the decoder it was made for, so only with
    ``include_decoder``."""
    state = {
        k: v.detach().to("cpu").contiguous()
        for k, v in sam.state_dict().items()
        if is_trainable(k, adapters=True, decoder=include_decoder, depth=True)
    }
    if not state:
        raise CheckpointError("the model has no adapters to save")
    carried = corrector is not None and include_decoder
    if carried:
        state.update({k: v.detach().to("cpu") for k, v in corrector.file_tensors().items()})
    metadata = {
        "format": ADAPTER_FORMAT,
        "model": json.dumps(sam.model_config.to_dict()),
        "base_fingerprint": base_fingerprint,
        "adapter_config": json.dumps(sam.adapter_config.to_dict()),
        "image_size": str(sam.model_config.image_size),
        "normalization": json.dumps(normalization or {}),
        "training": json.dumps(training or {}),
        "includes_decoder": str(bool(include_decoder)),
    }
    if carried:
        metadata["corrector"] = corrector.meta_json()
    return atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))


@dataclass(frozen=True)
class AdapterFile:
    """An adapter file read once: where it came from, its decoded metadata and its tensors."""

    path: Path
    meta: dict
    tensors: dict[str, torch.Tensor]

    @property
    def config(self) -> AdapterConfig:
        return adapter_config_of(self.meta)


def read_adapter(path: str | os.PathLike) -> AdapterFile:
    """An adapter file's metadata (checked) and tensors, from one opening of the file."""
    path = existing_file(path, "adapter", ".safetensors")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
            meta = _decoded_adapter_metadata(raw, path)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except CheckpointError:
        raise
    except Exception as err:
        raise CheckpointError(f"{path.name} is not a safetensors adapter file: {err}") from err
    return AdapterFile(path, meta, tensors)


def read_adapter_metadata(path: str | os.PathLike) -> dict:
    """The decoded metadata of an adapter file, without its tensors."""
    path = existing_file(path, "adapter", ".safetensors")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as err:
        raise CheckpointError(f"{path.name} is not a safetensors adapter file: {err}") from err
    return _decoded_adapter_metadata(meta, path)


def _decoded_adapter_metadata(meta: dict, path: Path) -> dict:
    if meta.get("format") != ADAPTER_FORMAT:
        raise CheckpointError(f"{path.name} is not a napari-msa adapter (format {meta.get('format')!r})")
    out = dict(meta)
    try:
        for key in ("model", "adapter_config", "normalization", "training", "corrector"):
            out[key] = json.loads(meta.get(key) or "{}")
        out["image_size"] = int(meta["image_size"])
    except (KeyError, ValueError, TypeError) as err:
        raise CheckpointError(f"{path.name}: its adapter metadata is incomplete or damaged ({type(err).__name__}: "
                              f"{err}); save the adapter again from Tune (MSA) or `napari-msa tune`") from err
    out["includes_decoder"] = meta.get("includes_decoder") == "True"
    problem = _adapter_meta_problem(out)
    if problem:
        raise CheckpointError(f"{path.name}: its adapter metadata is damaged ({problem}); save the adapter again "
                              "from Tune (MSA) or `napari-msa tune`")
    return out


def _adapter_meta_problem(meta: dict) -> str | None:
    """What is wrong with decoded adapter metadata (types and ranges), or None: every reader may then trust it."""
    from ..network.preprocessing import Normalization

    def is_int(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    model, cfg, norm = meta.get("model"), meta.get("adapter_config"), meta.get("normalization")
    if not isinstance(model, dict):
        return f"'model' is {type(model).__name__}, not a mapping"
    for key in ("embed_dim", "depth"):
        if not (is_int(model.get(key)) and 0 < model[key] <= 4096):
            return f"model {key} {model.get(key)!r} is not a positive whole number"
    if not isinstance(model.get("name", ""), str):
        return f"model name {model.get('name')!r} is not text"
    if not isinstance(cfg, dict):
        return f"'adapter_config' is {type(cfg).__name__}, not a mapping"
    ratio = cfg.get("bottleneck_ratio", 0.25)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 4:
        return f"bottleneck ratio {ratio!r} is not between 0 and 4"
    blocks = cfg.get("blocks")
    if blocks is not None and (not isinstance(blocks, list) or
                               not all(is_int(b) and 0 <= b < model["depth"] for b in blocks)):
        return f"adapter blocks {blocks!r} are not block numbers of a {model['depth']}-block encoder"
    if not isinstance(norm, dict):
        return f"'normalization' is {type(norm).__name__}, not a mapping"
    if norm:
        try:
            Normalization.from_dict(norm)
        except (TypeError, ValueError) as err:
            return f"normalisation {norm!r}: {err}"
    for key in ("training", "corrector"):
        if not isinstance(meta.get(key), dict):
            return f"'{key}' is {type(meta.get(key)).__name__}, not a mapping"
    if not 32 <= meta["image_size"] <= 4096:
        return f"image size {meta['image_size']} is not between 32 and 4096"
    if not isinstance(meta.get("base_fingerprint", ""), str):
        return "the base fingerprint is not text"
    return None


def check_adapter_compatible(meta: dict, sam: torch.nn.Module, base_fingerprint: str, source: str) -> None:
    """Raise one clear error naming what the adapter expects and what the model is."""
    cfg = sam.model_config
    want = meta["model"]
    if (want.get("embed_dim"), want.get("depth")) != (cfg.embed_dim, cfg.depth):
        raise CheckpointError(
            f"{source} was tuned on {want.get('name')} (embed dim {want.get('embed_dim')}, {want.get('depth')} "
            f"blocks) but the model is {cfg.name} (embed dim {cfg.embed_dim}, {cfg.depth} blocks)"
        )
    if meta["image_size"] != cfg.image_size:
        raise CheckpointError(
            f"{source} was tuned at image size {meta['image_size']}, the model runs at {cfg.image_size}; "
            f"load the model with image_size={meta['image_size']}"
        )
    if meta["base_fingerprint"] != base_fingerprint:
        raise CheckpointError(
            f"{source} was tuned on other base weights (fingerprint {meta['base_fingerprint']}, "
            f"this model's is {base_fingerprint}); load the checkpoint it was tuned from"
        )


def adapter_config_of(meta: dict) -> AdapterConfig:
    return AdapterConfig.from_dict(meta["adapter_config"])
