"""The prompt session: an image, its cached per-slice embeddings, and prompts → masks."""

from __future__ import annotations

import errno
import hashlib
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from segment_anything.utils.transforms import ResizeLongestSide

from ..cancel import CancelFn, Cancelled, ProgressFn
from ..files.checkpoints import atomic_write
from ..model.devices import volume_batch_size
from ..model.msa_model import MSAModel
from ..network.preprocessing import ImageLayout, Normalization, intensity_window, to_uint8_rgb
from ..prompts.geometry import grown_box, most_interior
from ..prompts.honour import EDIT_LOGIT
from ..prompts.interaction import Answer, Interaction, InteractionRule, Prior, Prompt
from ..prompts.zoom import Window, box_in, paste, points_in
from .decoding import decode, image_masks, mask_to_logits, to_input_frame, to_mask_input
from .propagation import BOX_MARGIN, MAX_BRIGHTNESS_SHIFT, Brightness, step_facts, stop_rule


@dataclass
class Embedding:
    features: torch.Tensor  # (1, C, h, w) on the model's device; fp16 in the caches where the precision says so
    input_size: tuple[int, int]  # resized image size before padding
    original_size: tuple[int, int]

    @property
    def nbytes(self) -> int:
        return self.features.element_size() * self.features.nelement()

    def as_float(self) -> Embedding:
        """The fp32 embedding the mask decoder takes (the cached one itself when it is fp32)."""
        if self.features.dtype == torch.float32:
            return self
        return Embedding(self.features.float(), self.input_size, self.original_size)


class EmbeddingCache:
    """LRU of slice embeddings under a byte budget; optionally mirrored on disk by content hash."""

    def __init__(self, budget_bytes: int = 1 << 30, directory: str | Path | None = None) -> None:
        self.budget_bytes = int(budget_bytes)
        self.directory = Path(directory) if directory is not None else None
        self._items: OrderedDict[tuple, Embedding] = OrderedDict()
        self._lock = threading.RLock()
        self.hits = self.misses = 0
        # The disk copy is an optimisation: a folder that cannot be written (read-only, full) leaves the embeddings
        # in memory, with one warning. ``disk_required`` (napari-msa embed, whose job is that copy) raises instead.
        self.disk_required = False
        self._disk_warned = False

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: tuple) -> bool:
        return key in self._items

    def keys(self) -> list[tuple]:
        with self._lock:
            return list(self._items)

    def get(self, key: tuple, device: torch.device) -> Embedding | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
        disk = self._disk_path(key)
        if disk is not None and disk.is_file():
            emb = self._read_disk(disk, device)
            if emb is not None:
                self.put(key, emb, write_disk=False)
                self.hits += 1
                return emb
        self.misses += 1
        return None

    def put(self, key: tuple, emb: Embedding, write_disk: bool = True) -> None:
        with self._lock:
            self._items[key] = emb
            self._items.move_to_end(key)
            while len(self._items) > 1 and self.nbytes > self.budget_bytes:
                self._items.popitem(last=False)
        disk = self._disk_path(key)
        if write_disk and disk is not None:
            payload = {
                "features": emb.features.detach().cpu(),
                "input_size": torch.tensor(emb.input_size),
                "original_size": torch.tensor(emb.original_size),
            }
            try:
                self._inside(disk)
                atomic_write(disk, lambda tmp: torch.save(payload, tmp))
            except (OSError, RuntimeError) as err:
                why = "its disk is full" if getattr(err, "errno", None) == errno.ENOSPC else _one_line(err)
                message = f"the embeddings folder {self.directory} cannot be written ({why})"
                if self.disk_required:
                    raise OSError(f"{message}; free space or choose another --cache-dir") from err
                if not self._disk_warned:
                    self._disk_warned = True
                    warnings.warn(f"{message}; embeddings are kept in memory only", RuntimeWarning, stacklevel=3)

    def _inside(self, path: Path) -> None:
        """Refuse to write through a link planted in the cache folder: every write stays inside it."""
        root = self.directory.resolve()
        if path.is_symlink() or not path.parent.resolve().is_relative_to(root):
            raise OSError(f"{path} leads outside the cache folder (a symbolic link); nothing was written there")

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    @staticmethod
    def _read_disk(path: Path, device: torch.device) -> Embedding | None:
        """A cached embedding, or None (with a warning, the file removed) when it is unreadable or malformed."""
        try:
            saved = torch.load(path, map_location=device, weights_only=True)
            features = saved["features"]
            input_size = tuple(int(v) for v in saved["input_size"].tolist())
            original_size = tuple(int(v) for v in saved["original_size"].tolist())
            if features.ndim != 4 or len(input_size) != 2 or len(original_size) != 2:
                raise ValueError(f"unexpected shapes {tuple(features.shape)}, {input_size}, {original_size}")
        except Exception as err:  # truncated, empty or foreign file: recompute rather than fail for good
            warnings.warn(f"embedding cache file {path} is unreadable ({err}); recomputing it", RuntimeWarning,
                          stacklevel=3)
            path.unlink(missing_ok=True)
            return None
        return Embedding(features, input_size, original_size)

    def _disk_path(self, key: tuple) -> Path | None:
        if self.directory is None or len(key) != 3:  # a zoom window's embedding (4 parts) stays in memory
            return None
        image_hash, weights_key, z = key
        return self.directory / image_hash / weights_key / f"z{z:05d}.pt"


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def content_hash(image: np.ndarray, window: tuple[float, float] | None, layout: ImageLayout | None = None) -> str:
    """Everything that changes what the encoder sees: the values, their shape and type, the intensity window and
    how the axes are read (one (Y, X, 3) array is an RGB plane or a volume of 3-pixel-wide slices)."""
    h = hashlib.sha1()
    axes = None if layout is None else (layout.is_volume, layout.rgb)
    h.update(str((image.shape, str(image.dtype), window, axes)).encode())
    h.update(np.ascontiguousarray(image).view(np.uint8).reshape(-1).data)
    return h.hexdigest()[:20]


def _as_points(points, labels) -> tuple[np.ndarray, np.ndarray]:
    pts = np.asarray(points if points is not None else [], dtype=np.float64)
    pts = pts.reshape(-1, pts.shape[-1] if pts.ndim > 1 else max(1, pts.size))
    lab = np.ones(len(pts), dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(lab) != len(pts):
        raise ValueError(f"{len(pts)} points but {len(lab)} labels")
    return pts, lab


def prompts_from_mask(mask: np.ndarray, margin: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A box around the mask (grown by ``margin`` × its size on each side, at least 2 px when ``margin`` > 0,
    clipped to the plane) and a positive point at its most interior pixel (row, col)."""
    return grown_box(mask, margin), most_interior(mask)


class Session:
    """Interactive segmentation of one image (2D or a volume of slices) with one model."""

    def __init__(self, model: MSAModel, *, normalization: Normalization | None = None,
                 cache_budget_bytes: int = 1 << 30, cache_dir: str | Path | None = None) -> None:
        self.model = model
        self.normalization = normalization
        self.cache = EmbeddingCache(cache_budget_bytes, cache_dir)
        self._lock = threading.RLock()
        # The encoder has its own lock so a click's decoder pass never waits behind a neighbour's prefetch.
        self._encode_lock = threading.Lock()
        self.image: np.ndarray | None = None
        self.layout: ImageLayout | None = None
        self.window: tuple[float, float] | None = None
        self.image_hash = ""
        self.last_logits: np.ndarray | None = None  # (1, g, g) of the mask kept by the last prediction
        self.last_prediction: Answer | None = None
        self._rule: InteractionRule | None = None
        self._interactions: OrderedDict[tuple, Interaction] = OrderedDict()  # per (image, weights, slice)

    # --- image -----------------------------------------------------------------------------------
    def set_image(self, image: np.ndarray, *, normalization: Normalization | None = None,
                  rgb: bool | None = None) -> None:
        """Use a (Y,X), (Y,X,3), (Z,Y,X) or (Z,Y,X,3) array; embeddings are computed lazily per slice."""
        image = np.asarray(image)
        if image.size == 0:
            raise ValueError("the image is empty")
        if image.dtype == bool:
            image = image.astype(np.uint8)
        if not np.issubdtype(image.dtype, np.number) or np.iscomplexobj(image):
            raise ValueError(f"image dtype {image.dtype} is not a real number type")
        layout = ImageLayout.of(image, rgb)
        if np.issubdtype(image.dtype, np.floating):
            bad = int(image.size - np.count_nonzero(np.isfinite(image)))
            if bad:
                warnings.warn(f"the image has {bad} non-finite pixels (NaN/Inf); the model sees them as the "
                              "intensity window's low end", RuntimeWarning, stacklevel=2)
        if normalization is not None:
            self.normalization = normalization
        norm = self.normalization or self.model.normalization
        window = intensity_window(image, norm, layout.rgb)
        new_hash = content_hash(image, window, layout)
        with self._lock:
            if new_hash != self.image_hash:
                self.cache.clear()
            self.image, self.layout, self.window, self.image_hash = image, layout, window, new_hash
            self.last_logits = self.last_prediction = None

    @property
    def num_slices(self) -> int:
        self._require_image()
        return self.image.shape[0] if self.layout.is_volume else 1

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        self._require_image()
        return self.image.shape[: 3 if self.layout.is_volume else 2]

    @property
    def plane_shape(self) -> tuple[int, int]:
        return tuple(self.spatial_shape[-2:])

    def _require_image(self) -> None:
        if self.image is None:
            raise RuntimeError("no image set: call set_image(image) first")

    def plane_rgb(self, z: int = 0) -> np.ndarray:
        """The 8-bit RGB plane the encoder sees for slice ``z``."""
        self._require_image()
        plane = self.image[z] if self.layout.is_volume else self.image
        return to_uint8_rgb(plane, self.window)

    # --- embeddings ------------------------------------------------------------------------------
    def _key(self, z: int) -> tuple:
        return (self.image_hash, self.model.weights_key(), int(z))

    def is_cached(self, z: int = 0) -> bool:
        return self._key(z) in self.cache

    def embedding(self, z: int = 0) -> Embedding:
        """The slice's fp32 embedding, from memory, then disk, else computed now."""
        self._check_slice(z)
        with self._lock:  # key and pixels from the same image, even if set_image runs meanwhile
            key = self._key(z)
            cached = self.cache.get(key, self.model.device)
            if cached is not None:
                return cached.as_float()
            rgb = self.plane_rgb(z)
        return self._encode([(key, rgb)])[0].as_float()

    def window_embedding(self, z: int, window: Window) -> Embedding:
        """The embedding of a window of slice ``z`` at the model's full input size (zoom-in), in the same
        intensity window as the slice; kept in memory only (one per zoomed object, not worth a file)."""
        self._check_slice(z)
        r0, c0, r1, c1 = window
        with self._lock:
            key = (*self._key(z), tuple(int(v) for v in window))
            cached = self.cache.get(key, self.model.device)
            if cached is not None:
                return cached.as_float()
            rgb = np.ascontiguousarray(self.plane_rgb(z)[r0:r1, c0:c1])
        return self._encode([(key, rgb)])[0].as_float()

    def _check_slice(self, z: int) -> None:
        self._require_image()
        if not 0 <= z < self.num_slices:
            raise IndexError(f"slice {z} is outside the image (0..{self.num_slices - 1})")

    def _encode(self, work: list[tuple[tuple, np.ndarray]]) -> list[Embedding]:
        """One encoder pass over (key, 8-bit RGB plane) pairs; the embeddings go into the cache, stored in
        the precision's cache dtype (fp16 halves memory and disk where that was measured to keep the masks)."""
        with self._encode_lock:
            out: list[Embedding | None] = [self.cache.get(key, self.model.device) if key in self.cache else None
                                           for key, _ in work]  # another thread (a prefetch) may have done some
            todo = [i for i, e in enumerate(out) if e is None]
            if todo:
                inputs = [self.model.preprocess(work[i][1]) for i in todo]
                features = self.model.encode(torch.cat([x for x, _ in inputs]))
                store = self.model.precision.cache_dtype
                for j, i in enumerate(todo):
                    key, rgb = work[i]
                    f = features[j : j + 1].to(store)
                    if len(todo) > 1 and f.dtype == features.dtype:
                        f = f.clone()  # not a view that keeps the whole batch alive in the cache
                    out[i] = Embedding(f, inputs[j][1], rgb.shape[:2])
                    self.cache.put(key, out[i])
        return out

    def embed_slices(self, slices: Iterable[int], *, progress: ProgressFn | None = None,
                     cancel: CancelFn | None = None, batch_size: int | None = None) -> None:
        """Precompute embeddings (a prefetch, a whole volume); stops between encoder passes when ``cancel()``
        is true. ``batch_size`` slices go through the encoder per pass (None: what was measured fastest on
        the model's kind of device, ``engine.model.devices.volume_batch_size``); slices already cached (memory or
        disk) are skipped."""
        slices = list(slices)
        for z in slices:
            self._check_slice(z)
        step = max(1, int(batch_size or volume_batch_size(self.model.device)))
        done = 0
        pending: list[int] = []
        for i, z in enumerate(slices):
            pending.append(z)
            if len(pending) < step and i + 1 < len(slices):
                continue
            if cancel is not None and cancel():
                raise Cancelled()
            with self._lock:
                work = []
                for zz in pending:
                    key = self._key(zz)
                    if self.cache.get(key, self.model.device) is None:
                        work.append((key, self.plane_rgb(zz)))
            if work:
                self._encode(work)
            for _ in pending:
                done += 1
                if progress is not None:
                    progress(done, len(slices))
            pending = []

    # --- prediction ------------------------------------------------------------------------------
    @property
    def rule(self) -> InteractionRule:
        """How clicks become prompts (``engine.prompts.interaction``): the one given, else the model's own."""
        return self._rule or self.model.interaction

    @rule.setter
    def rule(self, rule: InteractionRule | str | None) -> None:
        self._rule = InteractionRule.from_name(rule) if isinstance(rule, str) else rule
        self._interactions.clear()

    def predict(
        self,
        points: Sequence[Sequence[float]] | np.ndarray | None = None,
        labels: Sequence[int] | np.ndarray | None = None,
        box: Sequence[float] | None = None,
        mask_input: np.ndarray | None = None,
        *,
        z: int | None = None,
        multimask: bool | None = None,
        prior: np.ndarray | None = None,
        candidate: int = 0,
    ) -> tuple[np.ndarray, float]:
        """Mask (bool, plane shape) and SAM's predicted IoU for one object's prompts on one slice.

        Points are (row, col) in 2D or (z, row, col) in a volume, in the order they were clicked; ``box`` is
        (min_row, min_col, max_row, max_col). The points are an interaction (``engine.prompts.interaction``): the box
        first, then one step per click, each prompted by the session's ``rule`` from the step before. Calling
        once per click with one more click each time costs one decoder pass a call (and an encoder pass on a
        window of the slice when a ``zoom`` rule zooms in on the object); any sequence gives the same mask as that.
        ``prior``: the object as it exists (refining it), the answer before the first click.
        ``candidate``: which of SAM's three masks a lone click keeps (0: the best predicted IoU; 1, 2: the
        others; ``last_prediction`` lists them). ``mask_input`` or ``multimask``: one decoder pass with exactly
        these prompts, outside any interaction, by the model's own decoder (SamPredictor's call; propagation's
        per-slice prompt); an interaction's steps after a lone click go to its corrector, if it has one.
        """
        answer = self.interact(points, labels, box, z=z, prior=prior, candidate=candidate,
                               mask_input=mask_input, multimask=multimask)
        return answer.mask.copy(), answer.score

    def interact(self, points=None, labels=None, box=None, *, z: int | None = None, prior: np.ndarray | None = None,
                 candidate: int = 0, mask_input: np.ndarray | None = None, multimask: bool | None = None) -> Answer:
        """``predict``'s full answer: every candidate mask of the last step with its score, the one kept
        (``chosen``) and its low-res logits. Also kept as ``last_prediction``."""
        self._require_image()
        pts, lab = _as_points(points, labels)
        if len(pts) == 0 and box is None:
            raise ValueError("give at least one point or a box")
        if not np.isfinite(pts).all():
            raise ValueError("point coordinates must be finite numbers (got NaN or Inf)")
        if box is not None and (len(box) != 4 or not np.isfinite(np.asarray(box, dtype=np.float64)).all()):
            raise ValueError("a box is 4 finite numbers (min_row, min_col, max_row, max_col)")
        if self.layout.is_volume:
            if len(pts):
                if pts.shape[1] != 3:
                    raise ValueError("points in a volume are (z, row, col)")
                zs = np.unique(np.round(pts[:, 0]).astype(int))
                if len(zs) > 1:
                    raise ValueError(f"points lie on several slices {zs.tolist()}; predict one slice at a time")
                z = int(zs[0]) if z is None else z
                pts = pts[:, 1:]
            if z is None:
                raise ValueError("in a volume, give the slice: z=... or (z, row, col) points")
        else:
            if len(pts) and pts.shape[1] != 2:
                raise ValueError("points in a 2D image are (row, col)")
            z = 0
        h, w = self.plane_shape
        if len(pts) and (np.any(pts < -0.5) or np.any(pts[:, 0] > h - 0.5) or np.any(pts[:, 1] > w - 0.5)):
            raise ValueError(f"a point lies outside the {h}×{w} image")
        if prior is not None and np.shape(prior) != (h, w):
            raise ValueError(f"the prior mask has shape {np.shape(prior)}, the slice is {h}×{w}")
        emb = self.embedding(z)
        box_arr = None if box is None else np.asarray(box, dtype=np.float64)
        if mask_input is not None or multimask is not None:
            single = len(pts) == 1 and box is None and mask_input is None
            prompt = Prompt(pts, lab, box_arr, None if mask_input is None else np.asarray(mask_input)[0],
                            single if multimask is None else bool(multimask))
            answer = self._decode(emb, prompt, correcting=False)
        else:
            with self._lock:
                key = self._interaction_key(z)
                interaction = self._interactions.pop(key, None) or Interaction(self.rule)
                self._interactions[key] = interaction  # most recent last
                while len(self._interactions) > 64:
                    self._interactions.popitem(last=False)
            prior_state = None
            if prior is not None and np.any(prior):
                prior_state = Prior.of(prior, mask_to_logits(self.model.sam, prior, emb.input_size))
            with self._lock:
                answer = interaction.run(pts, lab, box_arr, partial(self._decode_step, z, emb), prior=prior_state,
                                         candidate=candidate, shape=self.plane_shape, amend=self._amend)
        self.last_prediction = answer
        self.last_logits = answer.low_logits[None]
        return answer

    def _interaction_key(self, z: int) -> tuple:
        # the decoder's weights too (tuning bumps version): an interaction's answers are decoder outputs
        return (self.image_hash, id(self.model), self.model.version, self.model.weights_key(), z)

    def prefetch_window(self, z: int = 0) -> Window | None:
        """Encode the window the next click on slice ``z``'s current object will most likely be decoded in, so that
        click does not wait for it (an idle worker of the caller's calls this once an answer is shown)."""
        self._check_slice(z)
        with self._lock:
            interaction = self._interactions.get(self._interaction_key(z))
            window = None if interaction is None else interaction.likely_window(self.plane_shape)
        if window is not None:
            self.window_embedding(z, window)
        return window

    def _decode_step(self, z: int, emb: Embedding, prompt: Prompt) -> Answer:
        """An interaction step: on the slice's embedding, or zoomed in on its window (answers on the slice)."""
        window = prompt.window
        if window is not None:
            emb = self.window_embedding(z, window)
            points, labels = points_in(window, prompt.points, prompt.labels)
            box = None if prompt.box is None else box_in(window, prompt.box)
            prompt = replace(prompt, points=points, labels=labels, box=box)
        if prompt.carried is not None:
            logits = self._slice_logits(prompt.carried)
            if window is not None:
                logits = logits[window[0]:window[2], window[1]:window[3]]
            prompt = replace(prompt, mask_input=to_mask_input(self.model.sam, logits, emb.input_size))
        answer = self._decode(emb, prompt)
        if window is None:
            return answer
        return Answer(paste(window, answer.masks, self.plane_shape), answer.scores, answer.logits, window=window)

    def _amend(self, answer: Answer, edit: np.ndarray, label: int) -> Answer:
        """The answer with its kept mask flipped at ``edit`` (slice pixels) and its logits, in the frame it was
        decoded in, sure of the edit (``engine.prompts.honour``): the next click is prompted with the edited mask."""
        logits = self._slice_logits(answer)
        logits[edit] = EDIT_LOGIT if label == 1 else -EDIT_LOGIT
        window = answer.window
        input_size, _ = self._frame_sizes(window)
        if window is not None:
            logits = logits[window[0]:window[2], window[1]:window[3]]
        masks, low = answer.masks.copy(), answer.logits.copy()
        masks[answer.chosen] = answer.mask ^ edit
        low[answer.chosen] = to_mask_input(self.model.sam, logits, input_size)
        return Answer(masks, answer.scores, low, answer.chosen, window)

    def _frame_sizes(self, window: Window | None) -> tuple[tuple[int, int], tuple[int, int]]:
        """The (input size before padding, original size) of the frame an answer was decoded in, the slice or a
        window of it, from its shape alone (``encoder_input``'s resize): no embedding is fetched for them."""
        h, w = self.plane_shape if window is None else (window[2] - window[0], window[3] - window[1])
        return ResizeLongestSide.get_preprocess_shape(h, w, self.model.image_size), (h, w)

    def _slice_logits(self, answer: Answer) -> np.ndarray:
        """The kept mask's logits at the slice's size (outside its window: its most confident background)."""
        window = answer.window
        low = torch.as_tensor(answer.low_logits, dtype=torch.float)[None, None]
        up = self.model.sam.postprocess_masks(low, *self._frame_sizes(window))[0, 0].numpy()
        if window is None:
            return up
        out = np.full(self.plane_shape, up.min(), dtype=np.float32)
        out[window[0]:window[2], window[1]:window[3]] = up
        return out

    def _decode(self, emb: Embedding, prompt: Prompt, correcting: bool = True) -> Answer:
        """One decoder pass on a slice's embedding; candidates best-first. An interaction's lone click (one point,
        no box, no earlier answer) is the model's own decoder's, its every other step the model's corrector's
        when it has one (``network.corrector``); ``correcting=False``: the model's own decoder whatever the prompt."""
        sam, frame = self.model.sam, (emb.original_size, self.model.image_size)
        corrector = None if prompt.lone_click or not correcting else self.model.corrector()
        decoder = sam if corrector is None else corrector
        n = len(prompt.points)
        points_in = to_input_frame(prompt.points, *frame)[None] if n else None
        box_in = None if prompt.box is None else to_input_frame(np.reshape(prompt.box, (2, 2)), *frame).reshape(1, 4)
        dense = None if prompt.mask_input is None else torch.as_tensor(
            prompt.mask_input, dtype=torch.float, device=emb.features.device)[None, None]
        with self._lock, torch.no_grad():
            low, predicted_iou = decode(decoder, emb.features, points_in, prompt.labels[None] if n else None,
                                        box_in, prompt.multimask, mask_input=dense,
                                        graph=self.model.decoder_graph(corrector=corrector is not None))
            masks = image_masks(sam, low, emb.input_size, emb.original_size)[0].cpu().numpy()
            scores, logits = predicted_iou[0].float().cpu().numpy(), low[0].float().cpu().numpy()
        return Answer(masks.astype(bool), scores, logits).ranked()

    def lone_clicks(self, emb: Embedding, points: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Many single positive clicks (N, 2) decoded in one pass, each its own prompt with SAM's three masks:
        (logits (N, 3, h, w) at the slice's size, predicted IoU (N, 3)). Segment everything's grid."""
        sam = self.model.sam
        frame = to_input_frame(np.asarray(points, dtype=np.float64), emb.original_size, self.model.image_size)
        with self._lock, torch.no_grad():
            low, scores = decode(sam, emb.features, frame[:, None], np.ones((len(frame), 1)), None, True)
            logits = sam.postprocess_masks(low.float(), emb.input_size, emb.original_size)
        return logits, scores.float()

    def propagate(
        self,
        mask: np.ndarray,
        z: int,
        *,
        iou_threshold: float = 0.5,
        max_distance: int | None = None,
        box_margin: float = BOX_MARGIN,
        min_score: float = 0.5,
        max_shift: float = MAX_BRIGHTNESS_SHIFT,
        progress: ProgressFn | None = None,
        cancel: CancelFn | None = None,
    ) -> dict[int, np.ndarray]:
        """Carry an object from slice ``z`` to its neighbours, both ways, until it ends.

        Each slice is prompted with the box of the previous slice's mask, grown by ``box_margin``, and the
        mask's most interior point (``engine.inference.propagation``). A direction ends at the first slice whose mask
        overlaps the previous one by less than ``iou_threshold``, whose predicted IoU is below ``min_score``, or
        whose brightness differs from the object's on slice ``z`` by more than ``max_shift`` of its spread
        (past an organ's end the model answers with the next structure, often confidently and overlapping):
        the rule measured best in benchmarks/propagation_stop.py. Returns {slice: mask}, start excluded.
        """
        self._require_image()
        if not self.layout.is_volume:
            raise ValueError("propagation needs a volume (Z,Y,X)")
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            raise ValueError(f"the object is empty on slice {z}; segment it there first")
        for name, value in (("iou_threshold", iou_threshold), ("min_score", min_score)):
            if not 0.0 <= value <= 1.0:  # nan too: it would never stop
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        if not max_shift > 0:  # nan too
            raise ValueError(f"max_shift must be positive, got {max_shift}")
        n = self.num_slices
        limit = n if max_distance is None else max_distance
        total = min(n - 1, 2 * limit)
        done = 0
        result: dict[int, np.ndarray] = {}
        start = Brightness.of(self.plane_rgb(z)[..., 0], mask)
        ended = stop_rule(min_score, iou_threshold, max_shift)  # the rule benchmarks/propagation_stop.py scores
        for step in (1, -1):
            previous = mask
            current = z + step
            while 0 <= current < n and abs(current - z) <= limit:
                if cancel is not None and cancel():
                    raise Cancelled("propagation was cancelled", partial=result)
                new, facts = step_facts(self, start, previous, current, box_margin)
                done += 1
                if progress is not None:
                    progress(done, total)
                if not new.any() or ended(facts):
                    break
                result[current] = new
                previous = new
                current += step
        return result
