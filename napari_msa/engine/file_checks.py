"""What can be said about a weights file before torch is imported: it exists, it is a file, and what a napari-msa
safetensors file says about itself. The command line checks its arguments with these before any work, and the
loaders use the same functions, so a file gets the same message either way."""

from __future__ import annotations

import json
import os
from pathlib import Path


class CheckpointError(ValueError):
    """A checkpoint or adapter file that cannot be used with the requested model."""


def existing_file(path: str | os.PathLike, what: str, suffix: str | None = None) -> Path:
    """``path`` as a Path, or a CheckpointError naming ``what`` it should be when it is a folder or missing."""
    path = Path(path)
    if path.is_dir():
        inside = f"the {suffix} file" if suffix else "the file"
        raise CheckpointError(f"{what} {path} is a folder, not a file; give {inside} inside it")
    if not path.is_file():
        raise CheckpointError(f"{what} file not found: {path}")
    return path


def safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """A safetensors file's metadata (its header only, no tensors read); CheckpointError when it is not one."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return dict(f.metadata() or {})
    except Exception as err:  # noqa: BLE001 - not safetensors at all, or truncated
        raise CheckpointError(f"{Path(path).name} is not a readable safetensors file ({err})") from err


def described_model(meta: dict[str, str]) -> object:
    """The model description a napari-msa model file carries (a dict when intact; checked by ModelConfig)."""
    try:
        return json.loads(meta.get("model") or "")
    except ValueError:
        return meta.get("model")


def model_file_architecture(path: str | os.PathLike) -> str | None:
    """The architecture a napari-msa model file names; None when the file cannot say (the loader explains)."""
    try:
        described = described_model(safetensors_metadata(path))
    except CheckpointError:
        return None
    return described.get("name") if isinstance(described, dict) else None
