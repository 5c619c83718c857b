"""Click latency through the MONAI Label server (``make server``) vs the same clicks on ``Session.predict`` here.

Three sides, the same clicks: as 3D Slicer sends them (``server``), through napari-msa's own client
(``napari client``: ``napari_msa.remote.RemoteSession``, what the Segment widget uses with a Server address; the
image uploaded once as a MONAI Label session, every click so far in each request), and the model in this process
(``in-process``, the widget without a server).

Each round is one object on one phantom slice clicked like an annotator in 3D Slicer: a first click deep inside an
organ, then corrections around it; one request per click, with every click so far, as Slicer's MONAI Label
extension sends them (POST /infer/msa_2d, multipart params). The slice is encoded once before timing, on both
sides, so what is timed is what a click costs on a slice already looked at. Between clicks the annotator looks for
``--think`` seconds (not timed): the server encodes the zoom window ahead meanwhile, and so does this process, as
the Segment widget does. Run against a server with the same model settings as this process's defaults
(``make server``: LiteMedSAM + click adapter, precision auto), and the same torch threads:

    make server CONF="--conf threads 1" &
    python benchmarks/server_latency.py --threads 1

Options: --url http://127.0.0.1:8000, --studies .server-studies, --clicks, --think, --threads.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
from _harness import machine_line
from _slicer_clicks import ORGANS, ServerRefused, click_params, clicks_for, slicer_infer

from napari_msa import Session, load_model
from napari_msa.medical_io.cli import read_array
from napari_msa.remote import connect


def server_click(url: str, study: str, label: str, clicks, k: int) -> float:
    where = urlparse(url)
    try:
        elapsed, _ = slicer_infer(where.hostname, where.port, "msa_2d", study, click_params(label, clicks, k, "bench"))
    except ServerRefused as err:
        sys.exit(f"server: {err}")
    return elapsed


def summary(name: str, first: list[float], later: list[float]) -> str:
    def ms(v):
        return f"{1000 * statistics.median(v):7.1f} ms (p90 {1000 * float(np.percentile(v, 90)):6.1f})"
    return f"{name:<14} first click {ms(first)}   later clicks {ms(later)}   n={len(first)}+{len(later)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--studies", default=".server-studies")
    parser.add_argument("--study", default="phantom_ct")
    parser.add_argument("--clicks", type=int, default=6)
    parser.add_argument("--think", type=float, default=1.0, help="seconds between clicks, not timed [1.0]")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads here; give the server the same (--conf threads N) [1]")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = load_model()
    print(machine_line(extra=f"model {model.describe()}; the server runs on this machine too; think {args.think} s"))
    data, _ = read_array(Path(args.studies) / f"{args.study}.nii.gz")
    session = Session(model)
    session.set_image(data)
    start = time.perf_counter()
    remote = connect(args.url).new_session()
    remote.set_image(data)  # the widget does this once per image, on a worker
    upload_s = time.perf_counter() - start
    rng = np.random.default_rng(0)
    rounds = [(f"{name} {r}", *clicks_for(label, args.clicks, rng)) for r in range(2) for label, name in
              ORGANS.items()]
    for _, k, _ in rounds:  # encode each slice once on both sides (not timed)
        session.embedding(k)
        server_click(args.url, args.study, "warm-up", [(0, 0, k, 1)], k)
        remote.predict(points=[(k, 0, 0)], labels=[1])  # the uploaded image is a study of its own on the server
    times = {"server": ([], []), "napari client": ([], []), "in-process": ([], [])}
    # One side after the other: each encodes ahead while its annotator looks, which must not overlap the other's
    # click (on 2 cores it would).
    for name, k, clicks in rounds:
        for n in range(1, len(clicks) + 1):
            times["server"][0 if n == 1 else 1].append(server_click(args.url, args.study, name, clicks[:n], k))
            time.sleep(args.think)  # the server encodes ahead meanwhile
    for _, _k, clicks in rounds:
        for n in range(1, len(clicks) + 1):
            start = time.perf_counter()
            remote.predict(points=[(c[2], c[1], c[0]) for c in clicks[:n]], labels=[c[3] for c in clicks[:n]])
            times["napari client"][0 if n == 1 else 1].append(time.perf_counter() - start)
            time.sleep(args.think)
    remote.close()
    for _, k, clicks in rounds:
        for n in range(1, len(clicks) + 1):
            start = time.perf_counter()
            session.predict(points=[(c[2], c[1], c[0]) for c in clicks[:n]], labels=[c[3] for c in clicks[:n]])
            times["in-process"][0 if n == 1 else 1].append(time.perf_counter() - start)
            start = time.perf_counter()
            session.prefetch_window(k)  # what the widget's idle worker does while the annotator looks
            time.sleep(max(0.0, args.think - (time.perf_counter() - start)))
    print(f"napari client: image upload (once per image) {upload_s:.2f} s for {data.nbytes / 1e6:.1f} MB")
    for side, (first, later) in times.items():
        print(summary(side, first, later))


if __name__ == "__main__":
    main()
