"""Which of SAM's three masks should a lone click keep?  Measures the choice, not the masks.

For one click at the most interior pixel of every object, SAM answers with three masks and a predicted IoU for
each; ``Session.predict`` keeps the highest predicted IoU. This script scores every candidate against the truth and
compares selection rules: the predicted IoU (what the session does), SAM's stability score (the IoU of the mask
thresholded at logit +1 and -1, segment_anything's ``calculate_stability_score``, used by its automatic mask
generator), their product, and the oracle (the best of the three: the ceiling of any rule).

Data: development phantom volumes (seeds 7001-7004 of the evaluation stream; the figures reported for tuning use
9001-9005) and the CT sample (pydicom's CT_small against its reference masks). Choose a rule here, then report it
on other data.

    python benchmarks/mask_choice.py --model litemedsam
    python benchmarks/mask_choice.py --model demo
    python benchmarks/mask_choice.py --adapter other_click_adapter.safetensors
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _harness import machine_line  # noqa: E402
from segment_anything.utils.amg import calculate_stability_score  # noqa: E402
from tuning_gain import CT, SHAPE, objects_of  # noqa: E402

from napari_msa import Session, load_model  # noqa: E402
from napari_msa.demo.phantoms import phantom_volume  # noqa: E402
from napari_msa.engine.inference.decoding import decode, to_input_frame  # noqa: E402
from napari_msa.engine.prompts.geometry import depth_map, dice, most_interior  # noqa: E402

DEV_SEEDS = (7001, 7002, 7003, 7004)
RULES = {
    "predicted IoU (session)": lambda c: int(np.argmax(c["iou"])),
    "stability score": lambda c: int(np.argmax(c["stability"])),
    "IoU x stability": lambda c: int(np.argmax(c["iou"] * c["stability"])),
    "best of 3 (oracle)": lambda c: int(np.argmax(c["dice"])),
}


def candidates(session: Session, z: int, objects: list[tuple[str, np.ndarray]]) -> list[dict]:
    """Per object: its name and, for each of SAM's three masks, Dice, predicted IoU and stability score."""
    emb = session.embedding(z)
    sam, size = session.model.sam, session.model.image_size
    clicks = np.array([most_interior(mask, depth_map(mask)) for _, mask in objects], dtype=np.float64)
    points = to_input_frame(clicks, emb.original_size, size)[:, None]
    with torch.no_grad():
        low, iou = decode(sam, emb.features, points, np.ones((len(objects), 1)), None, True)
        logits = sam.postprocess_masks(low, emb.input_size, emb.original_size)
        stability = calculate_stability_score(logits, sam.mask_threshold, 1.0).nan_to_num(0.0)  # empty: 0/0
    masks = (logits > sam.mask_threshold).cpu().numpy()
    return [{"name": name, "dice": np.array([dice(m, truth) for m in masks[i]]), "iou": iou[i].cpu().numpy(),
             "stability": stability[i].cpu().numpy()} for i, (name, truth) in enumerate(objects)]


def phantom_candidates(session: Session) -> list[dict]:
    out = []
    for seed in DEV_SEEDS:
        image, labels, names = phantom_volume(seed, shape=SHAPE)
        session.set_image(image, normalization=CT)
        for z in range(SHAPE[0]):
            objects = [(names[lab], mask) for lab, mask in objects_of(labels[z])]
            if objects:
                out += candidates(session, z, objects)
    return out


def ct_sample_candidates(session: Session) -> list[dict]:
    from napari_msa._sample_data import ct_slice

    (hu, _, _), (ref, ref_kwargs, _) = ct_slice()
    session.set_image(hu, normalization=CT)
    names = ref_kwargs["metadata"]["label_names"]
    return candidates(session, 0, [(name, ref == int(k)) for k, name in names.items()])


def table(title: str, cands: list[dict]) -> None:
    names = list(dict.fromkeys(c["name"] for c in cands))
    print(f"\n{title} ({len(cands)} objects): mean one-click Dice by rule")
    print("| rule | all | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 2) + "|")
    for rule, pick in RULES.items():
        by = defaultdict(list)
        for c in cands:
            by[c["name"]].append(c["dice"][pick(c)])
        overall = np.mean([v for vals in by.values() for v in vals])
        print(f"| {rule} | {overall:.3f} | " + " | ".join(f"{np.mean(by[n]):.2f}" for n in names) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="litemedsam")
    ap.add_argument("--adapter", default="auto", help="an adapter file ('auto': the model's shipped one)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine_line("cpu"))
    session = Session(load_model(args.model, adapter=args.adapter, device="cpu"))
    table(f"{args.model}, phantom development volumes {DEV_SEEDS}", phantom_candidates(session))
    table(f"{args.model}, CT sample", ct_sample_candidates(session))


if __name__ == "__main__":
    main()
