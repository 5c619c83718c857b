"""Click sessions measured with the field's automatic clicker (``napari_msa.evaluation.clicks``), side by side.

For every object of every dataset and every model (and interaction rule), the automatic annotator clicks through
``Session.predict`` one click at a time, as the widget does: Dice@k (k = 1…10), NoC@85 / NoC@90 (capped at 20),
the share of click steps that lose more than 0.05 Dice, the worst mean step; a tight box's Dice (objects darker
than their surroundings apart); how often a lone click keeps the best of its three masks.

Datasets: ``dev`` — real images no training uses, references by rule (``napari_msa.evaluation.devset``,
benchmarks/devset/README.md); ``heldout`` — other planes and another crop of the dev set's sources
(``benchmarks/devset/heldout.py``), the confirmation set until run KZ's corrector was chosen on it (BENCHMARKS.md);
``fresh`` — the second confirmation set, other sources (pyradiomics' and pydicom-data's test images: MRI, CT,
X-ray, NM; ``benchmarks/devset/fresh.py``), used once to reject run KZ; ``reserve`` — BRATS brain tumours with
expert labels (six patients, 95 objects; ``benchmarks/devset/reserve.py``, built locally: CC BY-NC-SA), kept for
confirming the next choice; ``wide`` — five modalities the others lack (fetal ultrasound, chest X-ray, fundus,
dermoscopy, colonoscopy: samples of HC18, Montgomery/Shenzhen, DRIONS-DB, HAM10000 and Kvasir-SEG with their
people-drawn masks; ``benchmarks/devset/wide.py``, built locally: non-commercial licences); ``wide2`` — other
images of three of its sources, spent on the honour rule (2026-12-07); ``wide3`` and ``wide4`` — other fetal heads
and lungs, spent on the honour rule too; ``wide5`` and ``wide6`` — the next fetal heads and lungs, fixed before any was
opened (2026-12-07, fifteenth session), spent in the sixteenth; ``wide7`` and ``wide8`` — the next, fixed the same way
(both spent in the seventeenth); ``wide9`` and ``wide10`` — the next (wide9 measured with the shipped model
only, eighteenth session: the product's figure there; wide10 never measured);
``phantoms`` — the first phantom generator's evaluation seed stream (CT window); ``phantoms-mr`` — the second
generator's evaluation stream (MRI/ultrasound-like, dark objects, rings); ``ct-volumes`` / ``mr-volumes`` — every
slice of five whole volumes of either generator (``VOLUME_SEEDS``, each volume's own intensity window).

    python benchmarks/click_protocol.py [--models plain,shipped,new,demo] [--new-adapter PATH]
        [--rules model | logits,logits+zoom,...] [--datasets dev,heldout,fresh,reserve,wide,phantoms,phantoms-mr]
        [--json OUT]
        [--png docs/click_curves.png]

Every model after the first is also compared with the first on the same objects: mean differences with 95 %
bootstrap intervals over objects (``evaluation.clicks.paired_difference``), so a difference that one object
makes is not read as a finding. Prints numbers only; nothing here asserts a threshold.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _harness import machine_line  # noqa: E402

from napari_msa import Normalization, Session, load_model  # noqa: E402
from napari_msa.engine.prompts.geometry import components, dice, mask_box  # noqa: E402
from napari_msa.evaluation.clicks import ClickSession, paired_difference, run_session, summarize  # noqa: E402
from napari_msa.evaluation.devset import load_devset  # noqa: E402

CT = Normalization("ct", level=40.0, width=400.0)
# whole phantom volumes (20 × 256 × 256) of the evaluation stream, every slice: the volumes tuning_gain.py tunes on
# (its confirmation seeds), where single evaluation slices missed a loss at click 2 (BENCHMARKS "With the corrector")
VOLUME_SEEDS = {"ct-volumes": (9101, 9102, 9103, 9104, 9105), "mr-volumes": (9201, 9202, 9203, 9204, 9205)}


def _entries(images) -> list[tuple[str, np.ndarray, Normalization, list[tuple[np.ndarray, bool]]]]:
    """A real set's images (``DevImage`` or the builders' ``Img``) as ``dataset`` entries."""
    return [(im.name, im.image, Normalization(im.normalization), [(o.mask, "dark" in o.tags) for o in im.objects])
            for im in images]


def dataset(name: str, n_slices: int) -> list[tuple[str, np.ndarray, Normalization, list[tuple[np.ndarray, bool]]]]:
    """(image name, image, normalisation, [(object mask, darker than its surroundings)])."""
    if name == "dev":
        return _entries(load_devset())
    if name == "heldout":  # the dev set's sources elsewhere; a confirmation set until KZ was chosen on it
        sys.path.insert(0, str(Path(__file__).resolve().parent / "devset"))
        from heldout import heldout_images

        return _entries(heldout_images())
    if name == "fresh":  # other sources (benchmarks/devset/fresh.py); a confirmation set until it rejected KZ
        return _entries(load_devset(Path("benchmarks") / "devset" / "fresh.npz"))
    if name == "reserve":  # BRATS tumours, built locally (benchmarks/devset/reserve.py); first used to confirm R1
        sys.path.insert(0, str(Path(__file__).resolve().parent / "devset"))
        from reserve import reserve_path

        if not reserve_path().is_file():
            raise SystemExit(f"{reserve_path()} is missing: build it with `python benchmarks/devset/reserve.py "
                             "--deepmedic DIR` (a checkout of github.com/deepmedic/deepmedic)")
        return _entries(load_devset(reserve_path()))
    if re.fullmatch(r"wide\d*", name):  # samples of other repositories (devset/wide.py; its SETS)
        sys.path.insert(0, str(Path(__file__).resolve().parent / "devset"))
        from wide import wide_path

        if not wide_path(name).is_file():
            raise SystemExit(f"{wide_path(name)} is missing: build it with `python benchmarks/devset/wide.py --set "
                             f"{name} --repos DIR` (clones of the repositories that benchmarks/devset/wide.py names)")
        return _entries(load_devset(wide_path(name)))
    if name == "phantoms":
        from napari_msa.demo.evaluation import evaluation_slices

        return [(f"phantom eval {i}", s.image, CT, [(m, _is_dark(s.image, m)) for m in components(s.labels, 64)])
                for i, s in enumerate(evaluation_slices(n_slices))]
    if name == "phantoms-mr":
        from napari_msa.demo.evaluation import evaluation_slices_mr

        return [(f"mr phantom eval {i}", s.image, Normalization("percentile"),
                 [(m, _is_dark(s.image, m)) for m in components(s.labels, 64)])
                for i, s in enumerate(evaluation_slices_mr(n_slices))]
    if name in VOLUME_SEEDS:  # every slice of whole phantom volumes, as tuning_gain.py's volumes
        from tuning_gain import GENERATORS, SHAPE, objects_of

        from napari_msa.engine.network.preprocessing import intensity_window

        generate, norm = GENERATORS[name.split("-")[0]]
        out = []
        for seed in VOLUME_SEEDS[name]:
            volume, labels, _ = generate(seed, shape=SHAPE)
            window = Normalization("limits", limits=intensity_window(volume, norm, False))  # the volume's, per slice
            out += [(f"{name} {seed} z={z}", volume[z], window,
                     [(m, _is_dark(volume[z], m)) for _, m in objects_of(labels[z])]) for z in range(len(volume))]
        return out
    raise SystemExit(f"unknown dataset {name!r}")


def _is_dark(image: np.ndarray, mask: np.ndarray) -> bool:
    from scipy import ndimage

    ring = ndimage.binary_dilation(mask, iterations=3) & ~mask
    return bool(ring.any() and image[mask].mean() < image[ring].mean())


def model_for(name: str, new_adapter: str | None):
    if name == "plain":
        return load_model("litemedsam", adapter=None, device="cpu")
    if name == "shipped":
        return load_model("litemedsam", device="cpu")
    if name == "new":
        if not new_adapter:
            raise SystemExit("--models new needs --new-adapter PATH")
        return load_model("litemedsam", adapter=new_adapter, device="cpu")
    if name == "demo":
        return load_model("demo", device="cpu")
    if name.startswith("adapter:"):  # any adapter file, labelled by its name
        return load_model("litemedsam", adapter=name.split(":", 1)[1], device="cpu")
    raise SystemExit(f"unknown model {name!r} (plain, shipped, new, demo or adapter:PATH)")


def source_of(image_name: str) -> str:
    """The image's source (a volume, a patient, an image) for intervals over sources: its name up to a colon or
    comma, without the plane, slice or sequence (the dev set's three MNI planes are one volume, BRATS's slices and
    sequences one patient, pyradiomics' slices one case)."""
    head = re.split(r"[:,]", image_name, maxsplit=1)[0]
    return re.sub(r"\s+(axial|coronal|midsagittal|sagittal|FLAIR|contrast-enhanced T1|slice|[xyz]=).*$", "", head)


def measure(model, rule: str, data) -> dict:
    session = Session(model)
    if rule != "model":
        session.rule = rule
    sessions, boxes_dark, boxes_other, groups = [], [], [], []
    for name, image, norm, objects in data:
        session.normalization = norm
        session.set_image(image, normalization=norm, rgb=image.ndim == 3 and image.shape[-1] == 3)
        for mask, dark in objects:
            sessions.append(run_session(session, mask))
            groups.append(source_of(name))
            box_mask, _ = session.predict(box=mask_box(mask))
            (boxes_dark if dark else boxes_other).append(dice(box_mask, mask))
    out = summarize(sessions)
    out["sessions"] = [s.dice for s in sessions]  # per object, for the paired comparison (``paired``)
    out["surfaces"] = [s.surface for s in sessions]  # per object, NSD (1 px) after each click
    out["groups"] = groups  # per object, its source: intervals over sources
    out["box_dark"] = float(np.mean(boxes_dark)) if boxes_dark else None
    out["box_other"] = float(np.mean(boxes_other)) if boxes_other else None
    out["dark_objects"] = len(boxes_dark)
    return out


def fmt(x, nd=3) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def surface(r: dict) -> str:
    """The row's Normalized Surface Dice at 1 px after 1, 3, 5 and 10 clicks (– for results recorded before it)."""
    s = r.get("surface_at")
    return "–" if not s else " / ".join(fmt(s.get(k, s.get(str(k)))) for k in (1, 3, 5, 10))


def table(results: dict) -> str:
    lines = []
    for ds, rows in results.items():
        n = next(iter(rows.values()))["objects"]
        dark = next(iter(rows.values()))["dark_objects"]
        lines += [f"\n### {ds} ({n} objects, {dark} darker than their surroundings)\n",
                  "| model | rule | Dice@1 | @2 | @3 | @5 | @10 | NoC@85 | NoC@90 | steps losing >0.05 "
                  "| worst mean step | box (dark) | box (other) | click 1 kept its best mask "
                  "| click 1, best of its masks | NSD (1 px) @1 / @3 / @5 / @10 |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for key, r in rows.items():
            model, rule = key.split("|")
            d = r["dice_at"]
            lines.append(f"| {model} | {rule} | {fmt(d[1])} | {fmt(d[2])} | {fmt(d[3])} | {fmt(d[5])} | {fmt(d[10])} "
                         f"| {r['noc85']:.2f} | {r['noc90']:.2f} | {100 * r['step_loss_share']:.1f} % "
                         f"| {r['worst_mean_step']:+.3f} | {fmt(r['box_dark'])} | {fmt(r['box_other'])} "
                         f"| {fmt(r['first_choice_best'] and 100 * r['first_choice_best'], 0)} % "
                         f"| {fmt(r['first_best_of_candidates'])} | {surface(r)} |")
        lines += paired(rows)
    return "\n".join(lines)


def paired(rows: dict) -> list[str]:
    """Each row against the first on the same objects: mean differences with 95 % bootstrap intervals over objects
    and, in a second line, over sources (objects of one volume or patient are not independent), and how many
    objects got better / worse at click 5 (differences whose interval holds 0 are not findings)."""
    keys = list(rows)
    if len(keys) < 2:
        return []
    base = [ClickSession(d) for d in rows[keys[0]]["sessions"]]
    groups = rows[keys[0]].get("groups")
    n_sources = len(set(groups)) if groups else 0
    lines = [f"\nAgainst {keys[0].replace('|', ', ')} on the same objects (mean difference, 95 % bootstrap "
             f"interval over objects, then over the {n_sources} sources):\n",
             "| model | rule | resampled | Δ Dice@3 | Δ Dice@5 | Δ Dice@10 | Δ NoC@90 | better / worse at 5 |",
             "|---|---|---|---|---|---|---|---|"]
    for key in keys[1:]:
        other = [ClickSession(d) for d in rows[key]["sessions"]]
        model, rule = key.split("|")
        for label, g in (("objects", None), ("sources", groups)):
            if label == "sources" and not g:
                continue
            at = {k: paired_difference([s.at(k) for s in base], [s.at(k) for s in other], groups=g) for k in (3, 5, 10)}
            noc = paired_difference([s.noc(0.90) for s in base], [s.noc(0.90) for s in other], groups=g)
            lines.append(f"| {model} | {rule} | {label} | {at[3]} | {at[5]} | {at[10]} | {noc.mean:+.2f} "
                         f"[{noc.low:+.2f}, {noc.high:+.2f}] | {at[5].better} / {at[5].worse} |")
    return lines


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), squeeze=False)
    for ax, (ds, rows) in zip(axes[0], results.items(), strict=True):
        for key, r in rows.items():
            ax.plot(range(1, 11), r["curve"], marker="o", ms=3, label=key.replace("|", ", "))
        ax.set_title(f"{ds} ({next(iter(rows.values()))['objects']} objects)")
        ax.set_xlabel("clicks")
        ax.set_ylabel("mean Dice")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="plain,shipped,demo")
    ap.add_argument("--new-adapter")
    ap.add_argument("--rules", default="model", help="'model' (each model's own) or a list of rule names")
    ap.add_argument("--datasets", default="dev,phantoms,phantoms-mr")
    ap.add_argument("--phantom-slices", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--png", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line(threads=args.threads))
    data = {ds: dataset(ds, args.phantom_slices) for ds in args.datasets.split(",")}
    results: dict[str, dict] = {ds: {} for ds in data}
    for model_name in args.models.split(","):
        model = model_for(model_name, args.new_adapter)
        for rule in args.rules.split(","):
            shown = Path(model_name.split(":", 1)[1]).stem if model_name.startswith("adapter:") else model_name
            label = f"{shown}|{model.interaction.name if rule == 'model' else rule}"
            for ds, items in data.items():
                t = time.time()
                results[ds][label] = measure(model, rule, items)
                r = results[ds][label]
                print(f"{ds:12s} {label:22s} Dice@1/3/5/10 {r['dice_at'][1]:.3f} {r['dice_at'][3]:.3f} "
                      f"{r['dice_at'][5]:.3f} {r['dice_at'][10]:.3f}  NoC90 {r['noc90']:.2f}  "
                      f"loss-steps {100 * r['step_loss_share']:.1f}%  ({time.time() - t:.0f} s)", flush=True)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.png:
        plot(results, args.png)
        print("wrote", args.png)


if __name__ == "__main__":
    main()
