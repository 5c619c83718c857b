"""A second synthetic phantom generator, unlike the CT one: MRI / ultrasound / microscopy / fundus-like scenes.

``phantoms.py`` draws abdominal CT: bright, enhanced organs in HU on a dark air background. This generator draws
what that one lacks, for training and evaluating click sessions of interactive segmentation:

* contrasts: MRI T1-like (fluid dark, fat bright), T2-like (fluid bright, flow voids dark), FLAIR-like (fluid dark,
  oedema bright), ultrasound-like (speckle, anechoic cysts with posterior enhancement, acoustic shadows, sector or
  linear field of view), brightfield / fluorescence microscopy-like cells and glands, fundus-like retina;
* objects DARKER than their surroundings (ventricles, cysts, lumens, flow voids, nuclei, vessels) for about half of
  the labelled objects; rings (bladder / vessel walls, gland epithelium, enhancing tumour rims) and nested objects;
* irregular shapes: lobulated and harmonic blobs, unions of lobes, tubes along smooth random curves; sizes from a
  few dozen pixels to more than a quarter of the plane;
* textured backgrounds (smooth noise fields, stripes, gland-like blobs), smooth multiplicative bias fields,
  Rician / Gaussian noise or speckle of varied level, blur, partial-volume (anti-aliased) edges, and object
  contrasts down to about 0.1 of the dynamic range.

Label convention: **each label is its own visible tissue.** A nested object is painted over its container, so the
outer label is a ring around the inner one (a bladder wall around the urine, a cell's cytoplasm around its nucleus,
a tumour rim around its necrotic core); a ring whose inside is not labelled shows the container or the background
there (label 0). Labels are exact: a pixel has the label of the object whose own boundary contains its centre; the
image's edges are anti-aliased and blurred around that boundary.

Objects are implicit shapes evaluated at a plane ``z`` in [0, 1], so a volume costs one 2D render per slice: their
size follows a z profile (they start and end inside the volume), their centres drift and their outlines twist
smoothly along z. The seed streams are the first generator's (``TRAIN_STREAM``, ``EVAL_STREAM``), so callers swap
``phantoms`` for ``phantoms_mr`` without touching their seeding:

* ``random_slice(rng)`` → ``MRSlice`` (``.image`` float32 in the modality's native scale, ``.labels`` int32,
  ``.kind`` the modality, ``.scene``, ``.names`` and ``.tags`` per label);
* ``phantom_volume(seed, shape, scene=None)`` → (image float32 (Z, Y, X), labels uint8, label names);
* ``window_to_uint8(image, rng, kind)`` → the 8-bit rendering a user would load (percentile windows).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage

from .phantoms import EVAL_STREAM, TRAIN_STREAM

__all__ = ["EVAL_STREAM", "TRAIN_STREAM", "MR_SAMPLE_SEED", "KINDS", "SCENES", "MRSlice", "Scene", "draw_scene",
           "render_plane", "random_slice", "phantom_volume", "window_to_uint8"]

MR_SAMPLE_SEED = 20240921
KINDS = ("mr_t1", "mr_t2", "mr_flair", "ultrasound", "microscopy", "fundus")
SCENES = ("brain", "body", "tissue", "ultrasound", "cells", "retina")
VOLUME_SCENES = ("brain", "body", "tissue")

# Tissue → (T1, T2, FLAIR, ultrasound echogenicity), on a 0..1 scale before the scene's intensity scaling.
TISSUE: dict[str, tuple[float, float, float, float]] = {
    "csf": (0.10, 0.95, 0.07, 0.02),
    "fluid": (0.14, 0.90, 0.12, 0.03),
    "fat": (0.92, 0.78, 0.72, 0.55),
    "wm": (0.74, 0.36, 0.46, 0.40),
    "gm": (0.52, 0.52, 0.60, 0.40),
    "muscle": (0.42, 0.26, 0.34, 0.30),
    "liver": (0.60, 0.30, 0.40, 0.45),
    "spleen": (0.44, 0.62, 0.52, 0.40),
    "cortex": (0.56, 0.58, 0.52, 0.36),
    "medulla": (0.36, 0.74, 0.46, 0.18),
    "oedema": (0.36, 0.82, 0.90, 0.25),
    "plaque": (0.40, 0.76, 0.86, 0.30),
    "tumour": (0.46, 0.64, 0.70, 0.30),
    "enhancing": (0.86, 0.58, 0.76, 0.55),
    "necrosis": (0.22, 0.90, 0.30, 0.08),
    "flow_void": (0.04, 0.04, 0.05, 0.02),
    "bone": (0.04, 0.03, 0.03, 1.00),
    "marrow": (0.80, 0.58, 0.55, 0.60),
    "blood": (0.84, 0.66, 0.80, 0.30),
    "fibrous": (0.20, 0.14, 0.18, 0.80),
    "air": (0.01, 0.01, 0.01, 0.00),
    "bowel": (0.40, 0.55, 0.42, 0.45),
    "wall": (0.50, 0.28, 0.38, 0.75),
}
_CONTRAST_INDEX = {"mr_t1": 0, "mr_t2": 1, "mr_flair": 2, "ultrasound": 3}


# --- geometry: signed distances in pixels ---------------------------------------------------------------------------


@dataclass
class Geom:
    """An implicit 2D shape at plane ``z``, in units of the plane's long side; ``sd`` gives signed distances in px.

    ``kind``: "star" (an ellipse whose radius is modulated by harmonics ``amps[k] cos((k + 2) θ + phase)``), "lobes"
    (a union of discs ``lobes`` = (dy, dx, r) around the centre) or "tube" (a polyline ``points`` (relative to the
    centre) with radii ``widths``). Along z the shape scales by ``(1 - |t|^p)^(1/p)``, t = (z - zc) / hz, moves by
    ``drift`` per unit z and its harmonics turn by ``twist``.
    """

    kind: str
    center: tuple[float, float]
    radii: tuple[float, float] = (0.05, 0.05)
    angle: float = 0.0
    amps: tuple[float, ...] = ()
    phases: tuple[float, ...] = ()
    twist: tuple[float, ...] = ()
    lobes: tuple[tuple[float, float, float], ...] = ()
    points: np.ndarray | None = None
    widths: np.ndarray | None = None
    zc: float = 0.5
    hz: float = 10.0
    zpow: float = 2.0
    drift: tuple[float, float] = (0.0, 0.0)

    def scale_at(self, z: float) -> float:
        t = abs(z - self.zc) / self.hz
        return float((1.0 - t ** self.zpow) ** (1.0 / self.zpow)) if t < 1.0 else 0.0

    def reach(self) -> float:
        """A radius (long-side units) around ``center`` that holds the shape at any z."""
        if self.kind == "star":
            return max(self.radii) * (1.0 + sum(abs(a) for a in self.amps))
        if self.kind == "lobes":
            return max(np.hypot(dy, dx) + r for dy, dx, r in self.lobes)
        assert self.points is not None and self.widths is not None
        return float(np.hypot(self.points[:, 0], self.points[:, 1]).max() + self.widths.max())

    def shrunk(self, by: float, offset: tuple[float, float] = (0.0, 0.0)) -> Geom:
        """The same shape ``by`` (long-side units) thinner: the hole of a ring / the inner of a nested pair."""
        c = (self.center[0] + offset[0], self.center[1] + offset[1])
        if self.kind == "star":
            return replace(self, center=c, radii=(max(self.radii[0] - by, 1e-3), max(self.radii[1] - by, 1e-3)))
        if self.kind == "lobes":
            return replace(self, center=c, lobes=tuple((dy, dx, max(r - by, 1e-3)) for dy, dx, r in self.lobes))
        assert self.widths is not None
        return replace(self, center=c, widths=np.maximum(self.widths - by, 1e-3))

    def box(self, z: float, long: int, shape: tuple[int, int]) -> tuple[slice, slice, float, float] | None:
        s = self.scale_at(z)
        if s < 0.05:
            return None
        dz = z - self.zc
        cy = (self.center[0] + self.drift[0] * dz) * long - (long - shape[0]) / 2  # (0.5, 0.5): the plane's centre
        cx = (self.center[1] + self.drift[1] * dz) * long - (long - shape[1]) / 2
        if self.kind == "tube":
            assert self.points is not None and self.widths is not None
            m = self.widths.max() * long * s + 3
            lo, hi = self.points.min(axis=0) * long, self.points.max(axis=0) * long
            y0, y1 = max(int(cy + lo[0] - m), 0), min(int(cy + hi[0] + m) + 2, shape[0])
            x0, x1 = max(int(cx + lo[1] - m), 0), min(int(cx + hi[1] + m) + 2, shape[1])
        else:
            r = self.reach() * long * s + 3
            y0, y1 = max(int(cy - r), 0), min(int(cy + r) + 2, shape[0])
            x0, x1 = max(int(cx - r), 0), min(int(cx + r) + 2, shape[1])
        if y0 >= y1 or x0 >= x1:
            return None
        return slice(y0, y1), slice(x0, x1), cy, cx

    def sd(self, box: tuple[slice, slice, float, float], z: float, long: int) -> np.ndarray:
        """Signed distance (px, < 0 inside) over ``box`` (from ``box``: rows, cols, centre)."""
        rows, cols, cy, cx = box
        s = self.scale_at(z)
        dy = (np.arange(rows.start, rows.stop, dtype=np.float32) + 0.5 - cy)[:, None]
        dx = (np.arange(cols.start, cols.stop, dtype=np.float32) + 0.5 - cx)[None, :]
        if self.kind == "star":
            ry, rx = self.radii[0] * long * s, self.radii[1] * long * s
            ca, sa = np.cos(self.angle), np.sin(self.angle)
            a = (ca * dy + sa * dx) / ry
            b = (-sa * dy + ca * dx) / rx
            rho = np.hypot(a, b)
            mod = 1.0
            if self.amps:
                theta = np.arctan2(a, b)
                dz = z - self.zc
                mod = np.ones_like(rho)
                for k, (amp, ph, tw) in enumerate(zip(self.amps, self.phases, self.twist)):
                    mod += amp * np.cos((k + 2) * theta + ph + tw * dz)
            grad = np.hypot(a / ry, b / rx) / np.maximum(rho, 1e-3)
            return (rho - mod) / np.maximum(grad, 1e-4)
        if self.kind == "lobes":
            out = None
            for ly, lx, lr in self.lobes:
                d = np.hypot(dy - ly * long * s, dx - lx * long * s) - lr * long * s
                out = d if out is None else np.minimum(out, d)
            assert out is not None
            return out
        assert self.points is not None and self.widths is not None
        pts = self.points * long
        wid = self.widths * long * s
        out = np.full((rows.stop - rows.start, cols.stop - cols.start), 1e4, dtype=np.float32)
        for i in range(len(pts) - 1):
            (ay, ax), (by, bx) = pts[i], pts[i + 1]
            ey, ex = by - ay, bx - ax
            t = np.clip(((dy - ay) * ey + (dx - ax) * ex) / max(ey * ey + ex * ex, 1e-6), 0.0, 1.0)
            d = np.hypot(dy - ay - t * ey, dx - ax - t * ex) - (wid[i] + t * (wid[i + 1] - wid[i]))
            np.minimum(out, d, out=out)
        return out


@dataclass
class Obj:
    """A painted object: ``label`` 0 is unlabelled clutter (it hides labels under it)."""

    geom: Geom
    value: float  # scene units (0..1 before scaling)
    label: int = 0
    hole: Geom | None = None  # a ring: ``geom`` minus ``hole`` (the hole shows what lies under the object)
    texture: float = 0.0  # amplitude of the texture field inside
    tex_field: int = 1
    edge_px: float = 1.0  # partial-volume edge width
    atten: float = 0.0  # ultrasound: attenuation (> 0 shadows below, < 0 enhances)
    mix: tuple[float, int, float] | None = None  # (second value, field index, threshold): two-tissue texture
    mix_slope: float = 2.5


@dataclass
class Scene:
    """Everything that defines one scene; ``draw_scene`` makes a random one, ``render_plane`` draws a plane."""

    kind: str
    scene: str
    objects: list[Obj]
    names: dict[int, str]
    tags: dict[int, tuple[str, ...]]
    background: Callable[[np.ndarray, np.ndarray, list[np.ndarray]], np.ndarray]
    field_scales: tuple[float, ...] = (0.35, 0.08, 0.025, 0.05)  # correlation lengths, long-side units
    fov: str = "full"  # "full", "circle", "sector", "linear"
    blur_px: float = 0.7
    bias: float = 0.15
    noise: float = 0.03
    noise_kind: str = "rician"  # "rician", "gaussian", "speckle", "poisson"
    scale: float = 1000.0
    offset: float = 0.0
    sector: tuple[float, float, float] = (-0.2, 0.6, 1.05)  # apex row, half-angle (rad), depth: long-side units


# --- fields -------------------------------------------------------------------------------------------------------


def _field(rng: np.random.Generator, shape: tuple[int, int], corr_px: float) -> np.ndarray:
    """Zero-mean, unit-std smooth noise with correlation length ~``corr_px`` (cheap: built at quarter size)."""
    f = 4 if corr_px >= 8 else 1
    small = (shape[0] // f + 2, shape[1] // f + 2)
    g = ndimage.gaussian_filter(rng.standard_normal(small).astype(np.float32), corr_px / f / 2, mode="wrap")
    if f > 1:
        g = ndimage.zoom(g, f, order=1, prefilter=False)
    g = g[: shape[0], : shape[1]]
    g -= g.mean()
    g /= g.std() + 1e-6
    return g


class _Fields:
    """The scene's texture fields at plane z: fixed for a slice, turning smoothly along z for a volume."""

    def __init__(self, rng: np.random.Generator, shape: tuple[int, int], scales: tuple[float, ...], volume: bool):
        long = max(shape)
        self.a = [_field(rng, shape, s * long) for s in scales]
        self.b = [_field(rng, shape, s * long) for s in scales] if volume else None
        self.phase = rng.uniform(0, 2 * np.pi, len(scales))
        self.speed = rng.uniform(1.0, 3.0, len(scales))
        self.bias = _field(rng, shape, 0.5 * long)

    def at(self, z: float) -> list[np.ndarray]:
        if self.b is None:
            return self.a
        out = []
        for a, b, ph, sp in zip(self.a, self.b, self.phase, self.speed):
            w = ph + sp * z
            out.append(np.cos(w) * a + np.sin(w) * b)
        return out


# --- scene builders -------------------------------------------------------------------------------------------------


class _Builder:
    def __init__(self, rng: np.random.Generator, kind: str, volume: bool):
        self.rng, self.kind, self.volume = rng, kind, volume
        self.objects: list[Obj] = []
        self.names: dict[int, str] = {}
        self.tags: dict[int, tuple[str, ...]] = {}
        self.info: dict[str, object] = {}

    def tissue(self, name: str, jitter: float = 0.04) -> float:
        v = TISSUE[name][_CONTRAST_INDEX[self.kind]]
        return float(np.clip(v + self.rng.normal(0, jitter), 0.0, 1.0))

    def z_extent(self, big: bool = False) -> dict:
        """Where along z an object lives: in a volume it starts and ends inside, in a slice it is cut mid-way."""
        if not self.volume:
            return dict(zc=0.5, hz=10.0)
        if big:
            return dict(zc=float(self.rng.uniform(0.47, 0.53)), hz=float(self.rng.uniform(0.40, 0.45)), zpow=4.0,
                        drift=tuple(self.rng.normal(0, 0.03, 2)))
        hz = float(self.rng.uniform(0.12, 0.32))
        zc = float(self.rng.uniform(0.06 + hz, 0.94 - hz)) if hz < 0.44 else 0.5
        return dict(zc=zc, hz=hz, zpow=float(self.rng.uniform(1.6, 3.0)), drift=tuple(self.rng.normal(0, 0.06, 2)))

    def harmonics(self, n: int, amp: float) -> dict:
        r = self.rng
        amps = r.uniform(0, amp, n) / np.arange(1, n + 1) ** 0.5
        return dict(amps=tuple(float(a) for a in amps), phases=tuple(float(p) for p in r.uniform(0, 2 * np.pi, n)),
                    twist=tuple(float(t) for t in r.normal(0, 2.5, n)))

    def star(self, center, size: float, *, ratio: float = 1.0, irregular: float = 0.15, n: int = 4,
             big: bool = False, z: dict | None = None) -> Geom:
        return Geom("star", (float(center[0]), float(center[1])), (size * ratio, size),
                    angle=float(self.rng.uniform(0, np.pi)), **self.harmonics(n, irregular),
                    **(z if z is not None else self.z_extent(big)))

    def lobes(self, center, size: float, n: int | None = None, z: dict | None = None) -> Geom:
        r = self.rng
        n = int(r.integers(2, 6)) if n is None else n
        lob = [(0.0, 0.0, size * 0.6)]
        for _ in range(n - 1):
            a, d = r.uniform(0, 2 * np.pi), r.uniform(0.3, 0.6) * size
            lob.append((d * np.sin(a), d * np.cos(a), size * r.uniform(0.3, 0.5)))
        return Geom("lobes", (float(center[0]), float(center[1])), lobes=tuple(lob),
                    **(z if z is not None else self.z_extent()))

    def tube(self, start, length: float, width: float, *, heading: float | None = None, curl: float = 2.0,
             taper: float = 0.3, n: int = 12, bend: float = 0.0, z: dict | None = None) -> Geom:
        r = self.rng
        h = r.uniform(0, 2 * np.pi) if heading is None else heading
        step = length / (n - 1)
        pts = [(0.0, 0.0)]
        turn = r.normal(0, curl)
        for _ in range(n - 1):
            turn = 0.7 * turn + 0.3 * r.normal(bend, curl)
            h += turn * step
            pts.append((pts[-1][0] + step * np.sin(h), pts[-1][1] + step * np.cos(h)))
        widths = width * np.linspace(1.0, 1.0 - taper, n) * r.uniform(0.85, 1.15, n)
        return Geom("tube", (float(start[0]), float(start[1])), points=np.array(pts), widths=widths,
                    **(z if z is not None else self.z_extent()))

    def add(self, geom: Geom, value: float, name: str = "", tags: tuple[str, ...] = (), label: int = 0,
            **kw) -> int:
        """Paint ``geom`` (after what was added before); a ``name`` makes it a new label, ``label`` reuses one."""
        if name and not label:
            label = len(self.names) + 1
            self.names[label] = name
            self.tags[label] = (geom.kind,) + tags
        self.objects.append(Obj(geom, value, label, **kw))
        return label

    def ring(self, geom: Geom, wall: float, value: float, name: str, inner: tuple[float, str] | None = None,
             tags: tuple[str, ...] = (), offset: tuple[float, float] = (0.0, 0.0), **kw) -> tuple[int, int]:
        """A wall ``wall`` thick around a lumen: the lumen is another label (``inner`` = (value, name)) or a hole."""
        hole = geom.shrunk(wall, offset)
        if inner is None:
            return self.add(geom, value, name, tags + ("ring",), hole=hole, **kw), 0
        outer = self.add(geom, value, name, tags + ("ring", "nested-outer"), **kw)
        inner_label = self.add(hole, inner[0], inner[1], tags + ("nested-inner",), texture=kw.get("texture", 0.0))
        return outer, inner_label


def _point_in(rng: np.random.Generator, center, radii, frac: float = 0.7) -> tuple[float, float]:
    a, d = rng.uniform(0, 2 * np.pi), np.sqrt(rng.uniform(0, 1)) * frac
    return center[0] + d * radii[0] * np.sin(a), center[1] + d * radii[1] * np.cos(a)


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _brain(b: _Builder) -> Callable:
    r = b.rng
    c = (0.5 + r.normal(0, 0.02), 0.5 + r.normal(0, 0.02))
    hr = (r.uniform(0.40, 0.46), r.uniform(0.32, 0.39))
    zb = b.z_extent(big=True)
    head = Geom("star", c, hr, angle=float(r.normal(0, 0.1)), **b.harmonics(3, 0.05), **zb)
    b.add(head, b.tissue("fat"), texture=0.05)
    b.add(head.shrunk(0.018), b.tissue("bone", 0.01))
    b.add(head.shrunk(0.03), b.tissue("csf"))
    brain = head.shrunk(0.036)
    gm, wm = b.tissue("gm"), b.tissue("wm")
    lb = b.add(brain, gm, "brain", ("large",), texture=0.02)
    # White matter under a cortical ribbon: a wiggly (gyral) outline, a few deep grey islands; the same label.
    white = replace(brain.shrunk(float(r.uniform(0.05, 0.08))), **b.harmonics(14, 0.16))
    b.add(white, wm, label=lb, mix=(gm, 2, float(r.uniform(1.2, 1.8))), texture=0.02, edge_px=2.0)
    # Ventricles: a mirrored pair of curved lobes either side of the midline (dark in T1 / FLAIR, bright in T2).
    vs = r.uniform(0.04, 0.07)
    tilt = r.normal(0, 0.15)
    for side in (-1, 1):
        vc = (c[0] - 0.02 + r.normal(0, 0.01), c[1] + side * vs * r.uniform(0.7, 1.1))
        g = b.tube((vc[0] - 1.8 * vs, vc[1]), 3.6 * vs, vs * r.uniform(0.2, 0.4), heading=np.pi / 2 + tilt,
                   curl=0.5, bend=side * r.uniform(1, 4) / vs * 0.05, taper=-0.5, n=8, z=b.z_extent())
        b.add(g, b.tissue("csf"), "ventricle", ("dark-fluid",), edge_px=1.2)
    for _ in range(int(r.integers(1, 5))):
        p = _point_in(r, c, hr, 0.6)
        kind = r.choice(["plaque", "tumour", "cyst", "bleed"], p=[0.35, 0.3, 0.2, 0.15])
        if kind == "plaque":
            b.add(b.star(p, _log_uniform(r, 0.012, 0.035), ratio=r.uniform(0.5, 1), irregular=0.2), b.tissue(
                "plaque"), "lesion", texture=0.02, edge_px=float(r.uniform(1, 2.5)))
        elif kind == "cyst":
            b.add(b.star(p, _log_uniform(r, 0.02, 0.06), irregular=0.05), b.tissue("fluid"), "cyst")
        elif kind == "bleed":
            b.add(b.lobes(p, _log_uniform(r, 0.02, 0.05)), b.tissue("blood"), "haemorrhage", texture=0.04)
        else:
            size = _log_uniform(r, 0.04, 0.1)
            zt = b.z_extent()
            if r.random() < 0.6:
                b.add(b.star(p, size * 1.6, irregular=0.3, z=zt), b.tissue("oedema"), "oedema", edge_px=2.5,
                      texture=0.03)
            b.ring(b.star(p, size, irregular=0.25, z=zt), size * r.uniform(0.2, 0.45), b.tissue("enhancing"),
                   "tumour rim", inner=(b.tissue("necrosis"), "necrotic core"), texture=0.04,
                   offset=tuple(r.normal(0, size * 0.1, 2)))

    def background(y, x, f):
        return np.full(y.shape[:1] + x.shape[1:], 0.0, dtype=np.float32) + 0.01 * f[1]

    return background


def _body(b: _Builder) -> Callable:
    r = b.rng
    c = (0.5 + r.normal(0, 0.02), 0.5 + r.normal(0, 0.02))
    br = (r.uniform(0.27, 0.34), r.uniform(0.42, 0.47))
    zb = b.z_extent(big=True)
    body = Geom("star", c, br, **b.harmonics(3, 0.04), **zb)
    b.add(body, b.tissue("fat"), texture=0.04)
    fat_t = r.uniform(0.02, 0.06)
    b.add(body.shrunk(fat_t), b.tissue("muscle"), texture=0.03)
    inner = body.shrunk(fat_t + r.uniform(0.02, 0.04))
    b.add(inner, b.tissue("bowel"), mix=(b.tissue("fat"), 2, float(r.uniform(-0.3, 0.5))), texture=0.03,
          mix_slope=float(r.uniform(0.6, 2.0)))
    ir = inner.radii
    # Spine at the back: marrow inside a dark cortex ring, a canal behind it.
    sp = (c[0] + ir[0] * 0.55, c[1] + r.normal(0, 0.01))
    b.ring(b.star(sp, 0.055, ratio=0.85, irregular=0.05, z=b.z_extent()), 0.008, b.tissue("bone", 0.01),
           "vertebral cortex", inner=(b.tissue("marrow"), "vertebral body"))
    b.add(b.star((sp[0] + 0.085, sp[1]), 0.025, irregular=0.05), b.tissue("csf"), "spinal canal")
    # Aorta / vena cava as flow voids (dark in spin echo), a liver-like organ, kidneys, cysts, bladder, vessels.
    b.add(b.star((sp[0] - 0.08, sp[1] + 0.05), r.uniform(0.018, 0.03), irregular=0.03), b.tissue("flow_void"),
          "aorta", ("vessel",))
    b.add(b.star((sp[0] - 0.075, sp[1] - 0.06), r.uniform(0.018, 0.03), ratio=0.7, irregular=0.1),
          b.tissue("flow_void"), "vena cava", ("vessel",))
    side = 1 if r.random() < 0.5 else -1
    organ_c = (c[0] - ir[0] * 0.15, c[1] - side * ir[1] * 0.45)
    organ = b.add(b.star(organ_c, ir[0] * r.uniform(0.6, 0.8), ratio=r.uniform(0.8, 1.1), irregular=0.25,
                         n=5), b.tissue(str(r.choice(["liver", "spleen"]))), "organ", ("large",), texture=0.04)
    for _ in range(int(r.integers(0, 3))):  # cysts / lesions inside the organ: nested, each its own tissue
        p = _point_in(r, organ_c, (ir[0] * 0.6, ir[0] * 0.6), 0.6)
        b.add(b.star(p, _log_uniform(r, 0.012, 0.04), irregular=0.08), b.tissue(
            str(r.choice(["fluid", "tumour", "necrosis"]))), "organ lesion", ("nested-inner",), edge_px=1.5)
    del organ
    for s in (-1, 1):
        kc = (sp[0] - 0.02, sp[1] + s * r.uniform(0.14, 0.2))
        if abs(kc[1] - organ_c[1]) < 0.12:
            continue
        b.ring(b.star(kc, r.uniform(0.045, 0.065), ratio=r.uniform(0.55, 0.75), irregular=0.1),
               r.uniform(0.012, 0.02), b.tissue("cortex"), "kidney", inner=(b.tissue("medulla"), "renal sinus"),
               offset=(0.0, s * 0.01))
    if r.random() < 0.6:
        bc = (c[0] - ir[0] * 0.2, c[1] + side * ir[1] * 0.4)
        b.ring(b.lobes(bc, r.uniform(0.06, 0.1), n=3), r.uniform(0.006, 0.012), b.tissue("wall"), "bladder wall",
               inner=(b.tissue("fluid"), "bladder lumen"))
    for _ in range(int(r.integers(1, 4))):
        p = _point_in(r, c, ir, 0.7)
        b.add(b.tube(p, r.uniform(0.06, 0.15), r.uniform(0.005, 0.012), curl=r.uniform(2, 10)),
              b.tissue("flow_void"), "vessel", ("vessel", "dark-vessel"))
    for _ in range(int(r.integers(0, 3))):
        p = _point_in(r, c, ir, 0.7)
        b.add(b.star(p, _log_uniform(r, 0.015, 0.05), ratio=r.uniform(0.6, 1), irregular=0.1),
              b.tissue("fluid"), "cyst")

    def background(y, x, f):
        return np.zeros(y.shape[:1] + x.shape[1:], dtype=np.float32) + 0.01 * f[1]

    return background


def _tissue(b: _Builder) -> Callable:
    """Generic textured tissue with random objects of every shape, polarity and contrast."""
    r = b.rng
    base = float(r.uniform(0.3, 0.7))
    tex = float(r.uniform(0.02, 0.08))
    style = r.choice(["smooth", "stripes", "glands"], p=[0.4, 0.3, 0.3])
    period = float(r.uniform(0.02, 0.08))
    ang = float(r.uniform(0, np.pi))
    stripe_amp = float(r.uniform(0.03, 0.1))
    gland_amp = float(r.choice([-1, 1]) * r.uniform(0.05, 0.15))
    gland_thr = float(r.uniform(1.0, 1.6))
    n = int(r.integers(3, 10))
    for _ in range(n):
        size = _log_uniform(r, 0.018, 0.3)
        p = (r.uniform(0.1, 0.9), r.uniform(0.1, 0.9))
        dark = r.random() < 0.6
        contrast = _log_uniform(r, 0.08, 0.45)
        v = float(np.clip(base + (-contrast if dark else contrast), 0.02, 1.0))
        geo = r.choice(["star", "lobes", "tube", "ring", "nested"], p=[0.3, 0.2, 0.2, 0.15, 0.15])
        pol = ("dark",) if dark else ("bright",)
        kw = dict(texture=float(r.uniform(0, 0.04)), edge_px=float(r.uniform(0.8, 2.5)))
        if geo == "star":
            b.add(b.star(p, size, ratio=r.uniform(0.35, 1), irregular=r.uniform(0.05, 0.4), n=5), v, "blob", pol,
                  **kw)
        elif geo == "lobes":
            b.add(b.lobes(p, size), v, "lobulated", pol, **kw)
        elif geo == "tube":
            b.add(b.tube(p, min(size * 4, 0.7), r.uniform(0.006, 0.03), curl=r.uniform(0.5, 8)), v, "tube", pol,
                  **kw)
        elif geo == "ring":
            g = b.star(p, max(size, 0.04), ratio=r.uniform(0.6, 1), irregular=r.uniform(0.02, 0.2))
            b.ring(g, max(size, 0.04) * r.uniform(0.15, 0.4), v, "ring", tags=pol, **kw)
        else:
            g = b.star(p, max(size, 0.04), ratio=r.uniform(0.6, 1), irregular=r.uniform(0.02, 0.2))
            inner_dark = r.random() < 0.6
            vi = float(np.clip(v + (-1 if inner_dark else 1) * _log_uniform(r, 0.1, 0.4), 0.02, 1.0))
            b.ring(g, max(size, 0.04) * r.uniform(0.15, 0.4), v, "capsule", tags=pol, inner=(vi, "core"),
                   offset=tuple(r.normal(0, 0.01, 2)), **kw)

    def background(y, x, f):
        img = base + tex * (f[1] + 0.5 * f[2])
        if style == "stripes":
            img = img + stripe_amp * np.sin(2 * np.pi * ((y * np.sin(ang) + x * np.cos(ang)) / period + 0.6 * f[0]))
        elif style == "glands":
            img = img + gland_amp * np.clip((f[3] - gland_thr) * 3.0, 0.0, 1.0)
        return img.astype(np.float32)

    return background


def _ultrasound(b: _Builder) -> Callable:
    r = b.rng
    base = float(r.uniform(0.3, 0.5))
    skin = float(r.uniform(0.02, 0.05))
    fat_d = skin + float(r.uniform(0.05, 0.15))
    musc_d = fat_d + float(r.uniform(0.05, 0.2))
    wav = float(r.uniform(0.005, 0.02))
    n = int(r.integers(2, 7))
    for _ in range(n):
        p = (r.uniform(musc_d, 0.9), r.uniform(0.15, 0.85))
        kind = r.choice(["cyst", "vessel", "vessel_long", "nodule", "calcification", "stone", "organ"],
                        p=[0.22, 0.15, 0.15, 0.18, 0.1, 0.08, 0.12])
        if kind == "cyst":
            b.add(b.star(p, _log_uniform(r, 0.02, 0.12), ratio=r.uniform(0.6, 1), irregular=0.08), 0.02, "cyst",
                  ("anechoic",), atten=-0.6)
        elif kind == "vessel":
            g = b.star(p, r.uniform(0.015, 0.045), ratio=r.uniform(0.7, 1), irregular=0.03)
            b.add(g, 0.9, edge_px=1.0)  # echogenic wall, unlabelled
            b.add(g.shrunk(0.004), 0.02, "vessel", ("anechoic", "vessel"), atten=-0.3)
        elif kind == "vessel_long":
            g = b.tube((p[0], 0.0), 1.2, r.uniform(0.012, 0.03), heading=r.normal(0, 0.15), curl=0.5, taper=0.1)
            b.add(g, 0.85)
            b.add(g.shrunk(0.004), 0.02, "vessel", ("anechoic", "vessel", "tube"), atten=-0.3)
        elif kind == "nodule":
            size = _log_uniform(r, 0.03, 0.1)
            g = b.star(p, size, ratio=r.uniform(0.6, 1), irregular=0.15)
            if r.random() < 0.5:  # a dark halo around an iso/hyper-echoic core: nested
                b.ring(g, size * 0.2, 0.08, "halo", inner=(base + r.uniform(-0.1, 0.3), "nodule"))
            else:
                b.add(g, base * r.uniform(0.3, 0.7), "nodule", ("hypoechoic",), texture=0.05)
        elif kind == "calcification":
            b.add(b.lobes(p, r.uniform(0.012, 0.03)), 1.0, "calcification", ("shadowing",), atten=6.0)
        elif kind == "stone":
            size = r.uniform(0.06, 0.12)
            lum = b.star(p, size, ratio=r.uniform(0.5, 0.8), irregular=0.1)
            b.ring(lum, 0.008, 0.8, "gallbladder wall", inner=(0.02, "gallbladder lumen"))
            b.objects[-1].atten = -0.5
            b.add(b.star((p[0] + size * 0.4, p[1]), size * 0.3, irregular=0.1), 1.0, "stone", ("shadowing",),
                  atten=8.0)
        else:
            g = b.star(p, r.uniform(0.15, 0.3), ratio=r.uniform(0.5, 0.8), irregular=0.2)
            b.add(g, base * (1 + r.choice([-1, 1]) * r.uniform(0.25, 0.5)), "organ", ("large",), texture=0.08)

    def background(y, x, f):
        d = y - y[0, 0] + wav * f[0]
        img = np.where(d < skin, 0.85, np.where(d < fat_d, 0.2 + 0.2 * np.clip(f[3] - 0.8, 0, 2), np.where(
            d < musc_d, 0.35 + 0.12 * np.sin(2 * np.pi * (d / 0.012 + 0.3 * f[1])), base + 0.05 * f[1])))
        return img.astype(np.float32)

    return background


def _cells(b: _Builder) -> Callable:
    r = b.rng
    fluo = r.random() < 0.3
    b.info["fluorescence"] = fluo
    bg = 0.05 if fluo else float(r.uniform(0.75, 0.9))
    n = int(r.integers(6, 30))
    taken: list[tuple[float, float, float]] = []
    for _ in range(n):
        size = _log_uniform(r, 0.02, 0.07)
        for _try in range(6):
            p = (r.uniform(0.05, 0.95), r.uniform(0.05, 0.95))
            if all(np.hypot(p[0] - q[0], p[1] - q[1]) > (size + s) * 0.9 for q0, q1, s in taken for q in [(q0, q1)]):
                break
        else:
            continue
        taken.append((p[0], p[1], size))
        if fluo:
            b.add(b.star(p, size * 0.7, ratio=r.uniform(0.6, 1), irregular=0.15), r.uniform(0.3, 1.0), "nucleus",
                  ("bright",), texture=0.1, edge_px=1.5)
            continue
        kind = r.choice(["cell", "gland"], p=[0.75, 0.25]) if size > 0.035 else "cell"
        if kind == "gland":
            g = b.lobes(p, size * 1.4, n=int(r.integers(3, 6)))
            lumen = r.random() < 0.5
            b.ring(g, size * r.uniform(0.3, 0.5), bg - r.uniform(0.25, 0.5), "gland", tags=("epithelium",),
                   inner=(min(bg + 0.08, 1.0), "lumen") if lumen else None, texture=0.06)
        else:
            g = b.star(p, size, ratio=r.uniform(0.5, 1), irregular=0.2, n=5)
            cyto = bg - _log_uniform(r, 0.08, 0.35)
            b.add(g, cyto, "cell", ("cytoplasm", "nested-outer"), texture=0.04)
            b.add(b.star(_point_in(r, p, (size * 0.2, size * 0.2)), size * r.uniform(0.3, 0.5), ratio=r.uniform(
                0.6, 1), irregular=0.1), cyto - r.uniform(0.1, 0.3), "nucleus", ("nested-inner",), texture=0.08)

    def background(y, x, f):
        return (bg + 0.03 * f[1] + 0.02 * f[2]).astype(np.float32)

    return background


def _retina(b: _Builder) -> Callable:
    r = b.rng
    base = float(r.uniform(0.45, 0.6))
    side = 1 if r.random() < 0.5 else -1
    disc = (0.5 + r.normal(0, 0.03), 0.5 + side * r.uniform(0.18, 0.25))
    mac = (0.5 + r.normal(0, 0.02), 0.5 - side * r.uniform(0.05, 0.1))
    ds = r.uniform(0.06, 0.08)
    b.add(b.star(mac, r.uniform(0.05, 0.09), irregular=0.05), base * 0.6, "macula", ("dark", "fuzzy"), edge_px=10)
    for _ in range(int(r.integers(4, 8))):  # vessel arcs leaving the disc: dark tubes
        h = (np.pi if side > 0 else 0.0) + r.uniform(-1.3, 1.3) + (np.pi if r.random() < 0.25 else 0.0)
        b.add(b.tube(disc, r.uniform(0.3, 0.6), r.uniform(0.004, 0.01), heading=h, curl=r.uniform(1, 4),
                     taper=0.6), base * r.uniform(0.35, 0.7), "vessel", ("dark-vessel",), edge_px=1.2)
    b.ring(b.star(disc, ds, ratio=r.uniform(0.85, 1.0), irregular=0.05), ds * r.uniform(0.3, 0.6),
           min(base + 0.3, 0.95), "optic disc", inner=(1.0, "optic cup"), edge_px=2.0)
    for _ in range(int(r.integers(0, 5))):
        p = _point_in(r, (0.5, 0.5), (0.4, 0.4), 0.8)
        if r.random() < 0.6:
            b.add(b.lobes(p, _log_uniform(r, 0.012, 0.04)), base * r.uniform(0.3, 0.6), "haemorrhage", ("dark",),
                  edge_px=1.5)
        else:
            b.add(b.lobes(p, _log_uniform(r, 0.008, 0.02)), min(base + r.uniform(0.2, 0.4), 1), "exudate",
                  ("bright",))

    def background(y, x, f):
        rr = np.hypot(y - 0.5, x - 0.5)
        return (base * (1.0 - 0.6 * rr ** 2) + 0.03 * f[1] + 0.015 * f[2]).astype(np.float32)

    return background


_BUILDERS = {"brain": _brain, "body": _body, "tissue": _tissue, "ultrasound": _ultrasound, "cells": _cells,
             "retina": _retina}


def draw_scene(rng: np.random.Generator, scene: str | None = None, *, volume: bool = False) -> Scene:
    """A random scene; ``scene`` one of ``SCENES`` (random when None); ``volume`` spreads objects along z."""
    if scene is None:
        pool = VOLUME_SCENES if volume else SCENES
        p = [0.3, 0.3, 0.4] if volume else [0.22, 0.2, 0.22, 0.16, 0.1, 0.1]
        scene = str(rng.choice(pool, p=p))
    if scene in ("brain", "body", "tissue"):
        kind = str(rng.choice(["mr_t1", "mr_t2", "mr_flair"], p=[0.4, 0.4, 0.2]))
    else:
        kind = {"ultrasound": "ultrasound", "cells": "microscopy", "retina": "fundus"}[scene]
    b = _Builder(rng, kind, volume)
    background = _BUILDERS[scene](b)
    sc = Scene(kind, scene, b.objects, b.names, b.tags, background)
    if kind.startswith("mr"):
        sc.blur_px = float(rng.uniform(0.3, 1.3))
        sc.bias = float(rng.uniform(0.0, 0.45))
        sc.noise = _log_uniform(rng, 0.008, 0.08)
        sc.noise_kind = "rician" if rng.random() < 0.7 else "gaussian"
        sc.scale = _log_uniform(rng, 150.0, 4000.0)
    elif kind == "ultrasound":
        sc.fov = "sector" if rng.random() < 0.6 else "linear"
        sc.blur_px = float(rng.uniform(0.3, 0.8))
        sc.bias = float(rng.uniform(0.0, 0.3))
        sc.noise = float(rng.uniform(0.5, 1.0))  # speckle strength
        sc.noise_kind = "speckle"
        sc.scale = 255.0
        sc.sector = (float(rng.uniform(-0.35, -0.1)), float(rng.uniform(0.45, 0.75)), float(rng.uniform(1.0, 1.3)))
    elif kind == "microscopy":
        sc.blur_px = float(rng.uniform(0.5, 1.8))
        sc.bias = float(rng.uniform(0.0, 0.3))
        sc.noise = _log_uniform(rng, 0.005, 0.05)
        sc.noise_kind = "poisson" if b.info.get("fluorescence") else "gaussian"
        sc.scale = float(rng.choice([4095.0, 65535.0, 255.0]))
        sc.field_scales = (0.35, 0.05, 0.01, 0.05)
    else:  # fundus
        sc.fov = "circle"
        sc.blur_px = float(rng.uniform(0.5, 1.5))
        sc.bias = float(rng.uniform(0.1, 0.4))
        sc.noise = _log_uniform(rng, 0.005, 0.03)
        sc.noise_kind = "gaussian"
        sc.scale = 255.0
    return sc


# --- rendering ------------------------------------------------------------------------------------------------------


def _coords(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres (column of rows, row of columns) in long-side units, (0.5, 0.5) at the plane's centre."""
    long = max(shape)
    y = ((np.arange(shape[0], dtype=np.float32) + 0.5 + (long - shape[0]) / 2) / long)[:, None]
    x = ((np.arange(shape[1], dtype=np.float32) + 0.5 + (long - shape[1]) / 2) / long)[None, :]
    return y, x


def _fov_mask(sc: Scene, shape: tuple[int, int]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(inside the field of view, depth along the beam (US) in long-side units)."""
    h, w = shape
    y, x = _coords(shape)
    long = max(shape)
    if sc.fov == "circle":
        return (np.hypot(y - 0.5, x - 0.5) < 0.47 * min(h, w) / long), None
    if sc.fov == "sector":
        apex, half, depth = sc.sector
        dy, dx = y - apex, x - 0.5
        rad = np.hypot(dy, dx)
        return (np.abs(np.arctan2(dx, dy)) < half) & (rad < depth) & (rad > -apex + 0.01), rad + apex
    if sc.fov == "linear":
        return np.broadcast_to(np.abs(x - 0.5) < 0.42 * w / long, shape), np.broadcast_to(y - y[0, 0], shape)
    return None, None


def _shadows(sc: Scene, att: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """exp(-∫ attenuation) along the beams: straight down (linear) or along rays from the apex (sector)."""
    if sc.fov != "sector":
        return np.exp(-np.cumsum(att, axis=0) / max(shape))
    h, w = shape
    long = max(shape)
    apex, half, depth = sc.sector
    nr, na = h, w
    rad = np.linspace(-apex, depth, nr, dtype=np.float32)[:, None]
    ang = np.linspace(-half, half, na, dtype=np.float32)[None, :]
    py = (apex + rad * np.cos(ang)) * long - 0.5 - (long - h) / 2
    px = (0.5 + rad * np.sin(ang)) * long - 0.5 - (long - w) / 2
    polar = ndimage.map_coordinates(att, [py, px], order=1, mode="constant")
    cum = np.exp(-np.cumsum(polar, axis=0) * ((depth + apex) / nr))
    y, x = _coords(shape)
    y, x = y - apex, x - 0.5
    ri = (np.hypot(y, x) + apex) / (depth + apex) * (nr - 1)
    ai = (np.arctan2(x, y) + half) / (2 * half) * (na - 1)
    return ndimage.map_coordinates(cum, [ri, ai], order=1, mode="nearest")


def render_plane(sc: Scene, z: float, shape: tuple[int, int], rng: np.random.Generator,
                 fields: _Fields | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(image float32 in the scene's native scale, labels int32) of the plane at ``z`` in [0, 1]."""
    if fields is None:
        fields = _Fields(rng, shape, sc.field_scales, volume=False)
    long = max(shape)
    f = fields.at(z)
    y, x = _coords(shape)
    img = np.array(np.broadcast_to(sc.background(y, x, f), shape), dtype=np.float32)
    labels = np.zeros(shape, dtype=np.int32)
    att = np.zeros(shape, dtype=np.float32) if sc.kind == "ultrasound" else None
    for ob in sc.objects:
        box = ob.geom.box(z, long, shape)
        if box is None:
            continue
        sd = ob.geom.sd(box, z, long)
        if ob.hole is not None:
            hb = ob.hole.box(z, long, shape)
            if hb is not None:
                sd = np.maximum(sd, -ob.hole.sd(box[:2] + hb[2:], z, long))
        inside = sd < 0
        if not inside.any():
            continue
        rows, cols = box[0], box[1]
        alpha = np.clip(0.5 - sd / ob.edge_px, 0.0, 1.0)
        value = ob.value
        if ob.mix is not None:
            v2, fi, thr = ob.mix
            w = np.clip((f[fi][rows, cols] - thr) * ob.mix_slope, 0.0, 1.0)
            value = value + (v2 - value) * w
        if ob.texture:
            value = value + ob.texture * f[ob.tex_field][rows, cols]
        img[rows, cols] += alpha * (value - img[rows, cols])
        labels[rows, cols][inside] = ob.label
        if att is not None and ob.atten:
            att[rows, cols] += alpha * ob.atten
    fov, depth = _fov_mask(sc, shape)
    if sc.kind == "ultrasound":
        assert att is not None and depth is not None
        gain = np.exp(-float(rng.uniform(0.3, 1.2)) * depth * (1.0 - float(rng.uniform(0.3, 0.9))))  # TGC residual
        img = img * _shadows(sc, att * 8.0, shape) * gain
    if sc.blur_px > 0:
        img = ndimage.gaussian_filter(img, sc.blur_px)
    if sc.bias > 0:
        img = img * np.exp(sc.bias * fields.bias)
    if sc.noise_kind == "speckle":
        g1 = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), (0.7, 1.6))
        g2 = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), (0.7, 1.6))
        speckle = np.hypot(g1, g2)
        speckle /= speckle.mean()
        img = img * (1.0 - sc.noise + sc.noise * speckle)
        img = np.log1p(30.0 * np.clip(img, 0, None)) / np.log1p(30.0)  # log compression
        img = img + 0.01 * rng.standard_normal(shape).astype(np.float32)
    elif sc.noise_kind == "rician":
        img = np.hypot(img + sc.noise * rng.standard_normal(shape).astype(np.float32),
                       sc.noise * rng.standard_normal(shape).astype(np.float32))
    elif sc.noise_kind == "poisson":
        photons = 1.0 / sc.noise ** 2 * 0.05
        img = rng.poisson(np.clip(img, 0, None) * photons).astype(np.float32) / photons
        img = img + 0.005 * rng.standard_normal(shape).astype(np.float32)
    else:
        img = img + sc.noise * rng.standard_normal(shape).astype(np.float32)
    if fov is not None:
        img = np.where(fov, img, 0.0)
        labels[~fov] = 0
    img = np.clip(img * sc.scale + sc.offset, 0.0, None)
    return img.astype(np.float32), labels


# --- slices and volumes -----------------------------------------------------------------------------------------------


@dataclass
class MRSlice:
    """One 2D image: native-scale values, exact labels, the modality ``kind`` and what each label is."""

    image: np.ndarray  # float32
    labels: np.ndarray  # int32, 0 = background
    kind: str  # one of KINDS
    scene: str = ""  # one of SCENES
    names: dict[int, str] = field(default_factory=dict)  # label → structure name (labels present in the slice)
    tags: dict[int, tuple[str, ...]] = field(default_factory=dict)  # label → shape kind and tags (ring, nested-…)


def random_slice(rng: np.random.Generator, *, scene: str | None = None,
                 size_range: tuple[int, int] = (128, 320)) -> MRSlice:
    """A fresh 2D slice of a random scene (MR T1/T2/FLAIR, ultrasound, microscopy or fundus-like)."""
    long = int(rng.integers(size_range[0], size_range[1] + 1))
    short = int(long * rng.uniform(0.75, 1.0)) if rng.random() < 0.4 else long
    shape = (short, long) if rng.random() < 0.5 else (long, short)
    sc = draw_scene(rng, scene)
    img, lab = render_plane(sc, 0.5, shape, rng)
    present = {int(v) for v in np.unique(lab) if v}
    return MRSlice(img, lab, sc.kind, sc.scene, {k: v for k, v in sc.names.items() if k in present},
                   {k: v for k, v in sc.tags.items() if k in present})


def phantom_volume(seed: int = MR_SAMPLE_SEED, shape: tuple[int, int, int] = (32, 256, 256),
                   scene: str | None = None) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """A seeded (Z, Y, X) volume (float32, native MR scale) with its labels (uint8) and label names.

    Every labelled object starts and ends inside the volume and changes smoothly from slice to slice; ``scene``
    is one of ``VOLUME_SCENES`` (random when None). Drawn from the evaluation stream, like ``phantoms``'s volume.
    """
    rng = np.random.default_rng([seed, EVAL_STREAM])
    sc = draw_scene(rng, scene, volume=True)
    if len(sc.names) > 255:
        raise ValueError("too many objects for uint8 labels")
    fields = _Fields(rng, shape[1:], sc.field_scales, volume=True)
    image = np.empty(shape, dtype=np.float32)
    labels = np.empty(shape, dtype=np.uint8)
    for i in range(shape[0]):
        image[i], lab = render_plane(sc, (i + 0.5) / shape[0], shape[1:], rng, fields)
        labels[i] = lab
    present = {int(v) for v in np.unique(labels) if v}
    return image, labels, {k: v for k, v in sc.names.items() if k in present}


def window_to_uint8(image: np.ndarray, rng: np.random.Generator | None, kind: str) -> np.ndarray:
    """8-bit rendering as users load these images: percentile windows (jittered in training), fixed 0..255 for
    ultrasound / fundus (already 8-bit scaled), and sometimes a gamma."""
    if kind in ("ultrasound", "fundus") and (rng is None or rng.random() < 0.6):
        lo, hi = 0.0, 255.0
    else:
        p_lo, p_hi = (0.5, 99.5) if rng is None else (rng.uniform(0, 2), rng.uniform(98, 100))
        lo, hi = np.percentile(image, [p_lo, p_hi])
        hi = max(float(hi), float(lo) + 1e-3)
    out = np.clip((image - lo) * (255.0 / (hi - lo)), 0, 255)
    if rng is not None and rng.random() < 0.3:
        out = 255.0 * (out / 255.0) ** rng.uniform(0.6, 1.6)
    return out.round().astype(np.uint8)
