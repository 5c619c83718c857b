"""The encoder's precision policy: fp32 forced (exact), bf16 forced, auto per device; the caches it keeps;
whole volumes in batches (engine, CLI and the Segment widget's background embedding)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_msa import Session, load_model
from napari_msa.cli import main
from napari_msa.engine import Cancelled, catalog
from napari_msa.engine.model import precision as P
from napari_msa.engine.prompts.geometry import dice

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _volume(n: int = 5, size: int = 48) -> np.ndarray:
    rng = np.random.default_rng(0)
    vol = rng.normal(0, 0.2, (n, size, size)).astype(np.float32)
    vol[:, 12:30, 15:35] += 1.0
    return vol


# --- the policy -----------------------------------------------------------------------------------------------------
def test_fp32_forced_is_the_reference_everywhere(monkeypatch):
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(P, "cuda_has_bf16", lambda device: True)
    for device in ("cpu", "cuda"):
        chosen = P.resolve_precision("fp32", torch.device(device))
        assert chosen.exact and chosen.autocast_dtype is None and chosen.cache_dtype == torch.float32


def test_bf16_forced_runs_bf16_with_a_half_cache():
    chosen = P.resolve_precision("bf16", torch.device("cpu"))
    assert chosen.name == "bf16" and chosen.autocast_dtype == torch.bfloat16
    assert chosen.cache_dtype == torch.float16 and chosen.channels_last and not chosen.exact
    if not P.cpu_has_native_bf16():
        assert "emulates" in chosen.reason  # the user is told it will be slower here
    with pytest.raises(ValueError, match="mps"):
        P.resolve_precision("bf16", torch.device("mps"))


@pytest.mark.parametrize("native", [True, False])
def test_auto_on_a_cpu_follows_its_native_bf16(monkeypatch, native):
    monkeypatch.setattr(P, "BF16_KEEPS_MASKS", True)  # the rule, were bf16 to pass the accuracy gate
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: native)
    chosen = P.resolve_precision("auto", torch.device("cpu"))
    assert chosen.name == ("bf16" if native else "fp32")
    assert chosen.cache_dtype == torch.float16 and chosen.channels_last  # measured to keep the masks


def test_auto_on_gpus(monkeypatch):
    monkeypatch.setattr(P, "BF16_KEEPS_MASKS", True)
    monkeypatch.setattr(P, "cuda_has_bf16", lambda device: True)
    assert P.resolve_precision("auto", torch.device("cuda")).name == "bf16"
    monkeypatch.setattr(P, "cuda_has_bf16", lambda device: False)  # a GPU before Ampere
    assert P.resolve_precision("auto", torch.device("cuda")).name == "fp32"
    assert P.resolve_precision("auto", torch.device("mps")).name == "fp32"


def test_auto_stays_fp32_where_the_accuracy_table_says_so(monkeypatch):
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(P, "cuda_has_bf16", lambda device: True)
    assert not P.BF16_KEEPS_MASKS  # the development set's gate (BENCHMARKS.md): bf16 missed it
    assert P.resolve_precision("auto", torch.device("cpu")).name == "fp32"
    assert P.resolve_precision("auto", torch.device("cuda")).name == "fp32"
    monkeypatch.setattr(P, "HALF_CACHE_KEEPS_MASKS", False)
    assert P.resolve_precision("auto", torch.device("cpu")).cache_dtype == torch.float32


def test_precision_names_and_the_environment(monkeypatch):
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        P.resolve_precision("fp16", torch.device("cpu"))
    monkeypatch.setenv(catalog.PRECISION_ENV, "bf16")
    assert P.resolve_precision(None, torch.device("cpu")).name == "bf16"
    monkeypatch.setenv(catalog.PRECISION_ENV, "half")
    with pytest.raises(ValueError, match="NAPARI_MSA_PRECISION='half'"):
        P.resolve_precision(None, torch.device("cpu"))
    monkeypatch.delenv(catalog.PRECISION_ENV)
    assert P.check_precision(None) == "auto"


def test_native_bf16_probe_agrees_with_the_cpu_flags():
    flags = P._cpu_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo flags here")
    assert P.cpu_has_native_bf16() == bool(flags & {"avx512_bf16", "amx_bf16", "amx_tile"})


# --- models and sessions --------------------------------------------------------------------------------------------
def test_fp32_model_is_bit_exact_and_bf16_model_is_close(one_torch_thread):
    exact = load_model("tinyvit_test", device="cpu", precision="fp32")
    low = load_model("tinyvit_test", device="cpu", precision="bf16")
    low.sam.load_state_dict(exact.sam.state_dict())
    assert exact.precision.exact and low.precision.name == "bf16"
    conv = low.sam.image_encoder.neck[2].weight  # a 3×3 convolution: the two layouts differ
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert exact.weights_key() != low.weights_key()  # the precision is part of the cache key

    vol = _volume(1, 64)[0]
    a, b = Session(exact), Session(low)
    a.set_image(vol)
    b.set_image(vol)
    x, _ = exact.preprocess(a.plane_rgb(0))
    with torch.no_grad():
        assert torch.equal(a.embedding(0).features, exact.sam.image_encoder(x))
    fa, fb = a.embedding(0).features, b.embedding(0).features
    assert fb.dtype == torch.float32  # the decoder always gets fp32
    assert 0 < float((fa - fb).norm() / fa.norm()) < 0.05
    assert b.cache.nbytes * 2 == a.cache.nbytes  # stored as fp16: half the memory per slice
    for prompt in ({"points": [(20, 25)], "labels": [1]}, {"box": (12, 15, 30, 35)}):
        assert dice(a.predict(**prompt)[0], b.predict(**prompt)[0]) > 0.9


def test_disk_cache_is_kept_per_precision(tmp_path, one_torch_thread):
    exact = load_model("tinyvit_test", device="cpu", precision="fp32")
    half = load_model("tinyvit_test", device="cpu", precision="auto")
    half.sam.load_state_dict(exact.sam.state_dict())
    vol = _volume(2, 64)
    for model in (exact, half):
        s = Session(model, cache_dir=tmp_path)
        s.set_image(vol)
        s.embed_slices(range(2))
    folders = sorted(p.parent.name for p in tmp_path.rglob("z00000.pt"))
    assert len(folders) == 2 and any("float16" in f for f in folders) and any("float32" in f for f in folders)
    stored = [torch.load(p, weights_only=True)["features"] for p in sorted(tmp_path.rglob("z00001.pt"))]
    assert {t.dtype for t in stored} == {torch.float16, torch.float32}
    sizes = sorted(p.stat().st_size for p in tmp_path.rglob("z00001.pt"))
    assert sizes[1] > 1.8 * sizes[0]

    again = Session(half, cache_dir=tmp_path)  # found on disk, handed out as fp32
    again.set_image(vol)
    calls = []
    half.encode = lambda *a, **k: calls.append(1)
    assert again.embedding(1).features.dtype == torch.float32 and calls == []


def test_batched_embedding_equals_slice_by_slice(one_torch_thread):
    model = load_model("tinyvit_test", device="cpu", precision="fp32")
    vol = _volume(5, 64)
    one = Session(model)
    one.set_image(vol)
    one.embed_slices(range(5), batch_size=1)
    batched = Session(model)
    batched.set_image(vol)
    batched.embedding(1)  # already cached: skipped below
    passes, seen = [], []
    encode = model.encode
    model.encode = lambda batch, *a, **k: passes.append(len(batch)) or encode(batch, *a, **k)
    batched.embed_slices(range(5), batch_size=2, progress=lambda d, t: seen.append((d, t)))
    assert passes == [1, 2, 1] and seen == [(i, 5) for i in range(1, 6)]  # (0, 1): 1 was cached; (2, 3); (4)
    for z in range(5):
        torch.testing.assert_close(batched.embedding(z).features, one.embedding(z).features, atol=1e-5, rtol=1e-4)

    fresh = Session(model)
    fresh.set_image(vol)
    with pytest.raises(Cancelled):
        fresh.embed_slices(range(5), batch_size=2, cancel=lambda: fresh.is_cached(1))
    assert [fresh.is_cached(z) for z in range(5)] == [True, True, False, False, False]
    with pytest.raises(IndexError, match="outside"):
        fresh.embed_slices([7])


def test_cli_embed_precision_and_batch_size(tmp_path, one_torch_thread):
    np.save(tmp_path / "v.npy", _volume(3, 40))
    args = ["-q", "embed", str(tmp_path / "v.npy"), "--cache-dir", str(tmp_path / "c"), "--model", "tiny"]
    assert main([*args, "--precision", "bf16", "--batch-size", "2"]) == 0
    files = sorted((tmp_path / "c").rglob("*.pt"))
    assert len(files) == 3 and all("bf16-float16" in f.parent.name for f in files)
    assert torch.load(files[0], weights_only=True)["features"].dtype == torch.float16
    assert main([*args, "--precision", "fp32"]) == 0
    assert len(list((tmp_path / "c").rglob("*.pt"))) == 6


def test_cli_refuses_bad_precision_and_batch_size(tmp_path, capsys):
    np.save(tmp_path / "v.npy", _volume(2, 40))
    args = ["embed", str(tmp_path / "v.npy"), "--cache-dir", str(tmp_path / "c"), "--model", "tiny"]
    assert main([*args, "--batch-size", "0"]) == 2
    assert "--batch-size must be 1 or more" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main([*args, "--precision", "fp16"])
    assert exc.value.code == 2
    assert not (tmp_path / "c").exists() or not list((tmp_path / "c").rglob("*.pt"))


# --- the Segment widget: precision setting, whole volume in the background ------------------------------------------
def test_eta_from_the_recent_pace():
    from napari_msa._widgets.segment._volume import EtaClock, format_eta

    assert format_eta(42) == "0:42" and format_eta(3907) == "1:05:07" and format_eta(None) == ""
    clock = EtaClock()
    clock._marks.extend([(0.0, 0), (0.1, 10)])  # ten slices found in a cache: no pace yet worth trusting
    clock._marks.clear()
    clock._marks.extend([(10.0, 10), (12.0, 12), (14.0, 14)])
    assert clock.left(14, 20) == pytest.approx(6.0)
    assert clock.left(20, 20) == 0.0


@pytest.mark.gui
def test_widget_embeds_the_whole_volume_with_progress_and_a_disk_cache(make_napari_viewer, qtbot, tmp_path):
    from napari.utils import progress
    from segment_support import wait_idle

    from napari_msa._widgets._hub import hub_for

    viewer = make_napari_viewer()
    viewer.add_image(_volume(6, 48), name="vol")
    _, widget = viewer.window.add_plugin_dock_widget("napari-msa", "Segment (MSA)")
    assert [widget.model_panel.precision_combo.itemText(i) for i in range(3)] == ["auto", "fp32", "bf16"]
    widget.form.cache_folder.edit.setText(str(tmp_path))
    model = load_model("tiny", device="cpu", precision="fp32")
    hub_for(viewer).set_model(model)
    wait_idle(qtbot, widget)  # the shown slice and its neighbours first

    bars, lines = [], []
    progress._all_instances.events.changed.connect(
        lambda e: bars.extend(str(p.desc) for p in e.added if str(p.desc).startswith("MSA")))
    encode = model.encode
    model.encode = lambda *a, **k: lines.append(widget.form.activity.text()) or encode(*a, **k)
    widget.form.embed_button.click()
    assert widget.form.embed_button.text() == "Stop embedding"
    wait_idle(qtbot, widget)
    assert all(widget.jobs.session.is_cached(z) for z in range(6))
    assert len(list(tmp_path.rglob("*.pt"))) == 6  # kept on disk for the next session and `napari-msa embed`
    assert any(b.startswith("MSA: embedding the volume") for b in bars)  # its time left may come first
    assert any(line.startswith("Embedding the volume:") for line in lines)
    assert widget.form.embed_button.text() == "Embed volume" and "All 6 slices are embedded" in widget.status.text()

    # a new session (another model load) finds them on disk: no encoder pass
    other = model.clone()
    calls = []
    other.encode = lambda *a, **k: calls.append(1)
    hub_for(viewer).set_model(other)
    widget.form.embed_button.click()
    wait_idle(qtbot, widget)
    assert calls == [] and all(widget.jobs.session.is_cached(z) for z in range(6))


@pytest.mark.gui
def test_widget_loads_with_the_chosen_precision(make_napari_viewer, qtbot, tmp_path):
    from segment_support import wait_idle

    from napari_msa.engine.files.formats import save_model_file

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32), np.float32), name="img")
    _, widget = viewer.window.add_plugin_dock_widget("napari-msa", "Segment (MSA)")
    path = save_model_file(load_model("tiny").sam, tmp_path / "tiny.safetensors", description="test")
    widget.model_panel.combo.setCurrentText("vit_b")
    widget.model_panel.checkpoint.edit.setText(str(path))
    widget.model_panel.device_combo.setCurrentText("cpu")
    widget.model_panel.precision_combo.setCurrentText("bf16")
    widget.model_panel.load_button.click()
    wait_idle(qtbot, widget)
    assert widget.jobs.session.model.precision.name == "bf16" and "bf16" in widget.model_panel.label.text()


# --- CUDA (run by benchmarks/gpu_checks.sh on a machine with a GPU) ------------------------------------------------
@pytest.mark.cuda
@cuda
def test_cuda_auto_is_bf16_and_keeps_masks():
    exact = load_model("tinyvit_test", device="cuda", precision="fp32")
    auto = load_model("tinyvit_test", device="cuda", precision="auto")
    auto.sam.load_state_dict(exact.sam.state_dict())
    assert auto.precision.name == ("bf16" if P.BF16_KEEPS_MASKS and torch.cuda.is_bf16_supported(
        including_emulation=False) else "fp32")
    vol = _volume(8, 64)
    a, b = Session(exact), Session(auto)
    for s in (a, b):
        s.set_image(vol)
        s.embed_slices(range(8))  # CUDA: several slices per pass
    for z in (0, 7):
        fa, fb = a.embedding(z).features, b.embedding(z).features
        assert fa.device.type == "cuda" and float((fa - fb).norm() / fa.norm()) < 0.05
        prompt = {"points": [(z, 20, 25)], "labels": [1]}
        assert dice(a.predict(**prompt)[0], b.predict(**prompt)[0]) > 0.9


@pytest.mark.cuda
@cuda
def test_cuda_batched_equals_single_passes():
    model = load_model("tinyvit_test", device="cuda", precision="fp32")
    vol = _volume(4, 64)
    one, many = Session(model), Session(model)
    for s in (one, many):
        s.set_image(vol)
    one.embed_slices(range(4), batch_size=1)
    many.embed_slices(range(4), batch_size=4)
    for z in range(4):
        torch.testing.assert_close(many.embedding(z).features, one.embedding(z).features, atol=1e-4, rtol=1e-3)
