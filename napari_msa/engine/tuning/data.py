"""Training data for tuning: (image, object mask) pairs from labels, a held-out split, and clicks and
boxes simulated the way an annotator prompts, in the model's input frame (row, col; SAM gets x, y)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from segment_anything.utils.transforms import ResizeLongestSide

from ..network.preprocessing import ImageLayout, Normalization, intensity_window, to_uint8_rgb
from ..prompts.geometry import depth_map, interior_click, mask_box, most_interior
from ..prompts.zoom import zoom_window
from .tune_types import HELD_OUT_KINDS

# --------------------------------------------------------------------------------------------------
# Training pairs
# --------------------------------------------------------------------------------------------------
MAX_LABEL_IDS = 10_000  # more object ids than this is an image given as labels, not an annotation
MIN_CLICK_REGION = 8  # pixels (at the model's scale) a click region needs, else the whole object is clickable


@dataclass
class TrainingSlice:
    """One labelled plane at the model's input scale (longest side = image size)."""

    rgb: np.ndarray  # (h, w, 3) uint8
    labels: np.ndarray  # (h, w) int, the user's ids, nearest-resized
    image_index: int
    z: int | None  # slice index in a volume, None for a 2D image
    pieces: np.ndarray | None = None  # (h, w) int32: each connected piece of each label its own id
    clickable: np.ndarray | None = None  # (h, w) bool: where a first click may land; None: anywhere on the object

    def mask(self, piece: int) -> np.ndarray:
        return self.pieces == piece

    def click_region(self, piece: int) -> np.ndarray:
        """Where an annotator's first click on ``piece`` lands: the clickable part of it when that is big enough
        to aim at (a whole, e.g. the body, is clicked on its own tissue, not on the organs inside it)."""
        mask = self.mask(piece)
        if self.clickable is None:
            return mask
        region = mask & self.clickable
        return region if region.sum() >= MIN_CLICK_REGION else mask


@dataclass(frozen=True)
class Pair:
    """One training object: a connected piece of a label, since one click selects one piece (two kidneys
    under one label are two objects)."""

    slice_id: int
    object_id: int  # the piece's id in TrainingSlice.pieces
    label: int = 0  # the user's label id it belongs to (for per-label results)


def _resize_nearest(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * labels.shape[0] / shape[0]).astype(int), labels.shape[0] - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * labels.shape[1] / shape[1]).astype(int), labels.shape[1] - 1)
    return labels[rows[:, None], cols[None, :]]


def _as_list(x) -> list[np.ndarray]:
    if isinstance(x, np.ndarray) or not isinstance(x, (list, tuple)):
        return [np.asarray(x)]
    return [np.asarray(a) for a in x]


def build_pairs(
    images: np.ndarray | Sequence[np.ndarray],
    labels: np.ndarray | Sequence[np.ndarray],
    *,
    image_size: int,
    normalization: Normalization | None = None,
    rgb: bool | None = None,
    min_pixels: int = 8,
    click_regions: Sequence[np.ndarray | None] | None = None,
) -> tuple[list[TrainingSlice], list[Pair]]:
    """(slices, pairs): every slice with any label, every connected piece of a label on it with ≥ ``min_pixels``
    pixels.

    Images are (Y,X), (Y,X,3), (Z,Y,X) or (Z,Y,X,3); labels are integer arrays of the spatial shape.
    Volumes are windowed once for the whole volume, like the session does. ``click_regions`` (one boolean array
    of the spatial shape or None per image) says where simulated first clicks land; None: anywhere on the object.
    """
    norm = normalization or Normalization()
    imgs, labs = _as_list(images), _as_list(labels)
    if len(imgs) != len(labs):
        raise ValueError(f"{len(imgs)} images but {len(labs)} label arrays")
    regions = [None] * len(imgs) if click_regions is None else list(click_regions)
    if len(regions) != len(imgs):
        raise ValueError(f"{len(imgs)} images but {len(regions)} click regions")
    resize = ResizeLongestSide(image_size)
    slices: list[TrainingSlice] = []
    pairs: list[Pair] = []
    for i, (image, lab, region) in enumerate(zip(imgs, labs, regions, strict=True)):
        layout = ImageLayout.of(image, rgb)
        spatial = image.shape[: image.ndim - (1 if layout.rgb else 0)]
        if lab.shape != spatial:
            raise ValueError(
                f"labels of shape {lab.shape} do not match the image's spatial shape {spatial}; "
                "use a labels layer drawn on this image"
            )
        if region is not None and np.shape(region) != spatial:
            raise ValueError(f"click region of shape {np.shape(region)} does not match the image's spatial shape "
                             f"{spatial}")
        if not (np.issubdtype(lab.dtype, np.integer) or lab.dtype == bool):
            raise ValueError(f"labels must be integers (object ids), got dtype {lab.dtype}; were the image and the "
                             "labels swapped? (the image comes first)")
        if lab.dtype != bool and lab.min() < 0:
            raise ValueError("the labels hold negative values, which no object id has; were the image and the labels "
                             "swapped? (the image comes first)")
        n_ids = len(np.unique(lab)) - 1
        if n_ids > MAX_LABEL_IDS:
            raise ValueError(f"the labels hold {n_ids} object ids (more than {MAX_LABEL_IDS}); is this an image "
                             "rather than labels? (the image comes first, then the labels painted on it)")
        window = intensity_window(image, norm, layout.rgb)
        planes = range(image.shape[0]) if layout.is_volume else [None]
        for z in planes:
            plane_lab = lab[z] if z is not None else lab
            if not plane_lab.any():
                continue
            plane = image[z] if z is not None else image
            small = resize.apply_image(to_uint8_rgb(plane, window))
            small_lab = _resize_nearest(np.asarray(plane_lab, dtype=np.int64), small.shape[:2])
            pieces, piece_labels = _pieces(small_lab, min_pixels)
            if not piece_labels:
                continue
            clickable = None
            if region is not None:
                plane_region = np.asarray(region[z] if z is not None else region, dtype=np.uint8)
                clickable = _resize_nearest(plane_region, small.shape[:2]) > 0
            sid = len(slices)
            slices.append(TrainingSlice(small, small_lab, i, z, pieces, clickable))
            pairs.extend(Pair(sid, piece, label) for piece, label in enumerate(piece_labels, start=1))
    return slices, pairs


def window_views(
    images: np.ndarray | Sequence[np.ndarray],
    labels: np.ndarray | Sequence[np.ndarray],
    slices: list[TrainingSlice],
    pairs: list[Pair],
    *,
    image_size: int,
    normalization: Normalization | None = None,
    rgb: bool | None = None,
    min_pixels: int = 8,
) -> tuple[list[TrainingSlice], list[Pair]]:
    """(slices, pairs) of zoomed views, one per pair: the window a zooming rule decodes that object's corrections
    in (``prompts.zoom``, around the whole object), cut from the full-resolution plane and resized to the model's
    input, with that object as its one pair (the rest of the window is context). Give it training pairs only."""
    norm = normalization or Normalization()
    imgs, labs = _as_list(images), _as_list(labels)
    resize = ResizeLongestSide(image_size)
    windows: dict[int, tuple[float, float]] = {}
    out_slices: list[TrainingSlice] = []
    out_pairs: list[Pair] = []
    for pair in pairs:
        sl = slices[pair.slice_id]
        image, lab = imgs[sl.image_index], labs[sl.image_index]
        layout = ImageLayout.of(image, rgb)
        if sl.image_index not in windows:
            windows[sl.image_index] = intensity_window(image, norm, layout.rgb)
        plane = image[sl.z] if sl.z is not None else image
        plane_lab = np.asarray(lab[sl.z] if sl.z is not None else lab, dtype=np.int64)
        # the object at full resolution: the piece of its label that the model-scale piece lies on
        footprint = _resize_nearest(sl.mask(pair.object_id).astype(np.int64), plane_lab.shape) > 0
        parts, _ = ndimage.label(plane_lab == pair.label)
        under = parts[footprint & (parts > 0)]
        if under.size == 0:
            continue
        obj = parts == np.bincount(under).argmax()
        window = zoom_window(plane_lab.shape, obj, np.zeros((0, 2)), np.zeros(0, dtype=np.int64))
        if window is None:  # the object fills most of the slice: a zooming rule does not zoom either
            continue
        r0, c0, r1, c1 = window
        small = resize.apply_image(to_uint8_rgb(plane[r0:r1, c0:c1], windows[sl.image_index]))
        small_lab = _resize_nearest(plane_lab[r0:r1, c0:c1], small.shape[:2])
        pieces, _ = _pieces(small_lab, min_pixels)
        centred = pieces[(_resize_nearest(obj[r0:r1, c0:c1].astype(np.int64), small.shape[:2]) > 0) & (pieces > 0)]
        if centred.size == 0:
            continue
        out_pairs.append(Pair(len(out_slices), int(np.bincount(centred).argmax()), pair.label))
        out_slices.append(TrainingSlice(small, small_lab, sl.image_index, sl.z, pieces))
    return out_slices, out_pairs


def _pieces(labels: np.ndarray, min_pixels: int) -> tuple[np.ndarray, list[int]]:
    """(piece map, label of piece 1, 2, ...): connected pieces of every label with >= ``min_pixels`` pixels."""
    pieces = np.zeros(labels.shape, dtype=np.int32)
    piece_labels: list[int] = []
    ids, counts = np.unique(labels, return_counts=True)
    for label, count in zip(ids, counts, strict=True):
        if label == 0 or count < min_pixels:
            continue
        parts, n = ndimage.label(labels == label)
        sizes = np.bincount(parts.ravel(), minlength=n + 1)
        for part in range(1, n + 1):
            if sizes[part] >= min_pixels:
                piece_labels.append(int(label))
                pieces[parts == part] = len(piece_labels)
    return pieces, piece_labels


def split_pairs(slices: list[TrainingSlice], pairs: list[Pair], val_fraction: float,
                rng: np.random.Generator, by: str = "object") -> tuple[list[Pair], list[Pair], str]:
    """(train, held-out, 'slice' | 'object' | 'none').

    ``by='slice'``: whole slices when there are several (``val_fraction`` of the slices), else objects. ``by='object'``:
    ``val_fraction`` of the objects, spread over every labelled slice (``_object_split``: each slice and each label id
    keeps at least one training object), so the check sees objects of every slice rather than one slice's."""
    if not pairs:
        raise ValueError("no labelled objects found: paint at least two objects (or one object on two slices)")
    if val_fraction <= 0:
        return list(pairs), [], "none"
    if not 0 < val_fraction < 1:
        raise ValueError(f"the held-out share must be between 0 and 1, got {val_fraction}")
    if by not in HELD_OUT_KINDS:
        raise ValueError(f"held_out must be one of {HELD_OUT_KINDS}, got {by!r}")
    slice_ids = sorted({p.slice_id for p in pairs})
    if by == "object" and len(slice_ids) >= 2:
        held_pairs = _object_split(pairs, val_fraction, rng)
        if held_pairs:
            return [p for p in pairs if p not in held_pairs], [p for p in pairs if p in held_pairs], "object"
    if len(slice_ids) >= 2:  # by slice, or by object where no object can go without emptying a slice or a label
        n_val = min(len(slice_ids) - 1, max(1, round(val_fraction * len(slice_ids))))
        held = set(rng.permutation(slice_ids)[:n_val].tolist())
        return [p for p in pairs if p.slice_id not in held], [p for p in pairs if p.slice_id in held], "slice"
    if len(pairs) >= 2:
        n_val = min(len(pairs) - 1, max(1, round(val_fraction * len(pairs))))
        order = rng.permutation(len(pairs))
        held = set(order[:n_val].tolist())
        return ([p for i, p in enumerate(pairs) if i not in held],
                [p for i, p in enumerate(pairs) if i in held], "object")
    raise ValueError(
        "only one labelled object: label at least one more object or slice so some can be held out "
        "to measure progress (or set the held-out share to 0)"
    )


def _object_split(pairs: list[Pair], val_fraction: float, rng: np.random.Generator) -> set[Pair]:
    """About ``val_fraction`` of the pairs (at least one), taken in turn from the slices in a seeded order (a seeded
    pick within each), skipping any pair whose slice or label id would be left with no training object."""
    n_val = max(1, round(val_fraction * len(pairs)))
    by_slice: dict[int, list[Pair]] = {}
    for pair in pairs:
        by_slice.setdefault(pair.slice_id, []).append(pair)
    queues = [[by_slice[sid][i] for i in rng.permutation(len(by_slice[sid]))]
              for sid in rng.permutation(sorted(by_slice)).tolist()]
    left_in_slice = {sid: len(group) for sid, group in by_slice.items()}
    left_of_label: dict[int, int] = {}
    for pair in pairs:
        left_of_label[pair.label] = left_of_label.get(pair.label, 0) + 1
    held: set[Pair] = set()
    while len(held) < n_val and any(queues):
        for queue in queues:  # one pair per slice per round, so every slice gives before any gives twice
            while queue and len(held) < n_val:
                pair = queue.pop(0)
                if left_in_slice[pair.slice_id] > 1 and left_of_label[pair.label] > 1:
                    held.add(pair)
                    left_in_slice[pair.slice_id] -= 1
                    left_of_label[pair.label] -= 1
                    break
    return held


# --------------------------------------------------------------------------------------------------
# Prompts as an annotator gives them (row, col in the model's input frame)
# --------------------------------------------------------------------------------------------------
def correction_click(pred: np.ndarray, gt: np.ndarray, rng: np.random.Generator | None = None,
                     max_side: int = 256) -> tuple[np.ndarray, int]:
    """((row, col), label): at the centre of the largest error; 1 in a missed region, 0 in a false positive.

    Large frames are searched on a grid of at most ``max_side`` pixels a side (the click lands within
    that grid's cell), which keeps the simulation cheap at 1024 px.
    """
    f = max(1, -(-max(gt.shape) // max_side))
    p, g = pred[::f, ::f], gt[::f, ::f]
    missed, extra = g & ~p, p & ~g
    if not missed.any() and not extra.any():
        return interior_click(gt, rng), 1
    d_missed, d_extra = depth_map(missed), depth_map(extra)
    positive = d_missed.max() >= d_extra.max()
    region, depth = (missed, d_missed) if positive else (extra, d_extra)
    if rng is None:
        point = most_interior(region, depth)
    else:
        candidates = np.argwhere(depth >= 0.8 * depth.max())
        point = candidates[rng.integers(len(candidates))]
    point = np.minimum(point * f + f // 2, np.array(gt.shape) - 1)
    return point.astype(np.float64), int(positive)


def jittered_box(mask: np.ndarray, rng: np.random.Generator, scale: float = 0.1) -> np.ndarray:
    """The mask's box with each edge moved by noise of 10 % of the side (at most 20 %), as SAM trains."""
    box = mask_box(mask)
    h, w = box[2] - box[0] + 1, box[3] - box[1] + 1
    sides = np.array([h, w, h, w])
    noise = np.clip(rng.normal(0.0, scale, 4), -2 * scale, 2 * scale) * sides
    box = box + noise
    box[[0, 2]] = np.clip(box[[0, 2]], 0, mask.shape[0] - 1)
    box[[1, 3]] = np.clip(box[[1, 3]], 0, mask.shape[1] - 1)
    if box[2] <= box[0] or box[3] <= box[1]:
        return mask_box(mask)
    return box
