"""``napari-msa demo``: the whole job in one window, with nothing to download.

Opens napari with the synthetic abdominal phantom (and its ground truth, hidden), docks the
"Segment (MSA)" and "Tune (MSA)" widgets, loads the shipped demo model and places a few example
clicks through the same points layer a user clicks in, so masks are on screen when the window
appears. With ``screenshot`` it renders the window to a PNG once the workers are done and exits
(under Xvfb on a machine without a display; the CLI arranges that).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

DEMO_TITLE = "napari-msa demo: DEMO model trained on synthetic phantoms (not SAM)"
# Example objects, clicked in this order; all but the last are committed, the last stays a live preview.
EXAMPLE_OBJECTS = ("right kidney", "left kidney", "aorta", "liver")
WINDOW_SIZE = (1500, 950)


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


def demo_slice(labels: np.ndarray, names: dict[int, str]) -> int:
    """The slice showing the most example organs, each well (ties: the larger of them, up to 400 px each)."""
    wanted = [k for k, v in names.items() if v in EXAMPLE_OBJECTS]
    areas = [[int((labels[z] == k).sum()) for k in wanted] for z in range(labels.shape[0])]
    scores = [(sum(a >= 60 for a in row), sum(min(a, 400) for a in row)) for row in areas]
    return int(max(range(len(scores)), key=lambda z: scores[z]))


def example_clicks(plane: np.ndarray, names: dict[int, str]) -> list[tuple[str, tuple[int, int]]]:
    """(name, (row, col)) at the most interior pixel of each example organ's largest piece on ``plane``."""
    from scipy import ndimage

    from napari_msa.engine.geometry import most_interior

    by_name = {v: k for k, v in names.items()}
    clicks = []
    for name in EXAMPLE_OBJECTS:
        label = by_name.get(name)
        if label is None:
            continue
        comp, n = ndimage.label(plane == label)
        if n == 0:
            continue
        largest = comp == (1 + int(np.argmax(np.bincount(comp.ravel())[1:])))
        if largest.sum() < 60:
            continue
        clicks.append((name, tuple(int(i) for i in most_interior(largest))))
    return clicks


def build_demo(viewer, *, model_file: str | Path | None = None, timeout_s: float = 120.0) -> dict:
    """Fill ``viewer`` with the demo: phantom, widgets, demo model, example clicks. Returns what it made."""
    from napari_msa._sample_data import phantom_volume
    from napari_msa._widgets._hub import hub_for
    from napari_msa._widgets.segment_widget import SegmentWidget
    from napari_msa._widgets.tune_widget import TuneWidget
    from napari_msa.engine import CheckpointError, load_model

    try:
        model = load_model("demo", checkpoint=model_file, device="auto")
    except CheckpointError as err:
        raise DemoError(f"the demo model cannot be loaded ({err}); reinstall napari-msa") from err

    (image_data, image_kwargs, _), (truth, truth_kwargs, _) = phantom_volume()
    names = truth_kwargs["metadata"]["label_names"]
    image = viewer.add_image(image_data, **image_kwargs)
    truth_kwargs = {**truth_kwargs, "name": "ground truth (hidden; tick to compare)", "visible": False}
    viewer.add_labels(truth, **truth_kwargs)
    z = demo_slice(truth, names)
    viewer.dims.set_current_step(0, z)
    viewer.layers.selection.active = image

    hub_for(viewer).set_model(model)
    segment = SegmentWidget(viewer)
    viewer.window.add_dock_widget(segment, name="Segment (MSA)", area="right")
    tune = TuneWidget(viewer)
    viewer.window.add_dock_widget(tune, name="Tune (MSA)", area="right")
    for widget in (segment, tune):  # the phantom is CT in HU: the soft-tissue window, as a user would pick
        combo = getattr(widget, "norm_combo", None)
        if combo is not None and combo.findText("ct") >= 0:
            combo.setCurrentText("ct")
    viewer.text_overlay.visible = True
    viewer.text_overlay.text = ("DEMO model (trained on synthetic phantoms, not SAM): click an organ to segment it. "
                                "The plugin's default model is LiteMedSAM + click adapter (Model: litemedsam).")
    viewer.reset_view()

    points = segment.points_layer()
    if points is None:
        raise DemoError("the Segment widget made no prompt layer for the phantom")
    clicks = example_clicks(truth[z], names)
    done = []
    for i, (name, (row, col)) in enumerate(clicks):
        points.add(np.array([[z, row, col]], dtype=float))
        if not _settled(segment, timeout_s):
            log.warning("the demo click on the %s did not finish within %.0f s", name, timeout_s)
            break
        done.append(name)
        if i < len(clicks) - 1:
            segment.commit()
            _settled(segment, timeout_s)
    labels = segment.labels_layer()
    painted = int(np.count_nonzero(labels.data[z])) if labels is not None else 0
    return {"viewer": viewer, "segment": segment, "tune": tune, "model": model, "slice": z, "clicked": done,
            "painted_pixels": painted}


def _write_png(array: np.ndarray, path: Path) -> Path:
    import imageio.v3 as iio

    from napari_msa.engine.checkpoints import atomic_write

    return atomic_write(path, lambda tmp: iio.imwrite(tmp, array, extension=".png"))


def run_demo(screenshot: str | None = None, *, model_file: str | Path | None = None,
             timeout_s: float = 120.0) -> int:
    """Open the demo (blocks in napari's event loop); with ``screenshot``, save a PNG of the window and exit."""
    import napari

    logging.getLogger("OpenGL").setLevel(logging.WARNING)  # its INFO line about an optional accelerator is noise
    viewer = napari.Viewer(title=DEMO_TITLE, show=True)
    try:
        viewer.window.resize(*WINDOW_SIZE)
        made = build_demo(viewer, model_file=model_file, timeout_s=timeout_s)
        log.info("demo: slice %d, clicked %s, %d labelled pixels", made["slice"], ", ".join(made["clicked"]),
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
