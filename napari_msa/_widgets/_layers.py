"""Layers ↔ prompts: napari Points/Shapes/Labels layers to per-slice prompts in the image's data pixels.

Everything here runs on the GUI thread and is cheap: it reads layer data, maps it through world
coordinates (so a prompt layer with another scale or translate than the image still lands on the
right pixels) and groups prompts by slice. No engine calls, no tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from napari.layers import Image, Labels, Points, Shapes

POSITIVE = "positive"
POSITIVE_COLOR = "lime"
NEGATIVE_COLOR = "red"
BOX_COLOR = "yellow"
PLANE_2D = 0  # the only plane of a 2D image


class PromptError(ValueError):
    """A prompt the engine cannot use; the message tells the user what to do."""


class PromptsChanging(RuntimeError):
    """The points layer is mid-update (data and features differ in length); read it again shortly."""


@dataclass(frozen=True)
class PlanePrompts:
    """The prompts of one slice: points (row, col) in image data pixels, their labels (1/0) and one box."""

    points: np.ndarray
    labels: np.ndarray
    box: np.ndarray | None = None
    candidate: int = 0  # which of the model's masks a lone click keeps (N cycles it); 0 is the model's choice
    prior: np.ndarray | None = field(default=None, compare=False)  # the object as committed there, when refining

    def signature(self) -> tuple:
        """Equal signatures mean the same prediction; used to skip slices whose preview is up to date (a change
        of prior, i.e. of refining, marks the draft outdated instead)."""
        box = None if self.box is None else tuple(np.round(self.box, 3))
        return tuple(map(tuple, np.round(self.points, 3))), tuple(self.labels.tolist()), box, self.candidate

    @property
    def ambiguous(self) -> bool:
        """A lone click with nothing else to go on: the model offers several masks."""
        return len(self.points) == 1 and self.box is None and (self.prior is None or not self.prior.any())


def is_volume(image: Image) -> bool:
    """A (Z,Y,X) grey or (Z,Y,X,3) RGB volume, as napari sees it (rgb is not a layer dimension)."""
    return image.ndim == 3


def spatial_shape(image: Image) -> tuple[int, ...]:
    """The image's pixel grid without the RGB axis: the shape its labels layer must have."""
    shape = tuple(int(s) for s in image.data.shape)
    return shape[:-1] if image.rgb else shape


def check_image(image: Image) -> None:
    """Raise PromptError for images the engine cannot segment, with what to do instead."""
    if image.multiscale:
        raise PromptError(f"'{image.name}' is multiscale; open its full-resolution level as a plain image layer")
    if image.ndim not in (2, 3):
        raise PromptError(
            f"'{image.name}' has {image.ndim} dimensions; segment a 2D image or a (Z,Y,X) volume "
            "(split channels or time points into separate layers first)"
        )


def _placement(image: Image) -> dict:
    """Keyword arguments giving a new layer the same placement in the world as the image."""
    return {"scale": image.scale, "translate": image.translate, "rotate": image.rotate, "shear": image.shear,
            "affine": image.affine.affine_matrix, "units": image.units}


def new_prompt_points(image: Image) -> Points:
    """An empty Points layer for prompts: ``positive`` feature, green positive / red negative points."""
    layer = Points(
        np.empty((0, image.ndim)),
        ndim=image.ndim,
        name=prompt_points_name(image),
        features=pd.DataFrame({POSITIVE: pd.Series([], dtype=bool)}),
        feature_defaults={POSITIVE: True},
        face_color=POSITIVE,
        face_color_cycle={True: POSITIVE_COLOR, False: NEGATIVE_COLOR},
        border_color="white",
        size=max(3.0, 0.025 * max(spatial_shape(image)[-2:])),  # visible at any zoom that shows the image
        **_placement(image),
    )
    layer.mode = "add"
    return layer


def prompt_points_name(image: Image) -> str:
    return f"{image.name} prompts"


def prompt_boxes_name(image: Image) -> str:
    return f"{image.name} boxes"


def new_prompt_boxes(image: Image) -> Shapes:
    """An empty Shapes layer for box prompts, in rectangle mode: drag a box around the object."""
    width = max(1.0, 0.006 * max(spatial_shape(image)[-2:]))
    layer = Shapes(
        ndim=image.ndim,
        name=prompt_boxes_name(image),
        edge_color=BOX_COLOR,
        face_color="transparent",
        edge_width=width,
        **_placement(image),
    )
    layer.mode = "add_rectangle"
    return layer


def new_labels(image: Image) -> Labels:
    """An empty Labels layer on the image's pixel grid, placed like the image."""
    data = np.zeros(spatial_shape(image), dtype=np.uint32)
    return Labels(data, name=f"{image.name} labels", **_placement(image))


def check_labels(labels: Labels, image: Image) -> None:
    """The labels layer must share the image's pixel grid, or masks would land on the wrong pixels."""
    if tuple(labels.data.shape) != spatial_shape(image):
        raise PromptError(
            f"labels layer '{labels.name}' has shape {tuple(labels.data.shape)} but image '{image.name}' has "
            f"{spatial_shape(image)}; choose another labels layer or '(new)' in the widget"
        )
    if labels.multiscale:
        raise PromptError(f"labels layer '{labels.name}' is multiscale; choose a plain labels layer or '(new)'")


def toggle_positive(points: Points) -> bool:
    """Flip the sign given to new points; returns the new sign (True = positive)."""
    value = not bool(points.feature_defaults[POSITIVE].iloc[0]) if POSITIVE in points.feature_defaults else False
    # Only the default changes: setting current_face_color would recolour the selected (existing) points.
    points.feature_defaults[POSITIVE] = value
    return value


def new_points_positive(points: Points) -> bool:
    """The sign new points get (True when the layer has no ``positive`` feature yet)."""
    if POSITIVE not in points.feature_defaults:
        return True
    return bool(points.feature_defaults[POSITIVE].iloc[0])


def to_image_pixels(layer, coords: np.ndarray, image: Image) -> np.ndarray:
    """Data coordinates of ``layer`` → the image's data pixels, through world coordinates."""
    if len(coords) == 0:
        return np.empty((0, image.ndim))
    return np.array([image.world_to_data(layer.data_to_world(c)) for c in np.asarray(coords, dtype=float)])


def _plane_of(coord: np.ndarray, image: Image) -> int | None:
    """The slice a prompt lies on, or None when it lies outside the image's slices."""
    if not is_volume(image):
        return PLANE_2D
    z = int(np.round(coord[0]))
    return z if 0 <= z < spatial_shape(image)[0] else None


def _inside(rc: np.ndarray, image: Image) -> bool:
    h, w = spatial_shape(image)[-2:]
    r, c = rc
    return bool(-0.5 <= r <= h - 0.5 and -0.5 <= c <= w - 0.5)


def _where(coord: np.ndarray, image: Image) -> str:
    """'pixel (r, c)' or 'slice z, pixel (r, c)': where a prompt lies, in the image's data pixels."""
    rc = f"pixel ({coord[-2]:.0f}, {coord[-1]:.0f})"
    return f"slice {coord[0]:.0f}, {rc}" if is_volume(image) else rc


def _extent(image: Image) -> str:
    shape = spatial_shape(image)
    return "×".join(map(str, shape))


def collect_prompts(image: Image, points: Points | None, shapes: Shapes | None
                    ) -> tuple[dict[int, PlanePrompts], list[str]]:
    """All prompts grouped by slice (2D images use slice 0); the last rectangle on a slice is its box.

    Prompts outside the image are left out, so the others still segment; each one left out comes back
    as one sentence (the same sentence while it stays there, so the widget tells the user once).
    """
    ignored: list[str] = []
    pts_by_plane: dict[int, list[tuple[np.ndarray, int]]] = {}
    if points is not None and len(points.data):
        coords = to_image_pixels(points, points.data, image)
        if POSITIVE in points.features:
            signs = points.features[POSITIVE].to_numpy(dtype=bool)
            if len(signs) != len(coords):
                raise PromptsChanging()
        else:
            signs = np.ones(len(coords), dtype=bool)
        for coord, sign in zip(coords, signs, strict=True):
            z = _plane_of(coord, image)
            if z is None or not _inside(coord[-2:], image):
                ignored.append(f"A point at {_where(coord, image)} lies outside '{image.name}' ({_extent(image)}) "
                               f"and is ignored; delete it from '{points.name}' (select it, press Delete).")
                continue
            pts_by_plane.setdefault(z, []).append((coord[-2:], int(sign)))

    boxes: dict[int, np.ndarray] = {}
    if shapes is not None:
        for verts, kind in zip(shapes.data, shapes.shape_type, strict=True):
            if kind != "rectangle":
                continue
            pix = to_image_pixels(shapes, verts, image)
            z = _plane_of(pix[0], image)
            rows, cols = pix[:, -2], pix[:, -1]
            h, w = spatial_shape(image)[-2:]
            box = np.array([max(rows.min(), 0), max(cols.min(), 0), min(rows.max(), h - 1), min(cols.max(), w - 1)])
            if z is None or box[0] > box[2] or box[1] > box[3]:
                ignored.append(f"A box at {_where(pix[0], image)} lies outside '{image.name}' ({_extent(image)}) and "
                               f"is ignored; delete it from '{shapes.name}'.")
                continue
            boxes[z] = box  # a later rectangle replaces an earlier one: SAM takes one box

    prompts = {}
    for z in set(pts_by_plane) | set(boxes):
        items = pts_by_plane.get(z, [])
        pts = np.array([p for p, _ in items], dtype=float).reshape(-1, 2)
        labels = np.array([s for _, s in items], dtype=int)
        prompts[z] = PlanePrompts(pts, labels, boxes.get(z))
    return prompts, ignored


def current_plane(viewer, image: Image) -> int:
    """The image slice under the viewer's current position (0 for 2D images)."""
    if not is_volume(image):
        return PLANE_2D
    z = int(np.round(image.world_to_data(viewer.dims.point)[0]))
    return int(np.clip(z, 0, spatial_shape(image)[0] - 1))


def plane_axes_displayed(viewer, image: Image) -> bool:
    """True when the view shows the image's (Y,X) planes, the only orientation the engine segments."""
    if not is_volume(image):
        return True
    offset = viewer.dims.ndim - image.ndim
    return viewer.dims.ndisplay == 3 or list(viewer.dims.order[-2:]) == [offset + 1, offset + 2]
