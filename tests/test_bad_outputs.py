"""Outputs are checked before any model work: nothing created or damaged (issue 10, items 3 and 6)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import tifffile

from napari_msa.cli import main


@pytest.fixture()
def files(tmp_path):
    image = tmp_path / "x.tif"
    tifffile.imwrite(image, np.random.default_rng(0).random((32, 32), dtype=np.float32))
    labels = tmp_path / "labels.tif"
    lab = np.zeros((32, 32), np.uint8)
    lab[4:14, 4:14], lab[18:30, 16:30] = 1, 2
    tifffile.imwrite(labels, lab)
    points = tmp_path / "p.csv"
    with points.open("w", newline="") as f:
        csv.writer(f).writerows([["index", "axis-0", "axis-1"], [0, 10, 10]])
    return tmp_path, image, labels, points


def fingerprint(folder):
    return {p.name: (p.stat().st_mode, p.read_bytes()) for p in sorted(folder.rglob("*")) if p.is_file()}


CASES = [
    # (argv builder, expected message part)
    (lambda d, i, lab, p: ["segment", str(i), "-p", str(p), "-o", str(i), "--model", "demo"], "is also an input"),
    (lambda d, i, lab, p: ["segment", str(i), "-p", str(p), "-o", str(p), "--model", "demo"], "is also an input"),
    (lambda d, i, lab, p: ["segment", str(i), "-p", str(p), "-o", str(d), "--model", "demo"], "is a folder"),
    (lambda d, i, lab, p: ["segment", str(i), "-p", str(p), "-o", str(p / "x.tif"), "--model", "demo"],
     "is a file, so no folder can be made there"),
    (lambda d, i, lab, p: ["segment", str(i), "-p", str(p), "-o", str(d / "ro.tif"), "--model", "demo"],
     "is read-only; it was not replaced"),
    (lambda d, i, lab, p: ["tune", str(i), str(lab), "-o", str(lab), "--model", "demo"],
     "adapters are written as .safetensors"),
    (lambda d, i, lab, p: ["tune", str(i), str(lab), "-o", str(d), "--model", "demo"], "safetensors"),
    (lambda d, i, lab, p: ["embed", str(i), "--cache-dir", str(i), "--model", "demo"], "is also an input"),
    (lambda d, i, lab, p: ["embed", str(i), "--cache-dir", str(p), "--model", "demo"], "is a file, not a folder"),
]


@pytest.mark.parametrize(("build", "message"), CASES)
def test_bad_outputs_are_refused_first_and_nothing_changes(files, capsys, build, message):
    folder, image, labels, points = files
    read_only = folder / "ro.tif"
    tifffile.imwrite(read_only, np.zeros((2, 2), np.uint8))
    read_only.chmod(0o444)
    before = fingerprint(folder)
    assert main(build(folder, image, labels, points)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert fingerprint(folder) == before


def _points(path, rows):
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([["index", "axis-0", "axis-1", "object"], *rows])
    return path


@pytest.mark.parametrize(("rows", "message"), [
    ([[0, 10, 10, 99999999999]], "object ids are whole numbers from 1 to"),
    ([[0, 10, 10, 1.7]], "object ids are whole numbers from 1 to"),
    ([[0, 10, 10, 0]], "object ids are whole numbers from 1 to"),
])
def test_bad_object_ids_are_one_line_errors(files, capsys, rows, message):
    folder, image, _, _ = files
    points = _points(folder / "ids.csv", rows)
    assert main(["segment", str(image), "-p", str(points), "-o", str(folder / "o.tif"), "--model", "demo"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (folder / "o.tif").exists()


def test_an_unknown_device_is_a_one_line_error(files, capsys):
    folder, image, _, points = files
    assert main(["segment", str(image), "-p", str(points), "-o", str(folder / "o.tif"), "--model", "demo",
                 "--device", "banana"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown device 'banana'" in err[0], err


def test_damaged_adapter_files_name_the_file_and_the_problem(tmp_path):
    import json

    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from napari_msa import CheckpointError, load_model

    model = load_model("tiny", device="cpu")
    good = model.save_adapter(tmp_path / "good.safetensors")
    with safe_open(str(good), framework="pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    no_size = dict(meta)
    del no_size["image_size"]
    save_file(tensors, tmp_path / "no_size.safetensors", metadata=no_size)
    with pytest.raises(CheckpointError, match="no_size.safetensors: its adapter metadata is incomplete"):
        load_model("tiny", adapter=tmp_path / "no_size.safetensors", device="cpu")
    key = next(iter(tensors))
    bent = dict(tensors)
    bent[key] = torch.zeros(3, 3)
    save_file(bent, tmp_path / "bent.safetensors", metadata=meta)
    with pytest.raises(CheckpointError, match="bent.safetensors: .* has shape \\(3, 3\\)"):
        model.apply_adapter(tmp_path / "bent.safetensors")
    assert json.loads(meta["model"])["name"] == "tiny"


def test_a_text_file_as_a_safetensors_checkpoint_is_a_one_line_error(files, capsys):
    folder, image, _, points = files
    fake = folder / "model.safetensors"
    fake.write_text("not a model")
    assert main(["segment", str(image), "-p", str(points), "-o", str(folder / "o.tif"), "--model", "demo",
                 "--checkpoint", str(fake)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.safetensors is not a readable safetensors model file" in err[0], err


@pytest.mark.parametrize("value", ["nan", "-1", "1.5"])
def test_an_iou_threshold_outside_0_1_is_refused(files, capsys, value):
    folder, image, _, points = files
    assert main(["segment", str(image), "-p", str(points), "-o", str(folder / "o.tif"), "--model", "demo",
                 "--iou-threshold", value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--iou-threshold is an overlap between 0 and 1" in err[0], err


def test_swapped_image_and_labels_are_named_as_a_possible_swap(tmp_path, capsys):
    rng = np.random.default_rng(0)
    ct = rng.normal(0, 300, (2, 120, 120)).astype(np.int16)  # CT-like values (negative HU) as "labels"
    tifffile.imwrite(tmp_path / "ct.tif", ct)
    tifffile.imwrite(tmp_path / "float.tif", ct.astype(np.float32))
    tifffile.imwrite(tmp_path / "many.tif", rng.integers(0, 60_000, (2, 120, 120)).astype(np.int32))
    for image, labels in (("float.tif", "float.tif"), ("float.tif", "ct.tif"), ("float.tif", "many.tif")):
        assert main(["tune", str(tmp_path / image), str(tmp_path / labels), "-o", str(tmp_path / "a.safetensors"),
                     "--model", "demo", "--steps", "1"]) == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]  # after the (empty) progress bar
        assert "error:" in last and ("swapped" in last or "rather than labels" in last), last
    assert not (tmp_path / "a.safetensors").exists()
