"""The rooms import one way (README, "Layout"). The engine's: each room imports only the rooms before it in ROOMS,
and the facts at the engine's top level import no room. The widgets': the Segment and Tune rooms import the shared
top level, never each other, and the top level imports no room. Read from the source, so this loads nothing."""

from __future__ import annotations

import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parent.parent / "napari_msa" / "engine"
FACTS = ("catalog", "cancel", "file_checks")  # torch-free, at the top level: the widgets and the CLI read them
ROOMS = ("facts", "network", "files", "prompts", "model", "inference", "tuning")
WIDGETS = ENGINE.parent / "_widgets"
WIDGET_ROOMS = ("segment", "tune")  # one per dock widget; what both use lives at the top level
REPO = ENGINE.parent.parent


def room_of(module: str) -> str:
    """'napari_msa.engine.model.loading' -> 'model'; a top-level fact -> 'facts'."""
    parts = module.split(".")
    assert parts[:2] == ["napari_msa", "engine"] and len(parts) > 2, module
    return "facts" if parts[2] in FACTS else parts[2]


def imports_under(path: Path, root: str) -> set[str]:
    """The modules (or packages) under the package ``root`` that ``path`` imports, resolved to absolute names;
    ``from package import name`` counts as importing ``package.name``."""
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names = [f"{module}.{a.name}" for a in node.names] if module == root else [module]
            found.update(n for n in names if n.startswith(root + "."))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith(root + "."))
    return found


def engine_imports(path: Path) -> set[str]:
    """The engine modules (or packages) that ``path`` imports, resolved to absolute names."""
    return imports_under(path, "napari_msa.engine")


def modules() -> dict[str, Path]:
    return {".".join(p.relative_to(ENGINE.parent.parent).with_suffix("").parts): p
            for p in sorted(ENGINE.rglob("*.py")) if p.name != "__init__.py"}


def test_the_engine_top_level_holds_the_facts_and_the_rooms_only():
    top = {p.stem for p in ENGINE.glob("*.py")} - {"__init__"}
    rooms = {p.name for p in ENGINE.iterdir() if (p / "__init__.py").is_file()}
    assert top == set(FACTS)
    assert rooms == set(ROOMS) - {"facts"}


def test_rooms_import_only_the_rooms_before_them():
    wrong = []
    for module, path in modules().items():
        mine = ROOMS.index(room_of(module))
        for target in engine_imports(path):
            theirs = ROOMS.index(room_of(target))
            if theirs > mine:
                wrong.append(f"{module} imports {target} ({ROOMS[mine]} -> {ROOMS[theirs]})")
    assert not wrong, "\n".join(wrong)


def widget_room_of(module: str) -> str:
    """'napari_msa._widgets.segment._form' -> 'segment'; a shared module at the top level -> 'top level'."""
    parts = module.split(".")
    assert parts[:2] == ["napari_msa", "_widgets"] and len(parts) > 2, module
    return parts[2] if parts[2] in WIDGET_ROOMS else "top level"


def test_the_widgets_top_level_holds_shared_modules_and_the_two_rooms():
    rooms = {p.name for p in WIDGETS.iterdir() if (p / "__init__.py").is_file()}
    assert rooms == set(WIDGET_ROOMS)
    assert not [p for p in WIDGETS.iterdir() if p.is_dir() and p.name not in WIDGET_ROOMS and p.name != "__pycache__"]


def test_widget_rooms_import_the_top_level_and_never_each_other():
    wrong = []
    for path in sorted(WIDGETS.rglob("*.py")):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        if path.name == "__init__.py":
            module = module.removesuffix(".__init__")
        mine = widget_room_of(module) if module != "napari_msa._widgets" else "top level"
        for target in imports_under(path, "napari_msa._widgets"):
            theirs = widget_room_of(target)
            if theirs != "top level" and theirs != mine:
                wrong.append(f"{module} imports {target} ({mine} -> {theirs})")
    assert not wrong, "\n".join(wrong)
