"""The object draft's rules without a viewer: which slices to predict, which results land, what commit,
clear and propagation take (the Segment widget tests check the same rules through napari)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from napari_msa._widgets.segment.object_draft import PROPAGATED, ObjectDraft


def mask(shape=(8, 8), rows=slice(2, 5), cols=slice(2, 5)) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    out[rows, cols] = True
    return out


def test_first_prompts_are_sent_and_their_answer_becomes_the_preview():
    draft = ObjectDraft()
    update = draft.update({0: "a"})
    assert update.todo == {0: "a"} and not update.stale and update.dropped == ()
    draft.sent(1, update.todo)
    assert draft.update({0: "a"}, in_flight=1).todo == {}  # the request in flight already answers them
    shown = draft.answered(1, {0: mask().astype(np.uint8)})
    assert shown[0].dtype == bool and draft.planes == [0] and draft.answers(0) == "a"
    assert draft.update({0: "a"}, in_flight=1).todo == {}  # up to date: nothing to send


def test_changed_prompts_make_the_request_in_flight_stale_and_are_sent_again():
    draft = ObjectDraft()
    draft.sent(1, draft.update({0: "a"}).todo)
    update = draft.update({0: "a+b"}, in_flight=1)
    assert update.stale and update.todo == {0: "a+b"}
    draft.sent(2, update.todo)
    assert draft.update({0: "a+b"}, in_flight=2).todo == {}


def test_a_slice_whose_prompts_are_gone_is_dropped_but_propagated_slices_stay():
    draft = ObjectDraft()
    draft.sent(1, draft.update({2: "a", 5: "b"}).todo)
    draft.answered(1, {2: mask(), 5: mask()})
    draft.propagated({3: mask(), 4: mask()})
    update = draft.update({5: "b"}, in_flight=1)
    assert update.stale and update.dropped == (2,) and update.todo == {}
    assert draft.planes == [3, 4, 5] and draft.answers(3) == PROPAGATED


def test_outdated_previews_are_predicted_again_and_stay_shown_meanwhile():
    draft = ObjectDraft()
    draft.sent(1, draft.update({0: "a"}).todo)
    draft.answered(1, {0: mask()})
    draft.propagated({1: mask()})
    draft.outdated()  # a new model, normalisation or prompt layer
    assert draft.update({0: "a"}, in_flight=1).todo == {0: "a"}
    assert draft.planes == [0, 1] and draft.answers(1) == PROPAGATED


def test_an_unanswered_request_no_longer_counts_as_in_flight():
    draft = ObjectDraft()
    draft.sent(1, draft.update({0: "a"}).todo)
    draft.unanswered(1)  # its labels layer was gone when the result came
    assert draft.update({0: "a"}, in_flight=1).todo == {0: "a"}


def test_commit_takes_every_slice_and_leaves_an_empty_object():
    draft = ObjectDraft()
    draft.sent(1, draft.update({0: "a"}).todo)
    draft.answered(1, {0: mask()})
    draft.propagated({1: mask(rows=slice(0, 1))})
    taken = draft.take()
    assert sorted(taken) == [0, 1] and taken[1].sum() == 3
    assert not draft and draft.planes == [] and draft.update({0: "a"}).todo == {0: "a"}


def test_propagation_seeds_from_the_preview_else_from_the_committed_object():
    draft = ObjectDraft()
    preview = mask()
    draft.propagated({4: preview})
    seed = draft.seed(4, committed=np.zeros((8, 8), bool))
    np.testing.assert_array_equal(seed, preview)
    seed[:] = False  # a copy: the worker's mask is not the preview
    assert draft.masks[4].any()
    committed = mask(rows=slice(6, 8))
    np.testing.assert_array_equal(draft.seed(1, committed=committed), committed)
    assert draft.seed(1, committed=np.zeros((8, 8), bool)) is None  # empty there: nothing to carry


def test_clear_forgets_everything_and_single_slices_can_be_dropped():
    draft = ObjectDraft()
    draft.sent(1, draft.update({0: "a", 1: "b"}).todo)
    draft.answered(1, {0: mask(), 1: mask()})
    draft.drop(1)
    assert draft.planes == [0] and draft.answers(1) is None
    draft.drop()
    assert not draft and draft.update({}, in_flight=1).todo == {}


def test_the_draft_needs_neither_qt_nor_napari_nor_torch():
    code = ("import sys, napari_msa._widgets.segment.object_draft\n"
            "bad = [m for m in ('qtpy', 'PyQt5', 'PyQt6', 'napari', 'torch') if m in sys.modules]\n"
            "sys.exit(', '.join(bad) or 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"importing the draft loaded: {proc.stderr.strip()}"
