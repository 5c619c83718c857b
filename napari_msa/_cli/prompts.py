"""Prompt files: napari's points and shapes CSV exports, read into each object's clicks and boxes."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import CLIError
from .files import check_input


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
