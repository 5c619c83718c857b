"""``napari-msa segment``: points and/or boxes CSVs → labels TIFF, one id per object, optionally propagated in 3D;
or, with ``--everything``, every object the model finds on each slice from a grid of clicks (no prompts needed).

Boxes come from a napari shapes layer saved as CSV (rectangles; in a volume each lies on one slice)
and are objects 1, 2, … in shape order; a point whose ``object`` is a box's id refines that box
(box and points go into one prediction); points with other ids are objects of their own.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import numpy as np

from napari_msa.engine.catalog import INTERACTION_RULES

from .arguments import (
    add_model_args,
    add_normalization_args,
    check_model_args,
    model_from_args,
    normalization_from_args,
    say,
)
from .errors import CLIError
from .files import check_input, check_output, read_image, write_labels
from .prompts import BoxPrompt, ObjectPrompts, clip_boxes, read_boxes_csv, read_points_csv

INTERACTIONS = ("model", *INTERACTION_RULES)


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "segment", help="segment objects from point and/or box prompts",
        usage="%(prog)s IMAGE [-p POINTS.csv] [-b BOXES.csv | --everything] -o LABELS.tif [options]",
        description="Segment each object of a napari points CSV and/or shapes (boxes) CSV into a labels image. "
                    "Boxes are objects 1, 2, ... in the order of the shapes; a point whose 'object' is a box's id "
                    "refines that box (one prediction with box and points); points with other ids are objects of "
                    "their own. Give -p, -b or both; or --everything for every object the model finds from a grid "
                    "of clicks on each slice.",
    )
    p.add_argument("image", help="image: .tif/.tiff/.npy ((Y,X), (Y,X,3) or (Z,Y,X)), NIfTI .nii/.nii.gz or DICOM "
                                 "(a file, or a folder holding one series), read as napari-msa's napari reader "
                                 "shows it (see README, 'Medical files')")
    p.add_argument("-p", "--points", metavar="POINTS.csv",
                   help="CSV as napari saves a points layer (index,axis-0,axis-1[,axis-2]): indices into the image "
                        "array as this command reads it, which for NIfTI/DICOM is the layer napari-msa's napari "
                        "reader opens, so points drawn on that layer and saved from napari fit; optional columns "
                        "'positive' (1/0) and 'object' (id ≥ 1; without the column every point is object 1)")
    p.add_argument("-b", "--boxes", metavar="BOXES.csv",
                   help="CSV as napari saves a shapes layer of rectangles (index,shape-type,vertex-index,axis-0,"
                        "axis-1[,axis-2]); in a volume each box lies on one slice")
    p.add_argument("-o", "--output", required=True, metavar="LABELS.tif",
                   help="labels image to write: .tif, or .nii/.nii.gz (for a NIfTI or DICOM image: with its affine "
                        "and header, in its voxel order, so the labels overlay it voxel for voxel)")
    p.add_argument("--propagate", action="store_true", help="3D: carry each object through the volume")
    p.add_argument("--iou-threshold", type=float, default=0.5,
                   help="propagation stops where consecutive slices overlap less than this [0.5]")
    p.add_argument("--everything", action="store_true",
                   help="no prompts: a grid of single clicks on each slice, the confident, stable masks kept and "
                        "duplicates removed (ids per slice; larger objects drawn first, so one inside another "
                        "keeps its id); seconds to a minute per slice on a CPU")
    p.add_argument("--points-per-side", type=int, default=16,
                   help="--everything: the finest grid of clicks, N×N per slice [16]; smaller objects need more")
    p.add_argument("--interaction", choices=INTERACTIONS, default="model",
                   help="how an object's clicks (in file order) become prompts, click after click: the box of the "
                        "mask so far, its logits, both, or the clicks alone; +zoom decodes clicks after the first "
                        "in a window around the object [default: the model's own rule]")
    add_model_args(p)
    add_normalization_args(p)
    return p


@dataclass
class Task:
    """One prediction: an object's prompts on one slice (z is None in 2D)."""

    object_id: int
    z: int | None
    points: np.ndarray  # (N, ndim), N may be 0
    labels: np.ndarray  # (N,)
    box: np.ndarray | None = None  # (min_row, min_col, max_row, max_col)


def _tasks(objects: list[ObjectPrompts], boxes: list[BoxPrompt], is_volume: bool) -> list[Task]:
    """One task per object and slice: a box with the points of its object on its slice, points elsewhere."""
    ndim = 3 if is_volume else 2
    empty = (np.zeros((0, ndim)), np.zeros(0, dtype=int))
    by_id = {o.object_id: o for o in objects}
    tasks = []
    for b in boxes:
        obj = by_id.pop(b.object_id, None)
        pts, lab = (obj.points, obj.labels) if obj is not None else empty
        if not is_volume:
            tasks.append(Task(b.object_id, None, pts, lab, b.box))
            continue
        slices = np.round(pts[:, 0]).astype(int)
        tasks.append(Task(b.object_id, b.z, pts[slices == b.z], lab[slices == b.z], b.box))
        for z in np.unique(slices[slices != b.z]):  # the same object's points on other slices
            tasks.append(Task(b.object_id, int(z), pts[slices == z], lab[slices == z]))
    for obj in by_id.values():
        if not is_volume:
            tasks.append(Task(obj.object_id, None, obj.points, obj.labels))
            continue
        slices = np.round(obj.points[:, 0]).astype(int)
        for z in np.unique(slices):
            keep = slices == z
            tasks.append(Task(obj.object_id, int(z), obj.points[keep], obj.labels[keep]))
    return sorted(tasks, key=lambda t: (t.object_id, -1 if t.z is None else t.z))


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from napari_msa.engine import Session
    from napari_msa.engine.inference.propagation import fill_by_propagation

    if args.everything:
        if args.points is not None or args.boxes is not None or args.propagate:
            raise CLIError("--everything needs no prompts: leave out -p, -b and --propagate")
        return _run_everything(args)
    if args.points is None and args.boxes is None:
        raise CLIError("give prompts: -p POINTS.csv, -b BOXES.csv or both (or --everything)")
    check_input(args.image, "image")
    for path, what in ((args.points, "points"), (args.boxes, "boxes")):
        if path is not None:
            check_input(path, what)
    check_model_args(args)
    check_output(args.output, inputs=(args.image, args.points, args.boxes))
    if not 0.0 <= args.iou_threshold <= 1.0:  # also refuses nan
        raise CLIError(f"--iou-threshold is an overlap between 0 and 1, got {args.iou_threshold}")
    image = read_image(args.image)
    model = model_from_args(args)
    session = Session(model, normalization=normalization_from_args(args))
    if args.interaction != "model":
        session.rule = args.interaction
    try:
        session.set_image(image.data)
    except ValueError as err:
        raise CLIError(f"{args.image}: {err}") from err
    shape = session.spatial_shape
    objects = read_points_csv(args.points, len(shape)) if args.points is not None else []
    boxes = read_boxes_csv(args.boxes, len(shape)) if args.boxes is not None else []
    boxes = clip_boxes(boxes, shape, args.boxes) if boxes else []
    for obj in objects:
        outside = np.any((obj.points < -0.5) | (obj.points > np.array(shape) - 0.5), axis=1)
        if outside.any():
            raise CLIError(f"object {obj.object_id}: point {obj.points[outside][0].tolist()} lies outside the "
                           f"image of shape {shape}; were the points saved from a layer of another image?")
    if args.propagate and not session.layout.is_volume:
        raise CLIError("--propagate needs a 3D (Z,Y,X) image")

    say(args, f"napari-msa segment: {model.describe()}")
    ids = [o.object_id for o in objects] + [b.object_id for b in boxes]
    labels = np.zeros(shape, dtype=np.uint16 if max(ids) < 2**16 else np.uint32)
    per_object: dict[int, dict[int, np.ndarray]] = {}
    for task in tqdm(_tasks(objects, boxes, session.layout.is_volume), desc="segment", unit="mask",
                     file=sys.stderr, disable=args.quiet):
        if task.box is None and len(task.labels) and task.labels.max() == 0:  # in 2D as in 3D
            where = f" on slice {task.z}" if task.z is not None else ""
            raise CLIError(f"object {task.object_id}{where} has only negative points; add a positive one or a box")
        has_points = len(task.points) > 0
        try:
            mask, _ = session.predict(points=task.points if has_points else None,
                                      labels=task.labels if has_points else None, box=task.box, z=task.z)
        except ValueError as err:  # a prompt the engine refuses: said as the CLI says everything
            raise CLIError(f"object {task.object_id}: {err}") from err
        per_object.setdefault(task.object_id, {})[task.z if task.z is not None else 0] = mask
    if args.propagate:
        for obj_id in tqdm(list(per_object), desc="propagate", unit="object", file=sys.stderr, disable=args.quiet):
            per_object[obj_id].update(fill_by_propagation(session, per_object[obj_id], args.iou_threshold))
    for obj_id in sorted(per_object):
        for z, mask in per_object[obj_id].items():
            target = labels[z] if session.layout.is_volume else labels
            target[mask & (target == 0)] = obj_id  # a lower id keeps its pixels
    out = write_labels(args.output, labels, image)
    counts = {o: int((labels == o).sum()) for o in sorted(per_object)}
    say(args, f"napari-msa segment: wrote {out} ({len(counts)} objects, voxels per id {counts})")
    return 0


def _run_everything(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from napari_msa.engine import Session
    from napari_msa.engine.inference.everything import EverythingSettings, segment_everything, to_labels

    check_input(args.image, "image")
    check_model_args(args)
    check_output(args.output, inputs=(args.image,))
    if not 1 <= args.points_per_side <= 128:
        raise CLIError(f"--points-per-side is a grid size from 1 to 128, got {args.points_per_side}")
    image = read_image(args.image)
    model = model_from_args(args)
    session = Session(model, normalization=normalization_from_args(args))
    try:
        session.set_image(image.data)
    except ValueError as err:
        raise CLIError(f"{args.image}: {err}") from err
    say(args, f"napari-msa segment --everything: {model.describe()}")
    settings = EverythingSettings(points_per_side=args.points_per_side,
                                  coarse_per_side=min(EverythingSettings.coarse_per_side, args.points_per_side))
    shape = session.spatial_shape
    labels = np.zeros(shape, dtype=np.uint32)
    found = 0
    for z in tqdm(range(session.num_slices), desc="everything", unit="slice", file=sys.stderr,
                  disable=args.quiet or session.num_slices == 1):
        candidates = segment_everything(session, z, settings)
        plane = to_labels(candidates, session.plane_shape, first_id=found + 1)
        if session.layout.is_volume:
            labels[z] = plane
        else:
            labels[...] = plane
        found += len(candidates)
    if found < 2**16:
        labels = labels.astype(np.uint16)
    out = write_labels(args.output, labels, image)
    say(args, f"napari-msa segment --everything: wrote {out} ({found} objects on {session.num_slices} slice(s))")
    return 0
