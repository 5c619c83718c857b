"""Refitting the IoU head alone: the decoded prompts are what the session sends, and the masks do not move."""

from __future__ import annotations

import numpy as np
import torch

from napari_msa.engine import load_model
from napari_msa.training import iou_head


def _two_object_images(n: int = 2, size: int = 64) -> tuple[list[np.ndarray], list[np.ndarray]]:
    images, labels = [], []
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        lab = np.zeros((size, size), np.int32)
        lab[(yy - 20) ** 2 + (xx - 22 - i) ** 2 < 100] = 1
        lab[(yy - 44) ** 2 + (xx - 42) ** 2 < 60 + 10 * i] = 2
        images.append((40 + 150 * (lab > 0) + 10 * lab).astype(np.uint8))
        labels.append(lab)
    return images, labels


def test_prompts_are_decoded_with_the_true_iou_of_every_output():
    torch.manual_seed(0)
    model = load_model("tiny", device="cpu", precision="fp32")
    images, labels = _two_object_images()
    data = iou_head.collect(model, images, labels, seed=0, log=lambda *_: None)
    n_kinds = len(iou_head.PROMPT_KINDS)
    assert len(data.kind) == 2 * 2 * n_kinds  # 2 images x 2 objects x every prompt kind
    assert sorted(set(data.kind.tolist())) == list(range(n_kinds))
    assert data.features.shape == (len(data.kind), model.sam.mask_decoder.transformer_dim)
    assert data.true_iou.shape == data.predicted.shape == data.dice.shape == (len(data.kind), 4)
    assert ((data.true_iou >= 0) & (data.true_iou <= 1)).all()
    # Dice and IoU of the same masks agree: Dice = 2 IoU / (1 + IoU)
    np.testing.assert_allclose(data.dice, 2 * data.true_iou / (1 + data.true_iou), atol=1e-6)
    # the tapped features are what the head scored
    head = model.sam.mask_decoder.iou_prediction_head
    np.testing.assert_allclose(iou_head.head_scores(head, data), data.predicted, atol=1e-5)
    assert iou_head.chosen_dice(data.predicted, data) <= iou_head.oracle_dice(data) + 1e-9


def test_a_whole_is_prompted_on_its_own_tissue_off_the_objects_inside_it():
    plane = np.zeros((96, 96), np.uint8)
    yy, xx = np.mgrid[:96, :96]
    body = (yy - 48) ** 2 + (xx - 48) ** 2 < 40**2
    plane[body] = 120
    labels = np.zeros((96, 96), np.int32)
    labels[(yy - 48) ** 2 + (xx - 48) ** 2 < 12**2] = 1  # an organ in the middle of the body
    plane[labels == 1] = 200
    wholes, regions = iou_head.whole_prompts(labels, plane)
    assert len(wholes) == 1 and (wholes[0] ^ body).sum() < 0.03 * body.sum()
    assert not (regions[0] & (labels > 0)).any() and regions[0].sum() > 0.5 * body.sum()
    torch.manual_seed(0)
    model = load_model("tiny", device="cpu", precision="fp32")
    data = iou_head.collect(model, [plane], [labels], seed=0, log=lambda *_: None, with_wholes=np.array([True]))
    assert len(data.kind) == 2 * len(iou_head.PROMPT_KINDS)  # the organ's prompts, then the body's


def test_the_fitted_head_predicts_the_true_iou_better_and_only_the_head_changes():
    torch.manual_seed(0)
    model = load_model("tiny", device="cpu", precision="fp32")
    images, labels = _two_object_images(3)
    data = iou_head.collect(model, images, labels, seed=0, log=lambda *_: None)
    head = model.sam.mask_decoder.iou_prediction_head
    before = {k: v.clone() for k, v in model.sam.state_dict().items()}
    fitted, history = iou_head.fit_head(head, data, data, epochs=30, lr=3e-3, batch_size=8, seed=0,
                                        log=lambda *_: None)
    mse = lambda h: float(np.mean((iou_head.head_scores(h, data) - data.true_iou) ** 2))  # noqa: E731
    assert mse(fitted) < mse(head)
    assert len(history) == 31 and history[0]["epoch"] == 0
    assert history[0]["val_chosen_dice"] <= max(h["val_chosen_dice"] for h in history)
    # fitting works on a copy: the model is untouched until the caller loads the fitted weights
    assert all(torch.equal(before[k], v) for k, v in model.sam.state_dict().items())
