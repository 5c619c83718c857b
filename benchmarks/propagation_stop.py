"""Where does propagation stop? False-positive slices past an object's end, missed slices, 3D Dice, per stop rule.

An annotator segments a structure on one slice and presses Shift+S: ``Session.propagate`` carries it slice by slice
until its stop rule says the object has ended. This measures that rule on volumes no training drew: the phantom
sample, and evaluation-stream volumes of both phantom generators (``demo.phantoms`` CT-like, ``demo.phantoms_mr``
MR / ultrasound / microscopy-like with dark objects, rings and nested structures).

Each structure (a label with >= 64 px on some slice) starts on its middle slice (the middle of its z-extent, where a
user would click), from (a) its true mask there and (b) the model's answer to one click at its deepest pixel, and is
carried both ways to the end of the volume with no stop at all, recording what every stop rule looks at on each
slice. A rule is then the first slice, going outwards, where it fires: since the prompts of each slice come from the
previous slice's mask, the chain does not depend on the rule, so every rule is scored on the same chains, side by
side, in one run. Reported per rule: slices painted where the structure is absent (false positives), slices where
it is present that were not reached (misses), and the structures' mean 3D Dice.

    python benchmarks/propagation_stop.py [--seeds 9001 9002 9003 9004 9005] [--json out.json]

Prints numbers only; nothing here asserts a threshold.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from napari_msa import Normalization, Session, load_model  # noqa: E402
from napari_msa.demo import phantoms, phantoms_mr  # noqa: E402
from napari_msa.engine.inference.propagation import STOP_RULES, Brightness, StepFacts, first_stop, step_facts  # noqa: E402
from napari_msa.engine.prompts.geometry import depth_map, dice, most_interior  # noqa: E402

SHAPE = (32, 256, 256)
MIN_AREA = 64


def volumes(seeds: list[int]):
    """(name, image, labels, label names, normalisation): the phantom sample, then both generators per seed."""
    from napari_msa._sample_data import phantom_volume

    (hu, _, _), (truth, truth_kwargs, _) = phantom_volume()
    yield "phantom sample", hu, truth, truth_kwargs["metadata"]["label_names"], Normalization("ct")
    for seed in seeds:
        image, labels, names = phantoms.phantom_volume(seed, shape=SHAPE)
        yield f"ct {seed}", image, labels, names, Normalization("ct")
        image, labels, names = phantoms_mr.phantom_volume(seed, shape=SHAPE)
        yield f"mr {seed}", image, labels, names, Normalization("auto")


def chain(session: Session, start: np.ndarray, z0: int, step: int) -> list[tuple[int, np.ndarray, StepFacts]]:
    """Propagate from ``start`` on ``z0`` in direction ``step`` to the volume's end, stopping only on an empty mask."""
    out = []
    brightness = Brightness.of(session.plane_rgb(z0)[..., 0], start)
    previous, z = start, z0 + step
    while 0 <= z < session.num_slices and previous.any():
        mask, facts = step_facts(session, brightness, previous, z)
        out.append((z, mask, facts))
        previous = mask
        z += step
    return out


def score_rule(chains: list[tuple[list, np.ndarray, int, np.ndarray]], rule) -> dict:
    """False-positive slices, missed slices and 3D Dice of every structure's chains cut where ``rule`` fires."""
    fp = missed = 0
    dices = []
    for both, truth, z0, start in chains:
        pred = np.zeros_like(truth)
        pred[z0] = start
        for steps in both:
            for z, mask, _ in steps[: first_stop([f for _, _, f in steps], rule)]:
                pred[z] = mask
        present = truth.any((1, 2))
        painted = pred.any((1, 2))
        fp += int((painted & ~present).sum())
        missed += int((present & ~painted).sum())
        dices.append(dice(pred, truth))
    return {"fp_slices": fp, "missed_slices": missed, "dice3d": float(np.mean(dices)), "structures": len(chains)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="litemedsam")
    ap.add_argument("--seeds", type=int, nargs="+", default=[9001, 9002, 9003, 9004, 9005])
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", help="write the per-rule figures here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, device="cpu")
    print(f"# {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}; {model.describe()}")
    starts = {"true mask": [], "one click": []}
    t0 = time.perf_counter()
    for name, image, labels, names, norm in volumes(args.seeds):
        session = Session(model, normalization=norm)
        session.set_image(image)
        for label in sorted(int(k) for k in names):
            truth = labels == label
            areas = truth.sum((1, 2))
            if areas.max() < MIN_AREA:
                continue
            present = np.flatnonzero(areas)
            z0 = int(present[len(present) // 2]) if areas[present[len(present) // 2]] >= MIN_AREA else \
                int(np.argmax(areas))
            row, col = most_interior(truth[z0], depth_map(truth[z0]))
            clicked, _ = session.predict(points=[[z0, row, col]], labels=[1])
            for kind, start in (("true mask", truth[z0]), ("one click", clicked)):
                if not start.any():
                    continue
                both = [chain(session, start, z0, step) for step in (1, -1)]
                starts[kind].append((both, truth, z0, start))
        print(f"{name}: done ({time.perf_counter() - t0:.0f} s)", flush=True)
    results = {}
    for kind, chains in starts.items():
        print(f"\nstart: {kind} on the structure's middle slice ({len(chains)} structures)")
        print("| stop rule | false-positive slices | missed slices | mean 3D Dice |")
        print("|---|---|---|---|")
        for rule_name, rule in STOP_RULES.items():
            r = score_rule(chains, rule)
            results[f"{kind} / {rule_name}"] = r
            print(f"| {rule_name} | {r['fp_slices']} | {r['missed_slices']} | {r['dice3d']:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
