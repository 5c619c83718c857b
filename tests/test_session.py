import numpy as np
import pytest
import torch
from model_support import blob_volume
from segment_anything import SamPredictor
from segment_anything.utils.transforms import ResizeLongestSide

from napari_msa import Session, load_model
from napari_msa.engine import Cancelled, Normalization, build_sam, get_config
from napari_msa.engine.inference.session import prompts_from_mask
from napari_msa.engine.network.preprocessing import ImageLayout, intensity_window, to_uint8_rgb
from napari_msa.engine.prompts.geometry import dice


@pytest.fixture
def tiny_pth(tmp_path):
    sam = build_sam(get_config("tiny"))
    with torch.no_grad():
        for n, p in sam.named_parameters():
            if "rel_pos" in n or "pos_embed" in n:
                p.normal_(std=0.02)
    path = tmp_path / "tiny.pth"
    torch.save(sam.state_dict(), path)
    return path


def test_matches_segment_anything_predictor(tiny_pth):
    rgb = np.random.default_rng(3).integers(0, 256, size=(120, 200, 3), dtype=np.uint8)
    reference = build_sam(get_config("tiny"))
    reference.load_state_dict(torch.load(tiny_pth, weights_only=True))
    predictor = SamPredictor(reference)
    predictor.set_image(rgb)

    session = Session(load_model("tiny", checkpoint=tiny_pth, device="cpu"))
    session.set_image(rgb)
    assert torch.equal(session.embedding(0).features, predictor.features)

    row, col = 30, 150
    masks, scores, logits = predictor.predict(point_coords=np.array([[col, row]]), point_labels=np.array([1]))
    mask, score = session.predict(points=[(row, col)], labels=[1])
    assert np.array_equal(mask, masks[np.argmax(scores)]) and score == pytest.approx(scores.max())
    np.testing.assert_array_equal(session.last_logits, logits[[np.argmax(scores)]])

    previous = logits[[np.argmax(scores)]]  # a second round fed the first one's logits, as interactive SAM does
    masks, scores, _ = predictor.predict(point_coords=np.array([[col, row], [40, 60]]), point_labels=np.array([1, 1]),
                                         mask_input=previous, multimask_output=False)
    mask, score = session.predict(points=[(row, col), (60, 40)], labels=[1, 1], mask_input=previous)
    assert np.array_equal(mask, masks[0]) and score == pytest.approx(scores[0])

    masks, scores, _ = predictor.predict(point_coords=np.array([[col, row], [20, 100]]),
                                         point_labels=np.array([1, 0]), box=np.array([100, 10, 190, 60]),
                                         multimask_output=False)
    mask, score = session.predict(points=[(row, col), (100, 20)], labels=[1, 0], box=(10, 100, 60, 190),
                                  multimask=False)  # one pass, exactly these prompts
    assert np.array_equal(mask, masks[0]) and score == pytest.approx(scores[0])


def test_an_interaction_is_sams_iterative_protocol(tiny_pth):
    """SAM's rule (the box first, then each click with the previous answer's logits) equals SamPredictor driven
    by hand, and a call with all the clicks at once equals one call per click."""
    rgb = np.random.default_rng(4).integers(0, 256, size=(120, 200, 3), dtype=np.uint8)
    reference = build_sam(get_config("tiny"))
    reference.load_state_dict(torch.load(tiny_pth, weights_only=True))
    predictor = SamPredictor(reference)
    predictor.set_image(rgb)
    box_xy, clicks_xy, labels = np.array([100, 10, 190, 60]), np.array([[150, 30], [20, 100], [120, 40]]), [1, 0, 1]
    _, _, logits = predictor.predict(box=box_xy, multimask_output=False)
    expected = []
    for k in range(1, 4):
        masks, scores, logits = predictor.predict(point_coords=clicks_xy[:k], point_labels=np.array(labels[:k]),
                                                  box=box_xy, mask_input=logits, multimask_output=False)
        expected.append((masks[0], scores[0]))

    model = load_model("tiny", checkpoint=tiny_pth, device="cpu")
    assert model.interaction.name == "logits"  # SAM's own protocol for SAM-architecture checkpoints
    box_rc, clicks_rc = (10, 100, 60, 190), clicks_xy[:, ::-1]
    one_by_one = Session(model)
    one_by_one.set_image(rgb)
    for k in range(1, 4):
        mask, score = one_by_one.predict(points=clicks_rc[:k], labels=labels[:k], box=box_rc)
        assert np.array_equal(mask, expected[k - 1][0]) and score == pytest.approx(expected[k - 1][1], abs=1e-6)
    at_once = Session(model)
    at_once.set_image(rgb)
    mask, _ = at_once.predict(points=clicks_rc, labels=labels, box=box_rc)
    assert np.array_equal(mask, expected[-1][0])


def test_orientation_row_col_becomes_x_y(tiny_model, monkeypatch):
    """An off-centre click at (row 10, col 150) reaches SAM as x=150, y=10 (scaled), never transposed."""
    seen = {}
    encoder = tiny_model.sam.prompt_encoder
    original = encoder.forward

    def spy(points, boxes, masks):
        seen["points"], seen["boxes"] = points, boxes
        return original(points, boxes, masks)

    monkeypatch.setattr(encoder, "forward", spy)
    image = np.zeros((80, 200), np.float32)
    image[5:15, 140:160] = 1.0  # asymmetric object near the top right
    session = Session(tiny_model)
    session.set_image(image)
    mask, _ = session.predict(points=[(10, 150)], labels=[1], box=(5, 140, 15, 160))
    new_h, new_w = ResizeLongestSide.get_preprocess_shape(80, 200, 256)
    sy, sx = new_h / 80, new_w / 200
    xy = seen["points"][0][0, 0].numpy()
    assert np.allclose(xy, [150 * sx, 10 * sy], atol=1e-4)
    assert np.allclose(seen["boxes"][0].numpy(), [140 * sx, 5 * sy, 160 * sx, 15 * sy], atol=1e-4)
    assert mask.shape == (80, 200)
    # the encoder sees the object where it is: top right of the resized plane
    rgb = session.plane_rgb(0)
    assert rgb[10, 150].max() == 255 and rgb[70, 20].max() == 0


def test_points_validation(tiny_model):
    session = Session(tiny_model)
    with pytest.raises(RuntimeError, match="set_image"):
        session.predict(points=[(1, 1)])
    session.set_image(np.zeros((4, 30, 40), np.float32))
    with pytest.raises(ValueError, match="several slices"):
        session.predict(points=[(0, 5, 5), (2, 5, 5)], labels=[1, 1])
    with pytest.raises(ValueError, match="outside"):
        session.predict(points=[(1, 35, 5)], labels=[1])
    with pytest.raises(ValueError, match=r"\(z, row, col\)"):
        session.predict(points=[(5, 5)], labels=[1])
    with pytest.raises(ValueError, match="labels"):
        session.predict(points=[(1, 5, 5)], labels=[1, 0])
    with pytest.raises(ValueError, match="expected a"):
        session.set_image(np.zeros((2, 3, 4, 5, 6)))


def test_lru_cache_stays_within_budget_and_disk_cache_is_reused(tiny_model, tmp_path, monkeypatch):
    volume = np.random.default_rng(0).normal(size=(6, 40, 50)).astype(np.float32)
    probe = Session(tiny_model)
    probe.set_image(volume)
    one = probe.embedding(0).nbytes
    session = Session(tiny_model, cache_budget_bytes=int(2.5 * one), cache_dir=tmp_path)
    session.set_image(volume)
    for z in range(5):
        session.embedding(z)
    assert len(session.cache) == 2 and session.cache.nbytes <= 2.5 * one
    assert [k[2] for k in session.cache.keys()] == [3, 4]
    assert session.is_cached(4) and not session.is_cached(0)

    calls = []
    fresh = Session(tiny_model, cache_dir=tmp_path)
    fresh.set_image(volume)
    monkeypatch.setattr(tiny_model, "encode", lambda *a, **k: calls.append(1))
    assert torch.equal(fresh.embedding(1).features, session.embedding(1).features)
    assert calls == [] and fresh.cache.hits >= 1


def test_changed_encoder_weights_invalidate_cache_and_decoder_changes_do_not():
    model = load_model("tiny", device="cpu")
    session = Session(model)
    session.set_image(np.ones((30, 30), np.float32))
    session.embedding(0)
    assert session.is_cached(0)
    with torch.no_grad():  # what tuning the decoder does: embeddings stay valid
        next(model.sam.mask_decoder.parameters()).add_(0.1)
    model.version += 1
    assert session.is_cached(0)
    with torch.no_grad():  # tuning the encoder's adapters: they do not
        next(p for n, p in model.sam.named_parameters() if "Adapter" in n).add_(0.1)
    model.version += 1
    assert not session.is_cached(0)


def test_embed_slices_progress_and_cancel(tiny_model):
    session = Session(tiny_model)
    session.set_image(np.zeros((5, 32, 32), np.float32))
    seen = []
    session.embed_slices([0, 1, 2], progress=lambda d, t: seen.append((d, t)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    with pytest.raises(Cancelled):
        session.embed_slices([3, 4], cancel=lambda: True)
    assert not session.is_cached(3)


def _oracle(session_volume_mask):
    """predict() replacement: the true object's cross-section on the prompted slice (deterministic)."""

    def predict(self, points=None, labels=None, box=None, mask_input=None, *, z=None, multimask=None):
        z = int(round(points[0][0]))
        return session_volume_mask[z].copy(), 1.0

    return predict


def test_propagation_follows_the_object_and_stops(tiny_model, monkeypatch):
    image, mask = blob_volume(shape=(20, 48, 64), center=(10, 20, 40), radii=(5, 9, 14))
    monkeypatch.setattr(Session, "predict", _oracle(mask))
    session = Session(tiny_model)
    session.set_image(image)
    progress = []
    result = session.propagate(mask[10], 10, progress=lambda d, t: progress.append(d))
    present = [z for z in range(20) if mask[z].any()]
    # slices whose cross-section changes too fast (IoU < 0.5, the ellipsoid's caps) end the run
    assert set(result) <= set(present) - {10}
    assert {8, 9, 11, 12} <= set(result)
    for z, m in result.items():
        assert np.array_equal(m, mask[z])
    assert progress and progress == sorted(progress)
    with pytest.raises(Cancelled):
        session.propagate(mask[10], 10, cancel=lambda: True)
    with pytest.raises(ValueError, match="empty"):
        session.propagate(np.zeros_like(mask[10]), 10)


def test_propagation_runs_the_real_model():
    """A trained model (the demo model) carries a blob to the slices around it, both ways, and finds it there."""
    image, mask = blob_volume(shape=(9, 48, 64), center=(4, 20, 40), radii=(3, 9, 14))
    session = Session(load_model("demo", device="cpu"))
    session.set_image(image)
    result = session.propagate(mask[4], 4, iou_threshold=0.3)
    assert {3, 5} <= set(result) <= {z for z in range(9) if mask[z].any()} - {4}
    assert all(m.shape == (48, 64) and m.dtype == bool for m in result.values())
    assert min(dice(result[z], mask[z]) for z in (3, 5)) > 0.8


def test_prompts_from_mask_interior_point():
    m = np.zeros((30, 40), bool)
    m[5:25, 10:14] = True  # thin bar: the interior point must lie on it
    box, point = prompts_from_mask(m)
    assert box.tolist() == [5, 10, 24, 13]
    assert m[int(point[0]), int(point[1])]


def test_normalization_presets():
    ct = np.array([[-1000, -160, 40, 240, 3000]], np.int16)
    window = intensity_window(ct, Normalization("ct", level=40, width=400), rgb=False)
    assert window == (-160, 240)
    assert to_uint8_rgb(ct, window)[0, :, 0].tolist() == [0, 0, 128, 255, 255]
    mri = np.linspace(0, 1000, 10001, dtype=np.float32).reshape(1, -1)
    lo, hi = intensity_window(mri, Normalization("percentile"), rgb=False)
    assert lo == pytest.approx(5, abs=0.2) and hi == pytest.approx(995, abs=0.2)
    assert intensity_window(np.zeros((8, 8, 3), np.uint8), Normalization(), rgb=True) is None
    assert intensity_window(mri, Normalization("limits", limits=(0, 10)), rgb=False) == (0, 10)
    with pytest.raises(ValueError, match="unknown normalisation"):
        Normalization("zscore")
    with pytest.raises(ValueError, match="limits"):
        Normalization("limits")
    assert to_uint8_rgb(np.ones((4, 4), np.float32), (0, 2)).shape == (4, 4, 3)


@pytest.mark.parametrize("shape, rgb, volume", [((20, 30), False, False), ((20, 30, 3), True, False),
                                                ((5, 20, 30), False, True), ((5, 20, 30, 3), True, True),
                                                ((3, 20, 30), False, True)])
def test_layouts(shape, rgb, volume):
    layout = ImageLayout.of(np.zeros(shape, np.uint8))
    assert (layout.rgb, layout.is_volume) == (rgb, volume)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32, np.float64, bool])
def test_any_dtype_predicts(tiny_model, dtype):
    image = (np.random.default_rng(0).random((40, 50)) * 100).astype(dtype)
    session = Session(tiny_model)
    session.set_image(image)
    mask, score = session.predict(points=[(10, 10)], labels=[1])
    assert mask.shape == (40, 50) and np.isfinite(score)


def test_prompts_from_mask_margin_grows_the_box_inside_the_plane():
    m = np.zeros((40, 50), bool)
    m[10:20, 0:30] = True
    tight, _ = prompts_from_mask(m)
    grown, _ = prompts_from_mask(m, margin=0.1)
    np.testing.assert_allclose(tight, [10, 0, 19, 29])
    np.testing.assert_allclose(grown, [8, 0, 21, 31.9])  # 2 px minimum on rows, 10 % of 29 on cols, clipped at 0


def test_cancelled_propagation_hands_over_the_slices_it_finished(tiny_model):
    volume = np.zeros((6, 64, 64), np.float32)
    volume[:, 20:44, 20:44] = 1.0
    session = Session(tiny_model)
    session.set_image(volume)
    start = np.zeros((64, 64), bool)
    start[20:44, 20:44] = True
    session.predict = lambda **_: (start.copy(), 0.9)  # a model that always finds the square
    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) > 2  # two slices run, then the user cancels

    with pytest.raises(Cancelled) as info:
        session.propagate(start, 2, cancel=cancel)
    assert sorted(info.value.partial) == [3, 4]
    assert all(np.array_equal(m, start) for m in info.value.partial.values())


def test_propagation_stops_where_the_predicted_iou_is_low(tiny_model):
    volume = np.zeros((6, 64, 64), np.float32)
    session = Session(tiny_model)
    session.set_image(volume)
    start = np.zeros((64, 64), bool)
    start[20:44, 20:44] = True
    scores = {0: 0.9, 1: 0.9, 3: 0.9, 4: 0.2, 5: 0.9}
    session.predict = lambda points, **_: (start.copy(), scores[int(points[0][0])])
    assert sorted(session.propagate(start, 2)) == [0, 1, 3]  # default 0.5: slice 4 ends the upward run
    assert sorted(session.propagate(start, 2, min_score=0.0)) == [0, 1, 3, 4, 5]  # no score stop


def test_propagation_stops_where_the_brightness_changes(monkeypatch, tiny_model):
    """Past an organ's end the model may answer confidently with the next structure in the same place: same
    shape, full overlap, high predicted IoU, but another brightness. The brightness stop ends it there."""
    rows, cols = np.ogrid[:48, :48]
    disk = (rows - 24) ** 2 + (cols - 24) ** 2 <= 10**2
    volume = np.full((10, 48, 48), 100.0, dtype=np.float32)
    volume += np.random.default_rng(0).normal(0, 3, volume.shape).astype(np.float32)
    volume[:5][:, disk] = 200.0  # the object on slices 0-4
    volume[5:][:, disk] = 20.0  # something darker in the same place on slices 5-9
    session = Session(tiny_model, normalization=Normalization("none"))
    session.set_image(volume)
    monkeypatch.setattr(Session, "predict", lambda self, *a, **k: (disk.copy(), 0.95))  # always the same answer
    assert sorted(session.propagate(disk, 2)) == [0, 1, 3, 4]
    assert sorted(session.propagate(disk, 2, max_shift=1e9)) == [0, 1, 3, 4, 5, 6, 7, 8, 9]  # no brightness stop
    with pytest.raises(ValueError, match="max_shift"):
        session.propagate(disk, 2, max_shift=float("nan"))
