"""Regenerate docs/screenshot.png: napari with the Segment (MSA) widget docked and the phantom segmented.

Drives the real GUI the way a user does (open sample, the default model LiteMedSAM + click adapter loads
on the first click, click on organs, commit),
with clicks placed at the most interior pixel of each organ in the phantom's ground truth, and prints
each object's Dice against that ground truth. Needs a display: ``xvfb-run -a python docs/make_screenshot.py``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import napari
from qtpy.QtCore import QEventLoop, QTimer

from napari_msa._widgets._hub import hub_for
from napari_msa.engine.file_checks import CheckpointError
from napari_msa.engine.files.litemedsam import bundled_weights
from napari_msa.engine.prompts.geometry import dice, exact_depth, most_interior

OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "screenshot.png"
SLICE = 16
# Small organs first: with "overwrite" off a later object never takes an earlier one's pixels.
COMMITTED = ("right kidney", "left kidney", "aorta", "inferior vena cava")
PREVIEW = "liver"  # left as a live preview, its prompt point visible


def spin(condition, timeout: float = 600.0) -> None:
    loop = QEventLoop()
    check = QTimer()
    check.setInterval(5)
    deadline = time.perf_counter() + timeout
    check.timeout.connect(lambda: (condition() or time.perf_counter() > deadline) and loop.quit())
    check.start()
    if not condition():
        loop.exec()
    check.stop()
    if not condition():
        raise TimeoutError("screenshot step did not finish")


def main() -> int:
    try:
        bundled_weights()
    except CheckpointError as err:
        print(err, file=sys.stderr)
        return 1
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 940)
    viewer.open_sample("napari-msa", "phantom")
    _, widget = viewer.window.add_plugin_dock_widget("napari-msa", "Segment (MSA)")
    truth = next(ly for ly in viewer.layers if ly.name == "phantom ground truth")
    names = {v: k for k, v in truth.metadata["label_names"].items()}

    assert widget.model_panel.combo.currentText() == "litemedsam"  # the default, preselected
    widget.form.norm_combo.setCurrentText("ct")  # the phantom is CT in HU: the soft-tissue window
    viewer.dims.set_current_step(0, SLICE)
    spin(lambda: widget.idle)

    points = widget.layers.points()
    for organ in (*COMMITTED, PREVIEW):
        gt = truth.data[SLICE] == names[organ]
        points.add([SLICE, *most_interior(gt, exact_depth(gt))])  # the first click also loads the model
        spin(lambda: hub_for(viewer).model is not None and widget.idle)
        labels = widget.layers.labels()
        obj = widget.form.object_id.value()
        print(f"{organ:14s} object {obj}: Dice vs ground truth {dice(labels.data[SLICE] == obj, gt):.3f}")
        if organ != PREVIEW:
            widget.commit()
    viewer.layers.selection.active = points
    widget.status.setText(widget.status.text())
    spin(lambda: widget.idle)
    viewer.screenshot(str(OUT), canvas_only=False, flash=False)
    print(f"wrote {OUT}")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
