"""Whole objects as training targets (napari_msa.training.whole_objects): the body, and objects with what they
enclose, spread over flat maps without overlap."""

import numpy as np
from scipy import ndimage

from napari_msa.training.whole_objects import (
    body_outline,
    filled_objects,
    own_tissue,
    whole_maps,
    whole_maps_with_clicks,
)


def _disk(shape, center, radius):
    rr, cc = np.ogrid[: shape[0], : shape[1]]
    return (rr - center[0]) ** 2 + (cc - center[1]) ** 2 <= radius**2


def test_a_ring_gives_its_filled_disk_and_a_solid_object_gives_nothing():
    labels = np.zeros((96, 96), np.int32)
    labels[_disk(labels.shape, (30, 30), 20) & ~_disk(labels.shape, (30, 30), 12)] = 1  # ring
    labels[_disk(labels.shape, (70, 70), 15)] = 2  # solid
    wholes = filled_objects(labels)
    assert len(wholes) == 1
    np.testing.assert_array_equal(wholes[0], _disk(labels.shape, (30, 30), 20))


def test_the_body_is_found_in_air_and_not_in_a_plane_without_air():
    plane = np.zeros((128, 128), np.uint8)
    body = _disk(plane.shape, (64, 64), 45)
    plane[body] = 120
    plane[_disk(plane.shape, (64, 64), 10)] = 30  # a dark organ inside: still the body
    found = body_outline(plane)
    assert found is not None
    assert (found ^ body).sum() < 0.03 * body.sum()
    assert body_outline(np.full((64, 64), 120, np.uint8)) is None  # no air anywhere
    rng = np.random.default_rng(0)
    assert body_outline(rng.integers(0, 255, (64, 64)).astype(np.uint8)) is None  # texture, not a body


def test_nested_wholes_go_to_separate_maps_largest_first_and_maps_are_capped():
    plane = np.zeros((128, 128), np.uint8)
    plane[_disk(plane.shape, (64, 64), 50)] = 120
    labels = np.zeros(plane.shape, np.int32)
    labels[_disk(plane.shape, (64, 64), 30) & ~_disk(plane.shape, (64, 64), 20)] = 1  # a ring inside the body
    maps = whole_maps(labels, plane)
    assert len(maps) == 2
    assert maps[0].max() == 1 and maps[0].sum() > maps[1].sum()  # the body first
    np.testing.assert_array_equal(maps[1] > 0, _disk(plane.shape, (64, 64), 30))
    assert len(whole_maps(labels, plane, max_maps=1)) == 1
    assert whole_maps(np.zeros_like(labels)) == []


def test_wholes_are_clicked_on_their_own_tissue_off_the_objects_inside():
    plane = np.zeros((128, 128), np.uint8)
    body = _disk(plane.shape, (64, 64), 50)
    plane[body] = 120
    labels = np.zeros(plane.shape, np.int32)
    organ = _disk(plane.shape, (64, 64), 12)
    labels[organ] = 1
    own = own_tissue(body, labels)
    assert own.any() and not (own & organ).any() and (own <= body).all()
    assert not (own & ndimage.binary_dilation(organ, iterations=2)).any()  # a margin around the organ
    np.testing.assert_array_equal(own_tissue(organ, np.zeros_like(labels)), organ)  # nothing inside: all of it
    maps = whole_maps_with_clicks(labels, plane)
    assert len(maps) == 1
    lab, clickable = maps[0]
    assert (lab > 0).sum() > body.sum() * 0.95 and not (clickable & organ).any() and (clickable <= (lab > 0)).all()


def test_a_dark_pocket_inside_the_body_is_not_the_body_s_own_tissue():
    """A click in a sinus inside a head means the sinus, not the head: the body is clicked on its typical tissue."""
    rng = np.random.default_rng(0)
    plane = np.zeros((128, 128), np.float32)
    body = _disk(plane.shape, (64, 64), 50)
    plane[body] = 120 + rng.normal(0, 3, body.sum())
    pocket = _disk(plane.shape, (40, 64), 8)
    plane[pocket] = 5  # air inside the body, unlabelled
    labels = np.zeros(plane.shape, np.int32)
    own = own_tissue(body, labels, plane)
    assert not (own & pocket).any() and own.sum() > 0.3 * body.sum()
    assert (own_tissue(body, labels) & pocket).sum() == pocket.sum()  # without the plane: all of the body
    _, clickable = whole_maps_with_clicks(labels, plane.astype(np.uint8))[0]
    assert not (clickable & pocket).any()
