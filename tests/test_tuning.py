"""Few-shot tuning engine: pairs, split, simulated clicks, learning, cancel, reproducibility, prefix cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tuning_support import blob_task

from napari_msa import AdapterConfig, Session, load_model
from napari_msa.engine import Cancelled
from napari_msa.engine.files.formats import read_adapter_metadata
from napari_msa.engine.inference.decoding import decode, upscale_logits
from napari_msa.engine.network.adapters import is_trainable
from napari_msa.engine.prompts.geometry import interior_click
from napari_msa.engine.prompts.interaction import InteractionRule
from napari_msa.engine.tuning.api import TuneProgress, tune
from napari_msa.engine.tuning.data import Pair, build_pairs, correction_click, jittered_box, split_pairs

SIZE = 128  # the tiny model at 128 px keeps each step well under 0.1 s on one core


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(image_size: int = SIZE, **kwargs):
    torch.manual_seed(0)
    return load_model("tiny", device="cpu", image_size=image_size, **kwargs)


def trainable(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.trainable_state().items()}


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def pretrained():
    """A tiny SAM trained (all weights) on bright discs, adapters back to identity: a stand-in for SAM."""
    images, labels = blob_task(6, seed=0)
    result = tune(tiny(), images, labels, steps=30, lr=3e-3, val_fraction=0.34, patience=0, full_finetune=True)
    base = result.model
    with torch.no_grad():
        for name, p in base.sam.named_parameters():
            if "Adapter" in name and "D_fc2" in name:
                p.zero_()
    return base


# ------------------------------------------------------------------------------------------ pairs
def test_pairs_from_every_labelled_slice_and_object_of_a_volume():
    images, labels = blob_task(5, size=48)
    labels[1] = 0  # an unlabelled slice is skipped
    labels[3][labels[3] == 2] = 7  # ids need not be consecutive
    labels[4][:] = 0
    labels[4][10:12, 10:12] = 3  # 2×2 pixels at 48 px → 5×5 at the model's 128 px: kept
    labels[4][30, 30] = 4  # a single pixel → 3×3: below min_pixels, dropped
    slices, pairs = build_pairs(images, labels, image_size=SIZE, min_pixels=12)
    assert [s.z for s in slices] == [0, 2, 3, 4]
    assert {(slices[p.slice_id].z, p.label) for p in pairs} == {(0, 1), (0, 2), (2, 1), (2, 2), (3, 1), (3, 7),
                                                                (4, 3)}
    for p in pairs:  # each pair's mask is its piece, inside its label
        mask = slices[p.slice_id].mask(p.object_id)
        assert mask.sum() >= 12 and (slices[p.slice_id].labels[mask] == p.label).all()
    assert all(s.rgb.shape == (SIZE, SIZE, 3) and s.rgb.dtype == np.uint8 for s in slices)
    # a 2D RGB image, non-square: resized on the longest side like the session
    rgb = np.zeros((40, 80, 3), np.uint8)
    lab = np.zeros((40, 80), np.int32)
    lab[10:20, 50:70] = 1
    slices, pairs = build_pairs(rgb, lab, image_size=SIZE)
    assert slices[0].rgb.shape == (64, 128, 3) and slices[0].z is None and len(pairs) == 1
    rows, cols = np.nonzero(slices[0].labels == 1)  # rows 10..19, cols 50..69 scaled by 1.6 (nearest)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (16, 31, 80, 111)


def test_a_label_in_two_pieces_is_two_objects():
    """One click selects one piece: two kidneys under one label are two training objects."""
    images, labels = blob_task(1, size=64)
    labels[:] = 0
    labels[0, 5:20, 5:20] = 4
    labels[0, 40:60, 40:60] = 4
    labels[0, 30, 2] = 4  # a one-pixel speck (2×2 at the model scale): too small to be an object
    slices, pairs = build_pairs(images, labels, image_size=SIZE, min_pixels=12)
    assert [p.label for p in pairs] == [4, 4]
    a, b = (slices[0].mask(p.object_id) for p in pairs)
    assert not (a & b).any() and a.sum() + b.sum() < (slices[0].labels == 4).sum()


def test_pairs_reject_mismatched_or_float_labels():
    images, labels = blob_task(2, size=32)
    with pytest.raises(ValueError, match="do not match"):
        build_pairs(images, labels[:, :, :16], image_size=SIZE)
    with pytest.raises(ValueError, match="integers"):
        build_pairs(images, labels.astype(np.float32), image_size=SIZE)


def test_object_split_spreads_over_slices_and_keeps_every_slice_and_label_trained():
    # 4 slices x 5 objects (labels 1-5); label 9 has one piece, on slice 0
    pairs = [Pair(s, o, label) for s in range(4) for o, label in enumerate((1, 2, 3, 4, 5), start=1)]
    pairs[0] = Pair(0, 1, 9)
    train, held, how = split_pairs([], pairs, 0.2, np.random.default_rng(0), "object")
    assert how == "object" and len(held) == 4  # 0.2 of 20 objects
    assert sorted(p.slice_id for p in held) == [0, 1, 2, 3]  # one from every slice before any gives two
    assert set(train) | set(held) == set(pairs) and not set(train) & set(held)
    assert Pair(0, 1, 9) not in held  # the only piece of its label
    assert {p.slice_id for p in train} == {0, 1, 2, 3} and {p.label for p in train} == {p.label for p in pairs}
    again = split_pairs([], pairs, 0.2, np.random.default_rng(0), "object")
    assert again == (train, held, how)  # seeded
    # more than a share of the objects asked for: still a training object per slice and per label
    for fraction in (0.5, 0.9):
        train, held, _ = split_pairs([], pairs, fraction, np.random.default_rng(1), "object")
        assert {p.slice_id for p in train} == {0, 1, 2, 3} and {p.label for p in train} == {p.label for p in pairs}
        assert len(held) <= len(pairs) - 5
    # nothing can go (each slice one object of its own label): whole slices, as by='slice'
    lone = [Pair(0, 1, 1), Pair(1, 1, 2)]
    assert split_pairs([], lone, 0.2, np.random.default_rng(0), "object")[2] == "slice"
    with pytest.raises(ValueError, match="held_out"):
        split_pairs([], pairs, 0.2, np.random.default_rng(0), "pieces")
    with pytest.raises(ValueError, match="held_out"):
        tune(tiny(), *blob_task(2, size=48), steps=1, held_out="pieces")


def test_tune_holds_out_objects_of_every_slice():
    images, labels = blob_task(4, size=48)
    result = tune(tiny(), images, labels, steps=2, lr=1e-3, val_fraction=0.25, held_out="object", seed=0)
    s = result.summary
    assert s.split == "object" and s.n_val_objects == 2 and s.n_train_objects == 6

def test_split_by_slice_then_by_object_and_clear_errors():
    rng = np.random.default_rng(0)
    images, labels = blob_task(5, size=48)
    slices, pairs = build_pairs(images, labels, image_size=SIZE)
    train, held, how = split_pairs(slices, pairs, 0.2, rng, "slice")
    assert how == "slice" and len({p.slice_id for p in held}) == 1
    assert not {p.slice_id for p in held} & {p.slice_id for p in train}
    slices, pairs = build_pairs(images[0], labels[0], image_size=SIZE)
    train, held, how = split_pairs(slices, pairs, 0.5, rng)
    assert how == "object" and len(train) == len(held) == 1
    lab = labels[0].copy()
    lab[lab == 2] = 0
    slices, pairs = build_pairs(images[0], lab, image_size=SIZE)
    with pytest.raises(ValueError, match="one more object"):
        split_pairs(slices, pairs, 0.2, rng)
    assert split_pairs(slices, pairs, 0.0, rng)[2] == "none"
    with pytest.raises(ValueError, match="no labelled objects"):
        tune(tiny(), images[0], np.zeros_like(labels[0]), steps=1)


# ------------------------------------------------------------------------------------------ prompts
def test_clicks_are_row_col_and_go_where_the_errors_are():
    gt = np.zeros((60, 100), bool)
    gt[10:30, 60:95] = True  # wide, off-centre, near the top right
    r, c = interior_click(gt)
    assert 17 <= r <= 22 and 69 <= c <= 85  # as deep as possible (the central row), as (row, col)
    for seed in range(5):
        r, c = interior_click(gt, np.random.default_rng(seed))
        assert gt[int(r), int(c)]
    pred = np.zeros_like(gt)
    pred[10:30, 60:75] = True  # the right part is missed
    (r, c), label = correction_click(pred, gt)
    assert label == 1 and gt[int(r), int(c)] and not pred[int(r), int(c)] and c > 75
    pred = gt.copy()
    pred[40:58, 5:40] = True  # a false positive at the bottom left
    (r, c), label = correction_click(pred, gt)
    assert label == 0 and r > 40 and c < 40
    big = np.zeros((700, 500), bool)
    big[100:400, 300:480] = True  # a large frame is searched on a coarser grid
    (r, c), label = correction_click(np.zeros_like(big), big)
    assert label == 1 and big[int(r), int(c)]
    for seed in range(10):
        box = jittered_box(gt, np.random.default_rng(seed))
        assert box[0] < box[2] and box[1] < box[3]
        assert abs(box[0] - 10) <= 8 and abs(box[3] - 94) <= 14


def test_training_decoder_path_matches_the_session():
    """The training/evaluation prompts give what Session.predict gives for the same (row, col) click.

    An asymmetric off-centre object on a non-square image already at the model's scale: a swapped
    x/y anywhere would prompt another place and the masks would differ.
    """
    from napari_msa.engine.tuning.prefix_cache import SplitEncoder

    model = tiny()
    image = np.random.default_rng(1).normal(0, 0.2, (SIZE, 80)).astype(np.float32)
    image[20:50, 50:75] += 2.0
    session = Session(model)
    session.set_image(image)
    point, box = np.array([30.0, 60.0]), np.array([20.0, 50.0, 49.0, 74.0])
    mask_click, _ = session.predict(points=[point], labels=[1])
    mask_box, _ = session.predict(box=box)
    slices, _ = build_pairs(image, (image > 1).astype(np.int32), image_size=SIZE)
    enc = SplitEncoder(model, 0, None)
    with torch.no_grad():
        emb = enc.full(enc.pixels(slices[0].rgb)[None])
        low, iou = decode(model.sam, emb, point[None, None], np.array([[1]]), None, True)
        ours_click = (upscale_logits(low, SIZE, (SIZE, 80))[0, int(torch.argmax(iou))] > 0).numpy()
        low, _ = decode(model.sam, emb, None, None, box[None], False)
        ours_box = (upscale_logits(low, SIZE, (SIZE, 80))[0, 0] > 0).numpy()
        low, iou = decode(model.sam, emb, point[None, None, ::-1].copy(), np.array([[1]]), None, True)
        swapped = (upscale_logits(low, SIZE, (SIZE, 80))[0, int(torch.argmax(iou))] > 0).numpy()
    np.testing.assert_array_equal(ours_click, mask_click)
    np.testing.assert_array_equal(ours_box, mask_box)
    assert (swapped != mask_click).sum() > 20  # the test would notice a transposed click


# ------------------------------------------------------------------------------------------ learning
def test_adapters_alone_learn_a_new_structure_and_nothing_else_moves(pretrained):
    """Dark discs for a model that only knows bright ones: loss falls, held-out Dice rises."""
    images, labels = blob_task(6, seed=1)
    before = {k: v.clone() for k, v in pretrained.sam.state_dict().items()}
    seen: list[TuneProgress] = []
    result = tune(pretrained, -images, labels, steps=40, lr=3e-2, batch_size=8, val_fraction=0.34, seed=0,
                  patience=0, train_adapters=True, train_decoder=False, max_correction_rounds=3, progress=seen.append)
    s = result.summary
    assert s.loss_last < 0.5 * s.loss_first, s  # measured: 3.1 → 0.85
    assert s.held_out.click_after > s.held_out.click_before + 0.3, s  # measured: 0.005 → 0.46
    assert s.split == "object" and s.n_val_objects == 4 and s.steps_done == 40
    # progress: prepare, eval before, every step, ETA, done
    assert seen[0].phase == "prepare" and seen[-1].phase == "done"
    train = [p for p in seen if p.phase == "train"]
    assert [p.step for p in train] == list(range(1, 41)) and train[0].eta_s > 0 and train[-1].eta_s == 0
    # only adapters moved, in the returned copy; the given model is untouched
    tuned = result.model.sam.state_dict()
    moved = {k for k in tuned if not torch.equal(tuned[k], before[k])}
    assert moved and all("Adapter" in k and "Depth" not in k for k in moved)
    assert states_equal(pretrained.sam.state_dict(), before)
    assert result.model.version > pretrained.version
    assert result.model.weights_key() != pretrained.weights_key()


def test_tuning_trains_exactly_what_set_trainable_names():
    """The rule production uses, checked where it is used: 2D tuning moves the encoder's and the decoder's
    adapters, never the depth adapters (single slices give them no gradient) nor anything else."""
    model = tiny(adapter_config=AdapterConfig(depth=True, decoder=True))
    images, labels = blob_task(3, seed=0)
    before = {k: v.clone() for k, v in model.sam.state_dict().items()}
    result = tune(model, images, labels, steps=2, lr=1e-2, val_fraction=0.0, train_adapters=True, train_decoder=False)
    names = {n for n, _ in model.sam.named_parameters() if is_trainable(n, adapters=True)}
    assert any("Depth_Adapter" in n for n, _ in model.sam.named_parameters()) and not any("Depth" in n for n in names)
    params = dict(model.sam.named_parameters())
    assert result.summary.trainable_parameters == sum(params[n].numel() for n in names)
    tuned = result.model.sam.state_dict()
    moved = {k for k in tuned if not torch.equal(tuned[k], before[k])}
    assert moved and moved <= names and any(k.startswith("mask_decoder.") for k in moved)


def test_decoder_option_learns_and_the_adapter_round_trips(tmp_path):
    images, labels = blob_task(6, seed=0)
    model = tiny()
    result = tune(model, images, labels, steps=30, lr=3e-3, val_fraction=0.34, seed=0, patience=0,
                  train_adapters=True, train_decoder=True)
    s = result.summary
    # measured: loss 1.64 → 0.85, held-out click Dice (3 clicks per object) 0.08 → 0.34
    assert s.loss_last < 0.7 * s.loss_first and s.held_out.click_after > s.held_out.click_before + 0.2, s

    path = result.save(tmp_path / "tuned.safetensors")
    meta = read_adapter_metadata(path)
    assert meta["includes_decoder"] and meta["training"]["held_out"]["click_after"] == s.held_out.click_after
    assert meta["training"]["steps_done"] == meta["training"]["config"]["steps"] == 30
    assert json.loads(json.dumps(meta["training"])) == meta["training"]
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically

    reloaded = model.clone()  # the untuned model plus the file
    reloaded.apply_adapter(path)
    torch.manual_seed(0)  # the same random base weights as `model`, adapter built from the file's metadata
    fresh = load_model("tiny", device="cpu", adapter=path)
    assert fresh.image_size == SIZE

    def predict(m):
        session = Session(m)
        session.set_image(images[4])
        mask, _ = session.predict(points=[(32, 32)], labels=[1])
        return mask, session.last_logits

    tuned_mask, tuned_logits = predict(result.model)
    for other in (reloaded, fresh):
        mask, logits = predict(other)
        np.testing.assert_array_equal(mask, tuned_mask)
        np.testing.assert_allclose(logits, tuned_logits, atol=1e-5)
    _, untuned_logits = predict(model)
    assert np.abs(untuned_logits - tuned_logits).max() > 0.1  # and tuning did change the predictions


# ------------------------------------------------------------------------------------------ safety
def test_cancel_or_error_leaves_the_model_as_it_was():
    images, labels = blob_task(4, size=48)
    model = tiny()
    before = trainable(model)
    flags = [p.requires_grad for p in model.sam.parameters()]
    steps: list[int] = []

    def record(p: TuneProgress) -> None:
        if p.phase == "train":
            steps.append(p.step)

    with pytest.raises(Cancelled):
        tune(model, images, labels, steps=20, lr=1e-1, train_decoder=True, inplace=True, progress=record,
             cancel=lambda: len(steps) >= 3)
    assert steps == [1, 2, 3] and states_equal(trainable(model), before)

    def explode(p: TuneProgress) -> None:
        if p.phase == "train" and p.step == 2:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        tune(model, images, labels, steps=20, lr=1e-1, train_decoder=True, inplace=True, progress=explode)
    assert states_equal(trainable(model), before)
    assert flags == [p.requires_grad for p in model.sam.parameters()]  # requires_grad put back too
    with pytest.raises(Cancelled):  # the default (a copy) never touches the model at all
        tune(model, images, labels, steps=5, cancel=lambda: True)
    assert states_equal(trainable(model), before)


def test_same_seed_same_adapter_other_seed_other_adapter():
    images, labels = blob_task(4, size=48)
    model = tiny()
    runs = [tune(model, images, labels, steps=4, lr=1e-2, seed=seed, val_fraction=0).model.trainable_state()
            for seed in (5, 5, 6)]  # no held-out check: a run without gain would keep the start in both
    assert states_equal(runs[0], runs[1])
    assert not states_equal(runs[0], runs[2])


def test_prefix_cache_gives_the_same_training_and_hits():
    """Adapters in the last block only: cached frozen tokens give the same losses as recomputing them."""
    images, labels = blob_task(4, size=48)
    model = tiny(adapter_config=AdapterConfig(blocks=(1,)))
    kwargs = dict(steps=6, lr=1e-2, seed=0, augment=False, val_fraction=0.25, patience=0, train_adapters=True,
                  train_decoder=False)
    cached = tune(model, images, labels, cache_prefix=True, **kwargs)
    plain = tune(model, images, labels, cache_prefix=False, **kwargs)
    assert cached.summary.prefix_cache and not plain.summary.prefix_cache
    assert cached.summary.first_trained_block == 1
    np.testing.assert_allclose(cached.losses, plain.losses, rtol=1e-4)
    # with augmentation the cache holds one entry per flip/rotation variant
    augmented = tune(model, images, labels, steps=6, lr=1e-2, seed=0, val_fraction=0.25, train_adapters=True,
                     train_decoder=False)  # augmentation is on by default when the encoder trains
    assert augmented.summary.prefix_cache
    assert 0 < augmented.summary.prefix_cache_entries <= 8 * 4
    assert augmented.summary.prefix_cache_hits > 0
    with pytest.raises(ValueError, match="last blocks"):
        tune(tiny(), images, labels, steps=1, cache_prefix=True, train_adapters=True)


def test_decoder_alone_trains_on_embeddings_computed_once():
    """The default: the whole encoder is frozen, so the cache holds finished embeddings (one per training slice,
    no flips by default) and the losses equal recomputing the encoder every step."""
    images, labels = blob_task(4, size=48)
    model = tiny()
    encoder_before = {k: v.clone() for k, v in model.sam.image_encoder.state_dict().items()}
    kwargs = dict(steps=6, lr=1e-2, seed=0, val_fraction=0.25, patience=0)
    cached = tune(model, images, labels, cache_prefix=True, **kwargs)
    plain = tune(model, images, labels, cache_prefix=False, **kwargs)
    s = cached.summary
    assert s.config.train_decoder and not s.config.train_adapters and not s.config.augment and s.saves_decoder
    assert s.prefix_cache_entries == 4 and s.prefix_cache_hits >= 6 - 3  # 3 training slices + 1 held out
    np.testing.assert_allclose(cached.losses, plain.losses, rtol=1e-4)
    assert states_equal(cached.model.sam.image_encoder.state_dict(), encoder_before)
    moved = [k for k, v in cached.model.sam.state_dict().items() if k.startswith("mask_decoder")
             and not torch.equal(v, model.sam.state_dict()[k])]
    assert moved


def test_activation_checkpointing_trains_the_same():
    images, labels = blob_task(4, size=48)
    model = tiny()
    kwargs = dict(steps=3, lr=1e-2, seed=0, val_fraction=0.25, train_decoder=True)
    plain = tune(model, images, labels, **kwargs)
    saving = tune(model, images, labels, checkpoint_blocks=True, **kwargs)
    assert saving.summary.config.checkpoint_blocks
    np.testing.assert_allclose(saving.losses, plain.losses, rtol=1e-4)
    a, b = plain.model.trainable_state(), saving.model.trainable_state()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


def test_early_stopping_keeps_the_best_weights():
    """A far too high learning rate: held-out Dice peaks then collapses; the peak's weights are returned."""
    images, labels = blob_task(4, size=48)
    # by slice: the scenario (a peak, then a collapse) was measured on that split
    kwargs = dict(seed=0, val_fraction=0.25, eval_every=2, held_out="slice")
    # accept_margin 0: the best check is returned even when it beats the start by little (tested apart below)
    result = tune(tiny(), images, labels, steps=40, lr=1.0, train_decoder=True, patience=2, accept_margin=0.0,
                  blends=(), **kwargs)
    s = result.summary
    _, _, start_box, start_session = s.history[0]
    score = {step: click + min(0.0, box - start_box) + min(0.0, session - start_session)  # the criterion
             for step, click, box, session in s.history}
    assert s.stopped == "early_stopping" and 20 <= s.steps_done < 40  # never before half the steps
    assert score[s.best_step] == max(score.values()) > score[s.steps_done]  # the last check was worse
    assert s.held_out.click_after == dict((st, c) for st, c, _, _ in s.history)[s.best_step]
    # measured again from scratch on the same held-out split, the returned weights score the best Dice
    again = tune(result.model, images, labels, steps=0, **kwargs).summary
    assert again.held_out.click_before == pytest.approx(s.held_out.click_after, abs=1e-4)


def test_a_diverging_run_stops_with_a_clear_error_and_keeps_the_model():
    from napari_msa.engine.tuning.api import TuningDiverged

    model = load_model("tiny", device="cpu")
    before = {k: v.clone() for k, v in model.trainable_state().items()}
    image = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
    labels = np.zeros((64, 64), np.int32)
    labels[10:30, 10:30] = 1
    labels[35:60, 30:60] = 2
    with pytest.raises(TuningDiverged, match="lower the learning rate"):
        tune(model, image, labels, steps=5, lr=1e30, val_fraction=0.0, inplace=True)
    after = model.trainable_state()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_automatic_budget_follows_what_a_step_costs():
    """Decoder-only tuning of a light decoder (≤ 32×32 embedding tokens, as the demo model) gets 8 objects per step
    and ~64 passes; a 64×64 grid (LiteMedSAM, SAM at 1024 px) or training encoder adapters gets 4 and ~8."""
    from dataclasses import replace

    from napari_msa.engine.tuning.budget import LIGHT_DECODER, STANDARD, decoder_tokens, step_budget
    from napari_msa.engine.tuning.tune_types import TuneConfig

    light_model, heavy_model = tiny(), tiny(image_size=1024)
    assert decoder_tokens(light_model) == 8 * 8 and decoder_tokens(heavy_model) == 64 * 64
    decoder_only = TuneConfig()
    assert step_budget(light_model, decoder_only) == LIGHT_DECODER
    assert step_budget(heavy_model, decoder_only) == STANDARD
    assert step_budget(light_model, replace(decoder_only, train_adapters=True)) == STANDARD
    assert STANDARD.steps(24, 4) == 48 and STANDARD.steps(2, 4) == 40 and STANDARD.steps(500, 4) == 200
    assert LIGHT_DECODER.steps(24, 8) == 192 and LIGHT_DECODER.steps(100, 8) == 400

    images, labels = blob_task(3, size=48)
    s = tune(light_model, images, labels, val_fraction=0.0).summary
    assert s.config.batch_size == 8 and s.steps_done == s.config.steps == LIGHT_DECODER.steps(s.n_train_objects, 8)
    s = tune(light_model, images, labels, val_fraction=0.0, batch_size=2, steps=3).summary  # the user's choice wins
    assert (s.config.batch_size, s.steps_done) == (2, 3)


@pytest.mark.parametrize("rule", ["clicks", "box", "logits", "box+logits"])
def test_simulated_sessions_prompt_each_correction_as_the_session_does(monkeypatch, rule):
    """Each correction round gets what the interaction rule adds (the previous logits as mask input, the shown
    mask's box), and only the first and the last rounds carry the loss (grad_rounds=2)."""
    import napari_msa.engine.tuning.step as step_module

    calls = []
    real_decode = step_module.decode

    def spy(sam, emb, points, labels, boxes, multimask, *, mask_input=None, **kw):
        calls.append({"points": None if points is None else len(points[0]), "box": boxes is not None,
                      "mask_input": mask_input is not None, "grad": torch.is_grad_enabled(), "multimask": multimask})
        return real_decode(sam, emb, points, labels, boxes, multimask, mask_input=mask_input, **kw)

    monkeypatch.setattr(step_module, "decode", spy)
    images, labels = blob_task(2, size=48)
    tune(tiny(), images, labels, steps=6, seed=0, val_fraction=0, box_share=0.0, max_correction_rounds=4,
         grad_rounds=2, interaction=rule, batch_size=1)
    sessions = []
    for c in calls:
        if c["points"] == 1:
            sessions.append([])
        if c["points"] is not None:
            sessions[-1].append(c)
    rounds = max(sessions, key=len)
    n = len(rounds)
    assert n >= 3 and [c["points"] for c in rounds] == list(range(1, n + 1))  # one more click a round
    assert rounds[0]["multimask"] and not rounds[0]["box"] and not rounds[0]["mask_input"]
    for c in rounds[1:]:
        assert c["box"] == ("box" in rule) and c["mask_input"] == ("logits" in rule) and not c["multimask"]
    assert [c["grad"] for c in rounds] == [i == 0 or i == n - 1 for i in range(n)]


@pytest.mark.parametrize("honour_edits", [True, False])
def test_simulated_sessions_edit_ignored_clicks_when_asked(monkeypatch, honour_edits):
    """With ``honour_edits`` an ignored correction asks the decoder about a lone click there and the next round is
    fed logits sure of the edit, as ``Session`` feeds them; without it (users' tuning) no such pass is made."""
    import napari_msa.engine.tuning.step as step_module
    from napari_msa.engine.prompts.honour import EDIT_LOGIT

    calls = []
    real_decode = step_module.decode

    def spy(sam, emb, points, labels, boxes, multimask, *, mask_input=None, **kw):
        calls.append({"points": None if points is None else len(points[0]), "multimask": multimask,
                      "label": None if labels is None else int(labels[0][-1]),
                      "fed": None if mask_input is None else mask_input.detach().clone()})
        return real_decode(sam, emb, points, labels, boxes, multimask, mask_input=mask_input, **kw)

    def corner(mask, candidates, point, label, rim):  # the edit, made to measure: the slice's top-left quarter
        assert candidates.shape[1:] == mask.shape and len(candidates) == 3  # a lone click's three masks
        edit = np.zeros(mask.shape, bool)
        edit[: mask.shape[0] // 2, : mask.shape[1] // 2] = True
        return edit

    monkeypatch.setattr(step_module, "decode", spy)
    monkeypatch.setattr(step_module, "honoured", lambda *args: False)  # every correction counts as ignored
    monkeypatch.setattr(step_module, "click_edit", corner)
    images, labels = blob_task(2, size=48)
    tune(tiny(), images, labels, steps=4, seed=0, val_fraction=0, box_share=0.0, max_correction_rounds=3,
         grad_rounds=2, interaction="logits+honour", honour_edits=honour_edits, batch_size=1)
    # a correction round i and the session's next one: right after it, or after a lone click's pass between them
    gap = 2 if honour_edits else 1
    pairs = [(i, i + gap) for i, c in enumerate(calls[:-gap]) if (c["points"] or 0) > 1
             and calls[i + gap]["points"] == c["points"] + 1]
    assert pairs
    for i, j in pairs:
        if honour_edits:  # the edit of the click before is in the logits fed back, with that click's sign
            assert calls[i + 1]["points"] == 1 and calls[i + 1]["multimask"] and calls[i + 1]["fed"] is None
            sign = 1 if calls[i]["label"] == 1 else -1
            fed = calls[j]["fed"][0, 0] * sign  # the edited quarter, well inside (logits are area averages)
            g = fed.shape[0] // 2  # a square slice fills the model's input: the grid's top-left quarter is the edit
            assert (fed[: g - 2, : g - 2] > 0).all() and float(fed[: g - 2, : g - 2].max()) == EDIT_LOGIT
        else:
            assert float(calls[j]["fed"].abs().max()) != pytest.approx(EDIT_LOGIT)


def test_appearance_variants_keep_labels_and_invert_polarity():
    from napari_msa.training.appearance import KINDS, augmented, variant

    plane = np.full((32, 40), 200, np.uint8)
    plane[10:20, 10:20] = 40  # a dark object
    rng = np.random.default_rng(0)
    inverted = variant(plane, "invert", rng)
    assert inverted[15, 15] > inverted[2, 2]  # the object is now brighter than its surroundings
    for kind in KINDS:
        out = variant(plane, kind, np.random.default_rng(1))
        assert out.shape == plane.shape and out.dtype == np.uint8
    lab = np.zeros((32, 40), np.int32)
    lab[10:20, 10:20] = 1
    region = np.zeros((32, 40), bool)
    region[10:20, 10:13] = True  # where the object's first click lands
    images, labels, regions = augmented([plane], [lab], ("invert", "gamma"), np.random.default_rng(2), [region])
    assert len(images) == len(labels) == len(regions) == 3
    for img, lb, rg in zip(images, labels, regions, strict=True):
        assert img.shape[:2] == lb.shape == rg.shape and lb.sum() == 100 and rg.sum() == 30
        assert img[lb == 1].mean() != img[lb == 0].mean()  # the labels moved with the pixels
        assert (lb[rg] == 1).all()  # and the click region with them
    assert augmented([plane], [lab], ("invert",), np.random.default_rng(2))[2] == [None, None]
    with pytest.raises(ValueError, match="unknown appearance"):
        variant(plane, "sepia", rng)


def test_held_out_criterion_counts_a_loss_in_sessions_and_boxes_never_a_gain():
    from napari_msa.engine.tuning.held_out import HeldOut

    start = HeldOut(0.70, 0.90, {}, np.zeros((0, 2)), session=0.85)
    better_clicks = HeldOut(0.80, 0.90, {}, np.zeros((0, 2)), session=0.85)
    worse_sessions = HeldOut(0.80, 0.90, {}, np.zeros((0, 2)), session=0.75)  # first clicks up, corrections down
    better_everything = HeldOut(0.80, 0.95, {}, np.zeros((0, 2)), session=0.95)
    assert better_clicks.score(start) == pytest.approx(0.80)
    assert worse_sessions.score(start) == pytest.approx(0.70)  # no better than the start: it is not kept
    assert better_everything.score(start) == pytest.approx(0.80)  # gains elsewhere do not buy click losses


def test_held_out_check_scores_a_simulated_session():
    images, labels = blob_task(4, size=48)
    s = tune(tiny(), images, labels, steps=4, seed=0, val_fraction=0.25, eval_every=2).summary
    assert s.held_out.session_before is not None and 0.0 <= s.held_out.session_before <= 1.0
    assert all(len(h) == 4 for h in s.history)


@pytest.mark.parametrize("rule", ["logits", "logits+zoom"])
def test_the_held_out_session_is_an_annotators_session(rule):
    """The held-out check's three-click session is the automatic annotator clicking through a real Session under
    the model's rule (zoom included): the same Dice as run_session gives on that plane."""
    from napari_msa.engine.tuning.held_out import PLANE_WINDOW, AnnotatorSessions
    from napari_msa.evaluation.clicks import run_session

    images, labels = blob_task(2, size=160)
    model = tiny()
    model.interaction = InteractionRule.from_name(rule)
    slices, _ = build_pairs(images[0], labels[0], image_size=model.image_size)
    plane = slices[0]
    truths = [plane.labels == 1, plane.labels == 2]
    got = AnnotatorSessions(model, slices).dice_after_clicks(0, truths, clicks=3)
    session = Session(model, normalization=PLANE_WINDOW)
    session.set_image(plane.rgb, rgb=True)
    want = [run_session(session, t, max_clicks=3, curve_clicks=3).at(3) for t in truths]
    assert got == pytest.approx(want)


def test_the_smallest_blend_that_scores_as_well_is_kept():
    """WiSE-FT-like: start + share x (best - start) for the configured shares; among scores within
    BLEND_TOLERANCE of the best, the smallest change wins; the kept weights must still beat the start."""
    from napari_msa.engine.tuning.held_out import HeldOut
    from napari_msa.engine.tuning.loop import BLEND_TOLERANCE, BestWeights
    from napari_msa.engine.tuning.tune_types import TuneConfig

    def held(click: float) -> HeldOut:
        return HeldOut(click, 0.9, {}, np.zeros((0, 2)), session=0.9)

    def run(score_of_weight, blends=(0.5, 0.75)):
        w = torch.nn.Parameter(torch.zeros(3))
        tracker = BestWeights([w], TuneConfig(blends=blends, accept_margin=0.01), 0, held(0.5))
        with torch.no_grad():
            w.fill_(1.0)
        tracker.update(10, held(score_of_weight(1.0)))
        tracker.restore(lambda: held(score_of_weight(float(w.detach()[0]))))
        return float(w.detach()[0]), tracker.blend

    assert run(lambda x: 0.5 + 0.2 * x) == (1.0, 1.0)  # more change, better: all of it
    assert run(lambda x: 0.7 - 0.2 * (x - 0.75) ** 2) == (0.75, 0.75)  # the peak is part of the way
    flat = run(lambda x: 0.7 - BLEND_TOLERANCE / 2 * x)  # within the tolerance everywhere: the least change
    assert flat == (0.5, 0.5)
    assert run(lambda x: 0.5 + 0.2 * x, blends=()) == (1.0, 1.0)
    assert run(lambda x: 0.5 + 0.005 * x) == (0.0, 0.0)  # no blend beats the start by the margin: the start


def test_first_clicks_land_in_the_click_region_and_corrections_anywhere(monkeypatch):
    """A whole (here a square holding an inner square) trained with a click region is first clicked on its own
    tissue, never on the object inside it; without one, the first click goes deep inside (onto the inner square)."""
    import napari_msa.engine.tuning.step as step_module
    from napari_msa.engine.tuning.data import build_pairs

    size = 64
    image = np.full((size, size), 40, np.uint8)
    image[8:56, 8:56] = 140
    image[24:40, 24:40] = 220
    whole = np.zeros((size, size), np.int32)
    whole[8:56, 8:56] = 1
    own = (whole > 0).copy()
    own[22:42, 22:42] = False  # off the inner square and a margin around it
    slices, pairs = build_pairs([image], [whole], image_size=size, click_regions=[own])
    assert slices[0].clickable is not None and (slices[0].click_region(1) == own).all()
    tiny_region = np.zeros_like(own)
    tiny_region[10, 10] = True  # too small to aim at: the whole object is clickable
    slices, _ = build_pairs([image], [whole], image_size=size, click_regions=[tiny_region])
    assert (slices[0].click_region(1) == (whole > 0)).all()
    with pytest.raises(ValueError, match="click region"):
        build_pairs([image], [whole], image_size=size, click_regions=[own[:10]])

    firsts = []
    real_decode = step_module.decode

    def spy(sam, emb, points, labels, boxes, multimask, *, mask_input=None, **kw):
        if points is not None and len(points[0]) == 1:
            firsts.append(np.asarray(points)[:, 0])  # (x, y) of each object's first click
        return real_decode(sam, emb, points, labels, boxes, multimask, mask_input=mask_input, **kw)

    monkeypatch.setattr(step_module, "decode", spy)
    opts = dict(steps=8, seed=0, val_fraction=0, box_share=0.0, max_correction_rounds=1, batch_size=1,
                augment=False)
    tune(tiny(image_size=size), [image], [whole], click_regions=[own], **opts)
    clicks = np.concatenate(firsts)
    assert len(clicks) >= 8
    rows, cols = clicks[:, 1].round().astype(int), clicks[:, 0].round().astype(int)
    assert own[rows, cols].all()
    firsts.clear()
    tune(tiny(image_size=size), [image], [whole], **opts)
    clicks = np.concatenate(firsts)
    assert (~own[clicks[:, 1].round().astype(int), clicks[:, 0].round().astype(int)]).mean() > 0.5


def test_zoomed_views_frame_each_training_object_as_a_zooming_rule_decodes_it():
    from napari_msa.engine.prompts.zoom import zoom_window
    from napari_msa.engine.tuning.data import window_views

    images, labels = blob_task(3, size=200)
    slices, pairs = build_pairs(images, labels, image_size=SIZE)
    train = [p for p in pairs if slices[p.slice_id].z != 1]  # slice 1 held out: none of its views may appear
    views, view_pairs = window_views(images, labels, slices, train, image_size=SIZE)
    assert len(view_pairs) == len(views) == len(train)
    assert {v.z for v in views} == {0, 2}
    for view, pair, source in zip(views, view_pairs, train, strict=True):
        assert view.rgb.shape == (SIZE, SIZE, 3) and pair.label == source.label
        obj = labels[view.z] == pair.label
        r0, c0, r1, c1 = zoom_window(obj.shape, obj, np.zeros((0, 2)), np.zeros(0))
        scale = SIZE / (r1 - r0)
        # the object fills about (1 / SCALE)^2 of its view, at the view's scale
        assert view.mask(pair.object_id).sum() == pytest.approx(obj.sum() * scale**2, rel=0.15)


def test_tuning_with_zoomed_views_draws_a_share_of_its_samples_from_them(monkeypatch):
    from napari_msa.engine.tuning import step

    images, labels = blob_task(4, size=160)
    seen = []
    original = step.StepModule._sample_loss
    monkeypatch.setattr(step.StepModule, "_sample_loss",
                        lambda self, s: seen.append(s.slice_id) or original(self, s))
    result = tune(tiny(), images, labels, steps=12, seed=0, val_fraction=0.25, zoom_views=0.5, blends=())
    assert result.summary.n_slices == 4 and result.summary.config.zoom_views == 0.5
    views = [sid for sid in seen if sid >= 4]  # views come after the labelled slices
    assert 0 < len(views) < len(seen)
    with pytest.raises(ValueError, match="zoom_views"):
        tune(tiny(), images, labels, steps=1, zoom_views=1.5)


def test_anchoring_first_clicks_keeps_a_lone_clicks_answers_while_corrections_train():
    """With ``anchor_first_clicks`` a lone click's three masks and scores stay as the starting decoder gives
    them (a distillation term replaces their task loss); corrections and boxes still train. Without it, the
    same run moves the lone click's answers too."""
    images, labels = blob_task(3, size=96)
    start = tiny(image_size=96)
    click = interior_click(labels[0] == 1)
    opts = dict(steps=25, seed=0, val_fraction=0, lr=3e-3, box_share=0.3, max_correction_rounds=2, batch_size=2,
                accept_margin=-1.0, blends=(), augment=False)
    with pytest.raises(ValueError, match="anchor_first_clicks"):
        tune(start, images, labels, steps=1, anchor_first_clicks=-1.0)

    def answers(model):
        session = Session(model)
        session.set_image(images[0])
        lone = session.interact(points=[click], labels=[1], multimask=True)
        corrected = session.interact(points=[click, (5, 5)], labels=[1, 0], multimask=False)
        return lone.logits.clip(-8, 8), lone.scores, corrected.logits.clip(-8, 8)

    before = answers(start)
    anchored = answers(tune(start, images, labels, anchor_first_clicks=1.0, **opts).model)
    free_model = tune(start, images, labels, **opts).model
    free = answers(free_model)
    moved = [float(np.abs(after[0] - before[0]).mean()) for after in (anchored, free)]
    assert moved[0] < 0.25 * moved[1]
    assert np.abs(anchored[1] - before[1]).max() < np.abs(free[1] - before[1]).max()
    assert np.abs(anchored[2] - before[2]).mean() > moved[0]  # the correction's answer did train
    # another model's first clicks as the teacher: training from the moved decoder brings its lone click back
    back = answers(tune(free_model, images, labels, anchor_first_clicks=1.0, first_click_teacher=start, **opts).model)
    assert np.abs(back[0] - before[0]).mean() < 0.5 * moved[1]


def test_a_corrector_learns_what_follows_a_lone_click_answered_by_the_starting_decoder(monkeypatch):
    """``corrector``: in the simulated sessions a frozen copy of the starting decoder answers each lone click (no
    gradient), the model answers and learns every step after it and every box."""
    from types import SimpleNamespace

    from napari_msa.engine.tuning import step

    images, labels = blob_task(3, size=96)
    start = tiny(image_size=96)
    with pytest.raises(ValueError, match="corrector"):
        tune(start, images, labels, steps=1, corrector=True, anchor_first_clicks=1.0)
    start_decoder = {k: v.clone() for k, v in start.sam.mask_decoder.state_dict().items()}
    answered = []
    real_decode = step.decode

    def spy(sam, emb, points, labels_, boxes, multimask, **kwargs):
        low, iou = real_decode(sam, emb, points, labels_, boxes, multimask, **kwargs)
        answered.append((multimask, sam, low.requires_grad))
        return low, iou

    monkeypatch.setattr(step, "decode", spy)
    tuned = tune(start, images, labels, corrector=True, steps=10, seed=0, val_fraction=0, lr=3e-3, box_share=0.3,
                 max_correction_rounds=2, batch_size=2, accept_margin=-1.0, blends=(), augment=False).model
    lone = [(sam, grad) for multimask, sam, grad in answered if multimask]
    rest = [(sam, grad) for multimask, sam, grad in answered if not multimask]
    assert lone and rest
    assert all(isinstance(sam, SimpleNamespace) and not grad for sam, grad in lone)  # the frozen copy
    frozen = lone[0][0].mask_decoder.state_dict()
    assert all(torch.equal(frozen[k], start_decoder[k]) for k in frozen)  # as the decoder started, to the end
    assert all(sam is tuned.sam for sam, _ in rest) and any(grad for _, grad in rest)
    moved = tuned.sam.mask_decoder.state_dict()
    assert any(not torch.equal(moved[k], start_decoder[k]) for k in moved)


def test_the_edge_weight_makes_the_mask_loss_weigh_the_objects_edge_more():
    """``edge_weight``: the BCE counts the pixels within 2 px of each object's edge (``edge_band``) more, so a mask
    that is wrong only along the edge costs more than with every pixel alike; 0 leaves the loss as it was."""
    from napari_msa.engine.tuning.losses import bce_dice_loss, edge_band

    truth = np.zeros((1, 32, 32), bool)
    truth[0, 8:24, 8:24] = True
    band = edge_band(truth)
    assert band[0, 8, 8] and band[0, 6, 16] and band[0, 9, 16] and not band[0, 16, 16] and not band[0, 2, 16]
    target = torch.as_tensor(truth, dtype=torch.float32)[:, None]
    rim_wrong = torch.where(target > 0, 6.0, -6.0)
    rim_wrong[0, 0, 8, 8:24] = -6.0  # one row of the edge missed
    weight = (1.0 + 4.0 * torch.as_tensor(band, dtype=torch.float32))[:, None]
    plain, weighted = bce_dice_loss(rim_wrong, target), bce_dice_loss(rim_wrong, target, weight)
    assert float(weighted) > float(plain)
    assert torch.allclose(bce_dice_loss(rim_wrong, target, torch.ones_like(target)), plain)
    images, labels = blob_task(2, size=96)
    start = tiny(image_size=96)
    with pytest.raises(ValueError, match="edge_weight"):
        tune(start, images, labels, steps=1, edge_weight=-1.0)
    opts = dict(steps=4, seed=0, val_fraction=0, lr=3e-3, max_correction_rounds=1, batch_size=1, accept_margin=-1.0,
                blends=(), augment=False)
    decoders = [tune(start, images, labels, edge_weight=w, **opts).model.sam.mask_decoder.state_dict()
                for w in (0.0, 0.0, 4.0)]
    same = all(torch.equal(decoders[0][k], decoders[1][k]) for k in decoders[0])
    assert same and any(not torch.equal(decoders[0][k], decoders[2][k]) for k in decoders[0])
