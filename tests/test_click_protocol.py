"""The automatic annotator of the click protocol (napari_msa.evaluation.clicks) and what its sessions report."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from segment_support import disk

from napari_msa import Session
from napari_msa.engine.prompts.geometry import dice, next_click, surface_dice
from napari_msa.evaluation.clicks import ClickSession, paired_difference, run_session, summarize

SHAPE = (40, 60)


def test_the_first_click_is_the_deepest_pixel_and_corrections_go_to_the_larger_error():
    truth = disk(SHAPE, (20, 20), 8)
    point, label = next_click(np.zeros(SHAPE, bool), truth)
    assert label == 1 and tuple(point) == (20, 20)
    spill = truth | disk(SHAPE, (20, 45), 10)  # a large false positive beside a small miss
    spill &= ~disk(SHAPE, (20, 20), 2)
    point, label = next_click(spill, truth)
    assert label == 0 and tuple(point) == (20, 45)
    assert next_click(truth, truth) is None


class FakeSession:
    """Answers the truth grown by 3 px until the third click, then the truth itself."""

    def __init__(self, truth: np.ndarray) -> None:
        self.truth = truth
        self.calls: list[int] = []
        self.last_prediction = None

    def predict(self, points, labels):
        self.calls.append(len(points))
        from scipy import ndimage

        mask = self.truth if len(points) >= 3 else ndimage.binary_dilation(self.truth, iterations=3)
        return mask, 0.9


def test_a_session_clicks_until_the_curve_is_long_enough_and_counts_clicks_to_thresholds():
    truth = disk(SHAPE, (20, 30), 9)
    fake = FakeSession(truth)
    s = run_session(fake, truth, curve_clicks=10)
    assert fake.calls == [1, 2, 3]  # one call per click, each with every click so far; exact after 3: stop
    assert s.dice[-1] == 1.0 and s.at(10) == 1.0
    assert s.noc(0.99) == 3 and s.noc(0.5) == 1


def test_the_surface_dice_forgives_a_rim_within_its_tolerance_and_nothing_more():
    truth = disk(SHAPE, (20, 30), 9)
    grown = ndimage.binary_dilation(truth)  # one pixel more all round: Dice counts the rim, the surface Dice not
    far = ndimage.binary_dilation(truth, iterations=3)
    assert surface_dice(truth, truth) == 1.0 and surface_dice(grown, truth) == 1.0 > dice(grown, truth)
    assert surface_dice(far, truth) == 0.0 and surface_dice(far, truth, tolerance=3.0) == 1.0
    assert surface_dice(np.zeros(SHAPE, bool), np.zeros(SHAPE, bool)) == 1.0
    assert surface_dice(np.zeros(SHAPE, bool), truth) == 0.0
    fake = FakeSession(truth)  # the truth grown by 3 px, then exact: the session records both measures per click
    s = run_session(fake, truth, curve_clicks=10)
    assert s.surface == [0.0, 0.0, 1.0] and s.surface_at(10) == 1.0
    assert summarize([s])["surface_at"][1] == 0.0 and summarize([ClickSession([0.5])])["surface_at"] is None


def test_summary_counts_steps_that_lose_dice():
    rising = ClickSession([0.5, 0.6, 0.7, 0.8, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9])
    falling = ClickSession([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0])
    out = summarize([rising, falling])
    assert out["objects"] == 2 and out["dice_at"][1] == pytest.approx(0.7)
    assert out["step_loss_share"] == pytest.approx(0.5)  # every step of the falling session loses 0.1
    assert out["noc90"] == pytest.approx((5 + 1) / 2)
    assert out["worst_mean_step"] == pytest.approx(-0.05)  # steps 5→6 … 9→10: +0 and −0.1


def test_a_real_session_records_click_ones_candidates(tiny_model):
    image = np.random.default_rng(0).random(SHAPE, dtype=np.float32)
    truth = disk(SHAPE, (20, 30), 9)
    image[truth] += 1.0
    session = Session(tiny_model)
    session.set_image(image)
    s = run_session(session, truth, max_clicks=4, curve_clicks=4)
    assert len(s.dice) == 4 and len(s.first_candidates) == 3 and s.first_choice_best is not None


def test_a_paired_difference_separates_a_real_shift_from_which_objects_were_drawn():
    rng = np.random.default_rng(1)
    before = rng.uniform(0.3, 0.9, 40)
    shifted = paired_difference(before, before + 0.05 + rng.normal(0, 0.01, 40))
    assert 0.0 < shifted.low < shifted.mean < shifted.high and abs(shifted.mean - 0.05) < 0.01
    assert (shifted.better, shifted.worse) == (40, 0)
    noise = paired_difference(before, before + rng.normal(0, 0.05, 40))
    assert noise.low < 0.0 < noise.high  # symmetric noise: the interval holds no change
    one_object = paired_difference(before, np.r_[before[:-1], before[-1] - 0.8])  # one object collapses
    assert one_object.mean < 0 and one_object.high == 0.0 and (one_object.better, one_object.worse) == (0, 1)
    same = paired_difference(before, before)
    assert (same.mean, same.low, same.high, same.better, same.worse) == (0.0, 0.0, 0.0, 0, 0)
    assert str(shifted).startswith("+0.0") and "[" in str(shifted)
    with pytest.raises(ValueError, match="equal, non-empty"):
        paired_difference(before, before[:-1])


def test_a_paired_difference_over_sources_widens_when_one_source_carries_the_change():
    """Ten slices of one volume that all gain look like ten independent wins over objects; over sources they are
    one, and the interval reaches 0."""
    rng = np.random.default_rng(2)
    before = rng.uniform(0.4, 0.9, 30)
    after = before.copy()
    after[:10] += 0.2  # one volume's ten slices gain, the other twenty sources do not move
    groups = ["volume A"] * 10 + [f"image {i}" for i in range(20)]
    over_objects = paired_difference(before, after)
    over_sources = paired_difference(before, after, groups=groups)
    assert over_objects.low > 0.0  # objects: a clear gain
    assert over_sources.low == 0.0 and over_sources.mean == over_objects.mean  # sources: one of 21 moved
    singletons = paired_difference(before, after, groups=[str(i) for i in range(30)], seed=3)
    assert singletons.low > 0.0  # every object its own source: back to the object bootstrap's verdict
    with pytest.raises(ValueError, match="one group per object"):
        paired_difference(before, after, groups=groups[:-1])
