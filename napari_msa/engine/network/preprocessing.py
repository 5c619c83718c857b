"""Intensity normalisation presets and SAM's input transform.

Every image reaches the encoder as SAM saw its training data: 8-bit RGB, resized on the longest
side, normalised with SAM's pixel mean/std and padded. Medical intensities are mapped to 8 bits
first with a preset; for volumes the window is computed once for the whole volume, so every slice
is mapped the same way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from segment_anything.utils.transforms import ResizeLongestSide

from ..catalog import NORMALIZATION_PRESETS

PREPROCESSING_VERSION = 2  # part of embedding-cache keys: bump when pixels reach the encoder differently


@dataclass(frozen=True)
class Normalization:
    """How raw intensities become 0..255. ``auto``: RGB uint8 as is, anything else by percentiles."""

    preset: str = "auto"
    level: float = 40.0  # CT window level (HU)
    width: float = 400.0  # CT window width (HU)
    lower_percentile: float = 0.5
    upper_percentile: float = 99.5
    limits: tuple[float, float] | None = None  # explicit (low, high), e.g. napari contrast limits

    def __post_init__(self) -> None:
        if self.preset not in NORMALIZATION_PRESETS:
            raise ValueError(f"unknown normalisation '{self.preset}'; choose one of: "
                             f"{', '.join(NORMALIZATION_PRESETS)}")
        if self.preset == "limits" and (self.limits is None or not np.all(np.isfinite(self.limits))
                                        or self.limits[1] <= self.limits[0]):
            raise ValueError("normalisation 'limits' needs finite limits=(low, high) with low < high")
        if self.preset == "ct" and not (np.isfinite(self.width) and self.width > 0 and np.isfinite(self.level)):
            raise ValueError(f"the CT window needs a finite level and a positive width, got level {self.level}, "
                             f"width {self.width}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Normalization:
        d = dict(d)
        if d.get("limits") is not None:
            d["limits"] = tuple(d["limits"])
        return cls(**d)


def intensity_window(image: np.ndarray, norm: Normalization, rgb: bool) -> tuple[float, float] | None:
    """The (low, high) range mapped to 0..255, or None when the image is used as is."""
    preset = norm.preset
    if preset == "auto":
        preset = "none" if rgb and image.dtype == np.uint8 else "percentile"
    if preset == "none":
        return None
    if preset == "ct":
        return norm.level - norm.width / 2, norm.level + norm.width / 2
    if preset == "limits":
        return float(norm.limits[0]), float(norm.limits[1])
    sample = image if image.size <= 4_000_000 else image.reshape(-1)[:: image.size // 4_000_000 + 1]
    if np.issubdtype(sample.dtype, np.floating):
        sample = sample[np.isfinite(sample)]  # NaN/Inf pixels must not make the window (nan, nan)
        if sample.size == 0:
            raise ValueError("the image has no finite pixel values (all NaN or Inf)")
    lo, hi = np.percentile(sample, [norm.lower_percentile, norm.upper_percentile])
    if hi <= lo:  # a constant image: any window; wide enough to stay a window at large magnitudes (1e38 + 1 == 1e38)
        hi = lo + max(1.0, abs(float(lo)) * 1e-6)
    return float(lo), float(hi)


def to_uint8_rgb(plane: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    """One 2D plane (Y,X) or (Y,X,C) to (Y,X,3) uint8."""
    # Non-finite pixels (NaN/Inf) become the window's low end rather than poisoning the plane.
    if window is None:
        if plane.dtype != np.uint8:
            plane = np.clip(np.nan_to_num(plane, nan=0.0, posinf=0.0, neginf=0.0), 0, 255).astype(np.uint8)
    else:
        lo, hi = window
        span = hi - lo if hi - lo > 0 else 1.0
        scaled = (plane.astype(np.float32) - lo) * (255.0 / span)
        scaled = np.nan_to_num(scaled, nan=0.0, posinf=0.0, neginf=0.0)
        plane = np.clip(scaled, 0, 255).round().astype(np.uint8)
    if plane.ndim == 2:
        plane = np.repeat(plane[..., None], 3, axis=-1)
    elif plane.shape[-1] == 4:
        plane = plane[..., :3]
    elif plane.shape[-1] == 1:
        plane = np.repeat(plane, 3, axis=-1)
    return np.ascontiguousarray(plane)


def normalize_pixels(x: torch.Tensor, pixel_norm: str, pixel_mean: torch.Tensor,
                     pixel_std: torch.Tensor) -> torch.Tensor:
    """0..255 pixels (…,3,h,w) as the encoder was trained on them, before padding.

    'sam': SAM's per-channel mean/std. 'minmax': LiteMedSAM's per-image min–max to [0, 1] (its
    reference inference rescales the resized image this way and uses no mean/std).
    """
    if pixel_norm == "minmax":
        lo = x.amin(dim=(-3, -2, -1), keepdim=True)
        hi = x.amax(dim=(-3, -2, -1), keepdim=True)
        return (x - lo) / (hi - lo).clamp(min=1e-8)
    return (x - pixel_mean.to(x.device)) / pixel_std.to(x.device)


def encoder_input(rgb: np.ndarray, image_size: int, pixel_mean: torch.Tensor, pixel_std: torch.Tensor,
                  device: torch.device | str = "cpu",
                  pixel_norm: str = "sam") -> tuple[torch.Tensor, tuple[int, int]]:
    """SAM's resize and padding: (1,3,S,S) normalised, padded tensor, and the resized (h, w) before padding."""
    resized = ResizeLongestSide(image_size).apply_image(rgb)
    x = torch.as_tensor(resized, device=device).permute(2, 0, 1).contiguous()[None].float()
    h, w = x.shape[-2:]
    x = normalize_pixels(x, pixel_norm, pixel_mean, pixel_std)
    x = torch.nn.functional.pad(x, (0, image_size - w, 0, image_size - h))
    return x, (int(h), int(w))


@dataclass(frozen=True)
class ImageLayout:
    """How an array's axes are read: 2D grey, 2D RGB, a grey volume or an RGB volume."""

    is_volume: bool
    rgb: bool

    @classmethod
    def of(cls, image: np.ndarray, rgb: bool | None = None) -> ImageLayout:
        if rgb is None:
            rgb = image.ndim in (3, 4) and image.shape[-1] in (3, 4) and (image.ndim == 4 or image.shape[0] > 4)
        spatial = image.ndim - (1 if rgb else 0)
        if spatial not in (2, 3):
            raise ValueError(
                f"expected a (Y,X), (Y,X,3), (Z,Y,X) or (Z,Y,X,3) image, got shape {image.shape}; "
                "drop extra axes (channels, time) first"
            )
        return cls(is_volume=spatial == 3, rgb=bool(rgb))
