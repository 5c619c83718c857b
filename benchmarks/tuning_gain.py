"""Does few-shot tuning help on the slices the user did NOT label?  Measured the way an annotator works.

For each phantom volume (evaluation stream, seeds that no training ever drew; --generator ct: the CT-like
generator ``demo.phantoms``, mr: the second generator ``demo.phantoms_mr``, MR / ultrasound / microscopy / fundus
scenes with dark objects, rings and nested structures) and each k in --k: label k evenly spaced slices (their exact
labels), tune with ``tune()``'s defaults (unless --tune overrides them), then prompt every object (a connected piece
of a label, >= 64 px) on every *other* slice with one positive click at its most interior pixel, separately its
tight box, and separately a three-click session of the automatic annotator (``evaluation.clicks``), all through
``Session.predict`` — the widget's path. Dice before (the model as loaded) and after (the tuned model), per object,
per label and overall, and the wall time of the whole ``tune()`` call.

    python benchmarks/tuning_gain.py --model demo --k 1 2 4 8 --out /tmp/gain_demo.jsonl
    python benchmarks/tuning_gain.py --model litemedsam --k 1 2 4 8 --out /tmp/gain_lite.jsonl
    python benchmarks/tuning_gain.py --model litemedsam --generator mr --k 4 --out /tmp/gain_lite.jsonl
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
from napari_msa.demo import phantoms, phantoms_mr  # noqa: E402
from napari_msa.engine.prompts.geometry import depth_map, dice, mask_box, most_interior  # noqa: E402
from napari_msa.engine.tuning.api import tune  # noqa: E402
from napari_msa.evaluation.clicks import run_session  # noqa: E402

# Phantom volumes come from phantom_volume(seed) = the generator's EVALUATION stream [seed, 1]; demo training
# draws [0, TRAIN_STREAM=0, step, i] and the click adapter [seed, 0, 500_000 + i]: these volumes were never seen.
SEEDS = (9001, 9002, 9003, 9004, 9005)
SHAPE = (20, 256, 256)
CT = Normalization("ct", level=40.0, width=400.0)
SESSION_CLICKS = 3  # clicks of the automatic annotator's session scored per object
# generator -> (volume maker, the normalisation an annotator would pick for it)
GENERATORS = {
    "ct": (phantoms.phantom_volume, CT),
    "mr": (phantoms_mr.phantom_volume, Normalization("auto")),
}
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
    """One record per object on ``slices``: label, click Dice, box Dice, Dice after a three-click session."""
    records = []
    for z in slices:
        for lab, mask in objects_of(volume_labels[z]):
            row, col = most_interior(mask, depth_map(mask))
            pred, _ = session.predict(points=[[z, row, col]], labels=[1])
            click = dice(pred, mask)
            pred, _ = session.predict(box=mask_box(mask), z=z)
            clicks = run_session(session, mask, z=z, max_clicks=SESSION_CLICKS, curve_clicks=SESSION_CLICKS)
            records.append({"z": z, "label": lab, "click": click, "box": dice(pred, mask),
                            "session": clicks.at(SESSION_CLICKS)})
    return records


class Volume:
    """One phantom volume, its model as loaded, and that model's scores on every slice (computed once and
    shared by every k: each k scores the slices it did not label)."""

    def __init__(self, model_name: str, generator: str, seed: int, device: str) -> None:
        self.model_name, self.generator, self.seed = model_name, generator, seed
        make, self.normalization = GENERATORS[generator]
        self.image, self.labels, self.names = make(seed, shape=SHAPE)
        self.base = load_model(model_name, device=device)
        self.session = Session(self.base, normalization=self.normalization)
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
    result = tune(volume.base, volume.image, train_labels, normalization=volume.normalization, progress=show,
                  **tune_kwargs)
    tune_s = time.perf_counter() - t0

    tuned = Session(result.model, normalization=volume.normalization)
    tuned.cache = volume.session.cache  # keys hold the encoder's weights: reused only if the encoder is unchanged
    tuned.set_image(volume.image)
    after = score(tuned, volume.labels, others)
    s = result.summary
    return {
        "model": volume.model_name, "generator": volume.generator, "seed": volume.seed, "k": k,
        "labelled": labelled, "tune": tune_kwargs,
        "tune_s": round(tune_s, 1), "steps_done": s.steps_done, "stopped": s.stopped, "kept": s.kept, "blend": s.blend,
        "held_out": s.to_dict()["held_out"], "val_objects": s.per_object, "best_step": s.best_step,
        "step_time_s": s.step_time_s, "names": {str(a): b for a, b in volume.names.items()},
        "before": [r for r in volume.before if r["z"] in others], "after": after,
    }


def mean(records: list[dict], key: str) -> float:
    values = [r[key] for r in records if key in r]
    return float(np.mean(values)) if values else float("nan")


def summarize(run: dict) -> str:
    b, a = run["before"], run["after"]
    return (f"{run['model']:>10} {run.get('generator', 'ct')} seed {run['seed']} k={run['k']}: click "
            f"{mean(b, 'click'):.3f} -> {mean(a, 'click'):.3f}, box {mean(b, 'box'):.3f} -> {mean(a, 'box'):.3f}, "
            f"{SESSION_CLICKS}-click session {mean(b, 'session'):.3f} -> {mean(a, 'session'):.3f} on {len(a)} "
            f"objects; tune {run['tune_s']:.0f} s, {run['steps_done']} steps ({run['stopped']}, kept {run['kept']}"
            + (f", blend {run['blend']:g}" if "blend" in run else "") + ")")


def read_runs(*paths: str) -> list[dict]:
    """The runs written to JSON-lines files (``append_run``); a file not there holds none."""
    return [json.loads(line) for p in paths if Path(p).exists() for line in Path(p).read_text().splitlines()
            if line.strip()]


def append_run(path: str | None, run: dict) -> None:
    """Append one finished run to a JSON-lines file (None: nowhere), so a stopped benchmark resumes after it."""
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(run) + "\n")


def report(paths: list[str], png: str | None) -> None:
    runs = read_runs(*paths)
    print("| model | volumes | k | runs | one-click Dice before → after | error cut | box Dice before → after | "
          f"{SESSION_CLICKS}-click session before → after | worst run (click / box / session change) | kept tuned | "
          "tune time (median, max) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    curves: dict[str, list[tuple[int, float, float]]] = {}
    for r in runs:
        r.setdefault("generator", "ct")
    for model, generator in dict.fromkeys((r["model"], r["generator"]) for r in runs):
        for k in sorted({r["k"] for r in runs if (r["model"], r["generator"]) == (model, generator)}):
            group = [r for r in runs if (r["model"], r["generator"], r["k"]) == (model, generator, k)]

            def avg(side: str, key: str, group=group) -> float:
                return float(np.mean([mean(r[side], key) for r in group]))

            def worst(key: str, group=group) -> float:
                return min(mean(r["after"], key) - mean(r["before"], key) for r in group)

            cb, ca = avg("before", "click"), avg("after", "click")
            cut = (ca - cb) / (1 - cb) if cb < 1 else 0.0
            times = [r["tune_s"] for r in group]
            kept = sum(r["kept"] == "tuned" for r in group)
            print(f"| {model} | {generator} | {k} | {len(group)} | {cb:.3f} → {ca:.3f} | {cut:+.0%} | "
                  f"{avg('before', 'box'):.3f} → {avg('after', 'box'):.3f} | "
                  f"{avg('before', 'session'):.3f} → {avg('after', 'session'):.3f} | "
                  f"{worst('click'):+.3f} / {worst('box'):+.3f} / {worst('session'):+.3f} | {kept} of {len(group)} | "
                  f"{np.median(times):.0f} s, {max(times):.0f} s |")
            curves.setdefault(f"{model}, {generator}", []).append((k, cb, ca))
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
    ap.add_argument("--generator", choices=sorted(GENERATORS), default="ct", help="which phantom generator")
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
    done = {(r["model"], r.get("generator", "ct"), r["seed"], r["k"], json.dumps(r["tune"], sort_keys=True))
            for r in (read_runs(args.out) if args.out else [])}
    for seed in args.seeds:
        todo = [k for k in args.k
                if (args.model, args.generator, seed, k, json.dumps(tune_kwargs, sort_keys=True)) not in done]
        volume = Volume(args.model, args.generator, seed, args.device) if todo else None
        for k in todo:
            run = run_one(volume, k, tune_kwargs, args.verbose)
            print(summarize(run), flush=True)
            append_run(args.out, run)


if __name__ == "__main__":
    main()
