"""``napari-msa tune``: files in, adapter out, readable errors, and the same command under torchrun."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import torch
from safetensors.torch import load_file
from tuning_support import blob_task

from napari_msa import Session, load_model
from napari_msa.cli import main
from napari_msa.engine.files.formats import read_adapter_metadata

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def task_files(tmp_path):
    images, labels = blob_task(4, size=48)
    image_path, labels_path = tmp_path / "image.tif", tmp_path / "labels.npy"
    tifffile.imwrite(image_path, images)
    np.save(labels_path, labels)
    return image_path, labels_path, images


def test_tune_writes_an_adapter_that_loads_and_reports_dice(task_files, tmp_path, capsys):
    image, labels, images = task_files
    out = tmp_path / "out" / "tuned.safetensors"
    rc = main(["tune", str(image), str(labels), "-o", str(out), "--model", "tiny", "--steps", "4", "--lr", "3e-3",
               "--seed", "1", "--val-fraction", "0.25"])
    assert rc == 0 and out.is_file()
    last = capsys.readouterr().out.strip().splitlines()[-1]
    meta = read_adapter_metadata(out)
    t = meta["training"]
    assert t["steps_done"] == 4 and t["n_val_objects"] == 2 and t["config"]["lr"] == 3e-3 and t["config"]["seed"] == 1
    h = t["held_out"]
    assert f"held-out Dice (1 click) {h['click_before']:.3f} -> {h['click_after']:.3f}" in last
    assert str(out) in last
    torch.manual_seed(1)  # the CLI seeds before building, so the same random base comes back
    model = load_model("tiny", device="cpu", adapter=out)
    session = Session(model)
    session.set_image(images[0])
    assert session.predict(points=[(24, 24)], labels=[1])[0].shape == (48, 48)


def test_last_blocks_builds_a_partial_adapter_with_the_prefix_cache(task_files, tmp_path, capsys):
    image, labels, _ = task_files
    out = tmp_path / "last.safetensors"
    assert main(["-q", "tune", str(image), str(labels), "-o", str(out), "--model", "tiny", "--steps", "2",
                 "--last-blocks", "1", "--checkpoint-blocks"]) == 0
    meta = read_adapter_metadata(out)
    assert meta["adapter_config"]["blocks"] == [1] and meta["training"]["prefix_cache"]
    assert meta["training"]["config"]["checkpoint_blocks"]
    assert all(k.startswith("image_encoder.blocks.1.") for k in load_file(out))


@pytest.mark.parametrize("extra, message", [
    (["--last-blocks", "5"], "--last-blocks must be between 1"),
    (["--steps", "0"], "--steps must be at least 1"),
    (["-o", "x.pth"], "written as .safetensors"),
])
def test_bad_options_give_one_clear_line(task_files, tmp_path, capsys, extra, message):
    image, labels, _ = task_files
    argv = ["tune", str(image), str(labels), "-o", str(tmp_path / "a.safetensors"), "--model", "tiny", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_bad_inputs_give_one_clear_line(task_files, tmp_path, capsys):
    image, labels, images = task_files
    out = str(tmp_path / "a.safetensors")
    assert main(["tune", str(image), "-o", out, "--model", "tiny"]) == 2
    assert "IMAGE LABELS pairs" in capsys.readouterr().err
    assert main(["tune", str(image), str(image), "-o", out, "--model", "tiny"]) == 2
    assert "labels must be integer ids" in capsys.readouterr().err
    np.save(tmp_path / "empty.npy", np.zeros(images.shape, np.int32))
    assert main(["tune", str(image), str(tmp_path / "empty.npy"), "-o", out, "--model", "tiny"]) == 2
    assert "no labelled objects" in capsys.readouterr().err
    np.save(tmp_path / "small.npy", np.zeros((4, 10, 10), np.int32))
    assert main(["tune", str(image), str(tmp_path / "small.npy"), "-o", out, "--model", "tiny"]) == 2
    assert "do not match" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process(task_files, tmp_path):
    """2 gloo processes × 1 slice per step give the weights 1 process × 2 slices per step gives (same seed,
    same samples: turns are numbered over all processes)."""
    from napari_msa.engine.tuning.api import tune

    image, labels, images = task_files
    common = [str(image), str(labels), "--model", "tiny", "--steps", "3", "--lr", "3e-3", "--seed", "3",
              "--val-fraction", "0", "--device", "cpu", "--batch-size", "2"]  # no check: 3 steps are kept
    ddp_out, single_out = tmp_path / "ddp.safetensors", tmp_path / "single.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "napari_msa.cli", "tune", *common, "-o", str(ddp_out)],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("adapter written to") == 1  # rank 0 only
    torch.manual_seed(3)  # as the CLI does before loading
    model = load_model("tiny", device="cpu")
    result = tune(model, images, np.load(labels), steps=3, lr=3e-3, seed=3, val_fraction=0, batch_size=2,
                  slices_per_step=2, patience=0)
    result.save(single_out)
    meta = read_adapter_metadata(ddp_out)
    assert meta["training"]["world_size"] == 2 and meta["training"]["steps_done"] == 3
    ddp, single = load_file(ddp_out), load_file(single_out)
    assert ddp.keys() == single.keys()
    assert max(float((ddp[k] - single[k]).abs().max()) for k in ddp) < 1e-4
    torch.manual_seed(3)
    start = load_model("tiny", device="cpu").sam.state_dict()
    assert max(float((ddp[k] - start[k]).abs().max()) for k in ddp if k in start) > 1e-4  # it did train
    torch.manual_seed(3)
    load_model("tiny", device="cpu", adapter=ddp_out)  # the file loads on the base it was tuned from


def test_last_blocks_on_litemedsam_counts_its_attention_blocks(task_files, tmp_path, capsys):
    """LiteMedSAM (the default model) has 10 adapter blocks: TinyViT's attention blocks."""
    from napari_msa._cli.tune import _load_model
    from napari_msa.cli import build_parser

    image, labels, _ = task_files
    out = str(tmp_path / "a.safetensors")
    assert main(["tune", str(image), str(labels), "-o", out, "--last-blocks", "11"]) == 2
    assert "--last-blocks must be between 1 and the model's 10 adapter blocks" in capsys.readouterr().err
    args = build_parser().parse_args(["tune", str(image), str(labels), "-o", out, "--last-blocks", "2",
                                      "--no-adapter", "--device", "cpu"])
    model = _load_model(args)
    assert model.name == "litemedsam" and model.adapter_config.blocks == (8, 9) and model.adapter_source is None


def test_tuning_starts_from_the_shipped_adapter(task_files, tmp_path, capsys, monkeypatch):
    """'auto' is the model's shipped adapter; --last-blocks keeps it only where it already sits."""
    from napari_msa.engine import catalog

    image, labels, _ = task_files
    shipped = tmp_path / "shipped.safetensors"
    assert main(["-q", "tune", str(image), str(labels), "-o", str(shipped), "--model", "tiny", "--steps", "1",
                 "--last-blocks", "1"]) == 0
    monkeypatch.setitem(catalog.DEFAULT_ADAPTERS, "tiny", shipped)  # as litemedsam_clicks is for litemedsam
    common = ["-q", "tune", str(image), str(labels), "--model", "tiny", "--steps", "1"]
    assert main([*common, "-o", str(tmp_path / "b.safetensors"), "--last-blocks", "2"]) == 2
    err = capsys.readouterr().err
    assert "the shipped shipped.safetensors has them in blocks 1" in err and "--no-adapter" in err
    for extra in (["--last-blocks", "1"], []):
        out = tmp_path / f"from_shipped{len(extra)}.safetensors"
        assert main([*common, "-o", str(out), *extra]) == 0
        assert read_adapter_metadata(out)["adapter_config"]["blocks"] == [1]
    out = tmp_path / "fresh.safetensors"
    assert main([*common, "-o", str(out), "--no-adapter", "--last-blocks", "2"]) == 0
    assert read_adapter_metadata(out)["adapter_config"]["blocks"] == [0, 1]


@pytest.mark.parametrize("move", ["shifted 60 mm", "i and j swapped"])
def test_tune_refuses_labels_that_do_not_lie_on_the_image_grid(tmp_path, capsys, move):
    """Same array shape, another place in the patient (or transposed axes): masks would be learnt from the wrong
    voxels, so nothing is tuned and both grids are named."""
    import nibabel as nib

    from napari_msa.cli import main

    rng = np.random.default_rng(0)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    image = rng.normal(size=(32, 32, 6)).astype(np.float32)
    labels = np.zeros((32, 32, 6), np.uint8)
    labels[8:20, 10:22, 1:5] = 1
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "img.nii.gz")
    moved = affine.copy()
    if move == "shifted 60 mm":
        moved[0, 3] += 60.0
    else:
        moved = moved[:, [1, 0, 2, 3]]
    nib.save(nib.Nifti1Image(labels, moved), tmp_path / "lab_seg.nii.gz")
    out = tmp_path / "a.safetensors"
    code = main(["-q", "tune", str(tmp_path / "img.nii.gz"), str(tmp_path / "lab_seg.nii.gz"), "-o", str(out),
                 "--model", "tiny", "--steps", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "does not lie on img.nii.gz's grid" in err and "resample" in err, err
    assert not out.exists()
    nib.save(nib.Nifti1Image(labels, affine), tmp_path / "lab_seg.nii.gz")  # drawn on the image: accepted
    assert main(["-q", "tune", str(tmp_path / "img.nii.gz"), str(tmp_path / "lab_seg.nii.gz"), "-o", str(out),
                 "--model", "tiny", "--steps", "1"]) == 0
