"""Where the image encoder runs: torch (the reference, and every GPU) or OpenVINO on CPUs (an exported graph, f32).

On CPUs the encoder is the annotator's wait (every new slice, every volume). torch's eager kernels reach a fraction
of what the CPU does; OpenVINO, given the same encoder (adapters included) as a graph and asked for f32, computes
the same embeddings (within 1e-5) in a fraction of the time (BENCHMARKS.md, "The encoder on a CPU runtime"). It
was chosen over ONNX Runtime because it measured faster here and converts the torch module directly (no ONNX
exporter, no onnx/onnxscript packages).

The graph depends on the encoder's weights (the adapters change with tuning), so it is exported once per weights
key into a folder (``$NAPARI_MSA_GRAPH_DIR``, else ``$XDG_CACHE_HOME/napari-msa/encoders``), atomically, and read
back next time (0.3 s). An export takes seconds (6 s for LiteMedSAM on 2 cores), so it runs on a background
thread, begun after torch's first answer (the first click is not slowed), while torch goes on answering; the graph
takes over when it is ready. A failed export or compile leaves torch in charge, with one warning. Embedding caches
are keyed without the runtime: the graph computes the fp32 numbers torch computes (tests hold them to 1e-4 and
equal masks).

``runtime``: 'auto' (OpenVINO on a CPU when it is installed and the precision setting is 'auto'; torch otherwise),
'torch', or 'openvino' (a CPU, fp32). ``$NAPARI_MSA_RUNTIME`` sets what None means (the test suite says torch).
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import importlib.util
import logging
import os
import re
import shutil
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np
import torch

from ..catalog import RUNTIME_ENV, RUNTIMES, check_setting

log = logging.getLogger(__name__)

GRAPH_DIR_ENV = "NAPARI_MSA_GRAPH_DIR"
GRAPH_FORMAT = 1  # bump when what a graph holds (its inputs, outputs, export settings) changes
KEEP_GRAPHS = 8  # graphs kept in the folder (~29 MB each for LiteMedSAM), the least recently used go first


def check_runtime(runtime: str | None) -> str:
    """'auto', 'torch' or 'openvino' (None: the environment's default); anything else is a clear error."""
    return check_setting(runtime, RUNTIMES, RUNTIME_ENV, "runtime")


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def resolve_runtime(runtime: str | None, device: torch.device, precision: str) -> str:
    """'torch' or 'openvino' for the settings ``runtime`` and ``precision`` (already checked) on ``device``."""
    runtime = check_runtime(runtime)
    if runtime == "openvino":
        if device.type != "cpu":
            raise ValueError(f"the openvino runtime runs on the CPU, not on {device.type}; use --runtime torch "
                             "(or auto) with this device")
        if precision == "bf16":
            raise ValueError("the openvino runtime computes the encoder in fp32 here; use --precision auto or fp32 "
                             "with it, or --runtime torch for bf16")
        if not openvino_available():
            raise ValueError("the openvino runtime needs the 'openvino' package (pip install openvino); or use "
                             "--runtime torch")
        return "openvino"
    if runtime == "auto" and device.type == "cpu" and precision == "auto" and openvino_available():
        return "openvino"
    return "torch"


def graph_dir() -> Path:
    """Where exported encoder graphs are kept between runs."""
    if os.environ.get(GRAPH_DIR_ENV):
        return Path(os.environ[GRAPH_DIR_ENV])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "napari-msa" / "encoders"


_core = None
_core_lock = threading.Lock()
_exports: set[threading.Thread] = set()


@atexit.register
def _finish_exports() -> None:
    """An export still running when the process ends is waited for: OpenVINO aborts the process if the interpreter
    shuts down under it, and the graph it saves spares the next run the export."""
    for thread in list(_exports):
        thread.join()


def _openvino_core():
    global _core
    with _core_lock:
        if _core is None:
            import openvino as ov

            _core = ov.Core()
        return _core


class OpenVINOEncoder:
    """One encoder's weights as a compiled OpenVINO graph (f32), from the graph folder or exported now."""

    def __init__(self, key: str, image_size: int, threads: int | None = None,
                 directory: Path | None = None) -> None:
        import openvino as ov

        self.key = key
        self.image_size = image_size
        self.threads = int(threads or torch.get_num_threads())
        version = re.sub(r"[^0-9A-Za-z.]+", "_", ov.__version__)  # it holds a '/'
        self.folder = (directory or graph_dir()) / f"{key}-ov{version}-g{GRAPH_FORMAT}"
        self._compiled = None
        self._started = False
        self._start_lock = threading.Lock()
        self._done = threading.Event()  # set when an export ends, ready or failed
        self.error: str | None = None
        self.export_s: float | None = None

    @property
    def ready(self) -> bool:
        return self._compiled is not None

    @property
    def failed(self) -> bool:
        return self.error is not None

    def load_saved(self) -> bool:
        """Compile the saved graph of this key if there is one (a fraction of a second); True when ready."""
        xml = self.folder / "encoder.xml"
        if not xml.is_file():
            return False
        try:
            self._compile(_openvino_core().read_model(str(xml)))
        except Exception as err:  # a damaged or foreign file: export again
            log.warning("saved encoder graph %s is unreadable (%s); exporting it again", self.folder, err)
            return False
        with contextlib.suppress(OSError):
            os.utime(self.folder)  # recently used: kept longest
        return True

    def export_in_background(self, encoder: torch.nn.Module) -> None:
        """Export and compile on a daemon thread (torch answers meanwhile); a copy of the encoder is exported,
        so the model can go on encoding (or be tuned) while it runs. Once per graph, whoever asks."""
        with self._start_lock:
            if self._started or self.ready or self.failed:
                return
            self._started = True  # a second caller returns at once
        snapshot = copy.deepcopy(encoder).float().eval().to(memory_format=torch.contiguous_format)
        thread = threading.Thread(target=self._export, args=(snapshot,), name="napari-msa-export", daemon=True)
        _exports.add(thread)
        thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a begun export ends (``timeout`` seconds at most); whether the graph is ready."""
        if self._started:
            self._done.wait(timeout)
        return self.ready

    def _export(self, encoder: torch.nn.Module) -> None:
        import time

        import openvino as ov

        t0 = time.perf_counter()
        logging.getLogger("torch.utils.flop_counter").setLevel(logging.ERROR)  # "triton not found", said once
        try:
            example = torch.zeros(1, 3, self.image_size, self.image_size)
            with torch.no_grad():
                try:  # torch.export: a few seconds, and no tracing warnings
                    graph = ov.convert_model(torch.export.export(encoder, (example,)))
                except Exception as err:  # an encoder torch.export cannot take: OpenVINO's own tracing
                    log.info("torch.export failed (%s); converting by tracing", err)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        graph = ov.convert_model(encoder, example_input=example)
            self._save(graph)
            self._compile(graph)
            self.export_s = time.perf_counter() - t0
        except Exception as err:
            self.error = f"{type(err).__name__}: {err}"
            warnings.warn(f"the encoder could not be exported to OpenVINO ({self.error}); it runs in torch",
                          RuntimeWarning, stacklevel=2)
        finally:
            _exports.discard(threading.current_thread())
            self._done.set()

    def _save(self, graph) -> None:
        """Write the graph atomically (a temporary folder renamed into place); a folder that cannot be written
        only costs the next run another export."""
        import openvino as ov

        try:
            self.folder.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{self.folder.name}.", suffix=".tmp", dir=self.folder.parent))
        except OSError as err:
            log.warning("cannot keep the encoder graph in %s (%s); it is exported again next run",
                        self.folder.parent, err)
            return
        try:
            ov.save_model(graph, str(tmp / "encoder.xml"), compress_to_fp16=False)
            os.replace(tmp, self.folder)
        except Exception as err:  # another process put it there first, or the disk is full: the graph in memory
            shutil.rmtree(tmp, ignore_errors=True)  # still serves this run
            if not (self.folder / "encoder.xml").is_file():
                log.warning("cannot keep the encoder graph in %s (%s); it is exported again next run",
                            self.folder.parent, err)
        prune(self.folder.parent)

    def _compile(self, graph) -> None:
        self._compiled = _openvino_core().compile_model(graph, "CPU", {
            "INFERENCE_PRECISION_HINT": "f32",  # a bf16 CPU would otherwise get bf16 (not the exact numbers)
            "INFERENCE_NUM_THREADS": self.threads,
            "PERFORMANCE_HINT": "LATENCY",
        })

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """fp32 embeddings of a preprocessed (B,3,S,S) batch, one slice per inference."""
        request = self._compiled.create_infer_request()  # one per call: calls may come from several threads
        out = []
        for x in batch.detach().to("cpu", torch.float32).contiguous().numpy():
            request.infer([np.ascontiguousarray(x[None])])
            out.append(torch.from_numpy(np.array(request.get_output_tensor(0).data, copy=True)))
        return torch.cat(out)


STALE_TEMP_S = 3600  # a temporary export folder this old belongs to a process that died while writing it


def prune(folder: Path, keep: int = KEEP_GRAPHS) -> None:
    """Remove all but the ``keep`` most recently used graphs (each tuned adapter makes one), and temporary export
    folders a killed process left; only folders this module names are ever touched."""
    import time

    try:
        entries = [p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()]
        ours = [p for p in entries if not p.name.startswith(".") and re.search(r"-ov[0-9A-Za-z._]+-g\d+$", p.name)
                and (p / "encoder.xml").is_file()]
        stale = [p for p in entries if re.fullmatch(r"\..+-ov[0-9A-Za-z._]+-g\d+\..+\.tmp", p.name)
                 and time.time() - p.stat().st_mtime > STALE_TEMP_S]
        ours.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:
        return
    for old in ours[keep:] + stale:
        shutil.rmtree(old, ignore_errors=True)
