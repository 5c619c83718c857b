"""Quality of the shipped demo model, measured through the public API (``load_model`` + ``Session.predict``).

1. Held-out phantoms: slices from the evaluation seed stream (training never draws from it), one positive click
   at the most interior pixel of every object (a connected piece of a label, >= 64 px), Dice per object, reported
   overall and per object-size bin, with the CT window and with the default percentile normalisation.
2. The real CT slice (pydicom's CT_small, HU) against its rule-based reference masks (spinal canal, aorta; see
   sample_data/README.md): zero-shot, then after tuning adapters with ``napari_msa.engine.tuning.api.tune`` on this
   slice's reference masks (in-sample, what a user does), and tuned on one structure and measured on the other
   (a held-out check).

    python benchmarks/demo_model_quality.py [--slices 120] [--tune-steps 100] [--model-file PATH]

Prints numbers only; nothing here asserts a threshold.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from napari_msa import Normalization, Session, load_model  # noqa: E402
from napari_msa.demo import evaluation as ev  # noqa: E402
from napari_msa.engine.prompts.geometry import dice, most_interior  # noqa: E402


def ct_sample() -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    from napari_msa._sample_data import ct_slice

    (hu, _, _), (ref, ref_kwargs, _) = ct_slice()
    return hu, ref, ref_kwargs["metadata"]["label_names"]


def ct_dice(model, hu: np.ndarray, ref: np.ndarray, names: dict[int, str], norm: Normalization) -> dict[str, float]:
    """One click at each reference structure's most interior pixel; Dice per structure."""
    session = Session(model, normalization=norm)
    session.set_image(hu)
    out = {}
    for label, name in names.items():
        truth = ref == label
        mask, _ = session.predict(points=[most_interior(truth)], labels=[1])
        out[name] = round(dice(mask, truth), 4)
    return out


def tuned(model, hu: np.ndarray, ref: np.ndarray, steps: int, norm: Normalization, seed: int = 0):
    from napari_msa.engine.tuning.api import tune

    result = tune(model, hu, ref, steps=steps, normalization=norm, seed=seed, val_fraction=0.0, patience=10**6)
    return result.model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=120, help="held-out phantom slices")
    parser.add_argument("--eval-seed", type=int, default=0,
                        help="which held-out set: slices [1000 + seed, EVAL_STREAM, i]; training used none of them")
    parser.add_argument("--tune-steps", type=int, default=100)
    parser.add_argument("--model-file", help="a model file other than the shipped demo model")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    model = load_model("demo", checkpoint=args.model_file, device="cpu")
    print(f"model: {model.describe()}  ({model.source})")
    report: dict = {}

    for label, norm in (("CT window 40/400", Normalization("ct")), ("percentile (default 'auto')", None)):
        t = time.perf_counter()
        samples = [(s.image, s.labels) for s in ev.evaluation_slices(args.slices, seed=args.eval_seed)]
        records = ev.evaluate_clicks(model, samples, norm or Normalization("percentile"))
        summary = ev.summarize(records)
        report[f"heldout_phantoms[{label}]"] = summary
        print(f"\nheld-out phantoms (set {args.eval_seed}), {args.slices} slices, one click per object, "
              f"normalisation: {label} "
              f"({time.perf_counter() - t:.0f} s)")
        print(ev.format_summary(summary))

    hu, ref, names = ct_sample()
    print("\nreal CT slice (pydicom CT_small), one click per reference structure")
    for label, norm in (("CT window 40/400", Normalization("ct")), ("percentile", Normalization("percentile"))):
        zero = ct_dice(model, hu, ref, names, norm)
        report[f"ct_zero_shot[{label}]"] = zero
        print(f"  zero-shot, {label:18s} " + "  ".join(f"{k} {v:.3f}" for k, v in zero.items()))

    norm = Normalization("ct")
    try:
        t = time.perf_counter()
        both = tuned(model, hu, ref, args.tune_steps, norm)
        in_sample = ct_dice(both, hu, ref, names, norm)
        report["ct_tuned_in_sample"] = in_sample
        print(f"  tuned on both structures ({args.tune_steps} steps, {time.perf_counter() - t:.0f} s), measured on "
              "the same slice: " + "  ".join(f"{k} {v:.3f}" for k, v in in_sample.items()))
        cross = {}
        for label, name in names.items():
            others = {k: v for k, v in names.items() if k != label}
            train_ref = np.where(np.isin(ref, list(others)), ref, 0)
            m = tuned(model, hu, train_ref, args.tune_steps, norm)
            cross[name] = ct_dice(m, hu, ref, {label: name}, norm)[name]
        report["ct_tuned_on_the_other_structure"] = cross
        print("  tuned on the other structure only, measured on this one: "
              + "  ".join(f"{k} {v:.3f}" for k, v in cross.items()))
    except ImportError as err:
        print(f"  tuning not available: {err}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
