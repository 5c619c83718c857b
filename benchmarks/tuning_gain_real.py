"""Few-shot tuning on real images no training saw: does tuning on k labelled slices of one patient help the click
sessions on that patient's other slices?  (Issue 20, deliverable 6, on real data; ``tuning_gain.py`` measures it on
phantom volumes.)

The reserve set (BRATS 2013 brain tumours with the challenge's expert labels, six patients; built locally by
``benchmarks/devset/reserve.py``) holds about five axial slices per patient and sequence. One structure of one
patient is one annotator's task: the whole tumour on FLAIR, or the tumour core, the enhancing tumour or the necrosis
on contrast-enhanced T1. Its slices are stacked into a volume, as napari would hold them; k slices that show the
structure, evenly spread, are labelled with the reference; ``tune()`` runs with its defaults, as the Tune tab calls
it; then every other slice that shows the structure gets one click at its most interior pixel, its tight box, and an
automatic click session (``evaluation.clicks``: up to 20 clicks) through ``Session.predict``, before (the model as
loaded) and after. Prints numbers; asserts nothing. Tuning on these images changes no shipped weights: the reserve
set stays evaluation-only.

    python benchmarks/tuning_gain_real.py --k 2 --out /tmp/gain_real.jsonl [--patients pat0003,pat0004]
    python benchmarks/tuning_gain_real.py --report /tmp/gain_real.jsonl
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE / "devset"))

from tuning_gain import append_run, labelled_slices, read_runs  # noqa: E402

from napari_msa import Normalization, Session, load_model  # noqa: E402
from napari_msa.engine.prompts.geometry import depth_map, dice, mask_box, most_interior  # noqa: E402
from napari_msa.engine.tuning.api import tune  # noqa: E402
from napari_msa.evaluation.clicks import ClickSession, run_session, summarize  # noqa: E402
from napari_msa.evaluation.devset import load_devset  # noqa: E402

NAME = re.compile(r"BRATS (pat\d+) (.+) z=(\d+)")


def tasks(images) -> dict[tuple[str, str, str], list[tuple[int, np.ndarray, np.ndarray]]]:
    """(patient, sequence, structure) -> [(z, image, mask)] in z order: one annotator's task each."""
    out: dict[tuple[str, str, str], list] = {}
    for im in images:
        patient, sequence, z = NAME.match(im.name).groups()
        for obj in im.objects:
            out.setdefault((patient, sequence, obj.name), []).append((int(z), im.image, obj.mask))
    return {key: sorted(v, key=lambda t: t[0]) for key, v in out.items()}


def spread(n: int, k: int) -> list[int]:
    """k distinct slices of n, evenly spread, inner ones first (``tuning_gain.labelled_slices``); the two ends where
    the inner ones would coincide (k = 2 of 3)."""
    picks = sorted(set(labelled_slices(n, k)))
    return picks if len(picks) == k else sorted({int(round(z)) for z in np.linspace(0, n - 1, k)})


def score(session: Session, masks: list[np.ndarray], slices: list[int]) -> list[dict]:
    """One record per slice: one click's Dice, the box's, and the automatic session's Dice after each click."""
    records = []
    for z in slices:
        mask = masks[z]
        row, col = most_interior(mask, depth_map(mask))
        click = dice(session.predict(points=[[z, row, col]], labels=[1])[0], mask)
        box = dice(session.predict(box=mask_box(mask), z=z)[0], mask)
        clicks = run_session(session, mask, z=z)
        records.append({"z": z, "click": click, "box": box, "session": clicks.dice})
    return records


def run_one(model_name: str, key: tuple[str, str, str], slices: list, k: int, device: str) -> dict:
    volume = np.stack([image for _, image, _ in slices]).astype(np.float32)
    masks = [mask for _, _, mask in slices]
    labelled = spread(len(slices), k)
    others = [z for z in range(len(slices)) if z not in labelled]
    labels = np.zeros(volume.shape, np.int32)
    for z in labelled:
        labels[z][masks[z]] = 1
    normalization = Normalization("percentile")
    base = load_model(model_name, device=device)
    before_session = Session(base, normalization=normalization)
    before_session.set_image(volume)
    before = score(before_session, masks, others)
    t0 = time.perf_counter()
    result = tune(base, volume, labels, normalization=normalization)
    tune_s = time.perf_counter() - t0
    tuned = Session(result.model, normalization=normalization)
    tuned.cache = before_session.cache  # keys hold the encoder's weights: reused only if the encoder is unchanged
    tuned.set_image(volume)
    after = score(tuned, masks, others)
    s = result.summary
    return {"model": model_name, "task": list(key), "k": k, "slices": [z for z, _, _ in slices],
            "labelled": labelled, "tune_s": round(tune_s, 1), "steps_done": s.steps_done, "stopped": s.stopped,
            "kept": s.kept, "best_step": s.best_step, "blend": s.blend, "held_out_objects": s.n_val_objects,
            "checks": [list(h) for h in s.history],  # (step, click, box, session) of each held-out check
            "before": before, "after": after}


def sessions(records: list[dict]) -> list[ClickSession]:
    return [ClickSession(r["session"]) for r in records]


def line(run: dict) -> str:
    b, a = summarize(sessions(run["before"])), summarize(sessions(run["after"]))
    mean = lambda side, key: float(np.mean([r[key] for r in run[side]]))  # noqa: E731
    return (f"{' '.join(run['task']):55s} k={run['k']} on {len(run['after'])} slices: click "
            f"{mean('before', 'click'):.3f} -> {mean('after', 'click'):.3f}, box {mean('before', 'box'):.3f} -> "
            f"{mean('after', 'box'):.3f}, Dice@3 {b['dice_at'][3]:.3f} -> {a['dice_at'][3]:.3f}, @5 "
            f"{b['dice_at'][5]:.3f} -> {a['dice_at'][5]:.3f}, NoC@90 {b['noc90']:.2f} -> {a['noc90']:.2f}; tune "
            f"{run['tune_s']:.0f} s, {run['steps_done']} steps, kept {run['kept']}")


def report(paths: list[str]) -> None:
    runs = read_runs(*paths)
    for run in runs:
        print(line(run))
    for k in sorted({r["k"] for r in runs}):
        group = [r for r in runs if r["k"] == k]
        before = [s for r in group for s in sessions(r["before"])]
        after = [s for r in group for s in sessions(r["after"])]
        b, a = summarize(before), summarize(after)
        worst = min(summarize(sessions(r["after"]))["dice_at"][5] - summarize(sessions(r["before"]))["dice_at"][5]
                    for r in group)
        print(f"k={k}: {len(group)} tasks, {len(after)} slices; Dice@1/3/5/10 "
              + " / ".join(f"{b['dice_at'][j]:.3f}" for j in (1, 3, 5, 10)) + " -> "
              + " / ".join(f"{a['dice_at'][j]:.3f}" for j in (1, 3, 5, 10))
              + f", NoC@90 {b['noc90']:.2f} -> {a['noc90']:.2f}, losing steps {b['step_loss_share']:.1%} -> "
              f"{a['step_loss_share']:.1%}; worst task Δ Dice@5 {worst:+.3f}; kept tuned "
              f"{sum(r['kept'] == 'tuned' for r in group)} of {len(group)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="litemedsam")
    ap.add_argument("--k", type=int, default=2, help="labelled slices per task")
    ap.add_argument("--patients", default="", help="comma-separated, e.g. pat0003,pat0004 (default: all)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", help="append results here as JSON lines (finished tasks are skipped)")
    ap.add_argument("--report", nargs="+", metavar="JSONL", help="print the table of earlier runs and stop")
    args = ap.parse_args()
    if args.report:
        report(args.report)
        return
    import torch
    from reserve import reserve_path

    if args.threads:
        torch.set_num_threads(args.threads)
    if not reserve_path().is_file():
        raise SystemExit(f"{reserve_path()} is missing: build it with `python benchmarks/devset/reserve.py "
                         "--deepmedic DIR` (a checkout of github.com/deepmedic/deepmedic)")
    print(f"# {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, device {args.device}")
    done = {(tuple(r["task"]), r["k"], r["model"]) for r in (read_runs(args.out) if args.out else [])}
    wanted = {p for p in args.patients.split(",") if p}
    for key, slices in tasks(load_devset(reserve_path())).items():
        if (wanted and key[0] not in wanted) or (key, args.k, args.model) in done or len(slices) <= args.k:
            continue
        try:
            run = run_one(args.model, key, slices, args.k, args.device)
        except ValueError as e:  # what the Tune tab would say, e.g. too few labelled objects to hold one out
            print(f"{' '.join(key):55s} k={args.k}: not tuned: {e}", flush=True)
            continue
        print(line(run), flush=True)
        append_run(args.out, run)


if __name__ == "__main__":
    main()
