"""Offline checkpoints: Meta's SAM ``.pth`` and MSA reference checkpoints read safely into a model, and the atomic
write every file the project saves goes through. The project's own formats are in ``model_files``."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import pickle
import re
import shutil
import signal
import stat
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..file_checks import CheckpointError, existing_file
from ..network.adapters import ADAPTER_KEY
from ..network.architectures import MODEL_REGISTRY, PATCH_SIZE

log = logging.getLogger(__name__)


@dataclass
class LoadReport:
    """What happened to each key, so nothing is dropped silently."""

    loaded: int = 0
    resized: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{self.loaded} tensors loaded"]
        if self.resized:
            parts.append(f"{len(self.resized)} resized to the model's image size")
        if self.skipped:
            parts.append(f"{len(self.skipped)} skipped: {_first(self.skipped)}")
        if self.missing:
            parts.append(f"{len(self.missing)} not in the file (kept at init): {_first(self.missing)}")
        return "; ".join(parts)


def _first(keys: list[str], n: int = 5) -> str:
    return ", ".join(keys[:n]) + (" …" if len(keys) > n else "")


def _current_umask() -> int:
    """The process umask, read without changing it where Linux shows it (os.umask's set-and-restore races
    with files other threads create meanwhile)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


_LIVE_TEMPS: set[str] = set()  # temp files this process is writing now (removed on SIGTERM)


def _remove_live_temps() -> None:
    for tmp in list(_LIVE_TEMPS):
        with contextlib.suppress(OSError):
            os.unlink(tmp)


@contextlib.contextmanager
def _temps_removed_on_sigterm():
    """While the main thread writes, SIGTERM first removes this process's temp files, then does what it did
    before (the default: end the process). Writes from other threads rely on the stale-file sweep."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous in (None, signal.SIG_IGN):  # set outside Python, or ignored: leave it alone
        yield
        return

    def on_sigterm(signum, frame):
        _remove_live_temps()
        signal.signal(signum, previous)
        if callable(previous):
            previous(signum, frame)
        else:
            os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


TEMP_MARK = "napari-msa-tmp"  # in every temp file's name: only files with it are ever removed as stale
# ".<target>.napari-msa-tmp.<pid>.<mkstemp's 8 characters>.tmp"
_TEMP_MIDDLE = re.compile(rf"{re.escape(TEMP_MARK)}\.(\d+)\.[a-z0-9_]{{8}}")


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.{TEMP_MARK}.{os.getpid()}."


def _remove_stale_temps(target: Path) -> None:
    """Temp files a killed earlier write of ``target`` left behind. Only what provably is ours goes: our exact
    name (the target's name, our mark, a pid, mkstemp's eight characters), a regular file, not being written
    now, and a writer's pid that is gone; anything else beside the output is the user's and stays."""
    prefix = f".{target.name}."
    try:
        candidates = [p for p in target.parent.iterdir() if p.name.startswith(prefix) and p.name.endswith(".tmp")]
    except OSError:
        return
    for tmp in candidates:
        ours = _TEMP_MIDDLE.fullmatch(tmp.name[len(prefix):-len(".tmp")])
        if ours is None or str(tmp) in _LIVE_TEMPS:
            continue  # not our name (another file's temp, the user's file), or one being written now
        try:
            if tmp.is_symlink() or not tmp.is_file() or _pid_alive(int(ours.group(1))):
                continue
            tmp.unlink()
            log.info("removed %s, left by an interrupted earlier write", tmp)
        except OSError:
            continue


def _disk_full(err: Exception, folder: Path) -> bool:
    """Whether a failed write ran out of disk: errno 28, or a library's own words for it (safetensors: 'os error
    28'; torch.save: a short write, 'unexpected pos') with the disk (nearly) full."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return True
    if "No space left on device" in str(err) or "os error 28" in str(err):
        return True
    if isinstance(err, OSError):
        return False
    try:
        return shutil.disk_usage(folder).free < (1 << 20)
    except OSError:
        return False


def _no_space(path: Path) -> OSError:
    """One message for every writer that meets a full disk: which file, that nothing was replaced, what to do."""
    err = OSError(f"no space left on the disk of {path.parent} while writing {path.name}; nothing was replaced: "
                  "free space or write elsewhere")
    err.errno = errno.ENOSPC
    return err


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call ``write(tmp_path)`` then rename over ``path``, so a crash never leaves half a file.

    A file that is replaced keeps its permissions (a new one gets the user's usual mode, not mkstemp's 0600),
    a symlink is written through to its target, and a read-only file is refused rather than replaced. The
    temp file is removed on errors, Ctrl-C and (main thread) SIGTERM; ones a killed earlier write left behind
    are removed on the next write of the same file.
    """
    path = Path(path)
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    if target.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file name inside it")
    if target.exists() and not target.is_file():  # a device (/dev/null), a FIFO, a socket: never replaced
        raise OSError(f"{path} is not a regular file (a device, pipe or socket); it was not replaced: give a "
                      "file name")
    mode = stat.S_IMODE(target.stat().st_mode) if target.exists() else 0o666 & ~_current_umask()
    if target.exists() and not mode & 0o222:
        raise PermissionError(f"{path} is read-only; it was not replaced (make it writable or choose another name)")
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(target)
    with _temps_removed_on_sigterm():
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=".tmp", dir=target.parent)
        os.close(fd)
        _LIVE_TEMPS.add(tmp)
        try:
            write(tmp)
            os.chmod(tmp, mode)
            os.replace(tmp, target)
        except BaseException as err:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(err, Exception) and _disk_full(err, target.parent):
                raise _no_space(path) from err
            raise
        finally:
            _LIVE_TEMPS.discard(tmp)
    return path


def _file_kind(path: Path) -> str:
    """What a file that is no readable checkpoint looks like, for the message (torch's own says "101")."""
    try:
        with path.open("rb") as f:
            head = f.read(256)
    except OSError as err:
        return f"cannot open it: {err.strerror or err}"
    if not head:
        return "it is empty"
    if head.startswith(b"PK"):
        return "it is damaged or cut short"
    if head[8:10] == b'{"':
        return "it is a safetensors file, not a .pth"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "its content is not a PyTorch save"
    return "it is a text file"


def _unreadable(path: Path) -> CheckpointError:
    return CheckpointError(f"{path.name} is not a readable PyTorch checkpoint ({_file_kind(path)}); give the "
                           "model's .pth weights file")


def read_torch_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a SAM or MSA ``.pth`` safely (``weights_only=True``) and return its model state dict."""
    path = existing_file(path, "checkpoint", ".pth")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        wants = re.search(r"GLOBAL (\S+)", str(err))
        if wants is None:  # not a pickle torch can read at all
            raise _unreadable(path) from err
        raise CheckpointError(
            f"{path.name} was refused: loading it would run code ({wants.group(1)}), and only files of plain weights "
            "are loaded; save just the weights (torch.save(model.state_dict(), path)) from a source you trust"
        ) from err
    except Exception as err:  # truncated or foreign files; torch's own messages are long or just "101"
        raise _unreadable(path) from err
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # MSA reference checkpoint
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path.name} holds no SAM state dict (expected a dict of tensors)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def infer_architecture(state: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(embed_dim, depth) of the image encoder in a state dict."""
    key = "image_encoder.patch_embed.proj.weight"
    if key not in state:
        raise CheckpointError("not a SAM checkpoint: it has no 'image_encoder.patch_embed.proj.weight'")
    depth = len({k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")})
    return int(state[key].shape[0]), depth


def _describe(embed_dim: int, depth: int) -> str:
    for name, cfg in MODEL_REGISTRY.items():
        if (cfg.embed_dim, cfg.depth) == (embed_dim, depth):
            return f"{name} (embed dim {embed_dim}, {depth} blocks)"
    return f"an unknown SAM (embed dim {embed_dim}, {depth} blocks)"


def resize_pos_embed(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """Bicubic resize of the absolute position embedding (1, H, W, C) to (1, grid, grid, C)."""
    resized = F.interpolate(pos.permute(0, 3, 1, 2).float(), size=(grid, grid), mode="bicubic", align_corners=False)
    return resized.permute(0, 2, 3, 1).to(pos.dtype)


def resize_rel_pos(table: torch.Tensor, length: int) -> torch.Tensor:
    """Linear resize of a relative position table (L, C), as SAM itself does at run time."""
    resized = F.interpolate(table.float().T[None], size=length, mode="linear", align_corners=False)
    return resized[0].T.to(table.dtype)


def _check_architecture(sam: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    cfg = sam.model_config
    is_vit_file = "image_encoder.patch_embed.proj.weight" in state
    if cfg.encoder != "vit":
        if is_vit_file:
            raise CheckpointError(f"{source} is a SAM ViT checkpoint ({_describe(*infer_architecture(state))}), "
                                  f"but the model is {cfg.name}; choose --model vit_b/vit_l/vit_h for it")
        return
    found = infer_architecture(state)
    if found != (cfg.embed_dim, cfg.depth):
        raise CheckpointError(
            f"{source} is {_describe(*found)}, but the model is {_describe(cfg.embed_dim, cfg.depth)}; "
            f"choose the matching model name"
        )


def _resized(key: str, value: torch.Tensor, target: torch.Tensor, cfg) -> torch.Tensor | None:
    """SAM's ViT position tables resampled to the model's image size; None for any other mismatch."""
    if cfg.encoder != "vit":
        return None  # LiteMedSAM runs at the size it was trained at: nothing to resample
    if key == "image_encoder.pos_embed":
        return resize_pos_embed(value, cfg.image_size // PATCH_SIZE)
    if key.endswith(("rel_pos_h", "rel_pos_w")) and value.shape[1] == target.shape[1]:
        return resize_rel_pos(value, target.shape[0])
    return None


def load_sam_state(sam: torch.nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> LoadReport:
    """Copy a SAM/MSA/LiteMedSAM state dict into ``sam``; SAM's position tables follow its image size."""
    cfg = sam.model_config
    _check_architecture(sam, state, source)
    own = sam.state_dict()
    report = LoadReport()
    to_load = {}
    for key, value in state.items():
        if key not in own:
            report.skipped.append(key)
            continue
        target = own[key]
        if value.shape != target.shape:
            value = _resized(key, value, target, cfg)
            if value is None:
                raise CheckpointError(f"{source}: '{key}' has shape {tuple(state[key].shape)}, {cfg.name} expects "
                                      f"{tuple(target.shape)}")
            report.resized.append(key)
        to_load[key] = value.to(target.dtype)
    lacking = [k for k in own if k not in to_load and ADAPTER_KEY not in k]
    if lacking:
        raise CheckpointError(f"{source} lacks {len(lacking)} of {cfg.name}'s weights, e.g. {lacking[:3]}")
    sam.load_state_dict(to_load, strict=False)
    report.loaded = len(to_load)
    report.missing = [k for k in own if k not in to_load]  # adapters only: they start at zero
    if report.skipped:
        log.warning("%s: keys the model has no place for were skipped: %s", source, report.skipped)
    return report
