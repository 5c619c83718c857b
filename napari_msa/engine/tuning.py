"""Few-shot adapter tuning from an annotator's labels.

``tune(model, images, labels)`` turns every labelled slice and every object id in it into an
(image, object mask) pair, holds some slices (or, with a single slice, some objects) out, and trains
the MSA adapters (optionally the mask decoder) with prompts simulated the way an annotator clicks:

* a positive click deep inside the object (or, for a share of samples, a jittered box), then
* 1-3 correction rounds: the model predicts, and the next click goes to the centre of the largest
  error region: positive in a missed part, negative in a false positive.

The loss is BCE + soft Dice on the mask logits of every round (for a lone click SAM answers with three
masks and the best one is trained, as in SAM), plus SAM's IoU-score regression so the mask the session
picks by its score is the good one. AdamW, flips/90° rotations/intensity jitter, held-out Dice after
every epoch, early stopping that keeps the best weights, a fixed seed reproduces the result.

Geometry: each slice is resized once so its longest side is the model's image size (SAM's own resize,
the same as the session), and all training happens in that frame: points are (row, col) there and go
to SAM as (x, y) = (col, row) in ``decode``. Augmentations act on that frame before padding, so the
padding stays bottom/right as at inference. Held-out Dice is measured in that frame too.

Frozen-prefix cache: with adapters only in the last blocks (``AdapterConfig(blocks=...)``), the
tokens after the frozen first blocks depend on the input pixels only, so they are computed once per
(slice, augmentation) and reused. Flipping/rotating the image is not the same as flipping the token
grid (each patch's content is flipped too, and the patch embedding is not flip-equivariant), so the
cache holds one entry per dihedral variant (at most 8 per slice, filled lazily) and intensity jitter,
which would make every input unique, is switched off while caching.

Cancel or an error leaves the model as it was: by default a copy is tuned and returned; with
``inplace=True`` the trainable weights are snapshotted first and restored on failure.
"""

from __future__ import annotations

import datetime
import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from . import distributed
from .adapters import set_depth_slices, set_trainable
from .cancel import CancelFn, Cancelled
from .decoding import decode, upscale_logits
from .geometry import depth_map, dice, interior_click, mask_box
from .losses import bce_dice_loss, hard_iou
from .model import MSAModel
from .prefix_cache import PrefixCache, SplitEncoder, dihedral, encoder_units, first_adapted_block
from .preprocessing import Normalization
from .tuning_data import (
    Pair,
    TrainingSlice,
    build_pairs,
    correction_click,
    jittered_box,
    split_pairs,
)


class TuningDiverged(ValueError):
    """The loss or the weights became non-finite: the run is abandoned and the model left as it was."""


# --------------------------------------------------------------------------------------------------
# Progress and result
# --------------------------------------------------------------------------------------------------
@dataclass
class TuneProgress:
    """One progress report: ``phase`` is 'prepare', 'eval', 'train' or 'done'."""

    phase: str
    step: int
    total_steps: int
    loss: float | None = None  # this step's training loss
    val_dice: float | None = None  # latest held-out Dice (1 click), None without a held-out split
    best_val_dice: float | None = None
    epoch: int = 0
    elapsed_s: float = 0.0
    eta_s: float | None = None
    message: str = ""


@dataclass
class TuneResult:
    """The tuned model and a JSON-able summary (stored in the adapter file's metadata)."""

    model: MSAModel
    summary: dict
    losses: list[float] = field(default_factory=list)  # every step's loss
    val_history: list[tuple[int, float]] = field(default_factory=list)  # (step, held-out Dice)
    step_times: list[float] = field(default_factory=list)  # seconds per optimiser step (for benchmarks)

    def save(self, path) -> object:
        """Write the tuned adapter (and decoder, if it was trained) atomically as safetensors."""
        return self.model.save_adapter(path, training=self.summary,
                                       include_decoder=bool(self.summary.get("saves_decoder")))


# --------------------------------------------------------------------------------------------------
# One training step as a module (so DistributedDataParallel can wrap it)
# --------------------------------------------------------------------------------------------------
@dataclass
class _Sample:
    """One step's work for one process: several objects of one slice (one dihedral variant), prompted
    together, so the decoder runs once per prompt kind and round for all of them."""

    slice_id: int
    object_ids: list[int]
    use_box: list[bool]  # per object: a jittered box first instead of a click
    variant: int  # dihedral 0..7
    contrast: float
    brightness: float
    rounds: int  # correction rounds after the first prompt
    rng: np.random.Generator


class _StepModule(nn.Module):
    """Computes the loss of one sample: the encoder once, the decoder once per prompt kind and round."""

    def __init__(self, model: MSAModel, encoder: SplitEncoder, slices: list[TrainingSlice], iou_weight: float) -> None:
        super().__init__()
        self.sam = model.sam
        self.image_size = model.image_size
        self.enc = encoder
        self.slices = slices
        self.iou_weight = iou_weight
        self._depths: dict[tuple[int, int], np.ndarray] = {}

    def depth(self, slice_id: int, object_id: int) -> np.ndarray:
        """The object's depth map, computed once (a flipped depth map is the flipped mask's depth map)."""
        key = (slice_id, object_id)
        if key not in self._depths:
            self._depths[key] = depth_map(self.slices[slice_id].mask(object_id))
        return self._depths[key]

    def forward(self, samples: list[_Sample]) -> torch.Tensor:
        return torch.stack([self._sample_loss(s) for s in samples]).mean()

    def _sample_loss(self, s: _Sample) -> torch.Tensor:
        rgb = dihedral(self.slices[s.slice_id].rgb, s.variant)
        if self.enc.cache is not None:
            def make_input(key: tuple[int, int]) -> torch.Tensor:
                return self.enc.pixels(dihedral(self.slices[key[0]].rgb, key[1]))

            emb = self.enc.suffix(self.enc.tokens([(s.slice_id, s.variant)], make_input))
        else:
            emb = self.enc.full(self.enc.pixels(rgb, s.contrast, s.brightness)[None])
        depths = [dihedral(self.depth(s.slice_id, o), s.variant) for o in s.object_ids]
        losses = []
        for use_box in (False, True):  # clicks and boxes are decoded apart (different prompt shapes)
            chosen = [d for d, b in zip(depths, s.use_box, strict=True) if b == use_box]
            if chosen:
                losses.append(self._loss(emb, chosen, use_box, s.rounds, s.rng) * len(chosen))
        return torch.stack(losses).sum() / len(depths)

    def _loss(self, emb: torch.Tensor, depths: list[np.ndarray], use_box: bool, rounds: int,
              rng: np.random.Generator) -> torch.Tensor:
        """Mean loss over objects and rounds: first prompt, then ``rounds`` correction clicks."""
        truth_np = np.stack([d > 0 for d in depths])  # (N, h, w)
        hw = truth_np.shape[1:]
        truth = torch.as_tensor(truth_np, dtype=torch.float32, device=emb.device)
        boxes = np.stack([jittered_box(t, rng) for t in truth_np]) if use_box else None
        points = [[] if use_box else [interior_click(t, rng, d)] for t, d in zip(truth_np, depths, strict=True)]
        labels = [[] if use_box else [1] for _ in depths]
        total = emb.new_zeros(())
        for r in range(1 + rounds):
            multimask = r == 0 and not use_box  # a lone click: SAM answers with three masks
            low, iou_pred = decode(self.sam, emb, np.array(points) if points[0] else None,
                                   np.array(labels) if labels[0] else None, boxes, multimask)
            logits = upscale_logits(low, self.image_size, hw)  # (N, M, h, w)
            mask_loss = bce_dice_loss(logits, truth[:, None].expand_as(logits))  # (N, M)
            with torch.no_grad():
                pred = logits > 0
                iou_true = hard_iou(pred, truth[:, None] > 0)
            iou_loss = F.mse_loss(iou_pred.float(), iou_true)
            total = total + mask_loss.min(1).values.mean() + self.iou_weight * iou_loss
            if r < rounds:
                shown = iou_pred.argmax(1) if multimask else torch.zeros(len(depths), dtype=torch.long)
                shown_np = pred[torch.arange(len(depths)), shown.cpu()].cpu().numpy()
                for i in range(len(depths)):
                    point, label = correction_click(shown_np[i], truth_np[i], rng)
                    points[i].append(point)
                    labels[i].append(label)
        return total / (1 + rounds)


# --------------------------------------------------------------------------------------------------
# Held-out evaluation
# --------------------------------------------------------------------------------------------------
@dataclass
class HeldOut:
    """Held-out Dice at one point of the run. ``click`` averages several simulated single clicks per object (the
    most interior pixel and two seeded points of its inner half), so one object flipping between SAM's
    multimask outputs moves it less than a single click would."""

    click: float
    box: float
    per_label: dict[int, tuple[float, float]]  # label id -> (click, box)

    def score(self, start: HeldOut) -> float:
        """The selection criterion: one-click Dice, less any loss of box Dice against the starting weights
        (boxes already work well; clicks are what tuning is for, but not at the boxes' expense)."""
        return self.click + min(0.0, self.box - start.box)


VAL_CLICKS = 3  # simulated single clicks per held-out object


@torch.no_grad()
def _evaluate(step_module: _StepModule, pairs: list[Pair], dist_info: distributed.DistInfo,
              device: torch.device) -> HeldOut | None:
    """Held-out Dice over all processes' shares of ``pairs`` (the same prompts at every evaluation)."""
    if not pairs:
        return None
    enc, sam, size = step_module.enc, step_module.sam, step_module.image_size
    labels = sorted({p.label for p in pairs})
    slot = {label: i for i, label in enumerate(labels)}
    sums = np.zeros((len(labels), 3))  # click, box, count
    by_slice: dict[int, list[tuple[int, Pair]]] = {}
    for index in range(dist_info.rank, len(pairs), dist_info.world_size):
        by_slice.setdefault(pairs[index].slice_id, []).append((index, pairs[index]))
    for sid, group in by_slice.items():
        sl = step_module.slices[sid]
        if enc.cache is not None:
            emb = enc.suffix(enc.tokens([(sid, 0)], lambda key: enc.pixels(step_module.slices[key[0]].rgb)))
        else:
            emb = enc.full(enc.pixels(sl.rgb)[None])
        # Every click and every box of the slice in one decoder pass each (same prompts at every check).
        truths = [sl.mask(p.object_id) for _, p in group]
        clicks = []
        for (index, p), gt in zip(group, truths, strict=True):
            depth = step_module.depth(sid, p.object_id)
            rng = np.random.default_rng([index, 7])
            clicks.append(interior_click(gt, depth=depth))
            clicks += [interior_click(gt, rng, depth) for _ in range(VAL_CLICKS - 1)]
        low, iou = decode(sam, emb, np.array(clicks)[:, None], np.ones((len(clicks), 1)), None, True)
        best = iou.argmax(1)
        click_masks = (upscale_logits(low[torch.arange(len(clicks)), best][:, None], size, sl.rgb.shape[:2])[:, 0] > 0)
        low, _ = decode(sam, emb, None, None, np.array([mask_box(gt) for gt in truths]), False)
        box_masks = upscale_logits(low, size, sl.rgb.shape[:2])[:, 0] > 0
        click_masks, box_masks = click_masks.cpu().numpy(), box_masks.cpu().numpy()
        for j, ((_, p), gt) in enumerate(zip(group, truths, strict=True)):
            click_dice = np.mean([dice(m, gt) for m in click_masks[j * VAL_CLICKS : (j + 1) * VAL_CLICKS]])
            sums[slot[p.label]] += (click_dice, dice(box_masks[j], gt), 1.0)
    sums = np.asarray(distributed.all_reduce_sum(sums.ravel().tolist(), device)).reshape(-1, 3)
    n = sums[:, 2].sum()
    per_label = {label: (sums[i, 0] / sums[i, 2], sums[i, 1] / sums[i, 2]) for label, i in slot.items() if sums[i, 2]}
    return HeldOut(float(sums[:, 0].sum() / n), float(sums[:, 1].sum() / n), per_label)


# --------------------------------------------------------------------------------------------------
# tune()
# --------------------------------------------------------------------------------------------------
def _state_digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:12]


@dataclass
class TuneConfig:
    """How tuning runs (stored in the adapter file's metadata). The defaults are the few-shot case the Tune
    widget exists for, measured in benchmarks/tuning_gain.py: 1-8 labelled slices, 2-20 objects."""

    steps: int | None = None  # optimiser steps; None: scaled to the data (auto_steps)
    lr: float = 1e-4  # peak learning rate (AdamW)
    weight_decay: float = 0.01
    batch_size: int = 4  # objects of one slice per sample
    slices_per_step: int = 1  # samples (slices) per step and process
    val_fraction: float = 0.2  # share of labelled slices held out (objects when there is one slice); 0: none
    seed: int = 0
    # Default: the mask decoder on embeddings computed once per slice, the most gain per minute measured
    # (benchmarks/tuning_gain.py); a LiteMedSAM step through the encoder's last stage costs far more.
    train_adapters: bool = False  # the MSA adapters in the image encoder
    train_decoder: bool = True  # the mask decoder and the point embeddings
    # Flips/90° rotations (and intensity jitter when the encoder runs every step). None: on when the encoder
    # trains; off for the decoder alone, where each new view costs an encoder pass and the slices to segment
    # share the labelled ones' orientation.
    augment: bool | None = None
    box_share: float = 0.3  # share of samples prompted with a jittered box instead of a click
    max_correction_rounds: int = 1  # 0..this many correction clicks after the first prompt
    iou_weight: float = 1.0
    patience: int = 3  # checks without improvement (after min_steps_share of the run) before stopping; 0: never
    min_delta: float = 1e-3  # smaller held-out gains do not count as improvement (early stopping)
    # The tuned weights replace the starting ones only when they beat them on the held-out objects by this much:
    # a few held-out objects give a noisy estimate, and smaller gains did not carry over to unlabelled slices.
    accept_margin: float = 0.02
    warmup: float = 0.1  # share of the steps spent warming the learning rate up
    min_steps_share: float = 0.5  # no early stop before this share of the steps: zero-initialised adapters
    # barely move during the warm-up, and a first half without gain says little about the second
    evaluations: int = 6  # held-out checks in a run (unless eval_every)
    eval_every: int | None = None
    cache_prefix: bool | None = None  # None: cache the frozen blocks when adapters start after block 0
    cache_budget_bytes: int = 1 << 30
    checkpoint_blocks: bool = False  # recompute activations in backward: less memory, slower steps
    full_finetune: bool = False  # every weight (benchmark comparison only; cannot be saved as an adapter)

    def check(self) -> None:
        if self.steps is not None and self.steps < 0:
            raise ValueError(f"steps must be ≥ 0, got {self.steps}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be ≥ 1, got {self.batch_size}")
        if not (self.train_adapters or self.train_decoder or self.full_finetune):
            raise ValueError("nothing to tune: train the adapters, the decoder or both")


def tune(
    model: MSAModel,
    images: np.ndarray | Sequence[np.ndarray],
    labels: np.ndarray | Sequence[np.ndarray],
    config: TuneConfig | None = None,
    *,
    normalization: Normalization | None = None,
    rgb: bool | None = None,
    inplace: bool = False,
    progress: Callable[[TuneProgress], None] | None = None,
    cancel: CancelFn | None = None,
    **options,
) -> TuneResult:
    """Tune ``model`` on labelled images; returns the tuned model and a summary.

    ``config`` (or keyword ``options``, which override its fields) says what trains and how. Held-out Dice
    is measured before training and ``config.evaluations`` times during it; the weights of the best check
    are kept, and the starting weights when no check beat them. Under an initialised torch.distributed
    group, gradients are averaged with DistributedDataParallel, samples are sharded by rank and only rank 0
    reports progress. Raises ``Cancelled`` when ``cancel()`` turns true.
    """
    cfg = replace(config or TuneConfig(), **options)
    cfg.check()
    steps = cfg.steps or 0  # known once the pairs are built when scaled to the data
    if model.adapter_config is None and cfg.train_adapters and not cfg.full_finetune:
        raise ValueError("the model has no adapters to tune; load it with adapters (the default)")
    t0 = time.perf_counter()
    dist_info = distributed.current()
    norm = normalization or model.normalization
    rng = np.random.default_rng(cfg.seed)

    def report(p: TuneProgress) -> None:
        if progress is not None and dist_info.is_main:
            p.elapsed_s = time.perf_counter() - t0
            progress(p)

    def check_cancel() -> None:
        flag = cancel is not None and cancel()
        if dist_info.enabled:
            flag = distributed.any_true(flag, model.device)
        if flag:
            raise Cancelled("tuning was cancelled; the model is unchanged")

    report(TuneProgress("prepare", 0, steps, message="preparing training pairs"))
    slices, pairs = build_pairs(images, labels, image_size=model.image_size, normalization=norm, rgb=rgb)
    train_pairs, val_pairs, split = split_pairs(slices, pairs, cfg.val_fraction, rng)
    if cfg.steps is None:
        per_step = cfg.batch_size * cfg.slices_per_step
        cfg = replace(cfg, steps=auto_steps(len(train_pairs), per_step, dist_info.world_size))
    if cfg.augment is None:
        cfg = replace(cfg, augment=bool(cfg.train_adapters or cfg.full_finetune))
    steps = cfg.steps
    check_cancel()

    target = model if inplace else model.clone()
    sam = target.sam
    snapshot = model.trainable_state() if inplace else None
    flags = {n: p.requires_grad for n, p in sam.named_parameters()}
    try:
        result = _train(target, slices, train_pairs, val_pairs, split, cfg, dist_info=dist_info, report=report,
                        check_cancel=check_cancel)
    except BaseException:
        if snapshot is not None:
            target.restore_state(snapshot)
        raise
    finally:
        for n, p in sam.named_parameters():
            p.requires_grad = flags[n]
        sam.eval()
    state = target.trainable_state()
    # A decoder that came with the starting adapter (LiteMedSAM's click adapter) is part of the result.
    result.summary["saves_decoder"] = bool(cfg.train_decoder or model.adapter_metadata.get("includes_decoder"))
    target.normalization = norm
    target.adapter_source = f"tuned-{_state_digest(state)}"  # a unique weights key for embedding caches
    target.adapter_metadata = {"training": result.summary, "includes_decoder": result.summary["saves_decoder"]}
    target.version += 1
    result.model = target
    result.summary["normalization"] = norm.to_dict()
    result.summary["time_s"] = round(time.perf_counter() - t0, 2)
    report(TuneProgress("done", result.summary["steps_done"], steps, val_dice=result.summary["val_dice_after"],
                        best_val_dice=result.summary["val_dice_after"], message="done"))
    return result


AUTO_EPOCHS = 8  # each training object is seen about this many times...
AUTO_STEPS = (40, 200)  # ...within these bounds


def auto_steps(n_train_objects: int, batch_size: int, world_size: int = 1) -> int:
    """The step budget for ``steps=None``: a fixed number of passes over the training objects, so a few labelled
    slices tune in a few minutes and more labels get more steps (benchmarks/tuning_gain.py measured it)."""
    per_step = batch_size * world_size
    return int(min(AUTO_STEPS[1], max(AUTO_STEPS[0], math.ceil(AUTO_EPOCHS * n_train_objects / per_step))))


def _train(model: MSAModel, slices: list[TrainingSlice], train_pairs: list[Pair], val_pairs: list[Pair], split: str,
           cfg: TuneConfig, *, dist_info: distributed.DistInfo, report: Callable[[TuneProgress], None],
           check_cancel: Callable[[], None]) -> TuneResult:
    sam = model.sam
    device = model.device
    set_depth_slices(sam, 1)
    params = set_trainable(sam, adapters=cfg.train_adapters, decoder=cfg.train_decoder, everything=cfg.full_finetune)
    units = len(encoder_units(sam.image_encoder))
    start = 0 if cfg.full_finetune else first_adapted_block(sam) if cfg.train_adapters else units
    use_cache = (start > 0) if cfg.cache_prefix is None else bool(cfg.cache_prefix)
    if use_cache and start == 0:
        raise ValueError("the prefix cache needs adapters only in the last blocks (AdapterConfig(blocks=...))")
    encoder = SplitEncoder(model, start, PrefixCache(cfg.cache_budget_bytes) if use_cache else None,
                           cfg.checkpoint_blocks)
    step_module = _StepModule(model, encoder, slices, cfg.iou_weight)
    runner: nn.Module = step_module
    if dist_info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        # Broadcasts rank 0's weights to all processes first, so every process starts the same. Every
        # adapter weight gets a gradient each step (Depth adapters are frozen in 2D tuning); decoder weights
        # may not (the negative-point or box-corner embeddings in a step without such prompts).
        runner = DistributedDataParallel(step_module, device_ids=None,
                                         find_unused_parameters=cfg.full_finetune or cfg.train_decoder)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup_steps = max(1, round(cfg.warmup * cfg.steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg.steps, warmup_steps))
    min_steps = round(cfg.min_steps_share * cfg.steps)

    world = dist_info.world_size
    interval = cfg.eval_every or max(1, math.ceil(cfg.steps / cfg.evaluations))
    by_slice: dict[int, list[Pair]] = {}
    for pair in train_pairs:
        by_slice.setdefault(pair.slice_id, []).append(pair)
    slice_ids = sorted(by_slice)
    epoch = 0

    def make_sample(turn: int) -> _Sample:
        """The ``turn``-th sample of the run (every slice once per cycle, in a seeded order) with up to
        ``batch_size`` of its objects. Turns are numbered over all processes, so N processes with one slice
        per step train exactly like one process with N slices per step."""
        cycle, pos = divmod(turn, len(slice_ids))
        sid = slice_ids[int(np.random.default_rng([cfg.seed, 1, cycle]).permutation(len(slice_ids))[pos])]
        r = np.random.default_rng([cfg.seed, 2, turn])
        pairs = by_slice[sid]
        chosen = r.permutation(len(pairs))[: cfg.batch_size]
        return _Sample(
            slice_id=sid,
            object_ids=[pairs[i].object_id for i in chosen],
            use_box=[bool(r.random() < cfg.box_share) for _ in chosen],
            variant=int(r.integers(8)) if cfg.augment else 0,
            contrast=float(r.uniform(0.8, 1.2)) if cfg.augment and not use_cache else 1.0,
            brightness=float(r.uniform(-0.1, 0.1)) if cfg.augment and not use_cache else 0.0,
            rounds=int(r.integers(0, cfg.max_correction_rounds + 1)),
            rng=r,
        )

    per_step = world * cfg.slices_per_step

    history: list[tuple[int, HeldOut]] = []
    first = _evaluate(step_module, val_pairs, dist_info, device)
    if first is not None:
        history.append((0, first))
    best, best_step = first, 0
    start_state = best_state = _trainable_copy(sam) if first is not None else None
    report(TuneProgress("eval", 0, cfg.steps, val_dice=_click(first), best_val_dice=_click(first),
                        message="held-out Dice before tuning"))

    losses: list[float] = []
    step_times: list[float] = []
    stale = 0
    stopped = "completed"
    train_time = 0.0
    step = 0
    for step in range(1, cfg.steps + 1):
        check_cancel()
        ts = time.perf_counter()
        first_turn = (step - 1) * per_step + dist_info.rank * cfg.slices_per_step
        loss = runner([make_sample(first_turn + j) for j in range(cfg.slices_per_step)])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        loss_value = distributed.all_reduce_sum([float(loss.detach())], device)[0] / world
        if not math.isfinite(loss_value) or not all(bool(torch.isfinite(p).all()) for p in params):
            raise TuningDiverged(
                f"tuning diverged at step {step}: the loss or the weights became NaN/Inf, so nothing was kept; "
                f"lower the learning rate (it was {cfg.lr:g})"
            )
        losses.append(loss_value)
        step_times.append(time.perf_counter() - ts)
        train_time += step_times[-1]
        epoch = step * per_step // len(slice_ids)
        eta = train_time / step * (cfg.steps - step)
        latest = _click(history[-1][1]) if history else None
        report(TuneProgress("train", step, cfg.steps, loss=loss_value, val_dice=latest, best_val_dice=_click(best),
                            epoch=epoch, eta_s=eta))
        if val_pairs and (step % interval == 0 or step == cfg.steps):
            check_cancel()
            held = _evaluate(step_module, val_pairs, dist_info, device)
            history.append((step, held))
            if held.score(first) > best.score(first) + cfg.min_delta:
                best, best_step, best_state, stale = held, step, _trainable_copy(sam), 0
            elif step >= min_steps:  # checks in the first part of the run do not count against it
                stale += 1
            report(TuneProgress("eval", step, cfg.steps, loss=loss_value, val_dice=held.click,
                                best_val_dice=best.click, epoch=epoch, eta_s=eta))
            if cfg.patience and stale >= cfg.patience:
                stopped = "early_stopping"
                break
    steps_done = step if cfg.steps else 0
    if first is not None and best.score(first) < first.score(first) + cfg.accept_margin:
        best, best_step, best_state = first, 0, start_state  # not a clear gain: keep the starting weights
    if best_state is not None:
        with torch.no_grad():
            for p, saved in zip(params, best_state, strict=True):
                p.copy_(saved)
    del runner

    n = len(losses)
    k = max(1, n // 10)
    summary = {
        "method": "napari-msa few-shot adapter tuning",
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": model.config.name,
        "image_size": model.image_size,
        "steps_planned": cfg.steps,
        "steps_done": steps_done,
        "stopped": stopped,
        # "untuned" when no held-out check beat the starting weights by accept_margin: returned as it came.
        "kept": "tuned" if best_step or first is None else "untuned",
        "accept_margin": cfg.accept_margin,
        "epochs": round(steps_done * per_step / len(slice_ids), 2),  # passes over the training slices
        "best_step": best_step,
        "n_train_pairs": len(train_pairs),
        "n_val_pairs": len(val_pairs),
        "n_slices": len(slices),
        "split": split,
        "val_dice_before": _r(_click(first)),
        "val_dice_after": _r(_click(best)),
        "val_box_dice_before": _r(first.box) if first else None,
        "val_box_dice_after": _r(best.box) if best else None,
        "val_per_label": _per_label(first, best),
        "val_clicks_per_object": VAL_CLICKS,
        "loss_first": _r(float(np.mean(losses[:k]))) if n else None,
        "loss_last": _r(float(np.mean(losses[-k:]))) if n else None,
        "val_history": [[s, _r(h.click), _r(h.box)] for s, h in history],
        "lr": cfg.lr,
        "lr_schedule": f"linear warm-up over {warmup_steps} steps, then cosine to {FINAL_LR_SHARE:g}x",
        "weight_decay": cfg.weight_decay,
        "batch_size": cfg.batch_size,
        "slices_per_step": cfg.slices_per_step,
        "world_size": world,
        "seed": cfg.seed,
        "augment": cfg.augment,
        "train_adapters": bool(cfg.train_adapters),
        "train_decoder": bool(cfg.train_decoder),
        "full_finetune": bool(cfg.full_finetune),
        "trainable_parameters": sum(p.numel() for p in params),
        "prefix_cache": use_cache,
        "prefix_cache_entries": len(encoder.cache) if encoder.cache is not None else 0,
        "prefix_cache_hits": encoder.cache.hits if encoder.cache is not None else 0,
        "first_trained_block": start,
        "checkpoint_blocks": bool(cfg.checkpoint_blocks),
        "step_time_s": _r(train_time / max(1, n)),
    }
    return TuneResult(model=model, summary=summary, losses=losses,
                      val_history=[(s, h.click) for s, h in history], step_times=step_times)


def _click(held: HeldOut | None) -> float | None:
    return None if held is None else held.click


def _per_label(first: HeldOut | None, best: HeldOut | None) -> dict[str, dict[str, list]]:
    """{label id: {"click": [before, after], "box": [before, after]}} on the held-out objects."""
    if first is None or best is None:
        return {}
    return {str(label): {"click": [_r(first.per_label[label][0]), _r(best.per_label[label][0])],
                         "box": [_r(first.per_label[label][1]), _r(best.per_label[label][1])]}
            for label in sorted(first.per_label)}


FINAL_LR_SHARE = 0.1  # the cosine decay ends at this share of the peak learning rate


def lr_factor(steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Linear warm-up from 10 % to the peak, then cosine decay to FINAL_LR_SHARE: zero-initialised adapters
    take a high peak learning rate once the first steps have set the direction, and settle at the end."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return 0.1 + 0.9 * step / warmup_steps
        t = (step - warmup_steps) / max(1, steps - warmup_steps)
        return FINAL_LR_SHARE + (1 - FINAL_LR_SHARE) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return factor


def _trainable_copy(sam: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in sam.parameters() if p.requires_grad]


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 5)
