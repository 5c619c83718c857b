"""An honoured correction click changes the mask only where it was clicked (engine.prompts.local_change)."""

from __future__ import annotations

import numpy as np
from segment_support import disk

from napari_msa.engine.prompts.interaction import Answer, Interaction, InteractionRule
from napari_msa.engine.prompts.local_change import honours, local_change

SHAPE = (60, 60)


def test_a_positive_click_adds_its_region_and_a_flood_elsewhere_is_dropped():
    shown = disk(SHAPE, (20, 20), 6)
    wanted = disk(SHAPE, (20, 29), 5)  # the missed part the click asks for, touching the object
    flood = disk(SHAPE, (48, 48), 6)  # a flood nowhere near the click
    answer = shown | wanted | flood
    out = local_change(answer, shown, np.array([20.0, 31.0]), 1)
    assert np.array_equal(out, shown | wanted)


def test_a_negative_click_removes_its_region_and_a_shrink_elsewhere_is_dropped():
    shown = disk(SHAPE, (30, 30), 15)
    spill = disk(SHAPE, (30, 42), 4) & shown
    lost = disk(SHAPE, (22, 20), 3)  # a part the answer drops far from the click
    answer = shown & ~spill & ~lost
    out = local_change(answer, shown, np.array([30.0, 43.0]), 0)
    assert np.array_equal(out, shown & ~spill)


def test_a_click_the_answer_does_not_honour_keeps_the_answer_whole():
    shown = disk(SHAPE, (20, 20), 6)
    answer = disk(SHAPE, (40, 40), 8)  # moved away; the clicked pixel still outside
    click = np.array([20.0, 30.0])
    assert not honours(answer, shown, click, 1)
    assert np.array_equal(local_change(answer, shown, click, 1), answer)
    assert not honours(shown, shown, np.array([20.0, 20.0]), 1)  # already inside: nothing to honour
    assert not honours(answer, shown, np.array([99.0, 5.0]), 1)  # off the slice


def test_the_rule_localizes_every_correction_but_not_the_first_click():
    def decode(prompt) -> Answer:  # each click: a disk there, and from the second on a far flood
        mask = disk(SHAPE, tuple(prompt.points[-1]), 6)
        if len(prompt.points) > 1:
            mask = mask | disk(SHAPE, (50, 50), 5) | disk(SHAPE, tuple(prompt.points[0]), 6)
        return Answer(mask[None], np.ones(1, np.float32), np.zeros((1, 16, 16)))

    points, labels = np.array([[15.0, 15.0], [15.0, 24.0]]), np.array([1, 1])
    local = Interaction(InteractionRule(feed_logits=True, local=True)).run(points, labels, None, decode)
    plain = Interaction(InteractionRule(feed_logits=True)).run(points, labels, None, decode)
    assert plain.mask[50, 50] and not local.mask[50, 50]
    assert np.array_equal(local.mask, disk(SHAPE, (15, 15), 6) | disk(SHAPE, (15, 24), 6))
    first = Interaction(InteractionRule(local=True)).run(points[:1], labels[:1], None, decode)
    assert np.array_equal(first.mask, disk(SHAPE, (15, 15), 6))
