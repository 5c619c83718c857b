"""Where the model runs: torch (the reference, and every GPU) or OpenVINO on CPUs (exported graphs, f32).

On CPUs the encoder is the annotator's wait (every new slice, every volume). torch's eager kernels reach a fraction
of what the CPU does; OpenVINO, given the same encoder (adapters included) as a graph and asked for f32, computes
the same embeddings (within 1e-5) in a fraction of the time (BENCHMARKS.md, "The encoder on a CPU runtime"). It
was chosen over ONNX Runtime because it measured faster here and converts the torch module directly (no ONNX
exporter, no onnx/onnxscript packages). A click's decoder pass (prompt encoder + mask decoder on a cached
embedding) measured 1.6-1.9x faster there too (6x where torch's two threads stalled on a loaded 2-core machine),
with the same logits within 1e-4 (BENCHMARKS.md, "The decoder path"), so on the same runtime one prompt's pass runs
in a second graph; batches of prompts (segment everything) and tuning stay in torch.

A graph depends on its module's weights (the adapters and the decoder change with tuning), so it is exported once
per weights key into a folder (``$NAPARI_MSA_GRAPH_DIR``, else ``$XDG_CACHE_HOME/napari-msa/encoders``: decoders are
kept there too), atomically, and read back next time (0.3 s). An export takes seconds (6 s for LiteMedSAM's encoder
on 2 cores, 5 s for its decoder), so it runs on a background thread, one export at a time, begun after torch's
first answer (the first click is not slowed), while torch goes on answering; the graph takes over when it is
ready. A failed export or compile leaves torch in charge, with one warning. Embedding caches are keyed without the
runtime: the graph computes the fp32 numbers torch computes (tests hold them to 1e-4 and equal masks).

``runtime``: 'auto' (OpenVINO on a CPU when it is installed and the precision setting is 'auto'; torch otherwise),
'torch', or 'openvino' (a CPU, fp32). ``$NAPARI_MSA_RUNTIME`` sets what None means (the test suite says torch).
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import hashlib
import importlib.util
import logging
import os
import re
import shutil
import sys
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
KEEP_GRAPHS = 8  # graphs of each kind kept (LiteMedSAM: ~29 MB an encoder, ~20 MB a decoder), least recently used go
GRAPH_FILES = ("encoder.xml", "decoder.xml")


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
    """Where exported graphs are kept between runs."""
    if os.environ.get(GRAPH_DIR_ENV):
        return Path(os.environ[GRAPH_DIR_ENV])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "napari-msa" / "encoders"


_core = None
_core_lock = threading.Lock()
_export_threads: set[threading.Thread] = set()
_export_threads_lock = threading.Lock()
_export_lock = threading.Lock()  # one export at a time: each takes the CPU's cores for seconds


@atexit.register
def _finish_exports() -> None:
    """An export thread still alive when the process ends is waited for, to its very end: OpenVINO aborts the process
    if the interpreter shuts down under an export, and so does torch when a thread still freeing the exported copy's
    tensors is stopped by the shutdown ("terminate called without an active exception"). The graph it saves spares
    the next run the export."""
    with _export_threads_lock:
        threads = list(_export_threads)
    for thread in threads:
        if thread.ident is not None:  # started
            thread.join()


def _openvino():
    """OpenVINO, its Python tools' telemetry kept out. ``convert_model`` would otherwise send usage events to Google
    Analytics unless the user opted out, each from a process forked off ours (the GUI thread stalls for the fork),
    with a client id written under ~/intel; napari-msa never goes on the network. OpenVINO's tools fall back to
    their own no-op stub when ``openvino_telemetry`` cannot be imported."""
    if "openvino_telemetry" not in sys.modules:
        sys.modules["openvino_telemetry"] = None  # its import now raises ImportError
    elif sys.modules["openvino_telemetry"] is not None:
        log.info("openvino_telemetry was imported before napari-msa used OpenVINO; its opt-out is the user's")
    import openvino

    return openvino


def _openvino_core():
    global _core
    with _core_lock:
        if _core is None:
            _core = _openvino().Core()
        return _core


EXPORT_IN_CHILD = True  # export graphs in a child process (tests switch it off to test the in-process path)
CHILD_TIMEOUT_S = 900


def convert_module(module: torch.nn.Module, example: tuple, dynamic: tuple | None):
    """``module`` as an OpenVINO model: torch.export (a few seconds, no tracing warnings), else OpenVINO's tracing."""
    ov = _openvino()
    logging.getLogger("torch.utils.flop_counter").setLevel(logging.ERROR)  # "triton not found", said once
    with torch.no_grad():
        try:
            return ov.convert_model(torch.export.export(module, example, dynamic_shapes=dynamic))
        except Exception as err:  # a module torch.export cannot take
            log.info("torch.export failed (%s); converting by tracing", err)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return ov.convert_model(module, example_input=example)


def export_in_child(module: torch.nn.Module, kind: str, args: dict, xml: Path, threads: int) -> None:
    """Export ``module`` into ``xml`` in a child Python process (``graph_child``). The module goes to it pickled
    through a pipe, never through a file: nothing another process could swap is unpickled. Raises on failure."""
    import pickle
    import subprocess
    import sys

    payload = pickle.dumps({"module": module, "kind": kind, "args": args, "xml": str(xml), "threads": threads})
    proc = subprocess.run([sys.executable, "-m", "napari_msa.engine.model.graph_child"], input=payload,
                          capture_output=True, timeout=CHILD_TIMEOUT_S, check=False)
    if proc.returncode != 0 or not xml.is_file():
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"exit status {proc.returncode}: {' / '.join(tail) or 'no message'}")


class OpenVINOGraph:
    """One module's weights as a compiled OpenVINO graph (f32), from the graph folder or exported now. A subclass
    names its file, builds its example inputs and runs it."""

    FILE = ""
    # Copy the module on the export thread, not the caller's: only where the key is found from the copy itself
    # (a change of weights meanwhile then names the graph it made). A copy beside a running export held a click
    # up for a second on 2 cores (the GIL).
    COPY_ON_THREAD = False

    def __init__(self, key: str | None, image_size: int, threads: int | None = None,
                 directory: Path | None = None) -> None:
        ov = _openvino()
        self.key = key  # None: found from the module's weights on the export thread (``_key_of``)
        self.image_size = image_size
        self.threads = int(threads or torch.get_num_threads())
        self._directory = directory or graph_dir()
        self._ov_version = re.sub(r"[^0-9A-Za-z.]+", "_", ov.__version__)  # it holds a '/'
        self._compiled = None
        self._started = False
        self._start_lock = threading.Lock()
        self._done = threading.Event()  # set when an export ends, ready or failed
        self.error: str | None = None
        self.export_s: float | None = None

    @property
    def folder(self) -> Path:
        """Where this key's graph is saved."""
        return self._directory / f"{self.key}-ov{self._ov_version}-g{GRAPH_FORMAT}"

    @property
    def ready(self) -> bool:
        return self._compiled is not None

    @property
    def failed(self) -> bool:
        return self.error is not None

    def load_saved(self) -> bool:
        """Compile the saved graph of this key if there is one (a fraction of a second); True when ready."""
        if self.key is None:
            return False
        xml = self.folder / self.FILE
        if not xml.is_file():
            return False
        try:
            self._compile(_openvino_core().read_model(str(xml)))
        except Exception as err:  # a damaged or foreign file: export again
            log.warning("saved graph %s is unreadable (%s); exporting it again", xml, err)
            return False
        with contextlib.suppress(OSError):
            os.utime(self.folder)  # recently used: kept longest
        return True

    def export_in_background(self, module: torch.nn.Module) -> None:
        """Read the saved graph, else export it, and compile, on a daemon thread (torch answers meanwhile); a copy
        of the module is exported, so the model can go on answering (or be tuned) while it runs. Once per graph,
        whoever asks; one graph at a time."""
        with self._start_lock:
            if self._started or self.ready or self.failed:
                return
            self._started = True  # a second caller returns at once
        snapshot = module if self.COPY_ON_THREAD else self._exportable(module)
        thread = threading.Thread(target=self._export, args=(snapshot,), name="napari-msa-export", daemon=True)
        with _export_threads_lock:
            _export_threads.difference_update([t for t in _export_threads if not t.is_alive()])
            _export_threads.add(thread)
        thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a begun export ends (``timeout`` seconds at most); whether the graph is ready."""
        if self._started:
            self._done.wait(timeout)
        return self.ready

    def _exportable(self, module: torch.nn.Module) -> torch.nn.Module:
        """The fp32 eval-mode copy of ``module`` that is exported."""
        return copy.deepcopy(module).float().eval()

    def _example(self) -> tuple[tuple[torch.Tensor, ...], tuple | None]:
        """Example inputs, and torch.export's dynamic shapes for them (None: all fixed)."""
        raise NotImplementedError

    def _key_of(self, module: torch.nn.Module) -> str:
        """The key of the exported copy's weights, where the graph was made without one."""
        raise NotImplementedError

    def _export(self, module: torch.nn.Module) -> None:
        try:
            with _export_lock:  # one at a time: each takes the cores, and the GIL, for seconds
                if self.COPY_ON_THREAD:
                    module = self._exportable(module)
                if self.key is None:
                    self.key = self._key_of(module)
                if not self.load_saved():  # saved meanwhile by another process, or a decoder's graph read here
                    self._convert(module)
        except Exception as err:
            self.error = f"{type(err).__name__}: {err}"
            what = self.FILE.split(".")[0]
            warnings.warn(f"the {what} could not be exported to OpenVINO ({self.error}); it runs in torch",
                          RuntimeWarning, stacklevel=2)
        finally:  # the thread stays in _export_threads until it has ended: it still frees the copy after this
            self._done.set()

    def _convert(self, module: torch.nn.Module) -> None:
        """Export ``module``, save the graph and compile it: in a child process when one can be started (the export
        holds the GIL for half a second at a time, which froze napari's window and delayed clicks), else here."""
        import time

        t0 = time.perf_counter()
        if not self._convert_in_child(module):
            graph = convert_module(module, *self._example())
            self._save(graph)
            self._compile(graph)
        self.export_s = time.perf_counter() - t0

    def _convert_in_child(self, module: torch.nn.Module) -> bool:
        """Export in ``python -m napari_msa.engine.model.graph_child`` into a temporary folder renamed into place, then
        compile the saved graph here (reading and compiling hold no lock for long); False when that failed."""
        if not EXPORT_IN_CHILD:
            return False
        tmp = self._temp_folder()
        if tmp is None:
            return False
        try:
            export_in_child(module, type(self).__name__, self._child_args(), tmp / self.FILE, self.threads)
            self._keep(tmp)
            if self.load_saved():
                return True
            log.info("the graph exported in a child process could not be read; exporting it here")
        except Exception as err:  # no child process here (a frozen app), or it failed: export in this process
            log.info("exporting in a child process failed (%s); exporting it here", err)
        shutil.rmtree(tmp, ignore_errors=True)
        return False

    def _child_args(self) -> dict:
        """What the child needs to build this graph's example inputs (``_example``), besides the image size."""
        return {"image_size": self.image_size}

    def _temp_folder(self) -> Path | None:
        try:
            self.folder.parent.mkdir(parents=True, exist_ok=True)
            return Path(tempfile.mkdtemp(prefix=f".{self.folder.name}.", suffix=".tmp", dir=self.folder.parent))
        except OSError as err:
            log.warning("cannot keep the graph in %s (%s); it is exported again next run", self.folder.parent, err)
            return None

    def _keep(self, tmp: Path) -> None:
        """Rename a written graph into place (another process may have put it there first: then it stays)."""
        try:
            os.replace(tmp, self.folder)
        except OSError as err:
            shutil.rmtree(tmp, ignore_errors=True)
            if not (self.folder / self.FILE).is_file():
                raise OSError(f"cannot keep the graph in {self.folder.parent} ({err})") from err
        prune(self.folder.parent)

    def _save(self, graph) -> None:
        """Write the graph atomically (a temporary folder renamed into place); a folder that cannot be written
        only costs the next run another export."""
        tmp = self._temp_folder()
        if tmp is None:
            return
        try:
            _openvino().save_model(graph, str(tmp / self.FILE), compress_to_fp16=False)
            self._keep(tmp)
        except Exception as err:  # the disk is full: the graph in memory still serves this run
            shutil.rmtree(tmp, ignore_errors=True)
            log.warning("cannot keep the graph in %s (%s); it is exported again next run", self.folder.parent, err)

    def _compile(self, graph) -> None:
        config = {
            "INFERENCE_PRECISION_HINT": "f32",  # a bf16 CPU would otherwise get bf16 (not the exact numbers)
            "INFERENCE_NUM_THREADS": self.threads,
            "PERFORMANCE_HINT": "LATENCY",
            # Threads free to move between cores (OpenVINO pins them on Linux by default): on a loaded machine a
            # pinned thread waits for its busy core; quiet, both measure the same (BENCHMARKS.md, issue 25).
            "ENABLE_CPU_PINNING": False,
        }
        self._compiled = _openvino_core().compile_model(graph, "CPU", config)


class OpenVINOEncoder(OpenVINOGraph):
    """The image encoder (with its adapters) as a graph: (1,3,S,S) preprocessed slice → (1,C,g,g) embedding."""

    FILE = "encoder.xml"

    def _exportable(self, module: torch.nn.Module) -> torch.nn.Module:
        return super()._exportable(module).to(memory_format=torch.contiguous_format)

    def _example(self) -> tuple[tuple[torch.Tensor, ...], tuple | None]:
        return (torch.zeros(1, 3, self.image_size, self.image_size),), None

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """fp32 embeddings of a preprocessed (B,3,S,S) batch, one slice per inference."""
        request = self._compiled.create_infer_request()  # one per call: calls may come from several threads
        out = []
        for x in batch.detach().to("cpu", torch.float32).contiguous().numpy():
            request.infer([np.ascontiguousarray(x[None])])
            out.append(torch.from_numpy(np.array(request.get_output_tensor(0).data, copy=True)))
        return torch.cat(out)


class PromptDecoder(torch.nn.Module):
    """SAM's prompt encoder and mask decoder as one traceable function of fixed-type inputs (what is exported).

    ``PromptEncoder`` picks embeddings by boolean indexing and branches on which prompts are given; here the prompt
    is always tokens (T points in the input frame as (x, y), labels 1 positive, 0 negative, -1 not a point, 2 and 3
    a box's corners: exactly the tokens PromptEncoder builds, in its order) plus a mask input and a 0/1 flag saying
    whether it is used. The labels select embeddings by arithmetic (segment_anything's own ONNX model does the
    same); each term adds an exact zero or the embedding itself, so the sums are PromptEncoder's. The output is all
    of the decoder's masks and IoU scores, as ``MaskDecoder.predict_masks`` returns them.
    """

    def __init__(self, sam: torch.nn.Module) -> None:
        super().__init__()
        self.prompt_encoder = sam.prompt_encoder
        self.mask_decoder = sam.mask_decoder

    def forward(self, embedding: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor, mask_input: torch.Tensor,
                has_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pe = self.prompt_encoder
        size = torch.tensor(pe.input_image_size, dtype=torch.float32).flip(0)  # (w, h), as _embed_points divides
        sparse = pe.pe_layer._pe_encoding((coords + 0.5) / size)
        labels = labels.unsqueeze(-1)
        sparse = sparse * (labels != -1).float() + pe.not_a_point_embed.weight * (labels == -1).float()
        for i in range(pe.num_point_embeddings):
            sparse = sparse + pe.point_embeddings[i].weight * (labels == i).float()
        dense = (has_mask * pe.mask_downscaling(mask_input)
                 + (1 - has_mask) * pe.no_mask_embed.weight.reshape(1, -1, 1, 1))
        return self.mask_decoder.predict_masks(embedding, pe.get_dense_pe(), sparse, dense)


def decoder_key(prefix: str, model: torch.nn.Module) -> str:
    """``prefix`` (base weights, image size) and a digest of every value of a model's ``prompt_encoder`` and
    ``mask_decoder`` (a SAM or a ``PromptDecoder``; tuning and adapter files change them): a decoder graph's name."""
    h = hashlib.sha256()
    for part in ("prompt_encoder", "mask_decoder"):
        for name, tensor in sorted(getattr(model, part).state_dict().items()):
            h.update(f"{part}.{name}".encode())
            h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return f"{prefix}-d{h.hexdigest()[:16]}"


MAX_TOKENS = 256  # tokens (points, a pad, a box's two corners) of one prompt in the decoder graph; more: torch


class OpenVINODecoder(OpenVINOGraph):
    """A model's prompt encoder + mask decoder (``PromptDecoder``) as a graph, for one prompt on one embedding;
    the number of tokens is free (2 to ``MAX_TOKENS``)."""

    FILE = "decoder.xml"
    COPY_ON_THREAD = True  # its key is a digest of the copy (``decoder_key``)
    max_tokens = MAX_TOKENS

    def __init__(self, key: str | None, image_size: int, embedding_shape: tuple[int, int, int],
                 mask_shape: tuple[int, int], threads: int | None = None, directory: Path | None = None,
                 prefix: str = "") -> None:
        super().__init__(key, image_size, threads, directory)
        self.embedding_shape = tuple(embedding_shape)
        self.mask_shape = tuple(mask_shape)
        self.prefix = prefix  # the key's start (base weights, image size) when the key is found on export

    def _exportable(self, module: torch.nn.Module) -> torch.nn.Module:
        return super()._exportable(PromptDecoder(module))  # a copy of these two parts only, not the encoder

    def _key_of(self, module: torch.nn.Module) -> str:
        return decoder_key(self.prefix, module)

    def _child_args(self) -> dict:
        return {**super()._child_args(), "embedding_shape": self.embedding_shape, "mask_shape": self.mask_shape}

    def _example(self) -> tuple[tuple[torch.Tensor, ...], tuple | None]:
        tokens = torch.export.Dim("tokens", min=2, max=MAX_TOKENS)  # a box, or a point and its pad
        example = (torch.zeros(1, *self.embedding_shape), torch.zeros(1, 2, 2), torch.tensor([[1.0, -1.0]]),
                   torch.zeros(1, 1, *self.mask_shape), torch.ones(1))
        return example, ({}, {1: tokens}, {1: tokens}, {}, {})

    def __call__(self, embedding: torch.Tensor, coords: np.ndarray, labels: np.ndarray,
                 mask_input: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(1,M,g',g') low-res logits and (1,M) IoU scores (all M outputs) of one prompt's (1,T,2) (x, y) tokens
        and (1,T) labels on a (1,C,g,g) embedding, with an optional (1,1,g',g') mask input."""
        request = self._compiled.create_infer_request()  # one per call: calls may come from several threads
        has_mask = np.array([0.0 if mask_input is None else 1.0], np.float32)
        mask = (np.zeros((1, 1, *self.mask_shape), np.float32) if mask_input is None
                else mask_input.detach().to("cpu", torch.float32).contiguous().numpy())
        request.infer([embedding.detach().to("cpu", torch.float32).contiguous().numpy(),
                       np.ascontiguousarray(coords, np.float32), np.ascontiguousarray(labels, np.float32), mask,
                       has_mask])
        return tuple(torch.from_numpy(np.array(request.get_output_tensor(i).data, copy=True)) for i in (0, 1))


STALE_TEMP_S = 3600  # a temporary export folder this old belongs to a process that died while writing it


def prune(folder: Path, keep: int = KEEP_GRAPHS) -> None:
    """Remove all but the ``keep`` most recently used graphs of each kind (each tuned adapter makes one), and
    temporary export folders a killed process left; only folders this module names are ever touched."""
    import time

    try:
        entries = [p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()]
        named = [p for p in entries if not p.name.startswith(".") and re.search(r"-ov[0-9A-Za-z._]+-g\d+$", p.name)]
        kinds = [sorted((p for p in named if (p / file).is_file()), key=lambda p: p.stat().st_mtime, reverse=True)
                 for file in GRAPH_FILES]
        stale = [p for p in entries if re.fullmatch(r"\..+-ov[0-9A-Za-z._]+-g\d+\..+\.tmp", p.name)
                 and time.time() - p.stat().st_mtime > STALE_TEMP_S]
    except OSError:
        return
    for old in [p for ours in kinds for p in ours[keep:]] + stale:
        shutil.rmtree(old, ignore_errors=True)
