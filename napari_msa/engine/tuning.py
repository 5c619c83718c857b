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
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from . import distributed
from .adapters import ADAPTER_KEY, is_decoder_weight, set_depth_slices
from .loading import MSAModel
from .prefix_cache import PrefixCache, _Encoder, dihedral, first_adapted_block
from .preprocessing import Normalization
from .session import Cancelled
from .tuning_data import (
    Pair,
    TrainingSlice,
    build_pairs,
    correction_click,
    decode,
    depth_map,
    dice,
    interior_click,
    jittered_box,
    mask_box,
    split_pairs,
    upscale_logits,
)

CancelFn = Callable[[], bool]


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
    slice_id: int
    object_id: int
    variant: int  # dihedral 0..7
    contrast: float
    brightness: float
    use_box: bool
    rounds: int  # correction rounds after the first prompt
    rng: np.random.Generator


class _StepModule(nn.Module):
    """Computes the loss of a batch of samples: encoder once per sample, decoder once per prompt round."""

    def __init__(self, model: MSAModel, encoder: _Encoder, slices: list[TrainingSlice], iou_weight: float) -> None:
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
            self._depths[key] = depth_map(self.slices[slice_id].labels == object_id)
        return self._depths[key]

    def _views(self, s: _Sample) -> tuple[np.ndarray, np.ndarray]:
        sl = self.slices[s.slice_id]
        return dihedral(sl.rgb, s.variant), dihedral(self.depth(s.slice_id, s.object_id), s.variant)

    def forward(self, samples: list[_Sample]) -> torch.Tensor:
        views = [self._views(s) for s in samples]
        if self.enc.cache is not None:
            def make_input(key: tuple[int, int]) -> torch.Tensor:
                return self.enc.pixels(dihedral(self.slices[key[0]].rgb, key[1]))

            keys = [(s.slice_id, s.variant) for s in samples]
            emb = self.enc.suffix(self.enc.tokens(keys, make_input))
        else:
            x = torch.stack([self.enc.pixels(v[0], s.contrast, s.brightness) for v, s in zip(views, samples,
                                                                                               strict=True)])
            emb = self.enc.full(x)
        losses = [self._sample_loss(emb[i : i + 1], views[i][1], samples[i]) for i in range(len(samples))]
        return torch.stack(losses).mean()

    def _sample_loss(self, emb: torch.Tensor, depth: np.ndarray, s: _Sample) -> torch.Tensor:
        rng = s.rng
        gt_np = depth > 0
        hw = gt_np.shape
        gt = torch.as_tensor(gt_np, dtype=torch.float32, device=emb.device)
        points: list[np.ndarray] = []
        labels: list[int] = []
        box = jittered_box(gt_np, rng) if s.use_box else None
        if box is None:
            points.append(interior_click(gt_np, rng, depth))
            labels.append(1)
        total = emb.new_zeros(())
        for r in range(1 + s.rounds):
            multimask = len(points) == 1 and box is None
            low, iou_pred = decode(self.sam, emb, np.array(points) if points else None,
                                   np.array(labels) if labels else None, box, multimask)
            logits = upscale_logits(low, self.image_size, hw)[0]  # (M, h, w)
            mask_loss = _bce_dice(logits, gt)
            with torch.no_grad():
                pred = logits > 0
                inter = (pred & (gt > 0)).sum((1, 2)).float()
                union = (pred | (gt > 0)).sum((1, 2)).float().clamp(min=1)
                iou_true = inter / union
            iou_loss = F.mse_loss(iou_pred[0].float(), iou_true)
            total = total + mask_loss.min() + self.iou_weight * iou_loss
            if r < s.rounds:
                shown = int(torch.argmax(iou_pred[0])) if multimask else 0  # what the session would show
                point, label = correction_click(pred[shown].cpu().numpy(), gt_np, rng)
                points.append(point)
                labels.append(label)
        return total / (1 + s.rounds)


def _bce_dice(logits: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Per-mask BCE + soft Dice, (M,h,w) logits against one (h,w) mask."""
    target = gt.expand_as(logits)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean((1, 2))
    p = torch.sigmoid(logits)
    inter = (p * target).sum((1, 2))
    soft_dice = 1.0 - (2.0 * inter + 1.0) / (p.sum((1, 2)) + target.sum((1, 2)) + 1.0)
    return bce + soft_dice


# --------------------------------------------------------------------------------------------------
# Held-out evaluation
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def _evaluate(step_module: _StepModule, pairs: list[Pair], dist_info: distributed.DistInfo,
              device: torch.device) -> tuple[float, float] | None:
    """Mean held-out Dice for (one most-interior click, the exact box), over all processes' shares."""
    if not pairs:
        return None
    enc, sam, size = step_module.enc, step_module.sam, step_module.image_size
    mine = pairs[dist_info.rank :: dist_info.world_size]
    sums = [0.0, 0.0, 0.0]
    by_slice: dict[int, list[Pair]] = {}
    for p in mine:
        by_slice.setdefault(p.slice_id, []).append(p)
    for sid, group in by_slice.items():
        sl = step_module.slices[sid]
        if enc.cache is not None:
            emb = enc.suffix(enc.tokens([(sid, 0)], lambda key: enc.pixels(step_module.slices[key[0]].rgb)))
        else:
            emb = enc.full(enc.pixels(sl.rgb)[None])
        for p in group:
            gt = sl.labels == p.object_id
            click_point = interior_click(gt, depth=step_module.depth(sid, p.object_id))
            low, iou = decode(sam, emb, click_point[None], np.array([1]), None, True)
            best = int(torch.argmax(iou[0]))
            click = upscale_logits(low, size, gt.shape)[0, best] > 0
            low, _ = decode(sam, emb, None, None, mask_box(gt), False)
            boxed = upscale_logits(low, size, gt.shape)[0, 0] > 0
            sums[0] += dice(click.cpu().numpy(), gt)
            sums[1] += dice(boxed.cpu().numpy(), gt)
            sums[2] += 1
    click_sum, box_sum, n = distributed.all_reduce_sum(sums, device)
    return click_sum / n, box_sum / n


# --------------------------------------------------------------------------------------------------
# tune()
# --------------------------------------------------------------------------------------------------
def _state_digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:12]


def tune(
    model: MSAModel,
    images: np.ndarray | Sequence[np.ndarray],
    labels: np.ndarray | Sequence[np.ndarray],
    *,
    steps: int = 200,
    lr: float = 1e-4,
    weight_decay: float = 0.01,
    batch_size: int = 2,
    val_fraction: float = 0.2,
    seed: int = 0,
    train_decoder: bool = False,
    augment: bool = True,
    box_share: float = 0.3,
    max_correction_rounds: int = 3,
    iou_weight: float = 1.0,
    patience: int = 5,
    min_delta: float = 1e-3,
    eval_every: int | None = None,
    cache_prefix: bool | None = None,
    cache_budget_bytes: int = 1 << 30,
    checkpoint_blocks: bool = False,
    normalization: Normalization | None = None,
    rgb: bool | None = None,
    inplace: bool = False,
    full_finetune: bool = False,
    progress: Callable[[TuneProgress], None] | None = None,
    cancel: CancelFn | None = None,
) -> TuneResult:
    """Tune ``model``'s adapters on labelled images; returns the tuned model and a summary.

    ``steps`` optimiser steps of ``batch_size`` samples per process. Held-out Dice (one interior
    click) is measured before training and after every epoch (one pass over the training pairs, at
    least steps/20 steps, or ``eval_every``); training stops early after ``patience`` evaluations
    without improvement and the best weights are kept. ``cache_prefix`` (default: when adapters start
    after block 0) caches the frozen blocks' tokens. ``checkpoint_blocks`` recomputes each trained
    block's activations during the backward pass instead of keeping them (much less memory, a
    slower step; for large images or small GPUs). ``full_finetune`` trains every weight (for the
    benchmark's comparison only: the result cannot be saved as an adapter). Under an initialised
    torch.distributed group, gradients are averaged with DistributedDataParallel, samples are
    sharded by rank and only rank 0 reports progress. Raises ``Cancelled`` when ``cancel()`` turns true.
    """
    if steps < 0:
        raise ValueError(f"steps must be ≥ 0, got {steps}")
    if batch_size < 1:
        raise ValueError(f"batch size must be ≥ 1, got {batch_size}")
    if model.adapter_config is None and not full_finetune:
        raise ValueError("the model has no adapters to tune; load it with adapters (the default)")
    t0 = time.perf_counter()
    dist_info = distributed.current()
    norm = normalization or model.normalization
    rng = np.random.default_rng(seed)

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
    train_pairs, val_pairs, split = split_pairs(slices, pairs, val_fraction, rng)
    check_cancel()

    target = model if inplace else model.clone()
    sam = target.sam
    snapshot = model.trainable_state() if inplace else None
    flags = {n: p.requires_grad for n, p in sam.named_parameters()}
    try:
        result = _train(
            target, slices, train_pairs, val_pairs, split, dist_info=dist_info, steps=steps, lr=lr,
            weight_decay=weight_decay, batch_size=batch_size, seed=seed, train_decoder=train_decoder,
            augment=augment, box_share=box_share, max_rounds=max_correction_rounds, iou_weight=iou_weight,
            patience=patience, min_delta=min_delta, eval_every=eval_every, cache_prefix=cache_prefix,
            cache_budget_bytes=cache_budget_bytes, checkpoint_blocks=checkpoint_blocks,
            full_finetune=full_finetune, report=report,
            check_cancel=check_cancel, t0=t0,
        )
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
    result.summary["saves_decoder"] = bool(train_decoder or model.adapter_metadata.get("includes_decoder"))
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


def _set_trainable(sam: nn.Module, train_decoder: bool, full_finetune: bool) -> list[nn.Parameter]:
    for name, p in sam.named_parameters():
        if full_finetune:
            p.requires_grad = True
        else:
            # Depth adapters get no gradient from single slices: leave them out of 2D tuning.
            p.requires_grad = (ADAPTER_KEY in name and "Depth_Adapter" not in name) or (
                train_decoder and is_decoder_weight(name)
            )
    return [p for p in sam.parameters() if p.requires_grad]


def _train(model: MSAModel, slices, train_pairs, val_pairs, split, *, dist_info, steps, lr, weight_decay,
           batch_size, seed, train_decoder, augment, box_share, max_rounds, iou_weight, patience, min_delta,
           eval_every, cache_prefix, cache_budget_bytes, checkpoint_blocks, full_finetune, report, check_cancel,
           t0) -> TuneResult:
    sam = model.sam
    device = model.device
    set_depth_slices(sam, 1)
    params = _set_trainable(sam, train_decoder, full_finetune)
    start = 0 if full_finetune else first_adapted_block(sam)
    use_cache = (start > 0) if cache_prefix is None else bool(cache_prefix)
    if use_cache and start == 0:
        raise ValueError("the prefix cache needs adapters only in the last blocks (AdapterConfig(blocks=...))")
    encoder = _Encoder(model, start, PrefixCache(cache_budget_bytes) if use_cache else None, checkpoint_blocks)
    step_module = _StepModule(model, encoder, slices, iou_weight)
    runner: nn.Module = step_module
    if dist_info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        # Broadcasts rank 0's weights to all processes first, so every process starts the same. Every
        # trainable weight gets a gradient each step (Depth adapters are frozen in 2D tuning), except
        # in full fine-tuning, where e.g. the negative-point embedding may be unused in a step.
        runner = DistributedDataParallel(step_module, device_ids=None, find_unused_parameters=full_finetune)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)

    world = dist_info.world_size
    global_batch = batch_size * world
    epoch_steps = max(1, math.ceil(len(train_pairs) / global_batch))
    interval = eval_every or max(epoch_steps, math.ceil(steps / 20))
    order: list[int] = []
    epoch = 0

    def next_indices(step: int) -> list[int]:
        while len(order) < (step + 1) * global_batch:
            order.extend(np.random.default_rng([seed, 1, len(order)]).permutation(len(train_pairs)).tolist())
        return order[step * global_batch : (step + 1) * global_batch]

    def make_sample(step: int, slot: int, pair_index: int) -> _Sample:
        r = np.random.default_rng([seed, 2, step, slot])
        pair = train_pairs[pair_index]
        return _Sample(
            slice_id=pair.slice_id,
            object_id=pair.object_id,
            variant=int(r.integers(8)) if augment else 0,
            contrast=float(r.uniform(0.8, 1.2)) if augment and not use_cache else 1.0,
            brightness=float(r.uniform(-0.1, 0.1)) if augment and not use_cache else 0.0,
            use_box=bool(r.random() < box_share),
            rounds=int(r.integers(1, max_rounds + 1)) if max_rounds > 0 else 0,
            rng=r,
        )

    val_history: list[tuple[int, float]] = []
    box_history: list[tuple[int, float]] = []
    first = _evaluate(step_module, val_pairs, dist_info, device)
    if first is not None:
        val_history.append((0, first[0]))
        box_history.append((0, first[1]))
    best = first[0] if first is not None else None
    best_step = 0
    best_state = _trainable_copy(sam) if first is not None else None
    report(TuneProgress("eval", 0, steps, val_dice=best, best_val_dice=best, message="held-out Dice before tuning"))

    losses: list[float] = []
    step_times: list[float] = []
    stale = 0
    stopped = "completed"
    train_time = 0.0
    step = 0
    for step in range(1, steps + 1):
        check_cancel()
        ts = time.perf_counter()
        idx = next_indices(step - 1)
        local = [(slot, i) for slot, i in enumerate(idx) if slot % world == dist_info.rank]
        samples = [make_sample(step, slot, i) for slot, i in local]
        loss = runner(samples)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        loss_value = distributed.all_reduce_sum([float(loss.detach())], device)[0] / world
        if not math.isfinite(loss_value) or not all(bool(torch.isfinite(p).all()) for p in params):
            raise TuningDiverged(
                f"tuning diverged at step {step}: the loss or the weights became NaN/Inf, so nothing was kept; "
                f"lower the learning rate (it was {lr:g})"
            )
        losses.append(loss_value)
        step_times.append(time.perf_counter() - ts)
        train_time += step_times[-1]
        epoch = (step * global_batch) // max(1, len(train_pairs))
        eta = train_time / step * (steps - step)
        latest = val_history[-1][1] if val_history else None
        report(TuneProgress("train", step, steps, loss=loss_value, val_dice=latest, best_val_dice=best,
                            epoch=epoch, eta_s=eta))
        if val_pairs and (step % interval == 0 or step == steps):
            check_cancel()
            click, boxed = _evaluate(step_module, val_pairs, dist_info, device)
            val_history.append((step, click))
            box_history.append((step, boxed))
            if click > best + min_delta:
                best, best_step, best_state, stale = click, step, _trainable_copy(sam), 0
            else:
                stale += 1
            report(TuneProgress("eval", step, steps, loss=loss_value, val_dice=click, best_val_dice=best,
                                epoch=epoch, eta_s=eta))
            if patience and stale >= patience:
                stopped = "early_stopping"
                break
    steps_done = step if steps else 0
    if best_state is not None:
        with torch.no_grad():
            for p, saved in zip(params, best_state, strict=True):
                p.copy_(saved)
    del runner

    n = len(losses)
    k = max(1, n // 10)
    box_at_best = dict(box_history).get(best_step) if box_history else None
    summary = {
        "method": "napari-msa few-shot adapter tuning",
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": model.config.name,
        "image_size": model.image_size,
        "steps_planned": steps,
        "steps_done": steps_done,
        "stopped": stopped,
        "epochs": round(steps_done * global_batch / max(1, len(train_pairs)), 2),
        "best_step": best_step,
        "n_train_pairs": len(train_pairs),
        "n_val_pairs": len(val_pairs),
        "n_slices": len(slices),
        "split": split,
        "val_dice_before": _r(first[0]) if first else None,
        "val_dice_after": _r(best),
        "val_box_dice_before": _r(first[1]) if first else None,
        "val_box_dice_after": _r(box_at_best),
        "loss_first": _r(float(np.mean(losses[:k]))) if n else None,
        "loss_last": _r(float(np.mean(losses[-k:]))) if n else None,
        "val_history": [[s, _r(d)] for s, d in val_history],
        "lr": lr,
        "weight_decay": weight_decay,
        "batch_size": batch_size,
        "world_size": world,
        "seed": seed,
        "augment": augment,
        "train_decoder": bool(train_decoder),
        "full_finetune": bool(full_finetune),
        "trainable_parameters": sum(p.numel() for p in params),
        "prefix_cache": use_cache,
        "prefix_cache_entries": len(encoder.cache) if encoder.cache is not None else 0,
        "prefix_cache_hits": encoder.cache.hits if encoder.cache is not None else 0,
        "first_trained_block": start,
        "checkpoint_blocks": bool(checkpoint_blocks),
        "step_time_s": _r(train_time / max(1, n)),
    }
    return TuneResult(model=model, summary=summary, losses=losses, val_history=val_history, step_times=step_times)


def _trainable_copy(sam: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in sam.parameters() if p.requires_grad]


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 5)
