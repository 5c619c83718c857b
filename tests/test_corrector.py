"""The corrector (engine.network.corrector): a second prompt side that answers every interaction step but a lone
click's, stored as a small change in the adapter file and rebuilt on the model's decoder as it is now."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_support import disk

from napari_msa import Session, load_model
from napari_msa.engine.file_checks import CheckpointError
from napari_msa.engine.files.formats import read_adapter
from napari_msa.engine.inference import session as session_module
from napari_msa.engine.inference.decoding import decode
from napari_msa.engine.inference.everything import EverythingSettings, segment_everything
from napari_msa.engine.network.adapters import is_decoder_weight
from napari_msa.engine.network.corrector import PREFIX, CorrectorChange
from napari_msa.training.add_corrector import with_corrector

SHAPE = (64, 72)


def decoder_state(sam) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in sam.state_dict().items() if is_decoder_weight(k)}


def trained_state(sam, seed: int = 1, scale: float = 0.2) -> dict[str, torch.Tensor]:
    """The decoder's weights as a 'training' left them: every weight moved."""
    g = torch.Generator().manual_seed(seed)
    return {k: v + scale * torch.randn(v.shape, generator=g) * (v.std() if v.numel() > 1 else 1.0)
            for k, v in decoder_state(sam).items()}


@pytest.fixture
def model_with_corrector(tiny_model):
    tiny_model.corrector_change = CorrectorChange.between(decoder_state(tiny_model.sam),
                                                          trained_state(tiny_model.sam), rank=4)
    return tiny_model


def image() -> np.ndarray:
    img = np.full(SHAPE, 40.0, np.float32)
    img[disk(SHAPE, (30, 36), 12)] = 200.0
    img[disk(SHAPE, (30, 36), 5)] = 120.0
    return img


def test_a_full_rank_change_is_exact_and_a_low_rank_one_the_best_of_its_rank():
    w = torch.randn(12, 10)
    after = {"mask_decoder.a.weight": w + torch.randn(12, 10), "mask_decoder.a.bias": torch.ones(12),
             "mask_decoder.same.weight": w, "image_encoder.x": torch.zeros(3)}
    before = {"mask_decoder.a.weight": w, "mask_decoder.a.bias": torch.zeros(12), "mask_decoder.same.weight": w,
              "image_encoder.x": torch.ones(3)}
    full = CorrectorChange.between(before, after, rank=10)
    assert full.names == ["mask_decoder.a.bias", "mask_decoder.a.weight"]  # unchanged and encoder weights left out
    torch.testing.assert_close(full.change_of("mask_decoder.a.weight"), after["mask_decoder.a.weight"] - w,
                               atol=2e-3, rtol=1e-3)  # fp16
    low = CorrectorChange.between(before, after, rank=3)
    a, b = low.low_rank["mask_decoder.a.weight"]
    assert a.shape == (12, 3) and b.shape == (3, 10) and low.meta["rank"] == 3
    s = torch.linalg.svdvals(after["mask_decoder.a.weight"] - w)
    error = torch.linalg.matrix_norm(low.change_of("mask_decoder.a.weight") - (after["mask_decoder.a.weight"] - w))
    assert float(error) == pytest.approx(float(s[3:].norm()), rel=1e-2)  # Eckart–Young: the rest of the spectrum


def test_the_corrector_is_the_decoder_as_it_is_now_plus_the_change(model_with_corrector):
    model = model_with_corrector
    side = model.corrector()
    name = "mask_decoder.iou_token.weight"
    expected = model.sam.state_dict()[name] + model.corrector_change.change_of(name)
    torch.testing.assert_close(side.state_dict()[name], expected)
    assert model.corrector() is side  # built once per weights
    with torch.no_grad():
        model.sam.mask_decoder.iou_token.weight.add_(1.0)  # tuning moved the decoder
    model.version += 1
    torch.testing.assert_close(model.corrector().state_dict()[name], expected + 1.0)
    assert not any(p.requires_grad for p in model.corrector().parameters())
    clone = model.clone()
    assert clone.corrector() is not model.corrector()  # a copy's corrector is built on the copy's decoder


def test_the_corrector_travels_in_the_adapter_file_with_the_decoder_only(model_with_corrector, tmp_path):
    model = model_with_corrector
    path = model.save_adapter(tmp_path / "with.safetensors", include_decoder=True)
    file = read_adapter(path)
    assert any(k.startswith(PREFIX) for k in file.tensors) and file.meta["corrector"]["rank"] == 4
    other = model.clone()
    other.corrector_change = None
    other.apply_adapter(path)
    for name in model.corrector_change.names:
        torch.testing.assert_close(other.corrector_change.change_of(name), model.corrector_change.change_of(name))
    for name, value in model.corrector().state_dict().items():
        torch.testing.assert_close(other.corrector().state_dict()[name], value)
    # adapters alone: the change belongs to a decoder that is not in the file, so it stays out
    alone = read_adapter(model.save_adapter(tmp_path / "alone.safetensors"))
    assert not any(k.startswith(PREFIX) for k in alone.tensors) and alone.meta["corrector"] == {}
    other.apply_adapter(alone.path)  # a file without a corrector replaces the prompt side: none left
    assert other.corrector() is None


def test_a_damaged_corrector_is_refused_by_name(model_with_corrector, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = model_with_corrector.save_adapter(tmp_path / "a.safetensors", include_decoder=True)
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    key = next(k for k in tensors if k.startswith(PREFIX) and k.endswith(".lora_a"))
    for broken, words in (({key: tensors[key][:-1]}, "damaged or for another model"),
                          ({f"{PREFIX}mask_decoder.nothing.weight.delta": torch.zeros(2)}, "names no decoder weight"),
                          ({key.replace(".lora_a", ".delta"): torch.zeros(1)}, "damaged or for another model")):
        bad = tmp_path / "bad.safetensors"
        save_file({**tensors, **broken}, str(bad), metadata=meta)
        with pytest.raises(CheckpointError, match=words):
            model_with_corrector.clone().apply_adapter(bad)


def test_a_lone_click_is_the_decoders_and_every_other_step_the_correctors(model_with_corrector, monkeypatch):
    model = model_with_corrector
    used = []
    real = session_module.decode
    monkeypatch.setattr(session_module, "decode", lambda sam, *a, **k: used.append(sam) or real(sam, *a, **k))
    session = Session(model)
    session.set_image(image())
    session.predict(points=[(30, 36)], labels=[1])
    session.predict(points=[(30, 36), (30, 48)], labels=[1, 0])
    session.predict(box=(18, 24, 42, 48))
    session.predict(points=[(30, 36)], labels=[1], prior=disk(SHAPE, (30, 36), 8))  # refining an object
    assert used[0] is model.sam and all(d is model.corrector() for d in used[1:]) and len(used) >= 4
    used.clear()  # one pass outside any interaction (SamPredictor's call; propagation's per-slice prompt)
    session.predict(points=[(30, 36)], labels=[1], box=(18, 24, 42, 48), multimask=False)
    assert used == [model.sam]
    used.clear()
    segment_everything(session, 0, EverythingSettings(points_per_side=4, coarse_per_side=2))
    assert used and all(d is model.sam for d in used)  # segment everything's grid: lone clicks


def test_boxes_and_corrections_give_the_correctors_masks_and_lone_clicks_the_decoders(model_with_corrector):
    model = model_with_corrector
    as_corrector = model.clone()  # a model whose own decoder is the corrector
    as_corrector.sam.load_state_dict(model.corrector().state_dict(), strict=False)
    as_corrector.corrector_change = None
    as_corrector.version += 1
    without = model.clone()
    without.corrector_change = None
    ours, theirs, plain = (Session(m) for m in (model, as_corrector, without))
    for s in (ours, theirs, plain):
        s.set_image(image())
    box = (18, 24, 42, 48)
    np.testing.assert_array_equal(ours.predict(box=box)[0], theirs.predict(box=box)[0])
    assert not np.array_equal(ours.predict(box=box)[0], plain.predict(box=box)[0])  # the corrector is not a no-op
    np.testing.assert_array_equal(ours.predict(points=[(30, 36)], labels=[1])[0],
                                  plain.predict(points=[(30, 36)], labels=[1])[0])


def test_add_corrector_writes_the_start_file_plus_the_change(tiny_model, tmp_path):
    model = tiny_model.clone()  # the same base weights, loaded with the file below
    start = tiny_model.save_adapter(tmp_path / "start.safetensors", include_decoder=True)
    with torch.no_grad():
        tiny_model.sam.load_state_dict(trained_state(tiny_model.sam), strict=False)
    trained = tiny_model.save_adapter(tmp_path / "trained.safetensors", include_decoder=True)
    out = with_corrector(start, trained, rank=64, out=tmp_path / "out.safetensors", note={"what": "a test"})
    model.apply_adapter(out)
    first = read_adapter(start)
    for name, value in first.tensors.items():  # the start's own weights untouched: its lone clicks are the start's
        torch.testing.assert_close(model.sam.state_dict()[name], value)
    for name, value in read_adapter(trained).tensors.items():  # the corrector is (up to fp16) the trained decoder
        if is_decoder_weight(name):
            torch.testing.assert_close(model.corrector().state_dict()[name], value, atol=5e-3, rtol=5e-3)
    assert model.adapter_metadata["corrector"]["what"] == "a test"
    assert model.adapter_metadata["corrector"]["start_sha256"]


def test_tuning_trains_every_prompt_but_a_lone_click_through_the_corrector(monkeypatch, tmp_path):
    """A model with a corrector is tuned as the session answers it: lone clicks through its decoder, corrections
    and boxes through (decoder + change), the gradient reaching the decoder; the result's corrector is the tuned
    decoder + the same change, and its file carries it."""
    from tuning_support import blob_task

    from napari_msa.engine.tuning import step
    from napari_msa.engine.tuning.api import tune

    images, labels = blob_task(3, size=96)
    model = load_model("tiny", device="cpu", image_size=96)
    model.corrector_change = CorrectorChange.between(decoder_state(model.sam), trained_state(model.sam), rank=4)
    pe = model.sam.prompt_encoder
    emb = torch.randn(1, pe.embed_dim, *pe.image_embedding_size)
    corrected = step.CorrectedDecoding(model.sam, model.corrector_change)
    box = np.array([[10.0, 12.0, 60.0, 70.0]])
    low, iou = corrected(emb, None, None, box, False)
    want, _ = decode(model.corrector(), emb, None, None, box, False)
    torch.testing.assert_close(low, want, atol=1e-4, rtol=1e-4)
    low.sum().backward()
    assert model.sam.mask_decoder.mask_tokens.weight.grad.abs().sum() > 0  # the decoder's own weight learns
    model.sam.zero_grad(set_to_none=True)

    answered = []
    real = step.CorrectedDecoding.__call__
    monkeypatch.setattr(step.CorrectedDecoding, "__call__",
                        lambda self, *a, **k: answered.append(a[4]) or real(self, *a, **k))
    result = tune(model, images, labels, steps=6, seed=0, val_fraction=0, lr=3e-3, box_share=0.3,
                  max_correction_rounds=2, batch_size=2, accept_margin=-1.0, blends=(), augment=False,
                  train_decoder=True)
    assert answered and not any(answered)  # corrections and boxes (single masks), never a lone click's three
    tuned = result.model
    name = "mask_decoder.mask_tokens.weight"
    torch.testing.assert_close(tuned.corrector().state_dict()[name],
                               tuned.sam.state_dict()[name] + model.corrector_change.change_of(name))
    saved = read_adapter(result.save(tmp_path / "tuned.safetensors"))
    assert any(k.startswith(PREFIX) for k in saved.tensors)
