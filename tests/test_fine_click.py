"""A fine correction (a click near the shown edge) whose answer changes much of the mask far from it
(engine.prompts.interaction.strays): only the change within the click's reach is kept."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from segment_support import disk
from test_honour import amend

from napari_msa.engine.prompts.honour import click_depth
from napari_msa.engine.prompts.interaction import Answer, Interaction, InteractionRule, strays

SHAPE = (128, 160)
SHOWN = disk(SHAPE, (60, 60), 30)  # the mask shown after click 1
NOTCH_CLICK = np.array([60.0, 92.0])  # 2 px outside its right edge: a fine positive correction
ELSEWHERE = disk(SHAPE, (60, 125), 20)  # a neighbour the answer floods into, far from the click


def test_a_click_near_the_edge_is_fine_and_a_far_change_strays():
    assert click_depth(SHOWN, NOTCH_CLICK, 1) == 2.0 and click_depth(SHOWN, NOTCH_CLICK, 0) == 0.0
    grown = SHOWN | disk(SHAPE, (60, 92), 3)
    assert not strays(grown, SHOWN, NOTCH_CLICK, 1)  # the change near the click
    assert strays(grown | ELSEWHERE, SHOWN, NOTCH_CLICK, 1)  # and a flood far from it
    collapsed = disk(SHAPE, (60, 60), 12) | disk(SHAPE, (60, 92), 3)
    assert strays(collapsed, SHOWN, NOTCH_CLICK, 1)  # or a collapse far from it
    deep = np.array([60.0, 110.0])  # 20 px out: a coarse correction, the model may reshape the object
    assert not strays(grown | ELSEWHERE, SHOWN, deep, 1)
    assert not strays(grown | ELSEWHERE, SHOWN, np.array([60.0, 60.0]), 1)  # a positive click inside: no depth
    assert not strays(grown, np.zeros(SHAPE, bool), NOTCH_CLICK, 1)


class Flooding:
    """A stand-in decoder: click 1 gets SHOWN; a correction gets SHOWN grown at the click and flooded into a
    neighbour; a lone click a disk of 3 px."""

    def __init__(self) -> None:
        self.prompts = []

    def __call__(self, prompt) -> Answer:
        self.prompts.append(prompt)
        point = tuple(prompt.points[-1])
        if prompt.lone_click and len(self.prompts) > 1:
            return Answer(disk(SHAPE, point, 3)[None], np.array([0.9], np.float32), np.zeros((1, 16, 16)))
        if prompt.lone_click:
            return Answer(np.stack([SHOWN] * 3), np.array([0.9, 0.8, 0.7], np.float32), np.zeros((3, 16, 16)))
        mask = SHOWN | disk(SHAPE, point, 3) | ELSEWHERE
        return Answer(mask[None], np.array([0.9], np.float32), np.ones((1, 16, 16)))


def test_a_fine_click_keeps_only_the_change_within_its_reach():
    clicks, labels = np.array([[60.0, 60.0], NOTCH_CLICK]), np.array([1, 1])
    answer = Interaction(InteractionRule(feed_logits=True, honour=True)).run(clicks, labels, None, Flooding(),
                                                                             amend=amend)
    np.testing.assert_array_equal(answer.mask, SHOWN | (disk(SHAPE, (60, 92), 3) & disk(SHAPE, (60, 92), 4)))
    plain = Interaction(InteractionRule(feed_logits=True)).run(clicks, labels, None, Flooding())
    assert plain.mask[60, 125]  # without the honour rule: the answer as it came, flood and all


def test_a_clicks_depth_is_its_distance_from_the_other_side_searched_near_it_when_asked():
    rng = np.random.default_rng(0)
    for _ in range(200):
        shown = rng.random((40, 50)) < rng.uniform(0.2, 0.8)
        point, label = rng.uniform(0, [39, 49]), int(rng.integers(0, 2))
        r, c = np.round(point).astype(int)
        side = ~shown if label == 1 else shown
        expected = float(ndimage.distance_transform_edt(side)[r, c]) if side[r, c] else 0.0
        assert click_depth(shown, point, label) == expected
        limit = rng.uniform(0.5, 6)
        near = click_depth(shown, point, label, within=limit)
        assert near == expected if expected < limit else near >= limit
