"""Bad input and faults (issue 10): every case, its input, the one-line message, exit status 2, nothing harmed.

``CASES`` is the table: each row runs the CLI in-process (``--model demo`` where a model is needed; most rows
are refused before any model is loaded) in a folder of prepared files, and checks exit status 2, exactly one
line on stderr (``napari-msa COMMAND: error: ...`` holding the expected text) and that no file in the folder
was created, changed or lost its mode. Cases that are not refusals (a replaced file keeps its mode, temp files
go on SIGTERM, NaN pixels are warned about once, ``-q``) and the widget cases follow the table. Cases tested
elsewhere are named in ``ELSEWHERE``.
"""

from __future__ import annotations

import csv
import os
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tifffile
import torch

from napari_msa.cli import main
from napari_msa.engine import DEMO_MODEL_FILE

DEMO = str(DEMO_MODEL_FILE)


class _Payload:
    """A pickle that would create ``marker`` if it ever ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _write_csv(path, rows) -> None:
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)


def _rectangle(r0, c0, r1, c1):
    return [[r0, c0], [r0, c1], [r1, c1], [r1, c0]]


@pytest.fixture(scope="module")
def template(tmp_path_factory, one_torch_thread):
    """Every file the table's commands read, made once; each test works on its own copy."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from napari_msa import load_model
    from napari_msa.engine import build_sam, get_config

    d = tmp_path_factory.mktemp("bad_inputs")
    rng = np.random.default_rng(0)
    image = rng.random((32, 32), dtype=np.float32)
    tifffile.imwrite(d / "x.tif", image)
    np.save(d / "vol.npy", rng.random((4, 20, 20), dtype=np.float32))
    labels = np.zeros((32, 32), np.uint8)
    labels[4:14, 4:14], labels[18:30, 16:30] = 1, 2
    tifffile.imwrite(d / "labels.tif", labels)
    ct = rng.normal(0, 300, (32, 32)).astype(np.int16)  # CT values (negative HU) given as labels
    tifffile.imwrite(d / "ct.tif", ct)
    tifffile.imwrite(d / "many_ids.tif", rng.integers(0, 60_000, (2, 120, 120)).astype(np.int32))
    tifffile.imwrite(d / "vol_float.tif", rng.random((2, 120, 120), dtype=np.float32))

    _write_csv(d / "p.csv", [["index", "axis-0", "axis-1"], [0, 10, 10]])
    _write_csv(d / "p3.csv", [["index", "axis-0", "axis-1", "axis-2"], [0, 0, 10, 10]])
    _write_csv(d / "far.csv", [["index", "axis-0", "axis-1"], [0, 10, 500]])
    _write_csv(d / "nan.csv", [["index", "axis-0", "axis-1"], [0, "nan", 10]])
    _write_csv(d / "inf.csv", [["index", "axis-0", "axis-1"], [0, 10, "inf"]])
    (d / "short_row.csv").write_text("index,axis-0,axis-1\n0,10\n")
    (d / "word.csv").write_text("index,axis-0,axis-1\n0,ten,10\n")
    _write_csv(d / "maybe.csv", [["index", "axis-0", "axis-1", "positive"], [0, 10, 10, "maybe"]])
    (d / "binary.csv").write_bytes(bytes(range(128, 256)) * 4)
    for name, obj in (("big_id", 99999999999), ("frac_id", 1.7), ("zero_id", 0), ("neg_id", -3), ("word_id", "a")):
        _write_csv(d / f"{name}.csv", [["index", "axis-0", "axis-1", "object"], [0, 10, 10, obj]])
    vertices = [[0, "rectangle", i, *v] for i, v in enumerate(_rectangle(2, 2, 9, 9))]
    vertices[0][3] = "nan"
    _write_csv(d / "nan_box.csv", [["index", "shape-type", "vertex-index", "axis-0", "axis-1"], *vertices])

    (d / "text.pth").write_text("hello, I am not a checkpoint\n")
    (d / "empty.pth").write_bytes(b"")
    torch.save({"state_dict": _Payload(str(d / "pwned"))}, d / "evil.pth")
    torch.save(build_sam(get_config("tiny")).state_dict(), d / "sam_tiny.pth")  # a SAM ViT .pth
    (d / "text.safetensors").write_text("not a model\n")

    adapter = load_model("demo", device="cpu").save_adapter(d / "demo_adapter.safetensors")
    with safe_open(str(adapter), framework="pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, d / "no_size.safetensors", metadata={k: v for k, v in meta.items() if k != "image_size"})
    bent = dict(tensors)
    bent[next(iter(bent))] = torch.zeros(3, 3)
    save_file(bent, d / "bent.safetensors", metadata=meta)
    broken_json = dict(meta, adapter_config="{not json")
    save_file(tensors, d / "bad_meta.safetensors", metadata=broken_json)

    for folder in ("folder.tif", "folder.csv", "folder.pth", "folder.safetensors", "folder.png", "outdir"):
        (d / folder).mkdir()
    for name in ("ro.tif", "ro.safetensors", "ro.png"):
        (d / name).write_bytes(b"keep me")
        (d / name).chmod(0o444)
    return d


@pytest.fixture()
def folder(template, tmp_path, monkeypatch):
    d = tmp_path / "files"
    shutil.copytree(template, d, symlinks=True)
    monkeypatch.chdir(d)
    return d


def fingerprint(folder) -> dict:
    """Every path under ``folder`` with its kind, mode and bytes: any created, changed or re-moded file shows."""
    out = {}
    for p in sorted(folder.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(folder))] = (st.st_mode, p.read_bytes() if p.is_file() and not p.is_symlink() else None)
    return out


SEG = "segment x.tif -p p.csv -o out.tif --model demo"

# (id, what the issue says, command line run in the prepared folder, text the one error line holds)
CASES = [
    # 2. NaN/Inf: a non-finite CT window is refused (NaN pixels themselves are handled: see below)
    ("ct-width-nan", "--ct-width nan", f"{SEG} --normalize ct --ct-width nan", "finite level and a positive width"),
    ("ct-level-inf", "--ct-level inf", f"{SEG} --normalize ct --ct-level inf", "finite level and a positive width"),
    # 3. output = input destroys the input
    ("out-is-image", "segment x.tif -o x.tif", "segment x.tif -p p.csv -o x.tif --model demo", "is also an input"),
    ("out-is-points", "-o the points file", "segment x.tif -p p.csv -o p.csv --model demo", "is also an input"),
    ("cache-is-image", "embed --cache-dir the image", "embed x.tif --cache-dir x.tif --model demo",
     "is also an input"),
    ("tune-out-is-labels", "tune -o the labels file", "tune x.tif labels.tif -o labels.tif --model demo",
     "adapters are written as .safetensors"),
    # 4. prompts: wrong dimension, non-finite, outside
    ("3d-points-2d-image", "a 3D points CSV on a 2D image", "segment x.tif -p p3.csv -o out.tif --model demo",
     "the points are 3D (axis-0, axis-1, axis-2) but the image is 2D"),
    ("2d-points-3d-image", "2D points on a volume", "segment vol.npy -p p.csv -o out.tif --model demo",
     "the image is 3D so points need columns axis-0, axis-1, axis-2"),
    ("nan-point", "NaN coordinates in the CSV", "segment x.tif -p nan.csv -o out.tif --model demo",
     "nan.csv line 2: 'nan' in column 'axis-0' is not a finite number"),
    ("inf-point", "Inf coordinates in the CSV", "segment x.tif -p inf.csv -o out.tif --model demo",
     "'inf' in column 'axis-1' is not a finite number"),
    ("nan-box", "NaN box corner", "segment x.tif -b nan_box.csv -o out.tif --model demo",
     "nan_box.csv line 2: 'nan' in column 'axis-0' is not a finite number"),
    ("point-outside", "a point outside the image", "segment x.tif -p far.csv -o out.tif --model demo",
     "lies outside the image of shape (32, 32)"),
    # 5. tuning that diverges writes nothing
    ("tune-diverges", "--lr 1e30 --val-fraction 0",
     "-q tune x.tif labels.tif -o a.safetensors --model demo --lr 1e30 --val-fraction 0 --steps 3",
     "lower the learning rate"),
    # 6. every output checked before any model work
    ("out-is-folder", "segment -o a folder", "segment x.tif -p p.csv -o outdir --model demo", "is a folder"),
    ("out-under-file", "segment -o file/x.tif", "segment x.tif -p p.csv -o p.csv/x.tif --model demo",
     "is a file, so no folder can be made there"),
    ("out-read-only", "segment -o a 0444 file", "segment x.tif -p p.csv -o ro.tif --model demo",
     "is read-only; it was not replaced"),
    ("tune-out-read-only", "tune -o a 0444 adapter", "tune x.tif labels.tif -o ro.safetensors --model demo",
     "is read-only; it was not replaced"),
    ("tune-out-folder", "tune -o a folder", "tune x.tif labels.tif -o folder.safetensors --model demo",
     "is a folder"),
    ("cache-is-file", "embed --cache-dir a file", "embed x.tif --cache-dir p.csv --model demo",
     "is a file, not a folder"),
    ("shot-folder", "demo --screenshot a folder", "demo --screenshot folder.png", "is a folder"),
    ("shot-read-only", "demo --screenshot a 0444 file", "demo --screenshot ro.png", "is read-only"),
    # 7. tracebacks for user errors
    ("id-too-big", "object id 99999999999", "segment x.tif -p big_id.csv -o out.tif --model demo",
     "object ids are whole numbers from 1 to 4294967295"),
    ("id-fraction", "object id 1.7", "segment x.tif -p frac_id.csv -o out.tif --model demo",
     "object ids are whole numbers from 1 to"),
    ("id-zero", "object id 0", "segment x.tif -p zero_id.csv -o out.tif --model demo",
     "object ids are whole numbers from 1 to"),
    ("id-negative", "object id -3", "segment x.tif -p neg_id.csv -o out.tif --model demo",
     "object ids are whole numbers from 1 to"),
    ("id-word", "object id 'a'", "segment x.tif -p word_id.csv -o out.tif --model demo",
     "object ids are whole numbers from 1 to"),
    ("csv-short-row", "a CSV row with a missing field", "segment x.tif -p short_row.csv -o out.tif --model demo",
     "short_row.csv line 2: no value in column 'axis-1'"),
    ("csv-word", "a word where a number goes", "segment x.tif -p word.csv -o out.tif --model demo",
     "'ten' in column 'axis-0' is not a number"),
    ("csv-positive-word", "'positive' that is neither 1/0 nor true/false",
     "segment x.tif -p maybe.csv -o out.tif --model demo", "'positive' must be 1/0 or true/false, got 'maybe'"),
    ("csv-binary", "a binary file as -p", "segment x.tif -p binary.csv -o out.tif --model demo",
     "binary.csv is not a text CSV file"),
    ("device-banana", "--device banana", f"{SEG} --device banana",
     "--device banana: choose auto, cpu, cuda, cuda:N or mps"),
    ("vit-pth-default-model", "--checkpoint x.pth without --model",
     "segment x.tif -p p.csv -o out.tif --checkpoint sam_tiny.pth",
     "sam_tiny.pth is a SAM ViT checkpoint (tiny (embed dim 64, 2 blocks)), but the model is litemedsam"),
    ("adapter-no-size", "adapter metadata without image_size", f"{SEG} --adapter no_size.safetensors",
     "no_size.safetensors: its adapter metadata is incomplete or damaged"),
    ("adapter-bad-json", "adapter metadata that is not JSON", f"{SEG} --adapter bad_meta.safetensors",
     "bad_meta.safetensors: its adapter metadata is incomplete or damaged"),
    ("adapter-bent", "an adapter tensor of the wrong shape", f"{SEG} --adapter bent.safetensors",
     "bent.safetensors: '"),
    ("adapter-not-adapter", "a model file as --adapter", f"{SEG} --adapter {DEMO}",
     "is not a napari-msa adapter"),
    ("text-pth", "a text file as .pth", "segment x.tif -p p.csv -o out.tif --model vit_b --checkpoint text.pth",
     "text.pth is not a readable PyTorch checkpoint (it is a text file)"),
    ("empty-pth", "a 0-byte .pth", "segment x.tif -p p.csv -o out.tif --model vit_b --checkpoint empty.pth",
     "empty.pth is not a readable PyTorch checkpoint (it is empty)"),
    ("code-pth", "a checkpoint pickle with code", "segment x.tif -p p.csv -o out.tif --model vit_b "
     "--checkpoint evil.pth", "evil.pth was refused: loading it would run code (posix.system)"),
    ("text-safetensors", "a text file as a .safetensors checkpoint",
     "segment x.tif -p p.csv -o out.tif --checkpoint text.safetensors",
     "text.safetensors is not a readable safetensors model file"),
    # 8. options and files
    ("iou-nan", "--iou-threshold nan", f"{SEG} --iou-threshold nan", "--iou-threshold is an overlap between 0 and"),
    ("iou-negative", "--iou-threshold -1", f"{SEG} --iou-threshold -1", "--iou-threshold is an overlap between 0 and"),
    ("iou-above-1", "--iou-threshold 1.5", f"{SEG} --iou-threshold 1.5", "--iou-threshold is an overlap between 0 and"),
    ("last-blocks-99", "--last-blocks 99 (LiteMedSAM)", "tune x.tif labels.tif -o a.safetensors --last-blocks 99",
     "--last-blocks must be between 1 and the model's 10 adapter blocks"),
    ("last-blocks-99-demo", "--last-blocks 99 (demo)",
     "tune x.tif labels.tif -o a.safetensors --model demo --last-blocks 99",
     "--last-blocks must be between 1 and the model's 4 adapter blocks"),
    ("last-blocks-0", "--last-blocks 0", "tune x.tif labels.tif -o a.safetensors --model demo --last-blocks 0",
     "--last-blocks must be at least 1, got 0"),
    ("model-vs-model-file", "--model with a .safetensors checkpoint",
     f"segment x.tif -p p.csv -o out.tif --model vit_b --checkpoint {DEMO}",
     "--model vit_b clashes with --checkpoint demo_sam.safetensors: a napari-msa model file brings its own "
     "architecture (small); leave out --model"),
    ("demo-with-pth", "--model demo with a .pth checkpoint",
     "segment x.tif -p p.csv -o out.tif --model demo --checkpoint sam_tiny.pth",
     "--model demo is the bundled demo model and takes no --checkpoint"),
    ("image-folder", "a folder as the image", "segment folder.tif -p p.csv -o out.tif --model demo", "folder"),
    ("points-folder", "a folder as -p", "segment x.tif -p folder.csv -o out.tif --model demo",
     "points folder.csv is a folder, not a file"),
    ("boxes-folder", "a folder as -b", "segment x.tif -b folder.csv -o out.tif --model demo",
     "boxes folder.csv is a folder, not a file"),
    ("labels-folder", "a folder as tune's labels", "tune x.tif folder.tif -o a.safetensors --model demo",
     "labels folder.tif is a folder, not a file"),
    ("checkpoint-folder", "a folder as --checkpoint",
     "segment x.tif -p p.csv -o out.tif --model vit_b --checkpoint folder.pth",
     "checkpoint folder.pth is a folder, not a file"),
    ("adapter-folder", "a folder as --adapter", f"{SEG} --adapter folder.safetensors",
     "adapter folder.safetensors is a folder, not a file"),
    ("missing-image", "a missing image", "segment nope.tif -p p.csv -o out.tif --model demo",
     "file not found: nope.tif"),
    ("swap-float-labels", "image given as labels (float)", "tune vol_float.tif vol_float.tif -o a.safetensors "
     "--model demo", "labels must be integer ids"),
    ("swap-negative", "CT values as labels (negative)", "tune x.tif ct.tif -o a.safetensors --model demo",
     "were the image and the labels swapped?"),
    ("swap-many-ids", "labels with > 10,000 ids", "tune vol_float.tif many_ids.tif -o a.safetensors --model demo",
     "is this an image rather than labels?"),
]

ELSEWHERE = {
    "1. adapter replaced under the same name, '../' in an adapter path, truncated cache file":
        "tests/test_cache_and_nonfinite.py (API); a 0-byte cache file through the CLI: below",
    "2. NaN/Inf pixels: window ignores them, low end, one warning": "tests/test_cache_and_nonfinite.py; CLI below",
    "4. non-finite points/boxes through the API":
        "tests/test_cache_and_nonfinite.py::test_non_finite_prompts_are_refused",
    "5. diverging tuning keeps the model": "tests/test_tuning.py::test_a_diverging_run_stops_with_a_clear_error_and_"
                                           "keeps_the_model",
    "boxes: polygons, tilted, off-image, wrong slice": "tests/test_cli_boxes.py::test_bad_boxes_give_one_clear_line",
    "tune: empty labels, shape mismatch, odd file count": "tests/test_tune_cli.py::test_bad_inputs_give_one_clear_line",
    "widget: a point outside the image": "tests/test_segment_widget.py::test_a_point_outside_the_image_is_ignored_"
                                         "once_and_the_others_still_segment",
}


@pytest.mark.parametrize(("case", "issue", "argv", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_nothing_is_harmed(folder, capsys, case, issue, argv, message):
    before = fingerprint(folder)
    args = shlex.split(argv)
    command = next(a for a in args if not a.startswith("-"))
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, (issue, err)
    assert len(err) == 1 and err[0].startswith(f"napari-msa {command}: error: "), (issue, err)
    assert message in err[0], (issue, err[0])
    assert fingerprint(folder) == before, issue  # nothing created, changed or re-moded
    assert not (folder / "pwned").exists()  # the pickle's code never ran


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_an_unwritable_output_folder_is_refused_first(folder, capsys):
    locked = folder / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        before = fingerprint(folder)
        assert main(["segment", "x.tif", "-p", "p.csv", "-o", "locked/out.tif", "--model", "demo"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "folder locked is not writable" in err[0], err
        assert fingerprint(folder) == before
    finally:
        locked.chmod(0o755)


# -------------------------------------------------------------------------------------------- files
def _segment(out: str, *extra: str) -> int:
    return main(["-q", "segment", "x.tif", "-p", "p.csv", "-o", out, "--model", "demo", *extra])


def test_replacing_an_output_keeps_its_mode_and_writes_through_a_symlink(folder, capsys):
    private = folder / "private.tif"
    private.write_bytes(b"old")
    private.chmod(0o600)
    assert _segment("private.tif") == 0
    assert oct(private.stat().st_mode & 0o777) == oct(0o600)
    assert tifffile.imread(private).shape == (32, 32)

    target = folder / "outdir" / "real.tif"
    target.write_bytes(b"old")
    target.chmod(0o640)
    (folder / "link.tif").symlink_to("outdir/real.tif")
    assert _segment("link.tif") == 0
    assert (folder / "link.tif").is_symlink()  # still a link, its target holds the labels
    assert tifffile.imread(target).shape == (32, 32) and oct(target.stat().st_mode & 0o777) == oct(0o640)
    assert not list(folder.rglob("*.tmp"))
    assert capsys.readouterr().err == ""


def test_the_engine_refuses_to_replace_a_read_only_file(tmp_path):
    from napari_msa.engine.files.checkpoints import atomic_write

    ro = tmp_path / "ro.bin"
    ro.write_bytes(b"keep")
    ro.chmod(0o444)
    with pytest.raises(PermissionError, match="is read-only; it was not replaced"):
        atomic_write(ro, lambda tmp: open(tmp, "wb").write(b"new"))
    assert ro.read_bytes() == b"keep" and not list(tmp_path.glob(".*.tmp"))


_KILLED_WRITE = textwrap.dedent("""
    import os, signal, sys, time
    from napari_msa.engine.files.checkpoints import atomic_write

    def write(tmp):
        open(tmp, "wb").write(b"half")
        os.kill(os.getpid(), getattr(signal, sys.argv[2]))
        time.sleep(30)

    atomic_write(sys.argv[1], write)
""")


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_a_killed_write_keeps_the_old_file_and_leaves_no_temp_file_behind(tmp_path, sig):
    from napari_msa.engine.files.checkpoints import atomic_write

    path = tmp_path / "adapter.safetensors"
    path.write_bytes(b"old")
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITE, str(path), sig], capture_output=True, timeout=120)
    assert proc.returncode == -getattr(signal, sig)
    assert path.read_bytes() == b"old"
    temps = list(tmp_path.glob(".*.tmp"))
    if sig == "SIGTERM":
        assert temps == []  # removed by the write's SIGTERM handler before the process ended
    else:
        assert len(temps) == 1  # SIGKILL cannot be caught ...
        atomic_write(path, lambda tmp: open(tmp, "wb").write(b"new"))  # ... the next write removes it
        assert path.read_bytes() == b"new" and not list(tmp_path.glob(".*.tmp"))


def test_a_live_writers_temp_file_is_left_alone(tmp_path):
    from napari_msa.engine.files.checkpoints import atomic_write

    path = tmp_path / "a.bin"
    live = tmp_path / f".a.bin.napari-msa-tmp.{os.getppid()}.abcdefgh.tmp"  # pytest's runner is alive
    live.write_bytes(b"")
    other = tmp_path / ".a.bin.1.tif.napari-msa-tmp.99999999.abcdefgh.tmp"  # another file's temp, not a.bin's
    other.write_bytes(b"")
    atomic_write(path, lambda tmp: open(tmp, "wb").write(b"x"))
    assert live.exists() and other.exists()


def test_files_beside_the_output_that_only_look_like_temps_are_never_removed(tmp_path):
    """The user's '.out.tif.backup__.tmp' or '.out.tif.99999.precious.tmp' are not ours: only a file with our
    mark, a dead writer's pid and mkstemp's characters is removed as a stale temp."""
    from napari_msa.engine.files.checkpoints import atomic_write

    path = tmp_path / "out.tif"
    users = [".out.tif.backup__.tmp", ".out.tif.99999.precious.tmp", ".out.tif.99999999.abcdefgh.tmp",
             ".out.tif.napari-msa-tmp.99999999.abcdefgh.tmp.keep"]
    for name in users:
        (tmp_path / name).write_bytes(b"precious")
    (tmp_path / ".out.tif.napari-msa-tmp.99999998.abcdefgh.tmp").mkdir()  # a folder: not a file we wrote
    stale = tmp_path / ".out.tif.napari-msa-tmp.99999999.abcdefgh.tmp"  # ours, from a killed writer
    stale.write_bytes(b"half")
    atomic_write(path, lambda tmp: open(tmp, "wb").write(b"x"))
    assert not stale.exists()
    assert all((tmp_path / name).read_bytes() == b"precious" for name in users)
    assert (tmp_path / ".out.tif.napari-msa-tmp.99999998.abcdefgh.tmp").is_dir()


# ------------------------------------------------------------------------------- not refusals
def test_quiet_means_no_output_before_or_after_the_command(folder, capsys):
    assert main(["-q", "segment", "x.tif", "-p", "p.csv", "-o", "a.tif", "--model", "demo"]) == 0
    assert main(["segment", "x.tif", "-p", "p.csv", "-o", "b.tif", "--model", "demo", "-q"]) == 0
    assert main(["embed", "x.tif", "--cache-dir", "cache", "--model", "demo", "--quiet"]) == 0
    assert main(["tune", "x.tif", "labels.tif", "-o", "t.safetensors", "--model", "demo", "--steps", "1", "-q"]) == 0
    out = capsys.readouterr()
    assert out.err == "" and out.out == ""
    assert main(["segment", "x.tif", "-p", "p.csv", "-o", "c.tif", "--model", "demo"]) == 0
    assert "wrote c.tif" in capsys.readouterr().err  # without -q the summary is there


def test_nan_pixels_segment_like_the_clean_image_with_one_warning_line(folder, capsys):
    rows, cols = np.ogrid[:48, :64]
    blob = ((rows - 20) / 9) ** 2 + ((cols - 40) / 14) ** 2 <= 1
    image = blob.astype(np.float32) + np.random.default_rng(1).normal(0, 0.1, blob.shape).astype(np.float32)
    tifffile.imwrite("clean.tif", image)
    dirty = image.copy()
    dirty[0, 0], dirty[5, 60], dirty[45, 3] = np.nan, np.inf, -np.inf
    tifffile.imwrite("dirty.tif", dirty)
    box = [[0, "rectangle", i, *v] for i, v in enumerate(_rectangle(10, 25, 30, 55))]
    _write_csv(folder / "box.csv", [["index", "shape-type", "vertex-index", "axis-0", "axis-1"], *box])
    assert main(["segment", "clean.tif", "-b", "box.csv", "-o", "clean_out.tif", "--model", "demo", "-q"]) == 0
    capsys.readouterr()
    assert main(["segment", "dirty.tif", "-b", "box.csv", "-o", "dirty_out.tif", "--model", "demo", "-q"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("napari-msa segment: warning: ") and "3 non-finite pixels" in err[0]
    clean, dirty_mask = tifffile.imread("clean_out.tif") > 0, tifffile.imread("dirty_out.tif") > 0
    assert 2 * (clean & blob).sum() / (clean.sum() + blob.sum()) > 0.85  # the blob, not black or everything
    assert (clean != dirty_mask).mean() < 0.01


def test_an_empty_cache_file_is_recomputed_with_one_warning_line(folder, capsys):
    assert main(["-q", "embed", "vol.npy", "--cache-dir", "cache", "--model", "demo"]) == 0
    files = sorted((folder / "cache").rglob("z*.pt"))
    assert len(files) == 4
    size = files[1].stat().st_size
    files[1].write_bytes(b"")  # a write killed before anything was in it, from an older version
    assert main(["-q", "embed", "vol.npy", "--cache-dir", "cache", "--model", "demo"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unreadable" in err[0] and "recomputing" in err[0], err
    assert files[1].stat().st_size == size


def test_a_model_file_alone_names_its_architecture_and_loads(folder, capsys):
    """The positive side of the --model clash row: without --model the file's own architecture is used."""
    assert main(["segment", "x.tif", "-p", "p.csv", "-o", "out.tif", "--checkpoint", DEMO]) == 0
    assert "small @ 256px" in capsys.readouterr().err
    assert tifffile.imread("out.tif").any()


# ------------------------------------------------------------------------------------- widgets
@pytest.mark.gui
def test_widget_nan_image_layer_is_told_once_and_segments_like_the_clean_image(make_napari_viewer, qtbot):
    from segment_support import notification_count, notifications_since, wait_idle

    from napari_msa import Session, load_model
    from napari_msa._widgets._hub import hub_for

    image = np.zeros((64, 64), np.float32)
    image[16:48, 20:44] = 1.0
    dirty = image.copy()
    dirty[0, 0], dirty[63, 63] = np.nan, np.inf
    viewer = make_napari_viewer()
    viewer.add_image(dirty, name="img")
    _, widget = viewer.window.add_plugin_dock_widget("napari-msa", "Segment (MSA)")
    torch.manual_seed(0)
    model = load_model("tiny")
    start = notification_count()
    hub_for(viewer).set_model(model)  # the widget may start embedding the shown slice right away
    wait_idle(qtbot, widget)
    widget.layers.points().add([32, 32])
    wait_idle(qtbot, widget)
    widget.layers.points().add([20, 30])  # more clicks on the same image: not told again
    wait_idle(qtbot, widget)
    told = [m for m in notifications_since(start) if "non-finite" in m]
    assert len(told) == 1 and "2 non-finite pixels" in told[0], notifications_since(start)
    clean = Session(model)
    clean.set_image(image)
    expected, _ = clean.predict(points=[(32, 32), (20, 30)], labels=[1, 1])
    preview = viewer.layers["img labels"].data == 1
    assert (preview != expected).mean() < 0.01
    widget.jobs.prefetcher.stop()
    wait_idle(qtbot, widget)


@pytest.mark.gui
def test_widget_corrupt_adapter_file_is_told_and_the_model_and_labels_stay(make_napari_viewer, qtbot, tmp_path):
    from segment_support import notification_count, notifications_since, wait_idle

    from napari_msa import load_model
    from napari_msa._widgets._hub import hub_for

    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).random((64, 64), dtype=np.float32), name="img")
    painted = np.zeros((64, 64), np.uint8)
    painted[5:15, 5:15] = 3
    labels = viewer.add_labels(painted.copy(), name="img labels")
    _, widget = viewer.window.add_plugin_dock_widget("napari-msa", "Segment (MSA)")
    model = load_model("tiny")
    hub_for(viewer).set_model(model)
    wait_idle(qtbot, widget)
    for name, content in (("text.safetensors", b"not an adapter\n"), ("empty.safetensors", b""),
                          ("cut.safetensors", b"\xff\x00\x00\x00\x00\x00\x00\x00{\"a\"")):
        corrupt = tmp_path / name
        corrupt.write_bytes(content)
        widget.model_panel.adapter.edit.setText(str(corrupt))
        start = notification_count()
        widget.model_panel.load_button.click()
        wait_idle(qtbot, widget, timeout=60_000)
        told = notifications_since(start)
        assert any(name in m for m in told), told
        assert hub_for(viewer).model is model  # the working model stays
        assert widget.jobs.session.model is model
        np.testing.assert_array_equal(labels.data, painted)  # labels untouched
    widget.jobs.prefetcher.stop()
    wait_idle(qtbot, widget)


@pytest.mark.parametrize("kind", ["fifo", "link to /dev/null"])
def test_an_output_that_is_a_pipe_or_a_device_is_refused_and_left_in_place(tmp_path, kind):
    import stat

    from napari_msa.cli import main
    from napari_msa.engine.files.checkpoints import atomic_write

    out = tmp_path / "out.tif"
    if kind == "fifo":
        os.mkfifo(out)
    else:
        out.symlink_to("/dev/null")
    np.save(tmp_path / "x.npy", np.zeros((16, 16), np.float32))
    assert main(["-q", "segment", str(tmp_path / "x.npy"), "--everything", "-o", str(out), "--model", "tiny"]) == 2
    with pytest.raises(OSError, match="not a regular file"):
        atomic_write(out, lambda tmp: open(tmp, "wb").write(b"x"))
    mode = os.stat(out).st_mode
    assert stat.S_ISFIFO(mode) if kind == "fifo" else (out.is_symlink() and stat.S_ISCHR(mode))
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_ctrl_c_stops_tuning_leaves_the_existing_adapter_and_exits_130(tmp_path):
    """SIGINT (Ctrl+C in the terminal) while tuning: the run stops, the adapter file that was there is unchanged,
    exit status 130. (A shell's background job has SIGINT ignored by the shell itself; that is left as it is.)"""
    import tifffile

    from napari_msa.demo.phantoms import phantom_volume

    image, labels, _ = phantom_volume(1234, shape=(6, 96, 96))
    tifffile.imwrite(tmp_path / "v.tif", image)
    tifffile.imwrite(tmp_path / "l.tif", labels)
    out = tmp_path / "adapter.safetensors"
    out.write_bytes(b"the adapter from yesterday")
    proc = subprocess.Popen([sys.executable, "-m", "napari_msa.cli", "tune", str(tmp_path / "v.tif"),
                             str(tmp_path / "l.tif"), "-o", str(out), "--model", "demo", "--steps", "5000"],
                            stderr=subprocess.PIPE, text=True, preexec_fn=lambda: signal.signal(signal.SIGINT,
                                                                                               signal.SIG_DFL))
    seen = ""
    while "step" not in seen:  # tuning has started (tqdm's bar)
        chunk = proc.stderr.read(64)
        assert chunk, f"tune ended before it started: {seen[-2000:]}"
        seen += chunk
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, (seen + rest)[-2000:]
    assert "interrupted" in rest
    assert out.read_bytes() == b"the adapter from yesterday"
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_fifo_and_broken_links_in_a_dicom_folder_are_skipped_not_waited_on(tmp_path):
    """A named pipe in a series folder used to hang the reader forever; it (and dangling links, link loops) is
    skipped with a warning, in a subprocess with a time limit so a regression fails instead of hanging."""
    from medical_io_files import write_series

    folder = tmp_path / "series"
    write_series(folder, n=3)
    os.mkfifo(folder / "pipe")
    (folder / "dangling").symlink_to(tmp_path / "nowhere")
    (folder / "loop").symlink_to(folder / "loop")
    code = ("import sys, warnings; from napari_msa.medical_io import read_medical\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    (image,) = read_medical(sys.argv[1])\n"
            "print(image.data.shape, sum('not a regular file' in str(x.message) for x in w))\n")
    proc = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-1] == "3" and proc.stdout.startswith("(3,")
    from napari_msa.medical_io.dicom import folder_has_dicom, has_dicom_marker

    assert not has_dicom_marker(folder / "pipe") and folder_has_dicom(folder)


def test_a_dicom_slice_without_its_preamble_is_read_not_dropped(tmp_path):
    import warnings

    from medical_io_files import write_series

    from napari_msa.medical_io import read_medical

    files = write_series(tmp_path / "series", n=5)
    files[2].write_bytes(files[2].read_bytes()[132:])  # no 128-byte preamble and no 'DICM'
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (image,) = read_medical(tmp_path / "series")
    assert image.data.shape[0] == 5  # no gap where that slice was
    assert any("no DICOM preamble" in str(w.message) for w in caught)


def test_a_nii_gz_whose_gzip_check_fails_is_refused(tmp_path, capsys):
    import nibabel as nib

    from napari_msa.medical_io import MedicalIOError, read_medical

    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((16, 16, 4)).astype(np.float32), np.eye(4)), path)
    raw = bytearray(path.read_bytes())
    raw[-8] ^= 0xFF  # the CRC32 in the gzip trailer: the voxels nibabel reads are unchanged, the check fails
    path.write_bytes(bytes(raw))
    with pytest.raises(MedicalIOError, match="damaged"):
        read_medical(path)
    assert main(["-q", "segment", str(path), "--everything", "-o", str(tmp_path / "o.tif"), "--model", "tiny"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "scan.nii.gz is damaged" in err[0]


def test_a_5d_nifti_with_singleton_axes_is_read_as_its_volume(tmp_path):
    import nibabel as nib

    from napari_msa.medical_io import read_medical

    volume = np.random.default_rng(0).random((12, 10, 4)).astype(np.float32)
    nib.save(nib.Nifti1Image(volume[..., None, None], np.eye(4)), tmp_path / "five.nii.gz")
    (image,) = read_medical(tmp_path / "five.nii.gz")
    assert image.data.shape == (4, 10, 12)  # display order (Z, Y, X)


def test_a_closed_stderr_or_a_reader_that_left_never_fails_a_finished_job(tmp_path):
    """cron with `2>&-`, stderr on a full disk, or `| head` that exits at once: the labels are written and the exit
    status is 0."""
    np.save(tmp_path / "v.npy", np.zeros((20, 20), np.float32))
    (tmp_path / "p.csv").write_text("index,axis-0,axis-1\n0,5,5\n")
    cli = f"{shlex.quote(sys.executable)} -m napari_msa.cli segment v.npy -p p.csv --model tiny"
    closed = subprocess.run(["bash", "-c", f"{cli} -o a.tif 2>&-; echo $? > a.code"], cwd=tmp_path, timeout=300)
    piped = subprocess.run(["bash", "-c", f"{cli} -o b.tif | head -c 0; echo ${{PIPESTATUS[0]}} > b.code"],
                           cwd=tmp_path, timeout=300, capture_output=True)
    failing = subprocess.run(["bash", "-c", f"{cli} -o c.tif 2>/dev/full; echo $? > c.code"], cwd=tmp_path,
                             timeout=300)  # stderr that fails to write (a full log disk, a dropped terminal)
    assert closed.returncode == 0 and piped.returncode == 0 and failing.returncode == 0
    assert (tmp_path / "a.code").read_text().strip() == "0" and (tmp_path / "a.tif").is_file()
    assert (tmp_path / "b.code").read_text().strip() == "0" and (tmp_path / "b.tif").is_file()
    assert (tmp_path / "c.code").read_text().strip() == "0" and (tmp_path / "c.tif").is_file()


@pytest.fixture
def odd_inputs(tmp_path):
    import nibabel as nib

    img = nib.Nifti1Image(np.full((8, 8, 3), 30000, np.int16), np.eye(4))
    img.header.set_slope_inter(1e38, 0)  # beyond float32
    nib.save(img, tmp_path / "overflow.nii.gz")
    img = nib.Nifti1Image(np.ones((8, 8, 3), np.int16), np.eye(4))
    img.header.set_slope_inter(1e38, 0)  # 1e38: a constant image at a huge value (no window of width 1 there)
    nib.save(img, tmp_path / "huge.nii.gz")
    np.save(tmp_path / "complex.npy", (np.ones((20, 20)) + 1j).astype(np.complex64))
    np.save(tmp_path / "lab.npy", np.ones((20, 20), np.uint8))
    np.save(tmp_path / "ok.npy", np.random.default_rng(0).random((20, 20)).astype(np.float32))
    return tmp_path


@pytest.mark.parametrize("argv, code, message", [
    (["segment", "overflow.nii.gz", "--everything", "-o", "o.tif"], 2, "takes the voxels beyond any float32"),
    (["segment", "huge.nii.gz", "--everything", "-o", "o.tif"], 0, None),
    (["tune", "complex.npy", "lab.npy", "-o", "a.safetensors", "--steps", "1"], 2, "real-valued intensities"),
    (["tune", "ok.npy", "lab.npy", "-o", "a.safetensors", "--steps", "1", "--seed", str(2**70)], 2,
     "a seed is a whole number"),
    (["segment", "ok.npy", "--everything", "-o", "o.tif", "--device", "meta"], 2, "choose auto, cpu, cuda"),
    (["tune", "ok.npy", "lab.npy", "-o", "a.safetensors", "--lr", "-1"], 2, "the learning rate is a positive"),
    (["tune", "ok.npy", "lab.npy", "-o", "a.safetensors", "--lr", "nan"], 2, "the learning rate is a positive"),
])
def test_odd_values_and_options_give_one_line_not_a_traceback(odd_inputs, monkeypatch, capsys, argv, code, message):
    monkeypatch.chdir(odd_inputs)
    assert main(["-q", *argv, "--model", "tiny"]) == code
    err = capsys.readouterr().err.strip().splitlines()
    if message is None:
        assert err == []
    else:
        assert len(err) == 1 and message in err[0], err


@pytest.mark.parametrize("field, value, message", [
    ("model", "7", "'model' is int"),
    ("model", "[1, 2]", "'model' is list"),
    ("adapter_config", '"blocks"', "'adapter_config' is str"),
    ("adapter_config", '{"blocks": [999]}', "adapter blocks [999]"),
    ("adapter_config", '{"bottleneck_ratio": 10000.0}', "bottleneck ratio 10000.0"),
    ("normalization", '{"preset": "bogus"}', "unknown normalisation 'bogus'"),
    ("normalization", "[1]", "'normalization' is list"),
    ("training", '"x"', "'training' is str"),
    ("image_size", "100000", "image size 100000"),
    ("model", '{"name": "tiny", "embed_dim": "wide", "depth": 2}', "model embed_dim 'wide'"),
])
def test_an_adapter_file_with_damaged_metadata_is_one_line(tmp_path, capsys, field, value, message):
    """Every reader trusts the adapter metadata once one validator has passed it: damaged fields (wrong types,
    impossible ranges) are refused by name, never a traceback deep in the loader."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    from napari_msa import load_model

    model = load_model("tiny", device="cpu")
    good = model.save_adapter(tmp_path / "good.safetensors")
    with safe_open(str(good), framework="np") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    meta[field] = value
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=meta)
    np.save(tmp_path / "x.npy", np.zeros((20, 20), np.float32))
    (tmp_path / "p.csv").write_text("index,axis-0,axis-1\n0,5,5\n")
    code = main(["-q", "segment", str(tmp_path / "x.npy"), "-p", str(tmp_path / "p.csv"), "-o",
                 str(tmp_path / "o.tif"), "--model", "tiny", "--adapter", str(tmp_path / "bad.safetensors")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "adapter metadata is damaged" in err[0] and message in err[0], err


def test_an_rtstruct_given_as_the_image_is_named_as_such(tmp_path, capsys):
    from pydicom.data import get_testdata_file

    rtstruct = get_testdata_file("rtstruct.dcm")  # a DICOM object without an image (and without the preamble)
    assert main(["-q", "segment", rtstruct, "--everything", "-o", str(tmp_path / "o.tif"), "--model", "tiny"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a DICOM RTSTRUCT object without an image" in err[0], err


def test_a_nifti_whose_affine_holds_nan_is_named_with_the_fix(tmp_path, capsys):
    import struct

    import nibabel as nib

    path = tmp_path / "nan.nii"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((8, 8, 3)).astype(np.float32), np.eye(4)), path)
    raw = bytearray(path.read_bytes())
    raw[280:284] = struct.pack("<f", float("nan"))  # srow_x[0]
    raw[252:256] = struct.pack("<hh", 0, 1)  # qform_code 0, sform_code 1: the sform is the affine
    path.write_bytes(bytes(raw))
    assert main(["-q", "segment", str(path), "--everything", "-o", str(tmp_path / "o.tif"), "--model", "tiny"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nan.nii: its header's voxel-to-patient affine" in err[0] and "set_sform" in err[0]


@pytest.fixture()
def full_disk(tmp_path):
    """A 64 KiB tmpfs, nearly full, holding one output that exists already; needs the right to mount."""
    mount = tmp_path / "full"
    mount.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0 or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs (a full disk) needs root and the right to mount here")
    try:
        (mount / "old.tif").write_bytes(b"an earlier result")
        fd = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"\0" * 512)
        except OSError:
            pass
        finally:
            os.close(fd)
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.parametrize("argv", [
    ["segment", "x.tif", "-p", "p.csv", "-o", "{disk}/old.tif", "--model", "tiny"],
    ["tune", "x.tif", "labels.tif", "-o", "{disk}/adapter.safetensors", "--model", "tiny", "--steps", "1"],
    ["embed", "x.tif", "--cache-dir", "{disk}/cache", "--model", "tiny"],
], ids=["segment", "tune", "embed"])
def test_a_full_disk_is_one_line_exit_2_and_replaces_nothing(folder, full_disk, capsys, argv):
    before = sorted(p.name for p in full_disk.iterdir())
    code = main(["-q", *[a.format(disk=full_disk) for a in argv]])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and ("no space left" in err or "disk is full" in err), err
    assert (full_disk / "old.tif").read_bytes() == b"an earlier result"
    leftover = sorted(p.name for p in full_disk.iterdir() if p.name != "cache")
    assert leftover == before  # no temp file, no half file


def test_a_dicom_whose_codec_is_missing_is_one_line_naming_the_codec_and_the_fix(tmp_path, capsys):
    """pydicom's JPEG Extended 12-bit file: Pillow cannot decode it; pydicom logs a traceback of its own."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    path = get_testdata_file("JPEG-lossy.dcm")
    try:
        _ = pydicom.dcmread(path).pixel_array
        pytest.skip("a JPEG Extended decoder is installed here (pylibjpeg or gdcm)")
    except Exception:
        pass
    capsys.readouterr()
    code = main(["-q", "embed", path, "--cache-dir", str(tmp_path / "c"), "--model", "tiny"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "JPEG Extended" in err and "pip install pylibjpeg" in err and "Traceback" not in err


@pytest.mark.parametrize(("description", "message"), [
    ("", "it is empty"),
    ("[1, 2]", "it is list, not a mapping"),
    ("{not json", "it is str, not a mapping"),
    ('{"name": "vit_zz", "embed_dim": 64, "depth": 2, "num_heads": 2, "global_attn_indexes": [1], '
     '"encoder": "zz"}', "encoder 'zz'"),
    ('{"name": "small", "embed_dim": 10000000, "depth": 4, "num_heads": 4, "global_attn_indexes": [1]}',
     "embed_dim 10000000"),  # was an attempt to allocate 30 GB, then a traceback
    ('{"name": "small", "embed_dim": 128, "depth": 4, "num_heads": 4, "global_attn_indexes": [9]}',
     "global_attn_indexes [9]"),
    ('{"name": "small", "embed_dim": 128, "depth": 4, "num_heads": 4, "global_attn_indexes": [], "colour": 1}',
     "unknown fields ['colour']"),
])
def test_a_model_file_with_a_damaged_description_is_one_line(tmp_path, capsys, description, message):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(DEMO_MODEL_FILE), framework="pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in list(f.keys())[:3]}
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata=dict(meta, model=description))
    np.save(tmp_path / "x.npy", np.zeros((20, 20), np.float32))
    (tmp_path / "p.csv").write_text("index,axis-0,axis-1\n0,5,5\n")
    code = main(["-q", "segment", str(tmp_path / "x.npy"), "-p", str(tmp_path / "p.csv"), "-o",
                 str(tmp_path / "o.tif"), "--checkpoint", str(tmp_path / "model.safetensors")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "model description is damaged" in err[0] and message in err[0], err
