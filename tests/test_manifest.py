"""Every python_name in the npe2 manifest imports (catches 'Failed to import command' before users do)."""

import importlib
import re
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


def _imports(path: Path, modules: str) -> list[str]:
    pattern = re.compile(rf"^\s*(?:from|import)\s+(?:{modules})(?:[.\s]|$)", re.MULTILINE)
    return pattern.findall(path.read_text())


def test_engine_never_imports_qt_or_napari():
    for path in (MANIFEST.parent / "engine").rglob("*.py"):
        assert not _imports(path, "napari|qtpy|PyQt5|PyQt6|magicgui|superqt"), path.name


def test_widgets_never_import_torch():
    for path in (MANIFEST.parent / "_widgets").rglob("*.py"):
        assert not _imports(path, "torch|segment_anything"), path.name

