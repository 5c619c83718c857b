"""Several annotators on one MONAI Label server over loopback: click latency (p50/p95) with 1, 2 and 4 annotators,
each on a study of their own, and what one ``msa_3d`` request does to the others' clicks; MONAI Label's own ways of
serving several requests side by side in the same run, so the machine's other load hits them alike.

Servers (``server/launch.py``, as the tests start them; one torch thread per process, the same model):

  one process             MONAI Label's default
  INFER_CONCURRENCY=2     its infer thread pool (``MONAI_LABEL_INFER_CONCURRENCY=2``)
  --workers 2             uvicorn's worker processes, each with its own model, caches and click history; each
                          request goes to whichever process accepts its connection
  2 instances (sticky)    two servers, each study always sent to the same one (pinned at its first request, in
                          turn, as a reverse proxy's sticky routing on the ``image`` parameter; this script routes)

An annotator clicks ``--objects`` organs of the phantom, ``--clicks`` clicks each (a deep click, then corrections),
one request per click with every click so far, as 3D Slicer's MONAI Label extension sends them, looking ``--think``
seconds between clicks. Every study is a copy of the phantom under its own name, opened before timing (read, its
session started; no slice encoded); slices are encoded by the timed clicks, as when an annotator starts an object.
Every phase gets fresh studies; ``--rounds`` repeat the loads (the second in reverse order) and are pooled. A click
whose answer lists the clicks in another order than they were made counts as *out of order*: the server recovers
the order from the previous request of the object, which another process never saw, and the mask then differs.

    python benchmarks/server_load.py            # demo model, 2 rounds: about 3.5 min on the 2-core VM
    python benchmarks/server_load.py --model litemedsam --rounds 1 --budget 400   # the default model: ~7.5 min
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from _harness import machine_line
from _slicer_clicks import ORGANS, ServerRefused, click_params, clicks_for, slicer_infer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from export_samples import export  # noqa: E402
from launch import Server, ServerError, running_server  # noqa: E402

CONFIGS: dict[str, dict] = {
    "one process": {},
    "INFER_CONCURRENCY=2": {"env": {"MONAI_LABEL_INFER_CONCURRENCY": "2"}},
    "--workers 2": {"workers": 2},
    "2 instances (sticky)": {"instances": 2},
}
LOAD = (1, 2, 4)
WITH_3D = 4  # annotators clicking while one msa_3d request runs


@dataclass
class Deployment:
    """One configuration's server(s), and each study pinned to one of them at its first request, in turn (a
    proxy's sticky table; a hash of the ``image`` parameter spreads them the same on average, by chance)."""

    name: str
    servers: list[Server]
    routes: dict[str, Server] = field(default_factory=dict)

    def for_study(self, study: str) -> Server:
        if study not in self.routes:
            self.routes[study] = self.servers[len(self.routes) % len(self.servers)]
        return self.routes[study]


@dataclass
class Click:
    start: float
    end: float
    in_order: bool
    port: int  # the server (instance) that answered

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass
class Phase:
    clicks: list[Click] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    job_3d: tuple[float, float, int] | None = None  # (start, end, port) of the msa_3d request


def annotate(dep: Deployment, study: str, client: str, objects, think: float, phase: Phase, lock: threading.Lock,
             delay: float) -> None:
    """One annotator's objects, click after click; each click's timing and order check go into ``phase``."""
    srv = dep.for_study(study)
    time.sleep(delay)
    for label, k, clicks in objects:
        for n in range(1, len(clicks) + 1):
            start = time.perf_counter()
            try:
                _, params = slicer_infer(srv.host, srv.port, "msa_2d", study,
                                         click_params(label, clicks[:n], k, client))
            except Exception as err:  # counted and printed: a refused click must not pass unseen
                with lock:
                    phase.errors.append(f"{dep.name} {study}: {err}")
                return
            end = time.perf_counter()
            with lock:
                phase.clicks.append(Click(start, end, params.get("clicks") == [list(c) for c in clicks[:n]],
                                          srv.port))
            time.sleep(think)


def run_3d(dep: Deployment, study: str, click: tuple[int, int, int], phase: Phase, lock: threading.Lock,
           delay: float) -> None:
    """One msa_3d request (a click, then propagation through the volume), ``delay`` seconds into the phase."""
    srv = dep.for_study(study)
    time.sleep(delay)
    start = time.perf_counter()
    try:
        slicer_infer(srv.host, srv.port, "msa_3d", study,
                     {"label": "3d", "foreground": [list(click)], "background": [], "client_id": "3d"})
    except Exception as err:
        with lock:
            phase.errors.append(f"{dep.name} {study} msa_3d: {err}")
        return
    with lock:
        phase.job_3d = (start, time.perf_counter(), srv.port)


def open_study(srv: Server, study: str) -> None:
    """Read the study and start its session on the server without encoding a slice: a request with only a
    negative click is refused (400) after the study is opened, and nothing is encoded ahead behind the timing."""
    try:
        slicer_infer(srv.host, srv.port, "msa_2d", study, click_params("open", [(5, 5, 0, 0)], 0, "open"))
    except ServerRefused as err:
        if " 400 " not in str(err):
            raise
        return
    raise RuntimeError(f"{study}: a request with only a negative click was answered; it should be refused")


def run_phase(dep: Deployment, studies: list[str], plans: list, think: float, study_3d: str | None = None,
              click_3d: tuple[int, int, int] | None = None, delay_3d: float = 1.0) -> Phase:
    phase, lock = Phase(), threading.Lock()
    threads = [threading.Thread(target=annotate, args=(dep, s, f"annotator-{i}", plans[i], think, phase, lock,
                                                       0.1 * i)) for i, s in enumerate(studies)]
    if study_3d is not None:
        threads.append(threading.Thread(target=run_3d, args=(dep, study_3d, click_3d, phase, lock, delay_3d)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return phase


def ms(values: list[float], q: float) -> str:
    return f"{1000 * float(np.percentile(values, q)):6.0f}" if values else "     -"


def make_studies(folder: Path, names: list[str]) -> None:
    """Copies of the phantom under their own names: one per annotator and phase (identical work, own caches)."""
    export(folder)
    for name in names:
        shutil.copy(folder / "phantom_ct.nii.gz", folder / f"{name}.nii.gz")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo", help="the app's --conf model: demo (fast) or litemedsam [demo]")
    parser.add_argument("--objects", type=int, default=3, help="organs each annotator clicks [3]")
    parser.add_argument("--clicks", type=int, default=4, help="clicks per organ [4]")
    parser.add_argument("--think", type=float, default=0.3, help="seconds between an annotator's clicks [0.3]")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of: {', '.join(CONFIGS)}")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of all loads, fresh studies each [2]")
    parser.add_argument("--start-timeout", type=float, default=120, help="seconds a server may take to start [120]")
    parser.add_argument("--budget", type=float, default=300, help="stop starting phases after this many s [300]")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the servers are stopped on the way out
    names = [c.strip() for c in args.configs.split(",")]
    if unknown := [n for n in names if n not in CONFIGS]:
        sys.exit(f"unknown configuration(s) {unknown}; choose from {list(CONFIGS)}")
    began = time.monotonic()
    print(machine_line(threads=1, extra=f"server model {args.model}, device cpu, 1 torch thread per server process; "
                                         f"clients are threads here; {args.objects} organs x {args.clicks} clicks "
                                         f"per annotator, think {args.think} s"))

    rng_organs = list(ORGANS)
    plans = []
    for i in range(max(LOAD)):
        rng = np.random.default_rng(i)
        plans.append([(ORGANS[label], *clicks_for(label, args.clicks, rng))
                      for label in (rng_organs[(i + m) % len(rng_organs)] for m in range(args.objects))])
    # Each round has fresh studies; the second runs the loads in reverse order, so drift in the machine's other
    # load does not favour one annotator count.
    schedule = []  # (round, key, studies)
    for r in range(args.rounds):
        keys = (*LOAD, "3d") if r % 2 == 0 else (*reversed(LOAD), "3d")
        for key in keys:
            count = WITH_3D if key == "3d" else key
            schedule.append((r, key, [f"r{r}_{key}_{i}" for i in range(count)]))
    jobs_3d = {r: f"r{r}_job3d" for r in range(args.rounds)}
    _, deep = clicks_for(1, 1, np.random.default_rng(0))
    click_3d = deep[0][:3]
    all_studies = [s for _, _, names in schedule for s in names] + list(jobs_3d.values())

    conf = {"model": args.model, "device": "cpu", "threads": "1", "studies_kept": str(len(all_studies) + 2)}
    with tempfile.TemporaryDirectory(prefix="server_load_") as tmp, ExitStack() as stack:
        tmp = Path(tmp)
        make_studies(tmp / "studies", all_studies)
        env = {"NAPARI_MSA_GRAPH_DIR": str(tmp / "graphs")}  # an encoder graph (OpenVINO) is exported once for all
        deployments = []
        for name in names:
            spec = CONFIGS[name]
            t = time.perf_counter()
            try:
                servers = [stack.enter_context(running_server(tmp / "studies", tmp / f"app{len(deployments)}_{n}",
                                                              conf, env={**env, **spec.get("env", {})},
                                                              workers=spec.get("workers"),
                                                              timeout_s=args.start_timeout))
                           for n in range(spec.get("instances", 1))]
            except ServerError as err:  # reported, and the others are measured
                log = "\n    ".join(str(err).splitlines()[-4:])
                print(f"{name}: did not start ({time.perf_counter() - t:.0f} s); its log ends:\n    {log}", flush=True)
                continue
            deployments.append(Deployment(name, servers))
            print(f"started {name}: {time.perf_counter() - t:.0f} s", flush=True)
        if not deployments:
            sys.exit("no configuration started")
        for dep in deployments:  # open every study once, not timed
            for study in all_studies:
                open_study(dep.for_study(study), study)
        print(f"studies opened at {time.monotonic() - began:.0f} s", flush=True)
        sticky = [d for d in deployments if len(d.servers) > 1]
        for dep in sticky:
            split = Counter(dep.for_study(s).port for s in all_studies)
            print(f"{dep.name}: studies per instance {sorted(split.values())}")

        results: dict[tuple[str, object], Phase] = {}
        for n, (r, key, studies) in enumerate(schedule):
            if time.monotonic() - began > args.budget:
                print(f"stopped before round {r}'s {key} phase: the budget of {args.budget:.0f} s is spent")
                break
            order = deployments[n % len(deployments):] + deployments[:n % len(deployments)]
            for dep in order:  # interleaved: each configuration's phase right after the others'
                if key == "3d":
                    phase = run_phase(dep, studies, plans, args.think, jobs_3d[r], click_3d)
                else:
                    phase = run_phase(dep, studies, plans, args.think)
                results.setdefault((dep.name, key), []).append(phase)
            print(f"round {r} phase {key} done at {time.monotonic() - began:.0f} s", flush=True)
        report(deployments, results)
    print(f"total {time.monotonic() - began:.0f} s")


def report(deployments: list[Deployment], results: dict[tuple[str, object], list[Phase]]) -> None:
    """The tables: each configuration's clicks pooled over the rounds; ratios to one annotator on the first."""
    def clicks(name: str, key) -> list[Click]:
        return [c for phase in results.get((name, key), []) for c in phase.clicks]

    base = [c.seconds for c in clicks(deployments[0].name, 1)]
    base_p50 = statistics.median(base) if base else None
    print("\nclick latency, ms: p50 / p95 (clicks timed); x = p50 / p50 of one annotator on "
          f"'{deployments[0].name}'")
    print(f"{'':<22}" + "".join(f"{f'{n} annotator' + ('s' if n > 1 else ''):>26}" for n in LOAD) + "   out of order")
    for dep in deployments:
        row, wrong, total = f"{dep.name:<22}", 0, 0
        for n in LOAD:
            done = clicks(dep.name, n)
            v = [c.seconds for c in done]
            ratio = f"x{statistics.median(v) / base_p50:4.1f}" if v and base_p50 else "     "
            row += f"{ms(v, 50)} /{ms(v, 95)} ({len(v):2d}) {ratio}"
            wrong += sum(not c.in_order for c in done)
            total += len(done)
        print(f"{row}   {wrong}/{total}")
    print(f"\none msa_3d request while {WITH_3D} annotators click (ms, pooled over rounds; clicks answered while it "
          "ran, on its server and on the other instance, and the rest):")
    for dep in deployments:
        jobs, same, other, rest = [], [], [], []
        for phase in results.get((dep.name, "3d"), []):
            if phase.job_3d is None:
                continue
            s3, e3, port = phase.job_3d
            jobs.append(e3 - s3)
            for c in phase.clicks:
                during = c.start < e3 and c.end > s3
                (rest if not during else same if c.port == port else other).append(c.seconds)
        if not jobs:
            continue
        line = (f"{dep.name:<22} msa_3d {ms(jobs, 50)} (n {len(jobs)})   during it: p50 {ms(same, 50)} max "
                f"{ms(same, 100)} (n {len(same):2d})")
        if len(dep.servers) > 1:
            line += f", other instance p50 {ms(other, 50)} (n {len(other):2d})"
        print(f"{line}   rest p50 {ms(rest, 50)} (n {len(rest):2d})")
    errors = [e for phases in results.values() for phase in phases for e in phase.errors]
    for e in errors:
        print(f"error: {e}")
    if errors:
        sys.exit(f"{len(errors)} request(s) failed")


if __name__ == "__main__":
    main()
