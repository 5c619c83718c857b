"""Adapter tuning vs full fine-tuning of the same model, and the frozen-prefix cache, measured in one run.

Each configuration runs in its own subprocess (so its peak memory is its own), on the same random-init
model and the same synthetic task (bright discs on noise), through the real ``tune()`` step: encoder,
1-3 simulated correction rounds through the decoder, BCE + Dice + IoU loss, AdamW.

1. adapters (all blocks) vs full fine-tuning: peak memory (goal <= 0.5x) and step time (goal <= 0.7x),
   and the same adapters with activation checkpointing (``tune(checkpoint_blocks=True)``)
2. adapters in the last K blocks with the frozen-prefix cache vs the same without the cache

Peak memory: on CUDA torch.cuda.max_memory_allocated (tensors: weights + training state). On the CPU
the process's peak RSS (resource.getrusage) minus its RSS before the model was built, i.e. weights +
training state, like the CUDA number; torch's own libraries (~0.7 GB for this build) are left out of
the ratio but the whole-process peak is printed too.
Step time: the median over the second half of the steps, i.e. the steady state of a longer run:
by then the prefix cache holds every slice. Augmentation is off by default so that happens within
the run (with flips/rotations the cache holds up to 8 variants per slice and needs ~8 epochs to
warm up); it is off for every configuration alike.

Usage: python benchmarks/bench_tuning.py [--model vit_b] [--image-size 256] [--steps 6] [--last-blocks 4]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

CONFIGS = {
    "full": "full fine-tuning (every weight)",
    "adapters": "adapters in every block",
    "adapters_ckpt": "adapters in every block, activation checkpointing",
    "last_nocache": "adapters in the last K blocks, no cache",
    "last_cache": "adapters in the last K blocks, prefix cache",
}


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker(args: argparse.Namespace) -> None:
    """One configuration in this process; prints one JSON line."""
    import numpy as np
    import torch

    from napari_msa import AdapterConfig, load_model
    from napari_msa.engine.network.architectures import get_config
    from napari_msa.engine.tuning.api import tune

    if args.threads:
        torch.set_num_threads(args.threads)
    rss_start = rss_mb()
    torch.manual_seed(0)
    depth = get_config(args.model).depth
    adapter = AdapterConfig()
    if args.config.startswith("last"):
        adapter = AdapterConfig(blocks=tuple(range(depth - args.last_blocks, depth)))
    model = load_model(args.model, random_init=True, device=args.device, image_size=args.image_size,
                       adapter_config=adapter)
    rng = np.random.default_rng(0)
    n, size = 6, args.image_size
    yy, xx = np.mgrid[:size, :size]
    images = rng.normal(0, 0.3, (n, size, size)).astype(np.float32)
    labels = np.zeros((n, size, size), np.int32)
    for z in range(n):
        for k in range(2):
            cy, cx = (0.3 + 0.4 * k) * size, rng.uniform(0.25, 0.75) * size
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 < (0.12 * size) ** 2
            labels[z][disc] = k + 1
            images[z][disc] += 1.5
    cuda = model.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base_alloc = torch.cuda.memory_allocated() / 2**20
    rss_loaded = rss_mb()
    t = time.perf_counter()
    full = args.config == "full"
    # The adapters alone, as the comparison means (tune()'s default trains the decoder on cached embeddings).
    result = tune(model, images, labels, steps=args.steps, lr=1e-4, batch_size=args.batch_size, val_fraction=0,
                  seed=0, full_finetune=full, train_adapters=not full, train_decoder=False,
                  cache_prefix=args.config == "last_cache",
                  checkpoint_blocks=args.config == "adapters_ckpt", augment=args.augment, inplace=True)
    wall = time.perf_counter() - t
    out = {
        "config": args.config,
        "step_s": statistics.median(result.step_times[len(result.step_times) // 2:]),
        "first_step_s": result.step_times[0],
        "wall_s": wall,
        "trainable": result.summary.trainable_parameters,
        "rss_start_mb": rss_start,
        "rss_loaded_mb": rss_loaded,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cache_entries": result.summary.prefix_cache_entries,
    }
    if cuda:
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        out["cuda_base_mb"] = base_alloc
    print(json.dumps(out))


def run_config(args: argparse.Namespace, config: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", config, "--model", args.model, "--image-size", str(args.image_size),
           "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--last-blocks", str(args.last_blocks),
           "--device", args.device] + (["--threads", str(args.threads)] if args.threads else []) + (
               ["--augment"] if args.augment else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"{config} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="vit_b")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--last-blocks", type=int, help="K [a third of the blocks]")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch threads per run [torch's default]")
    parser.add_argument("--augment", action="store_true", help="flips/rotations/intensity jitter on")
    parser.add_argument("--repeats", type=int, default=1, help="rounds over all configurations (medians reported)")
    parser.add_argument("--worker", choices=list(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.config = args.worker
        worker(args)
        return

    from _harness import machine_line  # loads torch: only in the parent, after the workers' arguments

    from napari_msa.engine.network.architectures import get_config

    depth = get_config(args.model).depth
    args.last_blocks = args.last_blocks or max(1, depth // 3)
    if not 0 < args.last_blocks < depth:
        raise SystemExit(f"--last-blocks must be between 1 and {depth - 1} for {args.model}")

    print(machine_line(device=args.device, threads=args.threads))
    print(f"model {args.model} (random init) @ {args.image_size}px, batch {args.batch_size}, {args.steps} steps "
          f"per run, last K = {args.last_blocks} blocks, {args.repeats} round(s), configurations interleaved")
    runs: dict[str, list[dict]] = {c: [] for c in CONFIGS}
    for _ in range(args.repeats):
        for config in CONFIGS:
            runs[config].append(run_config(args, config))

    def med(config: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[config])

    cuda = "cuda_peak_mb" in runs["full"][0]

    def mem(config: str) -> float:
        """Weights + training state: CUDA peak allocation, or peak RSS minus the RSS before the model."""
        if cuda:
            return med(config, "cuda_peak_mb")
        return med(config, "peak_rss_mb") - med(config, "rss_start_mb")

    label = "CUDA peak MB" if cuda else "model+training MB"
    print(f"\n{'configuration':52s} {'trainable':>11s} {'step s':>8s} {label:>17s} {'process peak MB':>16s}")
    for config, title in CONFIGS.items():
        print(f"{title:52s} {runs[config][0]['trainable']:>11,d} {med(config, 'step_s'):8.3f} {mem(config):17.0f} "
              f"{med(config, 'peak_rss_mb'):16.0f}")

    full_mem, full_step = mem("full"), med("full", "step_s")
    print(f"\n[1] adapters / full fine-tuning: memory {mem('adapters') / full_mem:.2f}x (goal <= 0.5), "
          f"step time {med('adapters', 'step_s') / full_step:.2f}x (goal <= 0.7); whole process "
          f"{med('adapters', 'peak_rss_mb') / med('full', 'peak_rss_mb'):.2f}x")
    print(f"    with activation checkpointing: memory {mem('adapters_ckpt') / full_mem:.2f}x, "
          f"step time {med('adapters_ckpt', 'step_s') / full_step:.2f}x")
    print(f"[2] last {args.last_blocks} blocks: prefix cache / no cache step time "
          f"{med('last_cache', 'step_s') / med('last_nocache', 'step_s'):.2f}x; cached vs full fine-tuning: step time "
          f"{med('last_cache', 'step_s') / full_step:.2f}x, memory {mem('last_cache') / full_mem:.2f}x")


if __name__ == "__main__":
    main()
