"""A correction the answer ignores (engine.prompts.honour): the thing under the click, added or taken away within
the click's reach, and how the interaction and the session carry the edit to the next click."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_support import disk

from napari_msa import Session
from napari_msa.engine.prompts import interaction
from napari_msa.engine.prompts.honour import EDIT_LOGIT, RIM, click_edit, edge_rim, honoured, insists
from napari_msa.engine.prompts.interaction import Answer, Interaction, InteractionRule

SHAPE = (60, 60)
SHOWN = disk(SHAPE, (30, 20), 8)  # the mask shown; the object reaches further right


def test_a_click_is_honoured_when_the_mask_agrees_with_it_at_its_pixel():
    assert honoured(SHOWN, np.array([30.0, 20.0]), 1) and honoured(SHOWN, np.array([30.0, 40.0]), 0)
    assert not honoured(SHOWN, np.array([30.0, 40.0]), 1) and not honoured(SHOWN, np.array([30.2, 19.6]), 0)


def test_a_positive_click_outside_gets_the_smallest_thing_under_it_within_its_reach():
    click = np.array([30.0, 32.0])  # 4 px right of the mask's edge at column 28
    small, large = disk(SHAPE, (30, 34), 5), disk(SHAPE, (30, 34), 20)
    edit = click_edit(SHOWN, np.stack([large, small]), click, 1)
    reach = disk(SHAPE, (30, 32), 2 * 4)
    np.testing.assert_array_equal(edit, small & reach & ~SHOWN)
    assert edit[30, 32] and not edit[SHOWN].any()
    assert click_edit(SHOWN, np.stack([disk(SHAPE, (5, 5), 3)]), click, 1) is None  # nothing holds the click


def test_a_negative_click_inside_takes_away_the_thing_under_it_up_to_half_the_mask():
    shown = disk(SHAPE, (30, 30), 12)
    click = np.array([30.0, 38.0])  # 4 px inside the edge
    spill = disk(SHAPE, (30, 40), 4)
    edit = click_edit(shown, spill[None], click, 0)
    np.testing.assert_array_equal(edit, spill & shown & disk(SHAPE, (30, 38), 2 * 5))
    assert click_edit(shown, disk(SHAPE, (30, 30), 30)[None], np.array([30.0, 30.0]), 0) is None  # all of it: no


def test_no_edit_for_a_click_on_the_shown_edge_or_one_larger_than_the_mask():
    edge_click = np.array([30.0, 29.0])  # one pixel right of the mask
    assert click_edit(SHOWN, disk(SHAPE, (30, 32), 4)[None], edge_click, 1) is None
    far = np.array([30.0, 50.0])  # 22 px out: its reach holds a thing larger than the mask
    assert click_edit(SHOWN, disk(SHAPE, (30, 50), 15)[None], far, 1) is None
    assert click_edit(SHOWN, disk(SHAPE, (30, 20), 3)[None], np.array([30.0, 20.0]), 1) is None  # honoured


def test_a_click_insists_when_it_falls_again_on_a_pixel_clicked_with_its_label():
    assert insists(np.array([[30.0, 20.0], [10.0, 10.0], [30.2, 19.8]]), np.array([1, 0, 1]))
    assert not insists(np.array([[30.0, 20.0], [30.0, 20.0]]), np.array([0, 1]))  # the other label
    assert not insists(np.array([[30.0, 20.0], [30.0, 21.0]]), np.array([1, 1]))  # a pixel further
    assert not insists(np.array([[30.0, 20.0]]), np.array([1]))
    # the rim the session and the trainer both use: none for a click that insists
    assert edge_rim(np.array([[30.0, 20.0], [30.0, 20.0]]), np.array([1, 1])) == 0.0
    assert edge_rim(np.array([[30.0, 20.0], [30.0, 20.0]]), np.array([0, 1])) == RIM


def test_a_click_on_the_shown_edge_gets_its_edit_only_when_it_insists():
    edge_click = np.array([30.0, 29.0])  # one pixel right of the mask (its edge at column 28)
    thing = disk(SHAPE, (30, 30), 4)
    assert click_edit(SHOWN, thing[None], edge_click, 1) is None
    edit = click_edit(SHOWN, thing[None], edge_click, 1, rim=0.0)
    np.testing.assert_array_equal(edit, thing & disk(SHAPE, (30, 29), 2) & ~SHOWN)  # within 2 x 1 px of the click
    assert edit[30, 29]


def test_the_interaction_honours_an_edge_click_the_second_time_it_comes():
    clicks, labels = np.array([[30.0, 20.0], [30.0, 29.0], [30.0, 29.0]]), np.array([1, 1, 1])
    rule = InteractionRule(feed_logits=True, honour=True)
    once = Interaction(rule).run(clicks[:2], labels[:2], None, Stubborn(), amend=amend)
    np.testing.assert_array_equal(once.mask, SHOWN)  # on the edge: the model's answer as it is
    twice = Interaction(rule).run(clicks, labels, None, Stubborn(), amend=amend)
    assert twice.mask[30, 29] and twice.edit is not None
    np.testing.assert_array_equal(twice.mask & ~SHOWN, disk(SHAPE, (30, 29), 2) & ~SHOWN)  # the lone click's
    # smallest candidate (3 px around the click) within twice the click's distance from the edge


def test_an_empty_answer_to_a_positive_click_becomes_the_thing_whole():
    thing = disk(SHAPE, (30, 30), 6)
    np.testing.assert_array_equal(click_edit(np.zeros(SHAPE, bool), np.stack([disk(SHAPE, (30, 30), 9), thing]),
                                             np.array([30.0, 30.0]), 1), thing)


class Stubborn:
    """A stand-in decoder that ignores corrections (its answer is always the mask shown first) and answers a lone
    click with disks of 3, 5 and 9 px around it."""

    def __init__(self) -> None:
        self.prompts = []

    def __call__(self, prompt) -> Answer:
        self.prompts.append(prompt)
        if prompt.lone_click:
            masks = np.stack([disk(SHAPE, tuple(prompt.points[0]), r) for r in (9, 5, 3)])
            return Answer(masks, np.array([0.9, 0.8, 0.7], np.float32), np.zeros((3, 16, 16)))
        return Answer(SHOWN[None].copy(), np.array([0.9], np.float32), np.full((1, 16, 16), len(self.prompts), float))


def amend(answer: Answer, edit: np.ndarray, label: int) -> Answer:
    masks = answer.masks.copy()
    masks[answer.chosen] ^= edit
    return Answer(masks, answer.scores, np.full_like(answer.logits, -label), answer.chosen, answer.window)


def test_an_honouring_rule_edits_an_ignored_correction_and_feeds_the_edit_back():
    clicks, labels = np.array([[30.0, 20.0], [30.0, 34.0], [30.0, 24.0]]), np.array([1, 1, 0])
    decode = Stubborn()
    answer = Interaction(InteractionRule(feed_logits=True, honour=True)).run(clicks, labels, None, decode, amend=amend)
    kinds = [(p.lone_click, len(p.points)) for p in decode.prompts]
    # click 1 (its own lone click); click 2 ignored -> a lone click at it; click 3 ignored -> a lone click at it
    assert kinds == [(True, 1), (False, 2), (True, 1), (False, 3), (True, 1)]
    assert np.all(decode.prompts[3].mask_input == -1)  # the edited answer's logits prompt the next click
    # this decoder ignores that prompt and answers the mask shown first again: click 2's edit stays in force (it is
    # sticky) and click 3's takes a piece away
    np.testing.assert_array_equal(answer.mask, (SHOWN | disk(SHAPE, (30, 34), 3)) & ~disk(SHAPE, (30, 24), 3))
    two = Interaction(InteractionRule(feed_logits=True, honour=True)).run(clicks[:2], labels[:2], None, Stubborn(),
                                                                          amend=amend)
    np.testing.assert_array_equal(two.mask, SHOWN | disk(SHAPE, (30, 34), 3))  # within reach: 12 px, all of it
    plain = Interaction(InteractionRule(feed_logits=True)).run(clicks, labels, None, Stubborn())
    np.testing.assert_array_equal(plain.mask, SHOWN)  # without the rule the clicks stay ignored
    with pytest.raises(ValueError, match="amend"):
        Interaction(InteractionRule(honour=True)).run(clicks, labels, None, Stubborn())


def test_the_session_writes_an_edit_into_the_kept_mask_and_the_logits_it_feeds_back(tiny_model):
    rng = np.random.default_rng(0)
    session = Session(tiny_model)
    session.set_image(rng.normal(size=(48, 48)).astype(np.float32))
    first = session.interact(points=[[24, 24]], labels=[1])
    square = np.zeros((48, 48), bool)
    square[2:22, 2:22] = True
    emb = session.embedding(0)
    for label in (1, 0):
        amended = session._amend(first, square, label)
        np.testing.assert_array_equal(amended.mask, first.mask ^ square)
        np.testing.assert_array_equal(amended.masks[1:], first.masks[1:])  # the other candidates as they were
        low = torch.as_tensor(amended.low_logits)[None, None]
        fed = tiny_model.sam.postprocess_masks(low, emb.input_size, emb.original_size)[0, 0].numpy()
        sure = fed[6:18, 6:18] > EDIT_LOGIT / 2 if label == 1 else fed[6:18, 6:18] < -EDIT_LOGIT / 2
        assert sure.all()  # the next click is prompted with the edit


def test_an_ignored_click_through_the_session_gets_its_edit(tiny_model, monkeypatch):
    """The session's own path: the rule asks the model's decoder about a lone click and amends the answer (the
    edit made to measure here, since a random model's answers are what they are)."""
    rng = np.random.default_rng(0)
    img = rng.normal(size=(48, 48)).astype(np.float32)
    clicks, labels = [[24, 24], [40, 40]], [1, 0]
    plain = Session(tiny_model)
    plain.set_image(img)
    plain.rule = "logits"
    shown = plain.predict(points=clicks, labels=labels)[0]
    edit = shown & disk(shown.shape, (24, 24), 10)  # a negative click's edit takes away what the mask holds
    assert edit.any()
    seen = []
    monkeypatch.setattr(interaction, "honoured", lambda *args: False)  # every correction counts as ignored
    monkeypatch.setattr(interaction, "click_edit", lambda mask, candidates, point, label, rim: seen.append(
        (candidates.shape, label)) or edit)
    session = Session(tiny_model)
    session.set_image(img)
    session.rule = "logits+honour"
    mask, _ = session.predict(points=clicks, labels=labels)
    np.testing.assert_array_equal(mask, shown & ~edit)
    assert seen == [((3, 48, 48), 0)]  # the lone click's three candidates, on the slice, for the negative click
