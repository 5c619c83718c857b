"""``MSAModel``: a SAM (ViT or LiteMedSAM's TinyViT) with optional MSA adapters on a device, what it was loaded
from, and the operations every user of a model needs: preprocess, encode, a content key for embedding caches,
adapter files in and out, snapshots for tuning."""

from __future__ import annotations

import copy
import hashlib
import os
import threading
from dataclasses import replace
from pathlib import Path

import torch

from ..catalog import CLICK_ADAPTER_FILE, LITEMEDSAM_NAME
from ..file_checks import CheckpointError
from ..files.checkpoints import LoadReport
from ..files.formats import AdapterFile, check_adapter_compatible, read_adapter, save_adapter
from ..network.adapters import ADAPTER_KEY, AdapterConfig, is_trainable, set_depth_slices
from ..network.architectures import ModelConfig, base_fingerprint
from ..network.corrector import PREFIX as CORRECTOR_PREFIX
from ..network.corrector import CorrectorChange, PromptSide, corrector_of
from ..network.preprocessing import PREPROCESSING_VERSION, Normalization, encoder_input
from ..prompts.interaction import InteractionRule
from .precision import FP32_EXACT, Precision
from .runtime import OpenVINODecoder, OpenVINOEncoder, decoder_key


def default_rule(name: str, is_demo: bool) -> InteractionRule:
    """The interaction rule a model was trained for, unless its adapter file names one.

    SAM was trained feeding its previous logits back with each click. LiteMedSAM was trained on boxes only, and
    its first click adapter (2026-11-29) with clicks alone, the rule that measured best for it on the development
    set (the box of the shown mask was worst; BENCHMARKS.md, "Click sessions"); the demo model with clicks alone.
    The shipped session adapter names its rule (``logits``) in its file. LiteMedSAM sees a slice at 256 px, so its
    correction clicks zoom in (``engine.prompts.zoom``; BENCHMARKS.md, "Zoom-in"), and a correction its answer
    ignores gets the thing under the click (``engine.prompts.honour``; BENCHMARKS.md, "Sticky edits": sessions reach
    Dice 0.90 sooner at the same Dice after five clicks), whatever rule an adapter names.
    """
    if is_demo:
        return InteractionRule()
    if name == LITEMEDSAM_NAME:
        return InteractionRule(zoom=True, honour=True)
    return InteractionRule(feed_logits=True)


class MSAModel:
    """A SAM with (optional) MSA adapters on a device, plus what it was loaded from."""

    def __init__(self, sam: torch.nn.Module, *, name: str, device: torch.device, source: str,
                 normalization: Normalization | None = None, is_demo: bool = False,
                 precision: Precision = FP32_EXACT, runtime: str = "torch") -> None:
        self.sam = sam.to(device).eval()
        self.precision = precision
        self.runtime = runtime  # 'torch' or 'openvino' (engine.model.runtime): where the image encoder runs
        self._graph: OpenVINOEncoder | None = None  # the encoder as an OpenVINO graph, for one weights key
        # prompt encoder + mask decoder as graphs: {corrector?: (version, graph)}, the decoder's and the corrector's
        self._decoder_graphs: dict[bool, tuple[int, OpenVINODecoder]] = {}
        self.corrector_change: CorrectorChange | None = None  # a corrector's change, from the adapter file
        self._corrector: tuple[int, PromptSide] | None = None  # (version, the corrector built for it)
        self._graph_lock = threading.Lock()  # one graph per key, whichever thread asks first
        if precision.channels_last:  # convolutions read NHWC directly (TinyViT's stem, stage 0, mergings, neck)
            self.sam.image_encoder.to(memory_format=torch.channels_last)
        self.name = name
        self.device = device
        self.source = source
        self.is_demo = is_demo
        self.interaction = default_rule(name, is_demo)  # an adapter trained for another rule says so (apply_adapter)
        self.normalization = normalization or Normalization()
        self.base_fingerprint = base_fingerprint(sam)
        self.adapter_source: str | None = None
        self.adapter_metadata: dict = {}
        self.version = 0  # bumped whenever weights change, so embedding caches know
        self._encoder_key: tuple[int, str] | None = None  # (version, key) of the last weights_key()
        self._decoder_key: tuple[int, str] | None = None  # (version, key) of the last decoder_key()

    @property
    def config(self) -> ModelConfig:
        return self.sam.model_config

    @property
    def adapter_config(self) -> AdapterConfig | None:
        return getattr(self.sam, "adapter_config", None)

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """bf16 when the encoder runs under bf16 autocast (``precision``), else None (fp32)."""
        return self.precision.autocast_dtype

    def describe(self) -> str:
        kind = "demo model (trained on synthetic phantoms, not a SAM checkpoint)" if self.is_demo else self.name
        where = f"@ {self.image_size}px on {self.device.type}" + (", bf16" if self.precision.name == "bf16" else "")
        where += ", OpenVINO" if self.runtime == "openvino" else ""
        if self.name == LITEMEDSAM_NAME:
            kind = "LiteMedSAM"
        if self.adapter_source and Path(self.adapter_source) == CLICK_ADAPTER_FILE:
            return f"{kind} + click adapter {where}"
        adapter = f", adapter {Path(self.adapter_source).name}" if self.adapter_source else ""
        return f"{kind} {where}{adapter}"

    def preprocess(self, rgb) -> tuple[torch.Tensor, tuple[int, int]]:
        """(1,3,S,S) encoder input of an 8-bit RGB plane on this model's device, and its size before padding."""
        return encoder_input(rgb, self.image_size, self.sam.pixel_mean, self.sam.pixel_std, self.device,
                             self.config.pixel_norm)

    def weights_key(self) -> str:
        """What an embedding depends on, by content: base weights, image size, the encoder adapters' values,
        the encoder's precision (and how embeddings are stored) and the preprocessing version. Never a path,
        so an adapter file replaced under the same name never reuses the old embeddings, and a key cannot name
        a folder."""
        if self._encoder_key is None or self._encoder_key[0] != self.version:
            h = hashlib.sha256()
            for name, tensor in sorted(self.sam.image_encoder.state_dict().items()):
                if ADAPTER_KEY in name:
                    h.update(name.encode())
                    h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
            key = (f"{self.base_fingerprint}-{self.image_size}-{h.hexdigest()[:16]}-{self.precision.key}"
                   f"-p{PREPROCESSING_VERSION}")
            self._encoder_key = (self.version, key)
        return self._encoder_key[1]

    @torch.no_grad()
    def encode(self, batch: torch.Tensor, depth_slices: int = 1) -> torch.Tensor:
        """fp32 image embeddings of a preprocessed (B,3,S,S) batch, computed in the model's ``precision`` (and
        ``runtime``: the OpenVINO graph once it is ready for these weights)."""
        graph = self.encoder_graph() if depth_slices == 1 else None
        if graph is not None and graph.ready:
            return graph(batch)
        set_depth_slices(self.sam, depth_slices)
        batch = batch.to(self.device)
        if self.precision.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        if self.autocast_dtype is not None:
            with torch.autocast(self.device.type, dtype=self.autocast_dtype):
                out = self.sam.image_encoder(batch).float().contiguous()
        else:
            out = self.sam.image_encoder(batch).contiguous()
        if graph is not None:  # begun after this answer, so the first slice is not slowed by it
            graph.export_in_background(self.sam.image_encoder)
        return out

    def encoder_graph(self, wait: bool = False) -> OpenVINOEncoder | None:
        """The encoder (with today's adapters) as an OpenVINO graph when this model runs there: the saved one for
        these weights if there is one, else one that ``encode`` exports in the background after its first torch
        answer (``wait``: export now if not begun, and block until ready). None on the torch runtime, for depth
        adapters (volumes in one pass), or after a failed export."""
        if self.runtime != "openvino" or (self.adapter_config is not None and self.adapter_config.depth):
            return None
        key = self.weights_key()
        with self._graph_lock:
            if self._graph is None or self._graph.key != key:
                self._graph = OpenVINOEncoder(key, self.image_size)
                self._graph.load_saved()
            graph = self._graph
            if wait and not graph.ready:
                graph.export_in_background(self.sam.image_encoder)
        if wait:
            graph.wait()
        return None if graph.failed else graph

    def decoder_key(self) -> str:
        """What a decoder pass depends on, by content: base weights, image size and every value of the prompt
        encoder and mask decoder (tuning and adapter files change them): the name of its graph."""
        if self._decoder_key is None or self._decoder_key[0] != self.version:
            self._decoder_key = (self.version, decoder_key(f"{self.base_fingerprint}-{self.image_size}", self.sam))
        return self._decoder_key[1]

    def decoder_graph(self, wait: bool = False, corrector: bool = False) -> OpenVINODecoder | None:
        """The prompt encoder + mask decoder (``corrector``: the corrector's) as an OpenVINO graph when this model
        runs there (one prompt's pass measured faster in it: BENCHMARKS.md, "The decoder path").
        ``decoding.decode`` has it read from the graph folder, or exported, in the background after its first torch
        answer: a decoder pass is shorter than compiling even a saved graph (~0.3 s), so no click waits for it
        (``wait``: begin now if not begun, and block until ready). None on the torch runtime, after a failed export,
        or for a corrector this model lacks."""
        if self.runtime != "openvino" or (corrector and self.corrector_change is None):
            return None
        with self._graph_lock:
            held = self._decoder_graphs.get(corrector)
            if held is None or held[0] != self.version:
                # weights may have changed: a graph whose key (a digest of the decoder's values) is found on the
                # export thread; hashing here, beside a running encoder export, took 0.5 s of a click (the GIL)
                pe = self.sam.prompt_encoder
                fresh = OpenVINODecoder(None, self.image_size, (pe.embed_dim, *pe.image_embedding_size),
                                        tuple(pe.mask_input_size), prefix=f"{self.base_fingerprint}-{self.image_size}")
                held = self._decoder_graphs[corrector] = (self.version, fresh)
            graph = held[1]
            if wait and not graph.ready:
                graph.export_in_background(self._corrector_locked() if corrector else self.sam)
        if wait:
            graph.wait()
        return None if graph.failed else graph

    def corrector(self) -> PromptSide | None:
        """The prompt side that answers every interaction step but a lone click's (``network.corrector``): this
        model's decoder as it is now plus the adapter file's change; None when the adapter file has none."""
        with self._graph_lock:
            return self._corrector_locked()

    def _corrector_locked(self) -> PromptSide | None:
        if self.corrector_change is None:
            return None
        if self._corrector is None or self._corrector[0] != self.version:
            self._corrector = (self.version, corrector_of(self.sam, self.corrector_change))
        return self._corrector[1]

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """A copy of the tunable weights (adapters + decoder), to restore after a cancelled tuning."""
        return {k: v.detach().clone() for k, v in self.sam.state_dict().items()
                if is_trainable(k, adapters=True, decoder=True, depth=True)}

    def restore_state(self, state: dict[str, torch.Tensor]) -> None:
        self.sam.load_state_dict(state, strict=False)
        self.version += 1

    def apply_adapter(self, adapter: str | os.PathLike | AdapterFile) -> LoadReport:
        """Load an adapter (a file, or one already read) into this model, checked against the base weights."""
        file = adapter if isinstance(adapter, AdapterFile) else read_adapter(adapter)
        meta, path = file.meta, file.path
        tensors = {k: v for k, v in file.tensors.items() if not k.startswith(CORRECTOR_PREFIX)}
        check_adapter_compatible(meta, self.sam, self.base_fingerprint, path.name)
        if file.config != self.adapter_config:
            raise CheckpointError(
                f"{path.name} has adapters {file.config}, the model has {self.adapter_config}; "
                "load the model with adapter=PATH so it is built to match"
            )
        own = self.sam.state_dict()
        unknown = [k for k in tensors if k not in own]
        if unknown:
            raise CheckpointError(f"{Path(path).name} has keys this model lacks: {unknown[:3]}")
        wrong = [k for k, v in tensors.items() if v.shape != own[k].shape]
        if wrong:
            k = wrong[0]
            raise CheckpointError(f"{Path(path).name}: '{k}' has shape {tuple(tensors[k].shape)}, the model expects "
                                  f"{tuple(own[k].shape)}; the file is damaged or for another model")
        stored = {k: v for k, v in file.tensors.items() if k.startswith(CORRECTOR_PREFIX)}
        change = None if not stored else CorrectorChange.from_file_tensors(
            stored, {k: v.shape for k, v in own.items()}, path.name, meta.get("corrector"))
        self.sam.load_state_dict({k: v.to(own[k].dtype) for k, v in tensors.items()}, strict=False)
        self.corrector_change = change  # a file without one replaces the model's prompt side: no corrector
        if meta.get("normalization"):
            self.normalization = Normalization.from_dict(meta["normalization"])
        rule = meta["training"].get("interaction") if isinstance(meta.get("training"), dict) else None
        if isinstance(rule, str):  # what it was trained for; zoom and honour are the model's inference defaults
            trained, default = InteractionRule.from_name(rule), default_rule(self.name, self.is_demo)
            self.interaction = replace(trained, zoom=trained.zoom or default.zoom,
                                       honour=trained.honour or default.honour)
        self.adapter_source = str(path)
        self.adapter_metadata = meta
        self.version += 1
        return LoadReport(loaded=len(tensors))

    def save_adapter(self, path: str | os.PathLike, training: dict | None = None,
                     include_decoder: bool = False) -> Path:
        out = save_adapter(self.sam, path, base_fingerprint=self.base_fingerprint,
                           normalization=self.normalization.to_dict(), training=training,
                           include_decoder=include_decoder, corrector=self.corrector_change)
        self.adapter_source = str(out)
        return out

    def clone(self) -> MSAModel:
        """An independent copy (tuning works on a copy so the segmenting session is never half-tuned)."""
        other = copy.copy(self)
        other.sam = copy.deepcopy(self.sam)
        other._graph_lock = threading.Lock()
        other._corrector = None  # built again from the copy's own decoder
        other._decoder_graphs = dict(self._decoder_graphs)  # its own from now on: versions move apart
        return other
