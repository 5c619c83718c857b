"""Mask geometry and metrics (engine.prompts.geometry): what every prompt simulation and every Dice in the project
uses."""

from __future__ import annotations

import numpy as np
import pytest

from napari_msa.engine.prompts.geometry import (
    components,
    depth_map,
    dice,
    exact_depth,
    grown_box,
    interior_click,
    iou,
    mask_box,
    most_interior,
)


def _l_shape() -> np.ndarray:
    mask = np.zeros((40, 60), bool)
    mask[5:30, 10:16] = True
    mask[24:30, 10:50] = True  # a thin L: its centroid lies outside it
    return mask


def test_clicks_lie_inside_an_object_whose_centroid_is_outside():
    mask = _l_shape()
    rows, cols = np.nonzero(mask)
    assert not mask[int(rows.mean()), int(cols.mean())]
    for depth in (None, depth_map(mask)):
        r, c = most_interior(mask, depth).astype(int)
        assert mask[r, c] and exact_depth(mask)[r, c] >= 3  # in the corner of the L, as deep as it gets
    rng = np.random.default_rng(1)
    for _ in range(20):
        r, c = interior_click(mask, rng).astype(int)
        assert mask[r, c] and depth_map(mask)[r, c] >= 0.5 * depth_map(mask).max()


def test_depth_counts_the_border_as_outside_and_the_fast_map_is_close():
    mask = np.ones((9, 9), bool)
    assert exact_depth(mask)[0, 0] == 1 and exact_depth(mask)[4, 4] == 5
    np.testing.assert_array_equal(most_interior(mask), [4, 4])
    assert np.abs(depth_map(_l_shape()) - exact_depth(_l_shape())).max() <= 1.0
    volume = np.zeros((7, 7, 8), bool)
    volume[1:6, 1:6, 1:6] = True
    np.testing.assert_array_equal(most_interior(volume), [3, 3, 3])  # any number of axes


def test_boxes_tight_and_grown_inside_the_plane():
    m = np.zeros((40, 50), bool)
    m[10:20, 0:30] = True
    np.testing.assert_array_equal(mask_box(m), [10, 0, 19, 29])
    np.testing.assert_allclose(grown_box(m, 0.0), [10, 0, 19, 29])
    np.testing.assert_allclose(grown_box(m, 0.1), [8, 0, 21, 31.9])  # 2 px minimum on rows, 10 % of 29 on cols


def test_dice_and_iou():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[:, :4], b[:, 2:6] = True, True  # 20 shared of 40 each
    assert dice(a, b) == pytest.approx(0.5) and iou(a, b) == pytest.approx(20 / 60)
    assert dice(a, a) == iou(a, a) == 1.0
    empty = np.zeros_like(a)
    assert dice(empty, empty) == 1.0 and iou(empty, empty) == 0.0 and dice(a, empty) == 0.0


def test_components_split_labels_into_pieces_above_a_size():
    labels = np.zeros((20, 20), np.int32)
    labels[1:5, 1:5] = 3
    labels[10:15, 10:15] = 3  # a second piece of label 3
    labels[1:3, 15:17] = 2  # 4 px: below the size
    pieces = components(labels, 5)
    assert [int(p.sum()) for p in pieces] == [16, 25]
    assert not (pieces[0] & pieces[1]).any()
