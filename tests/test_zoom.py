"""Zoom-in for correction clicks (engine.prompts.zoom): where later clicks are decoded, and that a window's answer is
the crop's answer pasted back on the slice."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_support import disk

from napari_msa import Session
from napari_msa.engine.inference.decoding import mask_to_logits, to_mask_input
from napari_msa.engine.prompts import interaction
from napari_msa.engine.prompts.interaction import Answer, Interaction, InteractionRule, contradicts
from napari_msa.engine.prompts.zoom import MIN_SIDE, box_in, paste, points_in, zoom_window

SHAPE = (200, 240)


def test_the_window_is_a_square_twice_the_object_inside_the_slice():
    obj = disk(SHAPE, (100, 120), 30)  # 61 px across
    window = zoom_window(SHAPE, obj, np.array([[100.0, 120.0]]), np.array([1]))
    r0, c0, r1, c1 = window
    assert r1 - r0 == c1 - c0 == 122 and (r0 + r1) / 2 == pytest.approx(100.5, abs=1)
    corner = disk(SHAPE, (5, 5), 8)  # shifted, not cut, at the slice's edge
    assert zoom_window(SHAPE, corner, np.zeros((0, 2)), np.zeros(0)) == (0, 0, MIN_SIDE, MIN_SIDE)


def test_the_window_holds_the_positive_clicks_and_the_box_but_not_the_negative_ones():
    obj = disk(SHAPE, (100, 120), 10)
    clicks = np.array([[100.0, 120.0], [100.0, 160.0], [10.0, 10.0]])
    r0, c0, r1, c1 = zoom_window(SHAPE, obj, clicks, np.array([1, 1, 0]))
    assert c1 > 160 and r0 > 10
    r0, c0, r1, c1 = zoom_window(SHAPE, obj, np.zeros((0, 2)), np.zeros(0), np.array([60.0, 100.0, 110.0, 140.0]))
    assert r0 <= 60 and c0 <= 100 and r1 > 110 and c1 > 140


def test_no_window_when_it_would_be_most_of_the_slice_or_there_is_no_object():
    assert zoom_window(SHAPE, disk(SHAPE, (100, 120), 60), np.zeros((0, 2)), np.zeros(0)) is None
    assert zoom_window(SHAPE, np.zeros(SHAPE, bool), np.zeros((0, 2)), np.zeros(0)) is None
    assert zoom_window(SHAPE, None, np.zeros((0, 2)), np.zeros(0)) is None


def test_points_boxes_and_masks_between_the_slice_and_a_window():
    window = (50, 60, 114, 124)
    pts, labs = points_in(window, np.array([[60.0, 70.0], [10.0, 10.0], [113.0, 123.0]]), np.array([1, 0, 0]))
    np.testing.assert_array_equal(pts, [[10, 10], [63, 63]]) and np.testing.assert_array_equal(labs, [1, 0])
    np.testing.assert_array_equal(box_in(window, np.array([40.0, 70.0, 80.0, 200.0])), [0, 10, 30, 63])
    pasted = paste(window, np.ones((1, 64, 64), bool), SHAPE)
    assert pasted.shape == (1, *SHAPE) and pasted.sum() == 64 * 64 and pasted[0, 50, 60] and not pasted[0, 49, 60]


class Recorder:
    """A stand-in decoder: records each prompt, answers disks of 6, 10, 14 px at the first click (slice frame)."""

    def __init__(self) -> None:
        self.prompts = []

    def __call__(self, prompt) -> Answer:
        self.prompts.append(prompt)
        centre = tuple(prompt.points[0]) if len(prompt.points) else tuple(np.reshape(prompt.box, (2, 2)).mean(0))
        masks = np.stack([disk(SHAPE, centre, r) for r in (6, 10, 14)])
        return Answer(masks, np.array([0.9, 0.8, 0.7], np.float32), np.full((3, 16, 16), len(self.prompts), float))


def test_clicks_after_the_first_answer_are_decoded_in_its_window_with_the_answer_as_a_mask():
    clicks = np.array([[100.0, 120.0], [104.0, 124.0], [96.0, 116.0], [100.0, 175.0]])
    labels = np.array([1, 0, 1, 1])
    decode = Recorder()
    Interaction(InteractionRule(feed_logits=True, zoom=True)).run(clicks, labels, None, decode)
    first, second, third, fourth = decode.prompts
    assert first.window is None and first.multimask  # the lone click sees the whole slice
    assert second.window == zoom_window(SHAPE, disk(SHAPE, (100, 120), 6), clicks[:2], labels[:2])
    assert second.mask_input is None and np.array_equal(second.carried.mask, disk(SHAPE, (100, 120), 6))
    assert third.window == second.window and np.all(third.mask_input == 2)  # same window: the logits go on
    assert fourth.window != third.window and fourth.window[3] > 175 and fourth.carried is not None  # outside: anew
    far = Recorder()  # a click far away makes the object most of the slice: the whole slice again
    Interaction(InteractionRule(feed_logits=True, zoom=True)).run(np.array([[100.0, 120.0], [10.0, 10.0]]),
                                                                  np.array([1, 1]), None, far)
    assert far.prompts[1].window is None and far.prompts[1].carried is None and far.prompts[1].mask_input is not None


class Unlike(Recorder):
    """A decoder to which the object looks unlike itself in a window: there it answers a speck (or, to a negative
    click, most of the window); on the whole slice a disk of 12 px, or ``whole`` if given."""

    def __init__(self, whole: np.ndarray | None = None) -> None:
        super().__init__()
        self.whole = whole

    def __call__(self, prompt) -> Answer:
        self.prompts.append(prompt)
        if prompt.window is None:
            mask = self.whole if self.whole is not None and len(self.prompts) > 1 else disk(SHAPE, (100, 120), 12)
        elif prompt.labels[-1] == 1:
            mask = disk(SHAPE, tuple(prompt.points[-1]), 2)
        else:
            r0, c0, r1, c1 = prompt.window
            mask = np.zeros(SHAPE, bool)
            mask[r0:r1, c0:c1] = True
        return Answer(mask[None], np.array([0.5], np.float32), np.full((1, 16, 16), len(self.prompts), float))


@pytest.mark.parametrize("label", [1, 0])
def test_a_zoomed_answer_that_contradicts_its_click_is_decoded_again_on_the_whole_slice(label):
    clicks, labels = np.array([[100.0, 120.0], [100.0, 133.0]]), np.array([1, label])
    decode = Unlike()
    answer = Interaction(InteractionRule(feed_logits=True, zoom=True)).run(clicks, labels, None, decode)
    _first, zoomed, whole = decode.prompts
    assert zoomed.window is not None and whole.window is None  # the same step, again on the whole slice
    assert np.array_equal(whole.points, zoomed.points) and np.all(whole.mask_input == 1) and whole.carried is None
    assert answer.window is None and np.array_equal(answer.mask, disk(SHAPE, (100, 120), 12))
    again = Unlike(whole=np.zeros(SHAPE, bool) if label == 1 else np.ones(SHAPE, bool))  # it contradicts there too
    kept = Interaction(InteractionRule(feed_logits=True, zoom=True)).run(clicks, labels, None, again)
    assert len(again.prompts) == 3 and kept.window == again.prompts[1].window  # the zoomed answer stays


def test_a_correction_contradicts_its_click_when_it_shrinks_or_grows_the_object_against_it():
    shown = np.zeros((10, 10), bool)
    shown[:, :5] = True  # 50 px
    kept = shown.copy()
    kept[:, 4] = False  # keeps 0.9 of it
    lost = shown.copy()
    lost[:, 3:5] = False  # keeps 0.6 of it
    assert not contradicts(kept, shown, 1) and contradicts(lost, shown, 1)
    grown, flooded = shown.copy(), shown.copy()
    grown[:, 5] = True  # 1.2 times
    flooded[:, 5:7] = True  # 1.4 times
    assert not contradicts(grown, shown, 0) and contradicts(flooded, shown, 0)
    assert not contradicts(lost, np.zeros_like(shown), 1)  # nothing shown: nothing to contradict


def test_a_zoomed_answer_that_agrees_with_its_click_is_not_decoded_twice():
    decode = Recorder()  # disks around the first click: a correction never loses or doubles the object
    clicks, labels = np.array([[100.0, 120.0], [104.0, 124.0], [96.0, 116.0]]), np.array([1, 0, 1])
    Interaction(InteractionRule(feed_logits=True, zoom=True)).run(clicks, labels, None, decode)
    assert len(decode.prompts) == 3 and all(p.window is not None for p in decode.prompts[1:])


def test_a_users_box_is_zoomed_into_at_once_and_its_clicks_stay_there():
    box = np.array([90.0, 110.0, 110.0, 130.0])
    decode = Recorder()
    Interaction(InteractionRule(feed_logits=True, zoom=True)).run(np.array([[100.0, 120.0]]), np.array([1]), box,
                                                                  decode, shape=SHAPE)
    first, second = decode.prompts
    assert first.window == zoom_window(SHAPE, None, np.zeros((0, 2)), np.zeros(0), box) and first.mask_input is None
    assert second.window == first.window and np.all(second.mask_input == 1)
    unknown = Recorder()  # without the slice's shape there is nothing to place a window in: the whole slice
    Interaction(InteractionRule(zoom=True)).run(np.zeros((0, 2)), np.zeros(0), box, unknown)
    assert unknown.prompts[0].window is None


def test_without_zoom_every_step_sees_the_whole_slice():
    decode = Recorder()
    Interaction(InteractionRule(feed_logits=True)).run(np.array([[100.0, 120.0], [104.0, 124.0]]), np.array([1, 0]),
                                                       None, decode)
    assert all(p.window is None and p.carried is None for p in decode.prompts)


def test_a_windows_answer_is_the_crops_answer_pasted_on_the_slice(tiny_model, monkeypatch):
    """The engine's zoom step equals a session on the crop of the slice's 8-bit picture, fed the previous answer's
    logits resampled into the crop.
    (A random model's masks are most of the slice, so the window is fixed here; its choice is tested above.)"""
    window = (60, 70, 140, 170)
    monkeypatch.setattr(interaction, "zoom_window", lambda *args, **kwargs: window)
    rng = np.random.default_rng(3)
    img = rng.normal(0.2, 0.05, SHAPE).astype(np.float32)
    img[disk(SHAPE, (100, 120), 12)] += 0.6
    session = Session(tiny_model)
    session.set_image(img)
    session.rule = InteractionRule(feed_logits=True, zoom=True)
    clicks, labels = np.array([[100.0, 120.0], [108.0, 112.0], [20.0, 30.0]]), [1, 0, 0]
    first = session.interact(points=clicks[:1], labels=labels[:1]).low_logits.copy()
    answer = session.interact(points=clicks, labels=labels)  # the third falls outside: asked anew, the same window
    assert answer.window == window and answer.masks.shape[1:] == SHAPE
    r0, c0, r1, c1 = window
    assert not answer.mask[:r0].any() and not answer.mask[:, c1:].any()

    crop = Session(tiny_model)  # auto: an 8-bit RGB picture as it is
    crop.set_image(np.ascontiguousarray(session.plane_rgb(0)[r0:r1, c0:c1]), rgb=True)
    full = session.embedding(0)
    up = tiny_model.sam.postprocess_masks(torch.as_tensor(first)[None, None], full.input_size, full.original_size)
    seed = to_mask_input(tiny_model.sam, up[0, 0, r0:r1, c0:c1].numpy(), crop.embedding(0).input_size)
    pts, labs = points_in(window, clicks[:2], np.array(labels[:2]))
    second, _ = crop.predict(points=pts, labels=labs, mask_input=seed[None], multimask=False)
    # the third: a negative click outside the window says nothing in it; the second's logits go on
    third, _ = crop.predict(points=pts, labels=labs, mask_input=crop.last_logits, multimask=False)
    np.testing.assert_array_equal(answer.mask[r0:r1, c0:c1], third)
    assert not np.array_equal(second, third)


def test_window_embeddings_stay_in_memory(tiny_model, tmp_path):
    session = Session(tiny_model, cache_dir=tmp_path)
    session.set_image(np.random.default_rng(0).random(SHAPE).astype(np.float32))
    session.embedding(0)
    session.window_embedding(0, (10, 10, 74, 74))
    assert len(session.cache) == 2 and len(list(tmp_path.rglob("*.pt"))) == 1
    assert session.window_embedding(0, (10, 10, 74, 74)) is not None and session.cache.hits >= 1


def test_a_mask_as_logits_is_the_mask_resampled_at_plus_minus_the_magnitude(tiny_model):
    mask = disk(SHAPE, (100, 120), 20)
    logits = mask_to_logits(tiny_model.sam, mask, (213, 256))
    assert logits.max() == pytest.approx(8.0) and logits.min() == pytest.approx(-8.0)
    np.testing.assert_allclose(logits, to_mask_input(tiny_model.sam, np.where(mask, 8.0, -8.0), (213, 256)), atol=1e-5)


def test_the_next_clicks_window_can_be_encoded_before_the_click(tiny_model, monkeypatch):
    """After a first answer, ``prefetch_window`` encodes the window the next click will be decoded in; that click
    then needs no encoder pass and gives the same mask as without the prefetch."""
    window = (60, 70, 140, 170)
    monkeypatch.setattr(interaction, "zoom_window", lambda *args, **kwargs: window)
    img = np.random.default_rng(4).random(SHAPE).astype(np.float32)
    clicks, labels = np.array([[100.0, 120.0], [108.0, 112.0]]), [1, 0]
    plain = Session(tiny_model)
    plain.set_image(img)
    plain.rule = InteractionRule(feed_logits=True, zoom=True)
    assert plain.prefetch_window(0) is None  # nothing clicked yet
    plain.predict(points=clicks[:1], labels=labels[:1])
    expected, _ = plain.predict(points=clicks, labels=labels)

    session = Session(tiny_model)
    session.set_image(img)
    session.rule = InteractionRule(feed_logits=True, zoom=True)
    session.predict(points=clicks[:1], labels=labels[:1])
    assert session.prefetch_window(0) == window
    encoded = []
    monkeypatch.setattr(session, "_encode", lambda work: encoded.append(work))
    mask, _ = session.predict(points=clicks, labels=labels)
    assert encoded == [] and np.array_equal(mask, expected)
    assert session.prefetch_window(0) is None  # the answer shown is zoomed already: its window is encoded
    session.rule = "logits"
    assert session.prefetch_window(0) is None  # no zoom, no window
