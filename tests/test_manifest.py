"""Every python_name in the npe2 manifest imports (catches 'Failed to import command' before users do)."""

import importlib
from pathlib import Path

import npe2
import pytest
import yaml

MANIFEST = Path(__file__).resolve().parent.parent / "napari_msa" / "napari.yaml"
COMMANDS = yaml.safe_load(MANIFEST.read_text())["contributions"]["commands"]


def test_manifest_is_valid_and_root_link_points_to_it():
    manifest = npe2.PluginManifest.from_file(MANIFEST)
    assert manifest.name == "napari-msa"
    assert {w.display_name for w in manifest.contributions.widgets} == {"Segment (MSA)", "Tune (MSA)"}
    root = MANIFEST.parent.parent / "napari.yaml"
    assert root.is_symlink() and root.resolve() == MANIFEST


@pytest.mark.parametrize("command", COMMANDS, ids=[c["id"] for c in COMMANDS])
def test_python_name_imports(command):
    module_name, attr = command["python_name"].split(":")
    assert callable(getattr(importlib.import_module(module_name), attr))


def test_engine_never_imports_qt_or_napari():
    engine = MANIFEST.parent / "engine"
    for path in engine.glob("*.py"):
        text = path.read_text()
        for banned in ("import napari", "from napari", "qtpy", "PyQt", "magicgui"):
            assert banned not in text, f"{path.name} imports {banned}"


def test_widgets_never_import_torch():
    for path in (MANIFEST.parent / "_widgets").glob("*.py"):
        text = path.read_text()
        assert "import torch" not in text and "from torch" not in text, path.name
