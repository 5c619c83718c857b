"""What every subcommand shares: readable errors, image/label files, model and normalisation options."""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class CLIError(Exception):
    """A problem the user can fix; printed as one line, exit status 2."""


def read_image(path: str | Path) -> np.ndarray:
    """An image from .tif/.tiff (tifffile) or .npy (no pickles)."""
    path = Path(path)
    if not path.is_file():
        raise CLIError(f"image file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            return tifffile.imread(path)
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
    except Exception as err:
        raise CLIError(f"cannot read {path}: {err}") from err
    raise CLIError(f"{path.name}: unsupported image type '{suffix}'; use .tif, .tiff or .npy")


def write_labels(path: str | Path, labels: np.ndarray) -> Path:
    """A labels image as TIFF, written atomically."""
    import tifffile

    from napari_msa.engine.checkpoints import atomic_write

    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff"):
        raise CLIError(f"output {path.name}: labels are written as .tif/.tiff")
    return atomic_write(path, lambda tmp: tifffile.imwrite(tmp, labels, compression="zlib"))


def add_model_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model")
    g.add_argument("--model", default="demo",
                   help="demo (the bundled demo model, trained on synthetic phantoms), vit_b, vit_l or vit_h "
                        "(these need --checkpoint) [default: demo]")
    g.add_argument("--checkpoint", help="local SAM .pth (Meta's sam_vit_*.pth or an MSA reference checkpoint)")
    g.add_argument("--adapter", help="a napari-msa adapter .safetensors file from `napari-msa tune`")
    g.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps")
    g.add_argument("--image-size", type=int, choices=(256, 512, 1024), help="model input size")


def add_normalization_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("intensity normalisation")
    g.add_argument("--normalize", default="auto", choices=("auto", "ct", "percentile", "none"),
                   help="auto: RGB uint8 as is, else 0.5–99.5 percentiles; ct: HU window [default: auto]")
    g.add_argument("--ct-level", type=float, default=40.0, help="CT window level in HU [40]")
    g.add_argument("--ct-width", type=float, default=400.0, help="CT window width in HU [400]")


def model_from_args(args: argparse.Namespace):
    from napari_msa.engine import CheckpointError, load_model

    try:
        return load_model(args.model, checkpoint=args.checkpoint, adapter=args.adapter, device=args.device,
                          image_size=args.image_size)
    except (CheckpointError, ValueError) as err:
        raise CLIError(str(err)) from err


def normalization_from_args(args: argparse.Namespace):
    from napari_msa.engine import Normalization

    if args.normalize == "auto":
        return None  # the model's own default (an adapter may carry the one it was tuned with)
    try:
        return Normalization(preset=args.normalize, level=args.ct_level, width=args.ct_width)
    except ValueError as err:
        raise CLIError(str(err)) from err


@dataclass
class ObjectPrompts:
    object_id: int
    points: np.ndarray  # (N, ndim) data pixel coordinates
    labels: np.ndarray  # (N,) 1 positive, 0 negative


_TRUE = {"1", "true", "yes", "positive", "1.0"}
_FALSE = {"0", "false", "no", "negative", "0.0"}


def read_points_csv(path: str | Path, ndim: int) -> list[ObjectPrompts]:
    """Prompts from the CSV napari writes for a points layer (``index,axis-0,...``), grouped by object."""
    path = Path(path)
    if not path.is_file():
        raise CLIError(f"points file not found: {path}")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise CLIError(f"{path.name} has no points")
    axes = [f"axis-{i}" for i in range(ndim)]
    missing = [a for a in axes if a not in rows[0]]
    if missing:
        found = ", ".join(k for k in rows[0] if k and k.startswith("axis-"))
        raise CLIError(f"{path.name}: the image is {ndim}D so points need columns {', '.join(axes)} "
                       f"(found: {found or 'none'}); save the points layer from napari with File > Save Selected Layer")
    groups: dict[int, list[tuple[list[float], int]]] = {}
    for line, row in enumerate(rows, start=2):
        try:
            coords = [float(row[a]) for a in axes]
            obj = int(float(row.get("object") or 1))
        except ValueError as err:
            raise CLIError(f"{path.name} line {line}: {err}") from err
        pos_text = str(row.get("positive", "1") or "1").strip().lower()
        if pos_text not in _TRUE | _FALSE:
            raise CLIError(f"{path.name} line {line}: 'positive' must be 1/0 or true/false, got {pos_text!r}")
        if obj < 1:
            raise CLIError(f"{path.name} line {line}: object ids start at 1, got {obj}")
        groups.setdefault(obj, []).append((coords, int(pos_text in _TRUE)))
    return [
        ObjectPrompts(obj, np.array([c for c, _ in items]), np.array([p for _, p in items]))
        for obj, items in sorted(groups.items())
    ]
