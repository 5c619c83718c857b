"""Refining an object that is already in the labels: how much do correction clicks fix?

An annotator commits a quick one-click mask, then sees it is wrong. With the Segment widget's "refine the object
where it exists" the clicks on that slice go to the engine with the object as committed as ``prior=`` (the answer
before the first click: with the default model its mask goes in as SAM's mask input, engine.prompts.interaction),
and the answer replaces the object. Without it, the only way to fix the object is to segment it again from clicks
alone (a new interaction under the model's rule). Both are simulated through ``Session.predict`` exactly as the
widget calls it (one call per click, every click so far): the start is the model's own mask for one click at the
object's most interior pixel; each round adds one correction click at the centre of the largest error (positive in a
missed region, negative in a false one).

Objects: every connected piece >= 64 px of the development phantom volumes (seeds 7001-7004 of the evaluation
stream; never used for reported tuning figures) whose one-click mask has Dice < 0.9: the ones worth refining.

    python benchmarks/refine_quality.py [--model litemedsam] [--adapter PATH] [--rounds 3] [--rule logits]

Prints numbers only; nothing here asserts a threshold.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _harness import machine_line  # noqa: E402
from tuning_gain import CT, SHAPE, objects_of  # noqa: E402

from napari_msa import Session, load_model  # noqa: E402
from napari_msa.demo.phantoms import phantom_volume  # noqa: E402
from napari_msa.engine.prompts.geometry import clicked_object_box, depth_map, dice, most_interior  # noqa: E402
from napari_msa.engine.tuning.data import correction_click  # noqa: E402

DEV_SEEDS = (7001, 7002, 7003, 7004)
NEEDS_REFINING = 0.9
WAYS = ("refine (the object as committed is the prior)", "clicks alone (a new interaction)",
        "clicks + the object's box (the widget's refine until 2026-12-05)")


def refine_rounds(session: Session, z: int, truth: np.ndarray, rounds: int) -> dict[str, list[float]]:
    """Dice per round (0 = the committed one-click mask) for both ways of fixing it."""
    first = most_interior(truth, depth_map(truth))
    committed, _ = session.predict(points=[[z, *first]], labels=[1])
    out = {"start": [dice(committed, truth)]}
    for way in WAYS:
        # refining, the prompts layer holds only the new clicks (the object's own were cleared at its commit);
        # segmenting again starts from the first click
        points, labels = ([], []) if way == WAYS[0] else ([first], [1])
        shown, scores = committed, []
        for _ in range(rounds):
            point, label = correction_click(shown, truth)
            points.append(point)
            labels.append(label)
            pts = np.column_stack([np.full(len(points), z), np.array(points)])
            prior = committed if way == WAYS[0] else None
            box = clicked_object_box(committed, np.array(points), np.array(labels)) if way == WAYS[2] else None
            shown, _ = session.predict(points=pts, labels=labels, prior=prior, box=box)
            scores.append(dice(shown, truth))
        out[way] = scores
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="litemedsam")
    ap.add_argument("--adapter", default="auto", help="an adapter file (default: the one shipped for the model)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seeds", type=int, nargs="+", default=list(DEV_SEEDS))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--rule", default=None,
                    help="an interaction rule (engine.prompts.interaction) instead of the model's")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine_line("cpu"))
    session = Session(load_model(args.model, adapter=args.adapter, device="cpu"), normalization=CT)
    if args.rule:
        session.rule = args.rule
    print(f"interaction rule: {session.rule.name}")
    results, names, total = [], [], 0
    for seed in args.seeds:
        image, labels, label_names = phantom_volume(seed, shape=SHAPE)
        session.set_image(image)
        for z in range(SHAPE[0]):
            for lab, truth in objects_of(labels[z]):
                total += 1
                first = most_interior(truth, depth_map(truth))
                mask, _ = session.predict(points=[[z, *first]], labels=[1])
                if dice(mask, truth) >= NEEDS_REFINING:
                    continue
                results.append(refine_rounds(session, z, truth, args.rounds))
                names.append(label_names[lab])
    print(f"\n{args.model}: {len(results)} of {total} objects with one-click Dice < {NEEDS_REFINING} "
          f"(development volumes {tuple(args.seeds)}); mean Dice after each correction click")
    print("| way | start | " + " | ".join(f"+{r + 1} click{'s' if r else ''}" for r in range(args.rounds)) + " |")
    print("|---" * (args.rounds + 2) + "|")
    start = np.mean([r["start"][0] for r in results])
    for way in WAYS:
        rows = np.array([r[way] for r in results])
        print(f"| {way} | {start:.3f} | " + " | ".join(f"{v:.3f}" for v in rows.mean(0)) + " |")
    better = np.array([r[WAYS[0]][0] - r[WAYS[1]][0] for r in results])
    print(f"\nafter one correction click, refine minus clicks alone: mean {better.mean():+.3f}, "
          f"refine better on {(better > 0.01).sum()}, worse on {(better < -0.01).sum()} of {len(better)} objects")
    for name in dict.fromkeys(names):
        idx = [i for i, n in enumerate(names) if n == name]
        r1 = np.mean([results[i][WAYS[0]][0] for i in idx])
        c1 = np.mean([results[i][WAYS[1]][0] for i in idx])
        s0 = np.mean([results[i]["start"][0] for i in idx])
        print(f"  {name}: {len(idx)} objects, start {s0:.3f}, +1 click refine {r1:.3f} / clicks alone {c1:.3f}")


if __name__ == "__main__":
    main()
