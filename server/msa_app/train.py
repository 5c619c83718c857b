"""The train task ``msa_tune``: napari-msa's ``tune()`` on the datastore's final labels, the widget's acceptance rule.

Each study with a final label (what 3D Slicer's *Submit Label* saves) is one image/labels pair, read in napari-msa's
display order; labels are on the study's own voxel grid (NIfTI or NRRD). The live model is tuned with
``TuneConfig``'s defaults (or the request's ``steps``, ``lr``, ``val_fraction``, ``train``, ``seed``), exactly as
the Tune widget and ``napari-msa tune`` run it: the result is kept only when a held-out check beat the model as it
was by ``accept_margin`` (``summary.tuned``). A kept adapter is saved in ``<model_dir>/adapters`` and made live by
the pointer file ``Studies`` reads before every request. ``{"restore": true}`` trains nothing and goes back to the
configured adapter.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from pathlib import Path

import numpy as np
from monailabel.interfaces.tasks.train import TrainTask

from napari_msa.engine.files.checkpoints import atomic_write
from napari_msa.medical_io import Geometry, MedicalIOError
from napari_msa.medical_io.cli import read_array

from .studies import Studies

logger = logging.getLogger(__name__)
TRAIN_CHOICES = {"decoder": (False, True), "adapters": (True, False), "both": (True, True)}


def read_label(path: str | os.PathLike, geometry: Geometry) -> np.ndarray:
    """A label file on its image's voxel grid (NIfTI or NRRD), in the image's display order."""
    name = str(path).lower()
    if name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        source = np.asanyarray(nib.load(path).dataobj)
    elif name.endswith(".nrrd"):
        import nrrd

        source, _ = nrrd.read(str(path))  # index order (i, j, k), as the image's
    else:
        raise MedicalIOError(f"{Path(path).name}: final labels are read as NIfTI or NRRD")
    shape = geometry.source_shape
    if source.size != int(np.prod(shape)) or [s for s in source.shape if s > 1] != [s for s in shape if s > 1]:
        raise MedicalIOError(f"{Path(path).name} is {source.shape}, its image {shape}: labels must be on the image's "
                             "own voxel grid")
    source = np.asarray(source).reshape(shape)
    if source.dtype.kind == "f":
        if not np.all(source == np.round(source)):
            raise MedicalIOError(f"{Path(path).name} holds fractions; labels are whole ids")
        source = source.astype(np.int64)
    return geometry.to_display(source)


def tune_options(request: dict) -> dict:
    """The request's settings as ``tune()`` options; TuneConfig's defaults for what it leaves out."""
    options = {}
    if request.get("steps") not in (None, "", 0, "0"):
        options["steps"] = int(request["steps"])
    for key, kind in (("lr", float), ("val_fraction", float), ("seed", int)):
        if request.get(key) not in (None, ""):
            options[key] = kind(request[key])
    train = request.get("train", "decoder")
    if train not in TRAIN_CHOICES:
        raise ValueError(f"train {train!r}: choose one of {', '.join(TRAIN_CHOICES)}")
    options["train_adapters"], options["train_decoder"] = TRAIN_CHOICES[train]
    return options


class MSATrain(TrainTask):
    """Tune the live model on the final labels; make the result live when it is kept."""

    def __init__(self, studies: Studies) -> None:
        super().__init__("napari-msa: tune the adapters (by default the mask decoder) on the final labels; kept "
                         "only if held-out Dice improves, then used by the next request")
        self.studies = studies

    def config(self) -> dict:
        return {"steps": 0, "lr": 1e-4, "val_fraction": 0.2, "train": "decoder", "seed": 0, "restore": False}

    def stats(self) -> dict:
        try:
            return json.loads(self.studies.pointer.read_text())
        except (OSError, ValueError):
            return {"adapter": self.studies.config.adapter}

    def __call__(self, request: dict, datastore) -> dict:
        from napari_msa.engine import tune

        pointer = self.studies.pointer
        if str(request.get("restore", "")).lower() in ("true", "1"):
            pointer.unlink(missing_ok=True)
            logger.info(f"napari-msa: back to the configured adapter {self.studies.config.adapter}")
            return {"live": True, "adapter": self.studies.config.adapter, "restored": True}
        options = tune_options(request)
        pairs = datastore.datalist()
        if not pairs:
            raise ValueError("no study has a final label yet: submit labels (Slicer: Submit Label) and train again")
        images, labels = [], []
        for pair in pairs:
            data, geometry = read_array(pair["image"])
            images.append(data)
            labels.append(read_label(pair["label"], geometry))
        model = self.studies.model
        logger.info(f"napari-msa: tuning {model.describe()} on {len(images)} studies with {options}")

        def progress(p) -> None:
            if p.phase != "train" or p.step % 10 == 0:
                dice = f", held-out Dice {p.val_dice:.3f}" if p.val_dice is not None else ""
                logger.info(f"napari-msa tune: {p.phase} {p.step}/{p.total_steps}{dice}")

        result = tune(model, images if len(images) > 1 else images[0], labels if len(labels) > 1 else labels[0],
                      normalization=self.studies.normalization, progress=progress, **options)
        s = result.summary
        out = {"kept": s.kept, "live": s.tuned, "steps": s.steps_done, "time_s": s.time_s, "studies": len(images),
               "held_out": None if s.held_out is None else vars(s.held_out), "adapter": None}
        if s.tuned:
            stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
            path = Path(self.studies.config.model_dir) / "adapters" / f"tuned-{stamp}.safetensors"
            path.parent.mkdir(parents=True, exist_ok=True)
            result.save(path)
            out["adapter"] = str(path)
            record = json.dumps({"adapter": str(path), "finished_at": s.finished_at, "held_out": out["held_out"],
                                 "studies": len(images), "steps": s.steps_done})
            atomic_write(pointer, lambda tmp: Path(tmp).write_text(record))
            logger.info(f"napari-msa: tuned adapter {path} is live")
        else:
            logger.info("napari-msa: no held-out check beat the model as it was; it stays unchanged")
        return out
