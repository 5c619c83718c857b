"""The encoder and the decoder on OpenVINO (napari_msa.engine.model.runtime): the same numbers as torch fp32, exported
once per weights key and found again, torch in charge until the graph is ready and after a failed export."""

import warnings

import numpy as np
import pytest
import torch

from napari_msa import Session, load_model
from napari_msa.engine import catalog
from napari_msa.engine.model import runtime as rt
from napari_msa.engine.network.adapters import ADAPTER_KEY, AdapterConfig, is_decoder_weight
from napari_msa.engine.network.corrector import CorrectorChange

pytest.importorskip("openvino")  # an install dependency: present wherever the project's own files installed it


@pytest.fixture(autouse=True)
def _export_in_this_process(monkeypatch):
    """Graphs exported in the test's own process (a child process costs seconds each); the child's path has its
    own tests, and the command-line tests export in a child as users' processes do. A test's background exports
    end before the next test begins: an export in this process, on its thread, changes torch.fx's global trace
    metadata, which broke the next test's seeding (KeyError 'custom' in ``torch.manual_seed``; "same-seed" models
    with other weights) when the exports ran long (one torch thread)."""
    monkeypatch.setattr(rt, "EXPORT_IN_CHILD", False)
    rt._finish_exports()
    yield
    rt._finish_exports()


def _model(runtime: str, name: str = "tinyvit_test", **kw):
    return load_model(name, adapter=None, random_init=True, device="cpu", runtime=runtime,
                      adapter_config=AdapterConfig(blocks=(1,)), **kw)


def _same_weights(a, b) -> None:
    b.sam.load_state_dict(a.sam.state_dict())
    b.version += 1


def _sessions_on_one_image(models, seed: int) -> list[Session]:
    """One session per model on the same small image with a bright object (a click and a box find it)."""
    image = (np.random.default_rng(seed).random((90, 70)) * 255).astype(np.uint8)
    image[20:50, 20:40] = 250
    sessions = [Session(m) for m in models]
    for s in sessions:
        s.set_image(image)
    return sessions


@pytest.mark.parametrize("name", ["tinyvit_test", "tiny"])  # LiteMedSAM's TinyViT and SAM's ViT, with adapters
def test_the_graph_gives_torch_fp32_embeddings_and_masks(name):
    torch.manual_seed(0)
    ref = _model("torch", name, precision="fp32")
    ov = _model("openvino", name, precision="fp32")
    _same_weights(ref, ov)
    for p in ref.sam.image_encoder.parameters():  # non-zero adapters, so they are in the graph for real
        p.data.add_(0.01 * torch.randn_like(p))
    _same_weights(ref, ov)
    assert ov.encoder_graph(wait=True).ready
    sessions = _sessions_on_one_image((ref, ov), seed=0)
    e_ref, e_ov = (s.embedding().features for s in sessions)
    assert torch.allclose(e_ref, e_ov, atol=1e-4), float((e_ref - e_ov).abs().max())
    for prompt in ({"points": [[35, 30]], "labels": [1]}, {"box": [18, 18, 52, 42]},
                   {"points": [[35, 30], [60, 60]], "labels": [1, 0]}):
        masks = [s.predict(**prompt)[0] for s in sessions]
        np.testing.assert_array_equal(masks[0], masks[1])
    assert "OpenVINO" in ov.describe()


def test_the_graph_is_saved_once_per_weights_and_found_again(tmp_path, monkeypatch):
    monkeypatch.setenv(rt.GRAPH_DIR_ENV, str(tmp_path))
    torch.manual_seed(1)
    first = _model("openvino")
    graph = first.encoder_graph(wait=True)
    assert graph.ready and graph.export_s is not None
    saved = [p for p in tmp_path.iterdir()]
    assert len(saved) == 1 and (saved[0] / "encoder.xml").is_file() and not saved[0].name.startswith(".")
    torch.manual_seed(1)
    second = _model("openvino")  # the same random base weights, as two loads of one checkpoint
    again = second.encoder_graph()
    assert again.ready and again.export_s is None  # read back, not exported
    # tuning changes the adapters: a new key, a new graph beside the old one
    with torch.no_grad():
        next(p for n, p in second.sam.image_encoder.named_parameters() if ADAPTER_KEY in n).add_(0.1)
    second.version += 1
    assert second.encoder_graph(wait=True).key != again.key
    assert len([p for p in tmp_path.iterdir()]) == 2


def test_torch_answers_while_the_graph_is_exported(tmp_path, monkeypatch):
    monkeypatch.setenv(rt.GRAPH_DIR_ENV, str(tmp_path))
    model = _model("openvino")
    started = []
    monkeypatch.setattr(rt.OpenVINOEncoder, "export_in_background", lambda self, enc: started.append(self.key))
    x = model.preprocess(np.zeros((64, 64, 3), np.uint8))[0]
    assert not model.encoder_graph().ready and started == []  # nothing saved: the export waits for an answer
    out = model.encode(x)  # no graph yet: torch, then the export begins
    assert started == [model.weights_key()] and not model.encoder_graph().ready
    assert torch.equal(out, model.sam.image_encoder(x))


def test_a_failed_export_leaves_torch_in_charge_with_one_warning(tmp_path, monkeypatch):
    monkeypatch.setenv(rt.GRAPH_DIR_ENV, str(tmp_path))
    import openvino

    def broken(*a, **k):
        raise RuntimeError("unsupported operation")

    monkeypatch.setattr(openvino, "convert_model", broken)
    model = _model("openvino")
    with pytest.warns(RuntimeWarning, match="could not be exported to OpenVINO.*unsupported operation"):
        assert model.encoder_graph(wait=True) is None
    x = model.preprocess(np.zeros((64, 64, 3), np.uint8))[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        assert torch.equal(model.encode(x), model.sam.image_encoder(x))


def test_the_export_runs_in_a_child_process_and_falls_back_to_this_one(tmp_path, monkeypatch):
    """By default the graph is exported in a child process (this one's converter is never called); when no child
    can export it, this process does."""
    monkeypatch.setattr(rt, "EXPORT_IN_CHILD", True)
    monkeypatch.setenv(rt.GRAPH_DIR_ENV, str(tmp_path / "a"))
    here = []
    real = rt.convert_module
    monkeypatch.setattr(rt, "convert_module", lambda *a: here.append(1) or real(*a))
    torch.manual_seed(3)
    model, ref = _model("openvino", precision="fp32"), _model("torch", precision="fp32")
    _same_weights(model, ref)
    assert model.encoder_graph(wait=True).ready and not here
    assert len(list((tmp_path / "a").glob("*/encoder.xml"))) == 1
    sessions = _sessions_on_one_image((ref, model), seed=3)
    assert torch.allclose(*(s.embedding().features for s in sessions), atol=1e-4)
    assert model.decoder_graph(wait=True).ready and not here  # the decoder's graph too
    calls = _counting_decoder(monkeypatch)
    answers = [s.interact(points=[[35, 30]], labels=[1]) for s in sessions]
    assert calls and np.allclose(answers[0].logits, answers[1].logits, atol=1e-3)
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".")]  # no temporary folder left

    def no_child(*a, **k):
        raise RuntimeError("no child process here")

    monkeypatch.setenv(rt.GRAPH_DIR_ENV, str(tmp_path / "b"))
    monkeypatch.setattr(rt, "export_in_child", no_child)
    model = _model("openvino")
    assert model.encoder_graph(wait=True).ready and here == [1]
    assert len(list((tmp_path / "b").glob("*/encoder.xml"))) == 1


def test_the_exit_waits_for_an_export_thread_to_its_very_end(tmp_path, monkeypatch):
    """The export thread goes on after its graph is ready (it still frees the exported copy's tensors); stopped
    there by the interpreter's shutdown, torch aborts the process ("terminate called without an active exception":
    3 of 20 fresh processes under load before this, 0 of 20 after). So the exit joins it to its end, not to the
    graph's readiness."""
    import threading
    import time

    monkeypatch.setenv(rt.GRAPH_DIR_ENV, str(tmp_path))
    real = rt.OpenVINOGraph._export
    released = threading.Event()

    def export_then_release(self, module):
        real(self, module)  # the graph is ready and waiters are woken here
        time.sleep(0.5)  # what freeing a large copy takes on a busy machine
        released.set()

    monkeypatch.setattr(rt.OpenVINOGraph, "_export", export_then_release)
    model = _model("openvino")
    assert model.encoder_graph(wait=True).ready and not released.is_set()
    rt._finish_exports()  # what the exit runs
    assert released.is_set()


def test_an_unwritable_graph_folder_still_gives_the_graph(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(rt.GRAPH_DIR_ENV, str(blocker / "graphs"))
    model = _model("openvino")
    assert model.encoder_graph(wait=True).ready


def test_which_runtime_each_setting_gets(monkeypatch):
    cpu = torch.device("cpu")
    assert rt.resolve_runtime("auto", cpu, "auto") == "openvino"
    assert rt.resolve_runtime("auto", cpu, "fp32") == "torch"  # fp32 is the reference: torch, bit for bit
    assert rt.resolve_runtime("auto", cpu, "bf16") == "torch"
    assert rt.resolve_runtime("auto", torch.device("cuda"), "auto") == "torch"
    assert rt.resolve_runtime("openvino", cpu, "fp32") == "openvino"
    with pytest.raises(ValueError, match="runs on the CPU, not on cuda"):
        rt.resolve_runtime("openvino", torch.device("cuda"), "auto")
    with pytest.raises(ValueError, match="fp32 here"):
        rt.resolve_runtime("openvino", cpu, "bf16")
    with pytest.raises(ValueError, match="unknown runtime 'onnx'"):
        rt.check_runtime("onnx")
    monkeypatch.setenv(catalog.RUNTIME_ENV, "fast")
    with pytest.raises(ValueError, match="NAPARI_MSA_RUNTIME='fast'"):
        rt.check_runtime(None)
    monkeypatch.setattr(rt, "openvino_available", lambda: False)
    assert rt.resolve_runtime("auto", cpu, "auto") == "torch"
    with pytest.raises(ValueError, match="pip install openvino"):
        rt.resolve_runtime("openvino", cpu, "auto")


def test_auto_on_a_cpu_runs_openvino_in_fp32():
    model = load_model("tinyvit_test", adapter=None, random_init=True, device="cpu", precision="auto",
                       runtime="auto")
    assert model.runtime == "openvino" and model.precision.name == "fp32" and model.autocast_dtype is None


def test_the_command_line_embeds_with_openvino_and_exits_cleanly(tmp_path):
    """A fresh process: the export (begun at the first slice) is waited for at exit, so the graph is kept and
    OpenVINO never sees the interpreter shut down under it; the embeddings are torch's."""
    import os
    import subprocess
    import sys

    np.save(tmp_path / "v.npy", np.random.default_rng(0).random((3, 30, 30)).astype(np.float32))
    env = {**os.environ, rt.GRAPH_DIR_ENV: str(tmp_path / "graphs")}
    runs = {}
    for run in ("openvino", "openvino-saved", "torch"):  # the first exports, the second reads the graph it kept
        runtime = run.split("-")[0]
        proc = subprocess.run([sys.executable, "-m", "napari_msa.cli", "-q", "embed", str(tmp_path / "v.npy"),
                               "--cache-dir", str(tmp_path / run), "--model", "tiny", "--runtime", runtime],
                              capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr
        assert "terminate" not in proc.stderr and "Traceback" not in proc.stderr
        runs[run] = sorted((tmp_path / run).rglob("z*.pt"))
        assert len(list((tmp_path / "graphs").glob("*/encoder.xml"))) == 1
    assert [p.name for p in runs["openvino-saved"]] == [p.name for p in runs["torch"]] and len(runs["torch"]) == 3
    for a, b in zip(runs["openvino-saved"], runs["torch"], strict=True):
        ea, eb = (torch.load(p, weights_only=True) for p in (a, b))
        ea, eb = (e["features"] if isinstance(e, dict) else e for e in (ea, eb))
        assert torch.allclose(ea.float(), eb.float(), atol=1e-4)


def test_exports_send_no_telemetry_and_fork_no_process(tmp_path):
    """OpenVINO's converter sends usage events to Google Analytics (each from a forked process, with a client id
    written under ~/intel) unless opted out; napari-msa never goes on the network. A fresh process exports both
    graphs of a model with a home of its own and no CI variable (which would silence it anyway)."""
    import os
    import subprocess
    import sys

    script = """
import multiprocessing, sys
forks = []
real_start = multiprocessing.Process.start
multiprocessing.Process.start = lambda self: forks.append(self) or real_start(self)
import numpy as np
from napari_msa import Session, load_model
from napari_msa.engine.network.adapters import AdapterConfig
model = load_model("tinyvit_test", adapter=None, random_init=True, device="cpu", runtime="openvino",
                   precision="fp32", adapter_config=AdapterConfig(blocks=(1,)))
assert model.encoder_graph(wait=True).ready
session = Session(model)
session.set_image(np.random.default_rng(0).random((40, 40)).astype(np.float32))
session.predict(points=[[20, 20]], labels=[1])
graph = model.decoder_graph()
graph.wait()
assert graph.ready, graph.error
print("forks", len(forks), "telemetry", sys.modules.get("openvino_telemetry", "absent"))
"""
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL")}
    env.update(HOME=str(tmp_path / "home"), **{rt.GRAPH_DIR_ENV: str(tmp_path / "graphs")})
    (tmp_path / "home").mkdir()
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "forks 0 telemetry None" in proc.stdout
    assert not (tmp_path / "home" / "intel").exists()


def test_old_graphs_are_pruned_and_nothing_else_is_touched(tmp_path):
    import os
    import time

    now = time.time()
    for i in range(5):
        g = tmp_path / f"key{i}-ov2026.1-g1"
        g.mkdir()
        (g / "encoder.xml").write_text("<net/>")
        os.utime(g, (now - 100 + i, now - 100 + i))
    for i in range(3):  # decoders are counted apart: newer encoders do not push them out
        g = tmp_path / f"key{i}-d1-ov2026.1-g1"
        g.mkdir()
        (g / "decoder.xml").write_text("<net/>")
        os.utime(g, (now - 200 + i, now - 200 + i))
    (tmp_path / "notes-ov1-g1").mkdir()  # no encoder.xml: not a graph of ours
    (tmp_path / "mine.txt").write_text("user file")
    dead = tmp_path / ".key9-ov2026.1-g1.abc123.tmp"  # a killed export's temporary folder
    live = tmp_path / ".key8-ov2026.1-g1.def456.tmp"  # one being written now
    for t in (dead, live):
        t.mkdir()
    os.utime(dead, (now - 2 * rt.STALE_TEMP_S, now - 2 * rt.STALE_TEMP_S))
    rt.prune(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "key1-d1-ov2026.1-g1", "key2-d1-ov2026.1-g1",
                                                         "key3-ov2026.1-g1", "key4-ov2026.1-g1", "mine.txt",
                                                         "notes-ov1-g1"]


# --- the decoder path: one prompt's prompt encoder + mask decoder pass -----------------------------------------------


def _counting_decoder(monkeypatch) -> list:
    """Record every answer the decoder graph gives, so a test knows the graph (not torch) answered."""
    calls = []
    original = rt.OpenVINODecoder.__call__

    def counted(self, *args, **kw):
        calls.append(self.key)
        return original(self, *args, **kw)

    monkeypatch.setattr(rt.OpenVINODecoder, "__call__", counted)
    return calls


@pytest.mark.parametrize("name", ["tinyvit_test", "tiny"])
def test_the_decoder_graph_gives_torch_fp32_masks(name, tmp_path, monkeypatch):
    monkeypatch.setenv(rt.GRAPH_DIR_ENV, str(tmp_path))
    torch.manual_seed(2)
    ref = _model("torch", name, precision="fp32")
    ov = _model("openvino", name, precision="fp32")
    with torch.no_grad():  # a tuned decoder: its weights are in the graph for real
        for p in ref.sam.mask_decoder.parameters():
            p.add_(0.02 * torch.randn_like(p))
    _same_weights(ref, ov)
    monkeypatch.setattr(ov, "encoder_graph", lambda wait=False: None)  # the encoder in torch: the decoder compared
    assert ov.decoder_graph(wait=True).ready
    calls = _counting_decoder(monkeypatch)
    in_torch = []
    torch_decoder = ov.sam.mask_decoder.predict_masks
    monkeypatch.setattr(ov.sam.mask_decoder, "predict_masks",
                        lambda *a, **k: in_torch.append(1) or torch_decoder(*a, **k))
    sessions = _sessions_on_one_image((ref, ov), seed=1)
    prompts = [{"points": [[35, 30]], "labels": [1]},  # a lone click: SAM's three masks
               {"box": [18, 18, 52, 42]},
               {"points": [[35, 30], [60, 60]], "labels": [1, 0]},
               {"points": [[35, 30]], "labels": [1], "box": [18, 18, 52, 42]},
               {"points": [[35, 30], [40, 25], [70, 50]], "labels": [1, 1, 0], "multimask": True}]
    for prompt in prompts:
        answers = [s.interact(**prompt) for s in sessions]
        np.testing.assert_array_equal(answers[0].masks, answers[1].masks)
        np.testing.assert_allclose(answers[0].logits, answers[1].logits, atol=1e-4)
        np.testing.assert_allclose(answers[0].scores, answers[1].scores, atol=1e-4)
    logits = sessions[0].last_logits  # an earlier answer as mask input, as SamPredictor takes it
    masks = [s.predict(points=[[30, 30]], labels=[1], mask_input=logits)[0] for s in sessions]
    np.testing.assert_array_equal(*masks)
    for rule in ("logits", "clicks+zoom"):  # clicks feeding back the logits; zoomed-in windows
        for s in sessions:
            s.rule = rule
        masks = [s.predict(points=[[35, 30], [45, 33], [25, 38]], labels=[1, 1, 0])[0] for s in sessions]
        np.testing.assert_array_equal(*masks)
    assert len(calls) >= len(prompts) + 3 and in_torch == []  # every pass of the OpenVINO model: in its graph
    passes = len(calls)
    emb = sessions[1].embedding()  # many prompts in one pass (segment everything's grid) stay in torch
    for s in sessions:
        s.lone_clicks(emb, np.array([[30.0, 30.0], [60.0, 50.0]]))
    assert len(calls) == passes and in_torch == [1]


def test_the_corrector_has_a_decoder_graph_of_its_own_with_torchs_masks(tmp_path, monkeypatch):
    monkeypatch.setenv(rt.GRAPH_DIR_ENV, str(tmp_path))
    torch.manual_seed(5)
    ref = _model("torch", precision="fp32")
    ov = _model("openvino", precision="fp32")
    _same_weights(ref, ov)
    decoder = {k: v for k, v in ref.sam.state_dict().items() if is_decoder_weight(k)}
    trained = {k: v + 0.05 * torch.randn_like(v) for k, v in decoder.items()}
    ref.corrector_change = ov.corrector_change = CorrectorChange.between(decoder, trained, rank=4)
    monkeypatch.setattr(ov, "encoder_graph", lambda wait=False: None)  # the encoder in torch: decoders compared
    corrector = ov.decoder_graph(wait=True, corrector=True)
    assert corrector.ready and corrector.key != ov.decoder_graph(wait=True).key
    calls = _counting_decoder(monkeypatch)
    sessions = _sessions_on_one_image((ref, ov), seed=2)
    for prompt in ({"points": [[35, 30]], "labels": [1]}, {"box": [18, 18, 52, 42]},
                   {"points": [[35, 30], [60, 60]], "labels": [1, 0]}):
        answers = [s.interact(**prompt) for s in sessions]
        np.testing.assert_array_equal(answers[0].masks, answers[1].masks)
        np.testing.assert_allclose(answers[0].logits, answers[1].logits, atol=1e-4)
    base = ov.decoder_graph().key  # the lone click (and its replay before the correction), the rest the corrector's
    assert calls[:2] == [base, corrector.key] and calls[-1] == corrector.key and set(calls) == {base, corrector.key}
    assert _model("openvino").decoder_graph(corrector=True) is None  # no corrector, no graph


def test_the_decoder_graph_is_exported_after_torch_answers_and_found_again(tmp_path, monkeypatch):
    monkeypatch.setenv(rt.GRAPH_DIR_ENV, str(tmp_path))
    torch.manual_seed(3)
    model = _model("openvino")
    monkeypatch.setattr(model, "encoder_graph", lambda wait=False: None)
    calls = _counting_decoder(monkeypatch)
    session = Session(model)
    session.set_image((np.random.default_rng(0).random((40, 40)) * 255).astype(np.uint8))
    assert not model.decoder_graph().ready  # nothing saved yet
    session.predict(points=[[20, 20]], labels=[1])  # torch answers, then the export begins
    graph = model.decoder_graph()
    assert calls == [] and graph.wait(timeout=300) and graph.export_s is not None
    assert [p.name for p in tmp_path.iterdir() if (p / "decoder.xml").is_file()] == [graph.folder.name]
    session.predict(points=[[20, 20], [10, 10]], labels=[1, 0])
    assert calls == [graph.key]
    torch.manual_seed(3)
    again = _model("openvino")  # the same weights in another process: the saved graph, read in the background
    assert not again.decoder_graph().ready
    assert again.decoder_graph(wait=True).ready and again.decoder_graph().export_s is None  # read, not exported
    with torch.no_grad():  # tuning changes the decoder: a new key, a new graph
        next(again.sam.mask_decoder.parameters()).add_(0.1)
    again.version += 1
    assert again.decoder_key() != graph.key and not again.decoder_graph().ready
    assert _model("torch", precision="fp32").decoder_graph() is None


def test_a_failed_decoder_export_leaves_torch_in_charge_with_one_warning(tmp_path, monkeypatch):
    monkeypatch.setenv(rt.GRAPH_DIR_ENV, str(tmp_path))
    import openvino

    def broken(*a, **k):
        raise RuntimeError("unsupported operation")

    torch.manual_seed(4)
    model, ref = _model("openvino"), _model("torch", precision="fp32")
    _same_weights(model, ref)
    monkeypatch.setattr(model, "encoder_graph", lambda wait=False: None)
    monkeypatch.setattr(openvino, "convert_model", broken)
    with pytest.warns(RuntimeWarning, match="decoder could not be exported to OpenVINO.*unsupported operation"):
        assert model.decoder_graph(wait=True) is None
    image = (np.random.default_rng(0).random((40, 40)) * 255).astype(np.uint8)
    sessions = [Session(m) for m in (model, ref)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        masks = []
        for s in sessions:
            s.set_image(image)
            masks.append(s.predict(points=[[20, 20], [5, 5]], labels=[1, 0])[0])
    np.testing.assert_array_equal(*masks)
