"""``napari-msa segment``: points CSV → labels TIFF, one id per object, optionally propagated in 3D."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from .common import (
    CLIError,
    ObjectPrompts,
    add_model_args,
    add_normalization_args,
    model_from_args,
    normalization_from_args,
    read_image,
    read_points_csv,
    write_labels,
)


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("segment", help="segment objects from point prompts",
                       description="Segment each object of a napari points CSV into a labels image.")
    p.add_argument("image", help="image (.tif/.tiff/.npy): (Y,X), (Y,X,3) or (Z,Y,X)")
    p.add_argument("-p", "--points", required=True,
                   help="CSV as napari saves a points layer (index,axis-0,axis-1[,axis-2]); optional columns "
                        "'positive' (1/0) and 'object' (id ≥ 1)")
    p.add_argument("-o", "--output", required=True, help="labels image to write (.tif)")
    p.add_argument("--propagate", action="store_true", help="3D: carry each object through the volume")
    p.add_argument("--iou-threshold", type=float, default=0.5,
                   help="propagation stops where consecutive slices overlap less than this [0.5]")
    add_model_args(p)
    add_normalization_args(p)
    return p


def _tasks(objects: list[ObjectPrompts], is_volume: bool) -> list[tuple[int, int | None, np.ndarray, np.ndarray]]:
    """(object id, slice or None, points, labels): one prediction per object and slice."""
    tasks = []
    for obj in objects:
        if not is_volume:
            tasks.append((obj.object_id, None, obj.points, obj.labels))
            continue
        slices = np.round(obj.points[:, 0]).astype(int)
        for z in np.unique(slices):
            keep = slices == z
            tasks.append((obj.object_id, int(z), obj.points[keep], obj.labels[keep]))
    return tasks


def _fill_by_propagation(session, masks: dict[int, np.ndarray], iou_threshold: float) -> dict[int, np.ndarray]:
    """Masks for the unprompted slices, each from the nearest prompted slice."""
    filled: dict[int, tuple[int, np.ndarray]] = {}
    for z0, mask in masks.items():
        if not mask.any():
            continue
        for z, m in session.propagate(mask, z0, iou_threshold=iou_threshold).items():
            if z in masks:
                continue
            if z not in filled or abs(z - z0) < filled[z][0]:
                filled[z] = (abs(z - z0), m)
    return {z: m for z, (_, m) in filled.items()}


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from napari_msa.engine import Session

    image = read_image(args.image)
    model = model_from_args(args)
    session = Session(model, normalization=normalization_from_args(args))
    try:
        session.set_image(image)
    except ValueError as err:
        raise CLIError(f"{args.image}: {err}") from err
    shape = session.spatial_shape
    objects = read_points_csv(args.points, len(shape))
    for obj in objects:
        outside = np.any((obj.points < -0.5) | (obj.points > np.array(shape) - 0.5), axis=1)
        if outside.any():
            raise CLIError(f"object {obj.object_id}: point {obj.points[outside][0].tolist()} lies outside the "
                           f"image of shape {shape}; were the points saved from a layer of another image?")
    if args.propagate and not session.layout.is_volume:
        raise CLIError("--propagate needs a 3D (Z,Y,X) image")

    print(f"napari-msa segment: {model.describe()}", file=sys.stderr)
    max_id = max(o.object_id for o in objects)
    labels = np.zeros(shape, dtype=np.uint16 if max_id < 2**16 else np.uint32)
    per_object: dict[int, dict[int, np.ndarray]] = {}
    for obj_id, z, pts, lab in tqdm(_tasks(objects, session.layout.is_volume), desc="segment", unit="mask",
                                    file=sys.stderr, disable=args.quiet):
        if z is not None and lab.max() == 0:
            raise CLIError(f"object {obj_id} on slice {z} has only negative points; add a positive one")
        mask, _ = session.predict(points=pts, labels=lab)
        per_object.setdefault(obj_id, {})[z if z is not None else 0] = mask
    if args.propagate:
        for obj_id in tqdm(list(per_object), desc="propagate", unit="object", file=sys.stderr, disable=args.quiet):
            per_object[obj_id].update(_fill_by_propagation(session, per_object[obj_id], args.iou_threshold))
    for obj_id, slices in per_object.items():
        for z, mask in slices.items():
            target = labels[z] if session.layout.is_volume else labels
            target[mask & (target == 0)] = obj_id  # an earlier object keeps its pixels
    out = write_labels(args.output, labels)
    counts = {o: int((labels == o).sum()) for o in per_object}
    print(f"napari-msa segment: wrote {out} ({len(counts)} objects, voxels per id {counts})", file=sys.stderr)
    return 0
