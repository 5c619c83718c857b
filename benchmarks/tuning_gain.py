"""Does few-shot tuning help on the slices the user did NOT label?  Measured the way an annotator works.

For each phantom volume (the project's generator, evaluation stream, seeds that no training ever drew) and each
k in --k: label k evenly spaced slices (their exact labels), tune with ``tune()``'s defaults (unless --tune
overrides them), then prompt every object (a connected piece of a label, >= 64 px) on every *other* slice with
one positive click at its most interior pixel and, separately, its tight box, through ``Session.predict`` — the
widget's path. Dice before (the model as loaded) and after (the tuned model), per object, per label and overall,
and the wall time of the whole ``tune()`` call.

    python benchmarks/tuning_gain.py --model demo --k 1 2 4 8 --out /tmp/gain_demo.jsonl
    python benchmarks/tuning_gain.py --model litemedsam --k 1 2 4 8 --out /tmp/gain_lite.jsonl
    python benchmarks/tuning_gain.py --report /tmp/gain_demo.jsonl /tmp/gain_lite.jsonl --png docs/tuning_gain.png

Results are appended as JSON lines as each run finishes (a long run can be resumed: finished runs are skipped).
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
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from napari_msa import Normalization, Session, load_model  # noqa: E402
from napari_msa.engine.phantoms import phantom_volume  # noqa: E402
from napari_msa.engine.tuning import tune  # noqa: E402
from napari_msa.engine.tuning_data import depth_map, dice, mask_box  # noqa: E402

# Phantom volumes come from phantom_volume(seed) = the generator's EVALUATION stream [seed, 1]; demo training
# draws [0, TRAIN_STREAM=0, step, i] and the click adapter [seed, 0, 500_000 + i]: these volumes were never seen.
SEEDS = (9001, 9002, 9003, 9004, 9005)
SHAPE = (20, 256, 256)
CT = Normalization("ct", level=40.0, width=400.0)
MIN_AREA = 64


def labelled_slices(depth: int, k: int) -> list[int]:
    """k slices evenly spread through the volume, as an annotator would pick them."""
    return [int(round(z)) for z in np.linspace(0, depth - 1, k + 2)[1:-1]]


def objects_of(labels: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(label id, mask) for every connected piece of every label with >= MIN_AREA pixels."""
    out = []
    for lab in np.unique(labels):
        if lab == 0:
            continue
        pieces, n = ndimage.label(labels == lab)
        for i in range(1, n + 1):
            mask = pieces == i
            if mask.sum() >= MIN_AREA:
                out.append((int(lab), mask))
    return out


def score(session: Session, volume_labels: np.ndarray, slices: list[int]) -> list[dict]:
    """One record per object on ``slices``: label, click Dice, box Dice."""
    records = []
    for z in slices:
        for lab, mask in objects_of(volume_labels[z]):
            depth = depth_map(mask)
            row, col = np.unravel_index(np.argmax(depth), depth.shape)
            pred, _ = session.predict(points=[[z, row, col]], labels=[1])
            click = dice(pred, mask)
            pred, _ = session.predict(box=mask_box(mask), z=z)
            records.append({"z": z, "label": lab, "click": click, "box": dice(pred, mask)})
    return records


class Volume:
    """One phantom volume, its model as loaded, and that model's scores on every slice (computed once and
    shared by every k: each k scores the slices it did not label)."""

    def __init__(self, model_name: str, seed: int, device: str) -> None:
        self.model_name, self.seed = model_name, seed
        self.image, self.labels, self.names = phantom_volume(seed, shape=SHAPE)
        self.base = load_model(model_name, device=device)
        self.session = Session(self.base, normalization=CT)
        self.session.set_image(self.image)
        self.before = score(self.session, self.labels, list(range(SHAPE[0])))


def run_one(volume: Volume, k: int, tune_kwargs: dict, verbose: bool = False) -> dict:
    labelled = labelled_slices(SHAPE[0], k)
    others = [z for z in range(SHAPE[0]) if z not in labelled]
    train_labels = np.zeros_like(volume.labels)
    train_labels[labelled] = volume.labels[labelled]

    def show(p) -> None:
        if verbose and p.phase == "eval":
            print(f"    step {p.step}: held-out click Dice {p.val_dice:.3f} at {p.elapsed_s:.0f} s", flush=True)

    t0 = time.perf_counter()
    result = tune(volume.base, volume.image, train_labels, normalization=CT, progress=show, **tune_kwargs)
    tune_s = time.perf_counter() - t0

    tuned = Session(result.model, normalization=CT)
    tuned.cache = volume.session.cache  # keys hold the encoder's weights: reused only if the encoder is unchanged
    tuned.set_image(volume.image)
    after = score(tuned, volume.labels, others)
    s = result.summary
    return {
        "model": volume.model_name, "seed": volume.seed, "k": k, "labelled": labelled, "tune": tune_kwargs,
        "tune_s": round(tune_s, 1), "steps_done": s.steps_done, "stopped": s.stopped, "kept": s.kept,
        "held_out": s.to_dict()["held_out"], "val_objects": s.per_object, "best_step": s.best_step,
        "step_time_s": s.step_time_s, "names": {str(a): b for a, b in volume.names.items()},
        "before": [r for r in volume.before if r["z"] in others], "after": after,
    }


def mean(records: list[dict], key: str) -> float:
    return float(np.mean([r[key] for r in records])) if records else float("nan")


def summarize(run: dict) -> str:
    b, a = run["before"], run["after"]
    return (f"{run['model']:>10} seed {run['seed']} k={run['k']}: click {mean(b, 'click'):.3f} -> "
            f"{mean(a, 'click'):.3f}, box {mean(b, 'box'):.3f} -> {mean(a, 'box'):.3f} on {len(a)} objects; "
            f"tune {run['tune_s']:.0f} s, {run['steps_done']} steps ({run['stopped']}, kept {run['kept']})")


def report(paths: list[str], png: str | None) -> None:
    runs = [json.loads(line) for p in paths for line in Path(p).read_text().splitlines() if line.strip()]
    print("| model | k | runs | one-click Dice before → after | error cut | box Dice before → after | worst run "
          "(click / box change) | tune time (median, max) |")
    print("|---|---|---|---|---|---|---|---|")
    curves: dict[str, list[tuple[int, float, float]]] = {}
    for model in dict.fromkeys(r["model"] for r in runs):
        for k in sorted({r["k"] for r in runs if r["model"] == model}):
            group = [r for r in runs if r["model"] == model and r["k"] == k]
            cb = np.mean([mean(r["before"], "click") for r in group])
            ca = np.mean([mean(r["after"], "click") for r in group])
            bb = np.mean([mean(r["before"], "box") for r in group])
            ba = np.mean([mean(r["after"], "box") for r in group])
            dc = [mean(r["after"], "click") - mean(r["before"], "click") for r in group]
            db = [mean(r["after"], "box") - mean(r["before"], "box") for r in group]
            cut = (ca - cb) / (1 - cb) if cb < 1 else 0.0
            times = [r["tune_s"] for r in group]
            print(f"| {model} | {k} | {len(group)} | {cb:.3f} → {ca:.3f} | {cut:+.0%} | {bb:.3f} → {ba:.3f} | "
                  f"{min(dc):+.3f} / {min(db):+.3f} | {np.median(times):.0f} s, {max(times):.0f} s |")
            curves.setdefault(model, []).append((k, cb, ca))
    if png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
        for model, pts in curves.items():
            ks = [p[0] for p in pts]
            line, = ax.plot(ks, [p[2] for p in pts], "o-", label=f"{model}, tuned")
            ax.plot(ks, [p[1] for p in pts], "o--", color=line.get_color(), alpha=0.6, label=f"{model}, as loaded")
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 2, 4, 8], ["1", "2", "4", "8"])
        ax.set_xlabel("labelled slices (of 20)")
        ax.set_ylabel("one-click Dice, unlabelled slices")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(png)
        print(f"learning curve written to {png}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="litemedsam")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    ap.add_argument("--k", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--tune", default="{}", help="JSON dict of tune() keyword arguments (default: tune's defaults)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", help="append results here as JSON lines")
    ap.add_argument("--verbose", action="store_true", help="print every held-out check")
    ap.add_argument("--report", nargs="+", metavar="JSONL", help="print the table of earlier runs and stop")
    ap.add_argument("--png", help="with --report: write the learning curve here")
    args = ap.parse_args()
    if args.report:
        report(args.report, args.png)
        return
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, device {args.device}")
    tune_kwargs = json.loads(args.tune)
    done = set()
    if args.out and Path(args.out).exists():
        for line in Path(args.out).read_text().splitlines():
            r = json.loads(line)
            done.add((r["model"], r["seed"], r["k"], json.dumps(r["tune"], sort_keys=True)))
    for seed in args.seeds:
        todo = [k for k in args.k if (args.model, seed, k, json.dumps(tune_kwargs, sort_keys=True)) not in done]
        volume = Volume(args.model, seed, args.device) if todo else None
        for k in todo:
            run = run_one(volume, k, tune_kwargs, args.verbose)
            print(summarize(run), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(run) + "\n")


if __name__ == "__main__":
    main()
