"""The one interaction rule (engine.prompts.interaction): how clicks become prompts, the same through the API, the
command line and the widget."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from segment_support import disk, wait_idle

from napari_msa import Session, load_model
from napari_msa._cli.segment import INTERACTIONS
from napari_msa._widgets._hub import hub_for
from napari_msa.cli import main
from napari_msa.engine.network.adapters import is_decoder_weight
from napari_msa.engine.network.corrector import CorrectorChange
from napari_msa.engine.prompts import interaction
from napari_msa.engine.prompts.geometry import clicked_object_box
from napari_msa.engine.prompts.interaction import RULE_NAMES, Answer, Interaction, InteractionRule, Prior

SHAPE = (64, 80)
CLICKS = np.array([[30.0, 30.0], [30.0, 44.0], [20.0, 60.0]])
LABELS = [1, 0, 1]


def image() -> np.ndarray:
    rng = np.random.default_rng(5)
    img = rng.normal(0.2, 0.05, SHAPE).astype(np.float32)
    img[disk(SHAPE, (30, 36), 14)] += 0.6
    return img


class Recorder:
    """A stand-in decoder: records each prompt and answers three masks (disks of 4, 8, 12 px at the last click)."""

    def __init__(self) -> None:
        self.prompts = []

    def __call__(self, prompt) -> Answer:
        self.prompts.append(prompt)
        centre = prompt.points[-1] if len(prompt.points) else (30, 30)
        masks = np.stack([disk(SHAPE, tuple(centre), r) for r in (4, 8, 12)])
        return Answer(masks, np.array([0.9, 0.8, 0.7], np.float32), np.full((3, 16, 16), len(self.prompts), float))


@pytest.mark.parametrize("name", [n for n in RULE_NAMES if "honour" not in n])  # honour: tests/test_honour.py
def test_each_step_gets_what_its_rule_adds_from_the_answer_before(name):
    rule = InteractionRule.from_name(name)
    assert rule.name == name
    decode = Recorder()
    answer = Interaction(rule).run(CLICKS, np.array(LABELS), None, decode)
    assert len(decode.prompts) == 3 and answer is not None
    first, second, third = decode.prompts
    assert first.multimask and first.box is None and first.mask_input is None  # a lone click: three masks
    assert not second.multimask and not third.multimask
    previous = disk(SHAPE, tuple(CLICKS[0]), 4)  # the best-ranked answer to click 1
    if rule.shown_box:
        np.testing.assert_allclose(second.box, clicked_object_box(previous, CLICKS[:2], np.array(LABELS[:2])))
    else:
        assert second.box is None
    if rule.feed_logits:
        assert np.all(second.mask_input == 1) and np.all(third.mask_input == 2)  # the answer before's logits
    else:
        assert second.mask_input is None


def test_a_user_box_is_the_first_step_and_stays_in_every_prompt():
    decode = Recorder()
    box = np.array([10.0, 20.0, 50.0, 70.0])
    Interaction(InteractionRule(feed_logits=True, shown_box=True)).run(CLICKS[:2], np.array(LABELS[:2]), box, decode)
    assert [len(p.points) for p in decode.prompts] == [0, 1, 2]
    assert all(np.array_equal(p.box, box) for p in decode.prompts)  # the user's box, never the shown mask's
    assert not any(p.multimask for p in decode.prompts)


def test_extending_the_sequence_decodes_only_the_new_click_and_anything_else_replays():
    decode = Recorder()
    interaction = Interaction(InteractionRule(feed_logits=True))
    interaction.run(CLICKS[:2], np.array(LABELS[:2]), None, decode)
    assert len(decode.prompts) == 2
    interaction.run(CLICKS, np.array(LABELS), None, decode)
    assert len(decode.prompts) == 3  # one more pass for one more click
    interaction.run(CLICKS[[0, 2]], np.array([1, 1]), None, decode)  # the second click was deleted
    assert len(decode.prompts) == 4  # click 1 is reused, the new second step decoded
    interaction.run(CLICKS[[0, 2]], np.array([1, 1]), None, decode, candidate=2)  # another mask for click 1
    assert len(decode.prompts) == 6


@pytest.mark.parametrize("rule", [InteractionRule(feed_logits=True, shown_box=True), InteractionRule()])
def test_a_prior_is_the_answer_before_the_first_click_and_its_box_bounds_every_step(rule):
    """Refining: the object as it is bounds each step (its box grown to hold the positive clicks), whatever the
    rule, and no mask goes in as SAM's mask input (measured best in benchmarks/refine_quality.py)."""
    decode = Recorder()
    obj = disk(SHAPE, (30, 36), 14)
    prior = Prior.of(obj, np.full((16, 16), 7.0))
    Interaction(rule).run(CLICKS[:2], np.array([0, 1]), None, decode, prior=prior)
    first, second = decode.prompts
    assert not first.multimask  # refining an object is not ambiguous
    np.testing.assert_allclose(first.box, clicked_object_box(obj, CLICKS[:1], np.array([0])))
    np.testing.assert_allclose(second.box, clicked_object_box(obj, CLICKS[:2], np.array([0, 1])))
    assert first.mask_input is None and second.mask_input is None


def test_the_session_keeps_the_candidates_and_the_chosen_one(tiny_model):
    session = Session(tiny_model)
    session.set_image(image())
    mask, score = session.predict(points=CLICKS[:1], labels=[1])
    answer = session.last_prediction
    assert answer.masks.shape == (3, *SHAPE) and list(answer.scores) == sorted(answer.scores, reverse=True)
    assert np.array_equal(mask, answer.masks[0]) and score == pytest.approx(answer.scores[0])
    other, other_score = session.predict(points=CLICKS[:1], labels=[1], candidate=2)
    assert np.array_equal(other, answer.masks[2]) and other_score == pytest.approx(answer.scores[2])


def test_a_new_slice_image_or_rule_never_reuses_another_interaction(tiny_model):
    session = Session(tiny_model)
    session.set_image(image())
    session.rule = "logits"
    a, _ = session.predict(points=CLICKS, labels=LABELS)
    session.rule = "clicks"
    b, _ = session.predict(points=CLICKS, labels=LABELS)
    fresh = Session(tiny_model)
    fresh.set_image(image())
    fresh.rule = "clicks"
    assert np.array_equal(b, fresh.predict(points=CLICKS, labels=LABELS)[0])
    session.set_image(image()[::-1].copy())
    session.set_image(image())
    session.rule = "logits"
    assert np.array_equal(a, session.predict(points=CLICKS, labels=LABELS)[0])


def test_the_cli_offers_the_engines_rules():
    assert INTERACTIONS == ("model", *RULE_NAMES)


@pytest.mark.gui
@pytest.mark.parametrize(("rule", "corrector"), [("logits", False), ("logits+zoom", False), ("logits+zoom", True),
                                                ("logits+zoom+honour", True)])
def test_api_cli_and_widget_give_the_same_masks_for_the_same_clicks(make_napari_viewer, qtbot, tmp_path, rule,
                                                                   corrector, monkeypatch):
    """SAM's rule (logits fed back) makes the answer depend on the whole sequence: the three front ends agree,
    zooming in too (a random model's masks are most of the slice, so its window is fixed here), and with a corrector
    answering the steps after the first click (an adapter file that holds one, as the shipped one does)."""
    monkeypatch.setattr(interaction, "zoom_window", lambda *args, **kwargs: (10, 14, 58, 62))
    edits = []
    if "honour" in rule:  # a random model's ignored clicks fall on its rim: an edit made to measure, so one is made

        def square_edit(mask, candidates, point, label, rim):
            r, c = np.round(point).astype(int)
            square = np.zeros_like(mask)
            square[r - 2:r + 3, c - 2:c + 3] = True
            edits.append(square & (~mask if label == 1 else mask))
            return edits[-1]

        monkeypatch.setattr(interaction, "click_edit", square_edit)
    img = image()
    torch.manual_seed(0)  # the CLI seeds 0 before building a model no file holds
    model = load_model("tiny")
    assert model.interaction.feed_logits
    cli_model = []
    if corrector:
        decoder = {k: v for k, v in model.sam.state_dict().items() if is_decoder_weight(k)}
        moved = {k: v + 0.2 * v.std() * torch.randn_like(v) if v.numel() > 1 else v + 0.2 for k, v in decoder.items()}
        model.corrector_change = CorrectorChange.between(decoder, moved, rank=4)
        adapter = model.save_adapter(tmp_path / "with_corrector.safetensors", include_decoder=True)
        cli_model = ["--adapter", str(adapter)]
    model.interaction = InteractionRule.from_name(rule)  # the widget asks the model for its rule

    session = Session(model)  # the API, one call per click as a script does
    session.set_image(img)
    api = [session.predict(points=CLICKS[:k], labels=LABELS[:k])[0] for k in range(1, 4)]
    assert not np.array_equal(api[-1], Session_once(model, img))  # the history matters
    if corrector:  # and the corrector answered the steps after the first
        without = model.clone()
        without.corrector_change = None
        plain = Session(without)
        plain.set_image(img)
        assert not np.array_equal(plain.predict(points=CLICKS, labels=LABELS)[0], api[-1])
    assert (session.last_prediction.window is not None) == ("zoom" in rule)
    assert bool(edits) == ("honour" in rule)  # the honour rule edited an ignored click

    tifffile.imwrite(tmp_path / "img.tif", img)  # the CLI, the clicks of one object in file order
    rows = ["index,axis-0,axis-1,positive"] + [f"{i},{r},{c},{p}" for i, ((r, c), p) in enumerate(zip(CLICKS, LABELS))]
    (tmp_path / "pts.csv").write_text("\n".join(rows) + "\n")
    assert main(["-q", "segment", str(tmp_path / "img.tif"), "-p", str(tmp_path / "pts.csv"), "-o",
                 str(tmp_path / "out.tif"), "--model", "tiny", "--device", "cpu", "--interaction", rule,
                 *cli_model]) == 0
    cli = tifffile.imread(tmp_path / "out.tif") == 1
    assert np.array_equal(cli, api[-1])

    viewer = make_napari_viewer()  # the widget, click after click
    viewer.add_image(img, name="img")
    _, widget = viewer.window.add_plugin_dock_widget("napari-msa", "Segment (MSA)")
    hub_for(viewer).set_model(model)
    wait_idle(qtbot, widget)
    points = widget.layers.points()
    for k, ((r, c), positive) in enumerate(zip(CLICKS, LABELS)):
        if bool(positive) != bool(points.feature_defaults["positive"][0]):
            widget.toggle_positive()
        points.add([r, c])
        wait_idle(qtbot, widget)
        np.testing.assert_array_equal(viewer.layers["img labels"].data == 1, api[k])


def Session_once(model, img) -> np.ndarray:  # noqa: N802 - reads as the call it makes
    """All three clicks in one decoder pass, no history: what the sequence must not equal."""
    session = Session(model)
    session.set_image(img)
    return session.predict(points=CLICKS, labels=LABELS, multimask=False)[0]


def test_new_decoder_weights_never_reuse_an_interactions_answers(tiny_model):
    """Tuning the decoder leaves the embeddings valid but not the decoded steps (tuning bumps model.version)."""
    session = Session(tiny_model)
    session.set_image(image())
    session.predict(points=CLICKS, labels=LABELS)
    with torch.no_grad():
        for p in tiny_model.sam.mask_decoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    tiny_model.version += 1
    fresh = Session(tiny_model)
    fresh.set_image(image())
    assert np.array_equal(session.predict(points=CLICKS, labels=LABELS)[0],
                          fresh.predict(points=CLICKS, labels=LABELS)[0])
    assert session.last_prediction.scores[0] == pytest.approx(fresh.last_prediction.scores[0])
