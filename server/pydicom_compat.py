"""``pydicom._storage_sopclass_uids`` for pydicom 3, so MONAI Label 0.8.5 starts beside napari-msa.

MONAI Label 0.8.5 imports pydicom-seg 0.4.1 at start-up, which imports ``SegmentationStorage`` from
``pydicom._storage_sopclass_uids``: a private module pydicom 3 removed (its UIDs are in ``pydicom.uid``). napari-msa
and highdicom need pydicom >= 3, so instead of pinning pydicom < 3 the server's venv gets this finder (through a
``.pth`` file, ``make server``): it supplies that one module, built from ``pydicom.uid``, only when something
imports it and only if pydicom itself has no such module. Nothing else of pydicom changes.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

MODULE = "pydicom._storage_sopclass_uids"


class _Loader(importlib.abc.Loader):
    def create_module(self, spec):
        return None  # the default module object

    def exec_module(self, module) -> None:
        import pydicom.uid as uid

        for name in dir(uid):
            value = getattr(uid, name)
            if isinstance(value, uid.UID):  # the named SOP class and transfer syntax UIDs
                setattr(module, name, value)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        return importlib.machinery.ModuleSpec(fullname, _Loader()) if fullname == MODULE else None


def install() -> None:
    """Put the finder last on ``sys.meta_path`` (once): pydicom's own module, where it exists, still wins."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())
