"""Prompts → masks on an image embedding: SAM's prompt encoder and mask decoder, called in one place.

The session, tuning (training steps and held-out checks) and demo training all decode through ``decode``, so
the (row, col) → (x, y) swap SAM wants, the choice between its single and multimask outputs and the mapping
between the image and the model's input frame exist once. The numbers are segment_anything's own:
``SamPredictor.predict`` gives the same masks, scores and logits (tested). A session's single prompts may run in
the model's decoder graph (``engine.model.runtime``), fed the tokens ``PromptEncoder`` builds itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.utils.transforms import ResizeLongestSide
from torch import nn

if TYPE_CHECKING:
    from ..model.runtime import OpenVINODecoder


def to_input_frame(points_rc: np.ndarray, original_size: tuple[int, int], image_size: int) -> np.ndarray:
    """(row, col) points (any leading shape; boxes as (..., 2, 2)) of an image of ``original_size`` → the
    model's input frame, where the longest side is ``image_size`` (SAM's ResizeLongestSide, in float64)."""
    old_h, old_w = original_size
    new_h, new_w = ResizeLongestSide.get_preprocess_shape(old_h, old_w, image_size)
    out = np.array(points_rc, dtype=np.float64)
    out[..., 0] = out[..., 0] * (new_h / old_h)
    out[..., 1] = out[..., 1] * (new_w / old_w)
    return out


def decode(sam: nn.Module, embedding: torch.Tensor, points_rc: np.ndarray | None = None,
           point_labels: np.ndarray | None = None, boxes_rc: np.ndarray | None = None, multimask: bool = False,
           *, mask_input: torch.Tensor | None = None, all_outputs: bool = False,
           graph: OpenVINODecoder | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """N prompts on one (1,C,g,g) embedding in one decoder pass: (N,M,g',g') low-res logits and (N,M) IoU scores.

    Points are (N,P,2) (row, col) in the model's input frame with (N,P) labels (1 positive, 0 negative, -1 a
    padding "not a point"); boxes (N,4) as (min_row, min_col, max_row, max_col) there; ``mask_input`` (N,1,g',g')
    logits of an earlier prediction. ``multimask``: SAM's three masks for an ambiguous prompt (M = 3), else its
    single mask (M = 1); ``all_outputs``: all four (training picks among them itself). ``graph``: the model's
    decoder graph (``MSAModel.decoder_graph``), which answers one prompt (N = 1) once it is ready; until then torch
    answers and the graph's export begins after it.
    """
    points_xy = None if points_rc is None or not np.asarray(points_rc).size else (
        np.asarray(points_rc, dtype=np.float32)[..., ::-1])
    boxes_xy = None if boxes_rc is None else np.asarray(boxes_rc, dtype=np.float32)[:, [1, 0, 3, 2]]
    tokens = None if graph is None else prompt_tokens(points_xy, point_labels, boxes_xy, graph)
    if tokens is not None and graph.ready:
        low, iou = graph(embedding, *tokens, mask_input)
        low, iou = low.to(embedding.device), iou.to(embedding.device)
    else:
        device = embedding.device
        points = None
        if points_xy is not None:
            lab = torch.as_tensor(np.asarray(point_labels, dtype=np.int64), device=device)
            points = (torch.as_tensor(points_xy.copy(), device=device), lab)
        boxes = None if boxes_xy is None else torch.as_tensor(boxes_xy, device=device)
        sparse, dense = sam.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        low, iou = sam.mask_decoder.predict_masks(
            image_embeddings=embedding,
            image_pe=sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
        )
        if tokens is not None:  # begun after torch's answer, so this click is not slowed by it
            graph.export_in_background(sam)
    if all_outputs:
        return low, iou
    chosen = slice(1, None) if multimask else slice(0, 1)  # what MaskDecoder.forward returns
    return low[:, chosen], iou[:, chosen]


def prompt_tokens(points_xy: np.ndarray | None, point_labels: np.ndarray | None, boxes_xy: np.ndarray | None,
                  graph: OpenVINODecoder) -> tuple[np.ndarray, np.ndarray] | None:
    """One prompt's (1,T,2) (x, y) tokens and (1,T) labels as ``PromptEncoder`` builds them (the points, a
    "not a point" pad when there is no box, the box's corners labelled 2 and 3), for the decoder graph; None where
    the graph does not answer it (several prompts, no prompt, labels PromptEncoder would not embed, too many)."""
    n = len(points_xy) if points_xy is not None else len(boxes_xy) if boxes_xy is not None else 0
    if n != 1 or (boxes_xy is not None and len(boxes_xy) != 1):
        return None
    coords, labels = [], []
    if points_xy is not None:
        lab = np.asarray(point_labels, dtype=np.float32).reshape(-1)
        if not np.isin(lab, (-1, 0, 1)).all():
            return None
        coords.append(points_xy.reshape(-1, 2))
        labels.append(lab)
        if boxes_xy is None:
            coords.append(np.zeros((1, 2), np.float32))
            labels.append(np.full(1, -1, np.float32))
    if boxes_xy is not None:
        coords.append(boxes_xy.reshape(2, 2))
        labels.append(np.array([2, 3], np.float32))
    coords, labels = np.concatenate(coords), np.concatenate(labels)
    if len(labels) > graph.max_tokens:
        return None
    return coords[None].astype(np.float32), labels[None]


def upscale_logits(low_res: torch.Tensor, image_size: int, hw: tuple[int, int]) -> torch.Tensor:
    """Low-res logits → the unpadded (h, w) input frame, as SAM's postprocessing does (no resize to the image)."""
    up = F.interpolate(low_res.float(), (image_size, image_size), mode="bilinear", align_corners=False)
    return up[..., : hw[0], : hw[1]]


def image_masks(sam: nn.Module, low_res: torch.Tensor, input_size: tuple[int, int],
                original_size: tuple[int, int]) -> torch.Tensor:
    """Boolean masks at the image's own size from low-res logits (SAM's postprocessing and threshold)."""
    return sam.postprocess_masks(low_res, input_size, original_size) > sam.mask_threshold


def to_mask_input(sam: nn.Module, values: np.ndarray, input_size: tuple[int, int],
                  pad_value: float | None = None) -> np.ndarray:
    """Logits at an image's size as the decoder's low-res mask input (g, g) for that image: resized to its input
    frame, padded bottom/right with ``pad_value`` (None: the smallest value, background), area-averaged."""
    image_size = sam.image_encoder.img_size
    low = sam.prompt_encoder.mask_input_size
    v = torch.as_tensor(np.asarray(values, dtype=np.float32))[None, None]
    v = F.interpolate(v, input_size, mode="bilinear", align_corners=False)
    fill = float(v.min()) if pad_value is None else float(pad_value)
    v = F.pad(v, (0, image_size - input_size[1], 0, image_size - input_size[0]), value=fill)
    return F.interpolate(v, tuple(low), mode="area")[0, 0].numpy()


def mask_to_logits(sam: nn.Module, mask: np.ndarray, input_size: tuple[int, int], magnitude: float = 8.0
                   ) -> np.ndarray:
    """A boolean mask at the image's size as mask-input logits (g, g), ±``magnitude`` (an object the model did not
    draw: one being refined)."""
    logits = (np.asarray(mask, dtype=np.float32) - 0.5) * (2.0 * magnitude)
    return to_mask_input(sam, logits, input_size, pad_value=-magnitude)
