import os
from pathlib import Path

import numpy as np
import pytest
import torch
from model_support import randomize_adapters
from segment_anything.modeling.image_encoder import get_rel_pos

from napari_msa import load_model
from napari_msa.engine import AdapterConfig, CheckpointError, Session, build_sam, get_config
from napari_msa.engine.files.checkpoints import resize_rel_pos
from napari_msa.engine.files.formats import read_adapter_metadata


def _save_sam_pth(tmp_path: Path, name="tiny", **kwargs) -> tuple[Path, dict]:
    sam = build_sam(get_config(name, **kwargs))
    with torch.no_grad():  # random, non-zero position tables as in a pretrained SAM
        for n, p in sam.named_parameters():
            if "rel_pos" in n or "pos_embed" in n:
                p.normal_()
    state = sam.state_dict()
    path = tmp_path / "sam_tiny.pth"
    torch.save(state, path)
    return path, state


def test_meta_checkpoint_roundtrip(tmp_path):
    path, state = _save_sam_pth(tmp_path)
    model = load_model("tiny", checkpoint=path, device="cpu")
    own = model.sam.state_dict()
    for key, value in state.items():
        assert torch.equal(own[key], value), key
    assert model.load_report.loaded == len(state)


def test_wrong_architecture_is_named(tmp_path):
    path, _ = _save_sam_pth(tmp_path, "small")
    with pytest.raises(CheckpointError, match=r"small \(embed dim 128, 4 blocks\).*tiny \(embed dim 64, 2 blocks\)"):
        load_model("tiny", checkpoint=path, device="cpu")


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model("tiny", checkpoint=tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"weights": [1, 2, 3]}, bad)
    with pytest.raises(CheckpointError, match="no SAM state dict"):
        load_model("tiny", checkpoint=bad)
    torch.save({"foo.weight": torch.zeros(2)}, bad)
    with pytest.raises(CheckpointError, match="not a SAM checkpoint"):
        load_model("tiny", checkpoint=bad)
    with pytest.raises(CheckpointError, match="needs a SAM checkpoint"):
        load_model("vit_b")


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_code_running_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": _Payload(str(marker))}, evil)
    with pytest.raises(CheckpointError, match="refused"):
        load_model("tiny", checkpoint=evil)
    assert not marker.exists()


def test_msa_reference_checkpoint_loads_adapters(tmp_path):
    ref = build_sam(get_config("tiny"), AdapterConfig(depth=True))
    randomize_adapters(ref)
    state = ref.state_dict()
    assert "image_encoder.blocks.0.Depth_Adapter.D_fc1.weight" in state
    path = tmp_path / "msa_ref.pth"
    torch.save({"epoch": 3, "model": "sam", "state_dict": state, "optimizer": {}, "best_tol": 0.0}, path)

    with_depth = load_model("tiny", checkpoint=path, adapter_config=AdapterConfig(depth=True))
    own = with_depth.sam.state_dict()
    for key in state:
        assert torch.equal(own[key], state[key])

    without_depth = load_model("tiny", checkpoint=path)  # 2D model: depth adapters reported, not silently lost
    assert sorted(without_depth.load_report.skipped) == sorted(k for k in state if "Depth_Adapter" in k)
    assert torch.equal(without_depth.sam.state_dict()["image_encoder.blocks.1.Space_Adapter.D_fc2.weight"],
                       state["image_encoder.blocks.1.Space_Adapter.D_fc2.weight"])


def test_other_image_size_keeps_pretrained_position_tables(tmp_path):
    path, state = _save_sam_pth(tmp_path)  # tiny at 256: grid 16, global block 1 has rel_pos of length 31
    model = load_model("tiny", checkpoint=path, image_size=128)  # grid 8
    own = model.sam.state_dict()
    assert own["image_encoder.pos_embed"].shape == (1, 8, 8, 64)
    assert own["image_encoder.pos_embed"].abs().sum() > 0
    glob = "image_encoder.blocks.1.attn.rel_pos_h"
    assert state[glob].shape[0] == 31 and own[glob].shape[0] == 15
    # equal to what SAM itself computes at run time from the 1024-style table
    assert torch.allclose(get_rel_pos(8, 8, own[glob]), get_rel_pos(8, 8, state[glob]), atol=1e-6)
    assert torch.allclose(own[glob], resize_rel_pos(state[glob], 15))
    win = "image_encoder.blocks.0.attn.rel_pos_h"  # windowed block: unchanged
    assert torch.equal(own[win], state[win])
    assert "image_encoder.pos_embed" in model.load_report.resized and glob in model.load_report.resized
    # pos embed resize is a smooth (bicubic) resample of the original grid
    back = torch.nn.functional.interpolate(state["image_encoder.pos_embed"].permute(0, 3, 1, 2), size=8,
                                           mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    assert torch.allclose(own["image_encoder.pos_embed"], back, atol=1e-5)


def test_adapter_file_roundtrip_gives_same_predictions(tmp_path):
    path, _ = _save_sam_pth(tmp_path)
    tuned = load_model("tiny", checkpoint=path)
    randomize_adapters(tuned.sam)
    out = tuned.save_adapter(tmp_path / "a.safetensors", training={"steps": 5, "dice_after": 0.7})
    meta = read_adapter_metadata(out)
    assert meta["model"]["name"] == "tiny" and meta["training"]["steps"] == 5
    assert meta["base_fingerprint"] == tuned.base_fingerprint and meta["image_size"] == 256
    assert out.stat().st_size < 1_000_000  # adapters only, not the whole model
    assert not list(tmp_path.glob(".*.tmp"))
    assert out.stat().st_mode & 0o644 == 0o644  # readable like any file the user writes, not mkstemp's 0600

    reloaded = load_model("tiny", checkpoint=path, adapter=out)
    image = np.random.default_rng(0).normal(size=(60, 90)).astype(np.float32)
    results = []
    for model in (tuned, reloaded):
        s = Session(model)
        s.set_image(image)
        mask, score = s.predict(points=[(20, 60)], labels=[1])
        results.append((mask, score, s.embedding(0).features))
    assert torch.equal(results[0][2], results[1][2])
    assert np.array_equal(results[0][0], results[1][0]) and results[0][1] == results[1][1]
    plain = Session(load_model("tiny", checkpoint=path))
    plain.set_image(image)
    assert not torch.equal(plain.embedding(0).features, results[0][2])


def test_adapter_mismatches_are_explained(tmp_path):
    path, _ = _save_sam_pth(tmp_path)
    tuned = load_model("tiny", checkpoint=path)
    adapter = tuned.save_adapter(tmp_path / "a.safetensors")
    with pytest.raises(CheckpointError, match="other base weights"):
        load_model("tiny", adapter=adapter)  # random base, not the checkpoint it was tuned on
    with pytest.raises(CheckpointError, match="image size 256.*runs at 128"):
        load_model("tiny", checkpoint=path, adapter=adapter, image_size=128)
    small = load_model("small")
    with pytest.raises(CheckpointError, match="tuned on tiny"):
        small.apply_adapter(adapter)
    with pytest.raises(CheckpointError, match="not a napari-msa adapter|not a safetensors"):
        load_model("tiny", checkpoint=path, adapter=path)
