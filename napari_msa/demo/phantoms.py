"""Synthetic abdominal CT-like phantoms with exact ground-truth labels (seeded; numpy + scipy only).

One organ model serves three uses, so they cannot drift apart: the shipped sample volume
(``phantom_volume``), the demo model's training slices (``training_slice``, drawn on the fly) and
held-out evaluation slices (the same generator on seed streams that training never draws from).
Organs are implicit shapes evaluated at a plane ``z``: any slice of a volume costs one 2D image.
Rows run anterior → posterior, columns patient right → left (radiological view); values are HU.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage

# Label ids of the anatomical phantom (0 is background). Lesions take LESION_BASE, LESION_BASE + 1, ...
ORGAN_LABELS: dict[str, int] = {
    "liver": 1,
    "spleen": 2,
    "right kidney": 3,
    "left kidney": 4,
    "aorta": 5,
    "inferior vena cava": 6,
    "vertebra": 7,
    "spinal canal": 8,
    "stomach": 9,
    "gallbladder": 10,
}
LESION_BASE = 11
AIR_HU = -1000.0

# Seed streams: training draws from (seed, TRAIN_STREAM, step, i); evaluation from (seed, EVAL_STREAM, i).
TRAIN_STREAM = 0
EVAL_STREAM = 1
SAMPLE_SEED = 20240508  # the shipped sample volume: a portal-venous phase, organs clearly enhanced


def label_names(n_lesions: int = 3) -> dict[int, str]:
    """Label id → structure name, lesions included."""
    names = {v: k for k, v in ORGAN_LABELS.items()}
    names.update({LESION_BASE + i: f"liver lesion {i + 1}" for i in range(n_lesions)})
    return names


@dataclass
class Shape:
    """A star-shaped region in body coordinates, present for z in (zc - hz, zc + hz).

    ``center`` (v, u) and ``radii`` (rv, ru) are in body units (the body ellipse spans -1..1);
    the boundary radius is modulated by harmonics ``amps[k] * cos((k + 2) * theta + phases[k])``,
    whose phases drift with z so cross-sections change shape along the volume.
    """

    center: tuple[float, float]
    radii: tuple[float, float]
    angle: float = 0.0
    amps: tuple[float, ...] = ()
    phases: tuple[float, ...] = ()
    drift: tuple[float, ...] = ()
    zc: float = 0.5
    hz: float = 10.0  # large: a tube through every slice
    center_drift: tuple[float, float] = (0.0, 0.0)  # (dv, du) per unit z
    hole: Shape | None = None  # subtracted (crescents, kidney hilum, rings)

    def scale_at(self, z: float) -> float:
        t = (z - self.zc) / self.hz
        return float(np.sqrt(1.0 - t * t)) if abs(t) < 1.0 else 0.0

    def reach(self) -> float:
        """A radius (body units) that contains the whole shape at any z."""
        return max(self.radii) * (1.0 + sum(abs(a) for a in self.amps))

    def mask(self, v: np.ndarray, u: np.ndarray, z: float) -> np.ndarray:
        s = self.scale_at(z)
        out = np.zeros(v.shape, dtype=bool)
        if s <= 0.05:
            return out
        dz = z - self.zc
        cv = self.center[0] + self.center_drift[0] * dz
        cu = self.center[1] + self.center_drift[1] * dz
        reach = self.reach() * s
        near = (np.abs(v - cv) <= reach) & (np.abs(u - cu) <= reach)
        rows, cols = np.flatnonzero(near.any(axis=1)), np.flatnonzero(near.any(axis=0))
        if not len(rows) or not len(cols):
            return out
        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        out[box] = self._inside(v[box] - cv, u[box] - cu, s, dz)
        if self.hole is not None:
            out[box] &= ~self.hole.mask(v[box], u[box], z)
        return out

    def _inside(self, dv: np.ndarray, du: np.ndarray, s: float, dz: float) -> np.ndarray:
        ca, sa = np.cos(self.angle), np.sin(self.angle)
        a = (ca * dv + sa * du) / self.radii[0]
        b = (-sa * dv + ca * du) / self.radii[1]
        rho = np.hypot(a, b)
        if not self.amps:
            return rho <= s
        theta = np.arctan2(a, b)
        mod = np.ones(dv.shape)
        for k, (amp, ph, dr) in enumerate(zip(self.amps, self.phases, self.drift)):
            mod += amp * np.cos((k + 2) * theta + ph + dr * dz)
        return rho <= s * mod


@dataclass
class Structure:
    name: str
    label: int  # 0: drawn but not labelled (clutter)
    shape: Shape
    hu: float
    texture: float = 0.0  # HU of low-frequency variation inside
    rim: tuple[float, float] | None = None  # (thickness in body units, HU) of a wall/cortex


@dataclass
class PhantomParams:
    """Everything that defines one phantom; ``draw_params`` makes a random one."""

    body_radii: tuple[float, float] = (0.30, 0.43)  # of the field of view's long side (rows, cols)
    body_center: tuple[float, float] = (0.5, 0.5)
    body_amps: tuple[float, ...] = (0.03, 0.02, 0.01)
    body_phases: tuple[float, ...] = (0.0, 1.0, 2.0)
    fat_thickness: float = 0.08
    muscle_thickness: float = 0.05
    fat_hu: float = -100.0
    muscle_hu: float = 50.0
    visceral_hu: float = -20.0
    structures: list[Structure] = field(default_factory=list)
    noise_hu: float = 12.0
    blur_px: float = 0.8
    rotation: float = 0.0
    flip_lr: bool = False


def _harmonics(rng: np.random.Generator, n: int, amp: float) -> dict:
    return dict(
        amps=tuple(float(a) for a in rng.uniform(0, amp, n)),
        phases=tuple(float(p) for p in rng.uniform(0, 2 * np.pi, n)),
        drift=tuple(float(d) for d in rng.normal(0, 2.0, n)),
    )


def draw_params(rng: np.random.Generator, *, variation: float = 1.0) -> PhantomParams:
    """A random abdominal phantom; ``variation`` 0 gives the textbook layout, 1 the training spread.

    Organ coordinates are isotropic body units: 1 is the body's half-width, so a round vessel stays round.
    """

    def j(scale: float) -> float:  # jitter
        return float(rng.normal(0.0, scale * variation))

    def f(lo: float, hi: float, typical: float) -> float:  # a value in [lo, hi], typical when variation=0
        return float(typical + (rng.uniform(lo, hi) - typical) * variation)

    phase = rng.choice(["plain", "arterial", "portal"], p=[0.2, 0.3, 0.5]) if variation > 0 else "portal"
    enhance = {"plain": 0.0, "arterial": 0.6, "portal": 1.0}[str(phase)]
    h = lambda n, a: _harmonics(rng, n, a * (0.3 + 0.7 * variation))  # noqa: E731
    aspect = f(0.6, 0.8, 0.7)  # body depth / width

    s: list[Structure] = []
    liver_hu = 60 + 50 * enhance + j(10)
    liver = Shape((-0.04 + j(0.04), -0.42 + j(0.05)), (0.38 * f(0.8, 1.2, 1), 0.42 * f(0.8, 1.2, 1)),
                  angle=j(0.2), zc=0.3 + j(0.05), hz=0.38 * f(0.8, 1.2, 1), **h(3, 0.12))
    s.append(Structure("liver", ORGAN_LABELS["liver"], liver, liver_hu, texture=6))
    n_lesions = int(rng.integers(0, 4)) if variation >= 0.5 else 2  # the sample shows two
    for i in range(n_lesions):
        r = f(0.025, 0.09, 0.05)
        ang = rng.uniform(0, 2 * np.pi)
        dist = rng.uniform(0.1, 0.55)
        center = (liver.center[0] + dist * liver.radii[0] * np.sin(ang),
                  liver.center[1] + dist * liver.radii[1] * np.cos(ang))
        hyper = bool(rng.random() < 0.3)
        s.append(Structure(
            f"liver lesion {i + 1}", LESION_BASE + i,
            Shape(center, (r * f(0.8, 1.25, 1), r), angle=rng.uniform(0, np.pi), zc=liver.zc + rng.uniform(-0.2, 0.2),
                  hz=f(0.04, 0.14, 0.08), **h(2, 0.1)),
            liver_hu + (45 if hyper else -45) * f(0.5, 1.5, 1),
        ))
    s.append(Structure("gallbladder", ORGAN_LABELS["gallbladder"],
                       Shape((-0.26 + j(0.04), -0.22 + j(0.05)), (0.08 * f(0.7, 1.3, 1), 0.06 * f(0.7, 1.3, 1)),
                             angle=j(0.5), zc=0.48 + j(0.04), hz=0.10 * f(0.8, 1.3, 1), **h(2, 0.08)),
                       10 + j(6)))
    sv, su = 0.17 + j(0.04), 0.62 + j(0.04)
    s.append(Structure("spleen", ORGAN_LABELS["spleen"],
                       Shape((sv, su), (0.22 * f(0.8, 1.2, 1), 0.12 * f(0.8, 1.2, 1)),
                             angle=-0.6 + j(0.2), zc=0.25 + j(0.05), hz=0.22 * f(0.8, 1.2, 1),
                             hole=Shape((sv - 0.06, su - 0.12), (0.13, 0.06), angle=-0.6), **h(2, 0.08)),
                       50 + 70 * enhance + j(10), texture=5))
    s.append(Structure("stomach", ORGAN_LABELS["stomach"],
                       Shape((-0.25 + j(0.04), 0.28 + j(0.06)), (0.18 * f(0.7, 1.3, 1), 0.26 * f(0.7, 1.3, 1)),
                             angle=0.3 + j(0.2), zc=0.22 + j(0.05), hz=0.22 * f(0.8, 1.2, 1), **h(3, 0.1)),
                       15 + j(8), rim=(0.025, 55 + 40 * enhance)))
    for side, name in ((-1, "right kidney"), (1, "left kidney")):
        cv, cu = 0.30 + j(0.03), side * (0.40 + j(0.04))
        hilum = Shape((cv - 0.01, cu - side * 0.10), (0.05, 0.04))
        kidney = Shape((cv, cu), (0.15 * f(0.8, 1.2, 1), 0.10 * f(0.8, 1.2, 1)), angle=side * (0.35 + j(0.1)),
                       zc=(0.55 if side < 0 else 0.50) + j(0.04), hz=0.20 * f(0.8, 1.2, 1), hole=hilum, **h(2, 0.05))
        s.append(Structure(name, ORGAN_LABELS[name], kidney, 35 + 120 * enhance + j(12),
                           rim=(0.025, 35 + 160 * enhance + j(10)) if enhance > 0.3 else None))
    aorta_r = 0.065 * f(0.75, 1.3, 1)
    s.append(Structure("aorta", ORGAN_LABELS["aorta"],
                       Shape((0.22 + j(0.02), 0.07 + j(0.03)), (aorta_r, aorta_r), center_drift=(j(0.03), j(0.05))),
                       40 + 160 * enhance * f(0.6, 1.6, 1) + j(8)))
    s.append(Structure("inferior vena cava", ORGAN_LABELS["inferior vena cava"],
                       Shape((0.21 + j(0.02), -0.14 + j(0.03)), (0.05 * f(0.8, 1.2, 1), 0.07 * f(0.8, 1.3, 1)),
                             center_drift=(j(0.03), j(0.04)), **h(2, 0.08)),
                       40 + 90 * enhance + j(10)))
    # Vertebra: a body with an arch behind it; the canal is drawn after it, inside the arch.
    vb = 0.42 + j(0.02)
    bone_hu = f(600, 1000, 800)
    vertebra = Shape((vb, 0.0), (0.11 * f(0.85, 1.15, 1), 0.12 * f(0.85, 1.15, 1)), **h(2, 0.04))
    s.append(Structure("vertebra", ORGAN_LABELS["vertebra"], vertebra, 250 + j(40), texture=30, rim=(0.02, bone_hu)))
    s.append(Structure("vertebra", ORGAN_LABELS["vertebra"], Shape((vb + 0.14, 0.0), (0.09, 0.1)), bone_hu))
    s.append(Structure("vertebra", ORGAN_LABELS["vertebra"], Shape((vb + 0.25, 0.0), (0.07, 0.022)), bone_hu))
    s.append(Structure("vertebra", ORGAN_LABELS["vertebra"], Shape((vb + 0.12, 0.0), (0.025, 0.2)), bone_hu))
    s.append(Structure("spinal canal", ORGAN_LABELS["spinal canal"],
                       Shape((vb + 0.14, 0.0), (0.05 * f(0.8, 1.2, 1), 0.055 * f(0.8, 1.2, 1)), **h(2, 0.06)),
                       20 + j(6)))
    # Unlabelled clutter: paraspinal muscles (drawn first), bowel loops.
    clutter = [Structure("paraspinal muscle", 0, Shape((vb + 0.2, side * 0.2), (0.12, 0.11), **h(2, 0.08)),
                         50 + j(8)) for side in (-1, 1)]
    for _ in range(int(rng.integers(2, 7)) if variation > 0 else 4):
        r = rng.uniform(0.035, 0.07)
        gas = rng.random() < 0.5
        clutter.append(Structure("bowel loop", 0,
                                 Shape((rng.uniform(-0.4, 0.1), rng.uniform(-0.3, 0.45)),
                                       (r, r * rng.uniform(0.7, 1.3)),
                                       zc=rng.uniform(0.4, 1.0), hz=rng.uniform(0.1, 0.3), **h(2, 0.1)),
                                 -900.0 if gas else 20.0, rim=(0.012, 50.0)))
    width = f(0.70, 0.95, 0.86)  # body width / field of view
    return PhantomParams(
        body_radii=(width / 2 * aspect, width / 2),
        body_center=(0.5 + j(0.03), 0.5 + j(0.03)),
        body_amps=tuple(float(a) for a in rng.uniform(0, 0.04 * variation + 0.01, 3)),
        body_phases=tuple(float(p) for p in rng.uniform(0, 2 * np.pi, 3)),
        fat_thickness=f(0.03, 0.16, 0.08),
        muscle_thickness=f(0.03, 0.07, 0.05),
        fat_hu=-100 + j(15),
        muscle_hu=50 + j(8),
        visceral_hu=f(-70, 20, -20),
        structures=clutter + s,
        noise_hu=f(4, 30, 12),
        blur_px=f(0.3, 1.4, 0.8),
        rotation=j(0.12),
        flip_lr=bool(variation > 0 and rng.random() < 0.15),
    )


def _body_coords(shape: tuple[int, int], p: PhantomParams) -> tuple[np.ndarray, np.ndarray]:
    """(v, u) isotropic body coordinates of every pixel (1 = the body's half-width)."""
    h, w = shape
    long = max(h, w)
    rows = (np.arange(h) + 0.5 - h * p.body_center[0]) / long
    cols = (np.arange(w) + 0.5 - w * p.body_center[1]) / long
    r, c = np.meshgrid(rows, cols, indexing="ij")
    cr, sr = np.cos(p.rotation), np.sin(p.rotation)
    r, c = cr * r + sr * c, -sr * r + cr * c
    if p.flip_lr:
        c = -c
    return r / p.body_radii[1], c / p.body_radii[1]


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std low-frequency noise."""
    small = max(4, int(max(shape) / max(sigma, 1.0)))
    coarse = rng.standard_normal((small, small))
    field_ = ndimage.zoom(coarse, (shape[0] / small, shape[1] / small), order=3)[: shape[0], : shape[1]]
    field_ = np.pad(field_, ((0, shape[0] - field_.shape[0]), (0, shape[1] - field_.shape[1])), mode="edge")
    return (field_ - field_.mean()) / (field_.std() + 1e-6)


def render_plane(p: PhantomParams, z: float, shape: tuple[int, int],
                 rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(HU float32, labels int32) of the plane at ``z`` in [0, 1]; ``rng`` adds texture and noise."""
    v, u = _body_coords(shape, p)
    vb = v * (p.body_radii[1] / p.body_radii[0])  # the body outline is an ellipse
    theta = np.arctan2(vb, u)
    mod = np.ones(shape)
    for k, (a, ph) in enumerate(zip(p.body_amps, p.body_phases)):
        mod += a * np.cos((k + 2) * theta + ph)
    rho = np.hypot(vb, u) / mod
    hu = np.full(shape, AIR_HU, dtype=np.float64)
    labels = np.zeros(shape, dtype=np.int32)
    hu[rho <= 1.0] = p.fat_hu
    hu[rho <= 1.0 - p.fat_thickness] = p.muscle_hu
    inner = rho <= 1.0 - p.fat_thickness - p.muscle_thickness
    visceral = p.visceral_hu
    if rng is not None:  # mesenteric fat and soft tissue mixed
        visceral = visceral + 15.0 * _smooth_field(rng, shape, 10.0)
    hu = np.where(inner, visceral, hu)
    texture = _smooth_field(rng, shape, 6.0) if rng is not None else np.zeros(shape)
    for st in p.structures:
        m = st.shape.mask(v, u, z) & (rho <= 1.0 - p.fat_thickness)
        if not m.any():
            continue
        value = st.hu + st.texture * texture
        if st.rim is not None:
            thick, rim_hu = st.rim
            core = replace(st.shape, radii=(max(st.shape.radii[0] - thick, 1e-3), max(st.shape.radii[1] - thick, 1e-3)),
                           hole=None)
            value = np.where(core.mask(v, u, z), value, rim_hu)
        hu = np.where(m, value, hu)
        if st.label:
            labels[m] = st.label
        else:
            labels[m] = 0  # clutter hides what it covers
    if p.blur_px > 0:
        hu = ndimage.gaussian_filter(hu, p.blur_px)
    if rng is not None and p.noise_hu > 0:
        white = rng.standard_normal(shape)
        grain = ndimage.gaussian_filter(rng.standard_normal(shape), 1.0) * 2.0
        hu = hu + p.noise_hu * (0.6 * white + 0.8 * grain)
    return hu.astype(np.float32), labels


def phantom_volume(seed: int = SAMPLE_SEED, shape: tuple[int, int, int] = (40, 256, 256),
                   variation: float = 0.3) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """A seeded abdominal CT-like volume (int16 HU, Z,Y,X) with its labels (uint8) and label names."""
    rng = np.random.default_rng([seed, EVAL_STREAM])
    params = draw_params(rng, variation=variation)
    hu = np.empty(shape, dtype=np.int16)
    labels = np.empty(shape, dtype=np.uint8)
    for i in range(shape[0]):
        z = (i + 0.5) / shape[0]
        plane, lab = render_plane(params, z, shape[1:], rng)
        hu[i] = np.clip(np.round(plane), -1024, 3071).astype(np.int16)
        labels[i] = lab
    present = {int(v) for v in np.unique(labels) if v}
    names = {k: v for k, v in label_names(8).items() if k in present}
    return hu, labels, names


# --- generic scenes: shapes of any kind on textured backgrounds --------------------------------------------------


def shapes_scene(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Random objects (ellipses, blobs, rounded boxes, rings, crescents) of varied size and contrast."""
    h, w = shape
    long = max(h, w)
    rows = (np.arange(h) + 0.5) / long
    cols = (np.arange(w) + 0.5) / long
    r, c = np.meshgrid(rows, cols, indexing="ij")
    base = rng.uniform(-200, 200)
    img = base + rng.uniform(5, 60) * _smooth_field(rng, shape, rng.uniform(5, 30))
    labels = np.zeros(shape, dtype=np.int32)
    n = int(rng.integers(2, 9))
    for k in range(1, n + 1):
        size = float(np.exp(rng.uniform(np.log(0.025), np.log(0.3))))
        cy, cx = rng.uniform(0.1, 0.9) * h / long, rng.uniform(0.1, 0.9) * w / long
        ratio = rng.uniform(0.35, 1.0)
        kind = rng.choice(["ellipse", "blob", "box", "ring", "crescent"], p=[0.3, 0.3, 0.15, 0.12, 0.13])
        shp = Shape((0.0, 0.0), (size * ratio, size), angle=rng.uniform(0, np.pi),
                    **(_harmonics(rng, 3, 0.2) if kind == "blob" else {}))
        if kind == "ring":
            shp.hole = Shape((0.0, 0.0), (size * ratio * 0.6, size * 0.6), angle=shp.angle)
        elif kind == "crescent":
            shp.hole = Shape((0.4 * size * ratio, 0.2 * size), (size * ratio, size), angle=shp.angle)
        dv, du = r - cy, c - cx
        if kind == "box":
            ca, sa = np.cos(shp.angle), np.sin(shp.angle)
            a = (ca * dv + sa * du) / shp.radii[0]
            b = (-sa * dv + ca * du) / shp.radii[1]
            m = (np.abs(a) ** 6 + np.abs(b) ** 6) <= 1.0
        else:
            m = shp.mask(dv, du, 0.5)
        if m.sum() < 12:
            continue
        contrast = rng.choice([-1, 1]) * float(np.exp(rng.uniform(np.log(40), np.log(500))))
        value = base + contrast + rng.uniform(0, 25) * _smooth_field(rng, shape, 4.0)
        img = np.where(m, value, img)
        labels[m] = k
    img = ndimage.gaussian_filter(img, rng.uniform(0.3, 1.5))
    img = img + rng.uniform(2, 25) * rng.standard_normal(shape)
    return img.astype(np.float32), labels


# --- training / evaluation slices ---------------------------------------------------------------------------------


@dataclass
class SliceSample:
    """One 2D training or evaluation image: values (HU or arbitrary), labels, and how to window it."""

    image: np.ndarray
    labels: np.ndarray
    kind: str  # "phantom" or "shapes"


def random_slice(rng: np.random.Generator, *, shapes_share: float = 0.25,
                 size_range: tuple[int, int] = (128, 320)) -> SliceSample:
    """A fresh 2D slice: a random abdominal phantom at a random level, or (sometimes) a generic scene."""
    long = int(rng.integers(size_range[0], size_range[1] + 1))
    short = int(long * rng.uniform(0.75, 1.0)) if rng.random() < 0.4 else long
    shape = (short, long) if rng.random() < 0.5 else (long, short)
    if rng.random() < shapes_share:
        img, lab = shapes_scene(rng, shape)
        return SliceSample(img, lab, "shapes")
    params = draw_params(rng, variation=1.0)
    img, lab = render_plane(params, float(rng.uniform(0.02, 0.98)), shape, rng)
    return SliceSample(img, lab, "phantom")


def window_to_uint8(image: np.ndarray, rng: np.random.Generator | None, kind: str) -> np.ndarray:
    """8-bit rendering: a CT soft-tissue window (jittered in training) or percentiles, as users will load them."""
    if kind == "phantom" and (rng is None or rng.random() < 0.7):
        level, width = (40.0, 400.0) if rng is None else (rng.uniform(0, 100), rng.uniform(250, 700))
        lo, hi = level - width / 2, level + width / 2
    else:
        p_lo, p_hi = (0.5, 99.5) if rng is None else (rng.uniform(0, 2), rng.uniform(98, 100))
        lo, hi = np.percentile(image, [p_lo, p_hi])
        hi = max(hi, lo + 1.0)
    out = np.clip((image - lo) * (255.0 / (hi - lo)), 0, 255)
    if rng is not None and rng.random() < 0.3:
        out = 255.0 * (out / 255.0) ** rng.uniform(0.6, 1.6)
    return out.round().astype(np.uint8)
