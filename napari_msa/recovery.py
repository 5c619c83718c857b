"""Recovery files: the committed labels of each image, written at every commit, so a crash loses nothing.

One file per image in a per-user folder (``$NAPARI_MSA_RECOVERY_DIR``, else ``$XDG_STATE_HOME/napari-msa/recovery``,
else ``~/.local/state/napari-msa/recovery``), never beside the user's data. An image is known by its file (path and
shape) when napari opened it from one, else by its shape, type and a sample of its values, so opening the same
image again finds its file. Each write is atomic (temporary file + rename): a file is the state of one commit,
never half of one. Qt-free and torch-free.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

KEEP = 50  # recovery files kept; older ones are removed when a new image gets one
SAMPLE_VALUES = 1 << 21  # values of an in-memory image hashed for its key (all of a small one)


def recovery_dir() -> Path:
    explicit = os.environ.get("NAPARI_MSA_RECOVERY_DIR")
    if explicit:
        return Path(explicit)
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "napari-msa" / "recovery"


def image_key(data, source_path: str | None = None) -> str:
    """A stable name for an image: its file when it has one, else its shape, type and a sample of its values."""
    h = hashlib.blake2b(digest_size=12)
    shape, dtype = tuple(int(s) for s in data.shape), str(np.dtype(data.dtype))
    h.update(repr((shape, dtype)).encode())
    if source_path:
        h.update(b"file:" + os.path.abspath(source_path).encode())
    else:
        flat = np.asarray(data).reshape(-1)
        step = max(1, flat.size // SAMPLE_VALUES)
        h.update(np.ascontiguousarray(flat[::step]).tobytes())
    return h.hexdigest()


@dataclass
class Recovered:
    labels: np.ndarray
    image_name: str
    saved_at: float  # seconds since the epoch
    objects: int

    def when(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(self.saved_at))


class RecoveryFile:
    """The recovery file of one image."""

    def __init__(self, key: str, folder: Path | None = None) -> None:
        self.path = (folder or recovery_dir()) / f"{key}.npz"

    def save(self, labels: np.ndarray, image_name: str) -> None:
        """Write ``labels`` (the committed state) atomically; all-background labels remove the file instead."""
        if not np.any(labels):
            self.discard()
            return
        from napari_msa.engine.files.checkpoints import atomic_write  # a commit came first: the engine is loaded

        meta = {"image_name": image_name, "saved_at": time.time(), "objects": int(len(np.unique(labels)) - 1)}

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, labels=labels, meta=np.array(json.dumps(meta)))

        atomic_write(self.path, write)
        _prune(self.path.parent)

    def load(self) -> Recovered | None:
        """The recovered labels, or None when there are none (or the file cannot be read: it is then left)."""
        if not self.path.is_file():
            return None
        try:
            with np.load(self.path, allow_pickle=False) as f:
                labels, meta = f["labels"], json.loads(str(f["meta"]))
        except (OSError, ValueError, KeyError):
            return None
        return Recovered(labels, str(meta.get("image_name", "")), float(meta.get("saved_at", 0.0)),
                         int(meta.get("objects", 0)))

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


def _prune(folder: Path) -> None:
    def modified(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except OSError:  # removed meanwhile (another napari)
            return 0.0

    for old in sorted(folder.glob("*.npz"), key=modified, reverse=True)[KEEP:]:
        old.unlink(missing_ok=True)
