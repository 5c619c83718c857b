"""Few-shot adapter tuning from an annotator's labels: ``tune(model, images, labels)``.

Every labelled slice and object id becomes a training pair (``data``; one frame for pixels, points and masks, as
the session's); some objects (of every labelled slice) are held out; the adapters (optionally the mask decoder) train on
sessions simulated as an annotator clicks (``step``; a first click or a jittered box, then corrections at the
largest error) under the model's interaction rule, with held-out checks during the run and early stopping; the
best check's weights, or the smallest part of their change that scores as well, are kept (``loop``,
``held_out``). Frozen first blocks are computed once per slice and augmentation (``prefix_cache``). A fixed seed
reproduces a run; a cancel or an error leaves the model as it was (a copy is tuned, or with ``inplace=True`` the
trainable weights are restored).
"""

from __future__ import annotations

import datetime
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..cancel import CancelFn, Cancelled
from ..model.msa_model import MSAModel
from ..network.preprocessing import Normalization
from . import distributed
from .budget import step_budget
from .data import Pair, build_pairs, split_pairs, window_views
from .loop import train
from .tune_types import DiceChange, TuneConfig, TuneProgress, TuneSummary, TuningDiverged

__all__ = ["DiceChange", "TuneConfig", "TuneProgress", "TuneResult", "TuneSummary", "TuningDiverged", "tune"]


@dataclass
class TuneResult:
    """The tuned model and what the run did (``summary.to_dict()`` goes into the adapter file's metadata)."""

    model: MSAModel
    summary: TuneSummary
    losses: list[float] = field(default_factory=list)  # every step's loss
    step_times: list[float] = field(default_factory=list)  # seconds per optimiser step (for benchmarks)

    def save(self, path) -> object:
        """Write the tuned adapter (and decoder, if it was trained) atomically as safetensors."""
        return self.model.save_adapter(path, training=self.summary.to_dict(),
                                       include_decoder=self.summary.saves_decoder)


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
    click_regions: Sequence[np.ndarray | None] | None = None,
    first_click_teacher: MSAModel | None = None,
    **options,
) -> TuneResult:
    """Tune ``model`` on labelled images; returns the tuned model and a summary.

    ``config`` (or keyword ``options``, which override its fields) says what trains and how. Held-out Dice
    is measured before training and ``config.evaluations`` times during it; the weights of the best check
    are kept, and the starting weights when no check beat them. Under an initialised torch.distributed
    group, gradients are averaged with DistributedDataParallel, samples are sharded by rank and only rank 0
    reports progress. Raises ``Cancelled`` when ``cancel()`` turns true. ``click_regions``: where simulated
    first clicks land, per image (``build_pairs``); for training data whose targets enclose other objects.
    ``first_click_teacher``: whose lone-click answers ``anchor_first_clicks`` keeps, or a ``corrector`` follows
    (default: the model as it starts).
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
    slices, pairs = build_pairs(images, labels, image_size=model.image_size, normalization=norm, rgb=rgb,
                                click_regions=click_regions)
    train_pairs, val_pairs, split = split_pairs(slices, pairs, cfg.val_fraction, rng, cfg.held_out)
    zoom_pairs: list[Pair] = []
    if cfg.zoom_views > 0:
        views, view_pairs = window_views(images, labels, slices, train_pairs, image_size=model.image_size,
                                         normalization=norm, rgb=rgb)
        zoom_pairs = [replace(p, slice_id=p.slice_id + len(slices)) for p in view_pairs]
        slices = slices + views
    budget = step_budget(model, cfg)
    if cfg.batch_size is None:
        cfg = replace(cfg, batch_size=budget.batch_size)
    if cfg.steps is None:
        per_step = cfg.batch_size * cfg.slices_per_step * dist_info.world_size
        cfg = replace(cfg, steps=budget.steps(len(train_pairs), per_step))
    if cfg.augment is None:
        cfg = replace(cfg, augment=bool(cfg.train_adapters or cfg.full_finetune))
    steps = cfg.steps
    check_cancel()

    target = model if inplace else model.clone()
    sam = target.sam
    snapshot = model.trainable_state() if inplace else None
    flags = {n: p.requires_grad for n, p in sam.named_parameters()}
    # The held-out sessions run on torch: on the OpenVINO runtime every check's new weights would begin a graph
    # export (torch.export) on a background thread, beside the training steps, for weights used for one check;
    # besides the CPU, torch.fx's global trace metadata is not thread-safe, and such a race ended runs with
    # KeyError('custom') in optimizer.zero_grad.
    runtime, target.runtime = target.runtime, "torch"
    try:
        loop = train(target, slices, train_pairs, val_pairs, split, cfg, dist_info=dist_info, report=report,
                     check_cancel=check_cancel, zoom_pairs=zoom_pairs, first_click_teacher=first_click_teacher)
    except BaseException:
        if snapshot is not None:
            target.restore_state(snapshot)
        raise
    finally:
        target.runtime = runtime
        for n, p in sam.named_parameters():
            p.requires_grad = flags[n]
        sam.eval()
    summary = loop.summary
    # A decoder that came with the starting adapter (LiteMedSAM's click adapter) is part of the result.
    summary.saves_decoder = bool(cfg.train_decoder or model.adapter_metadata.get("includes_decoder"))
    summary.normalization = norm.to_dict()
    summary.time_s = round(time.perf_counter() - t0, 2)
    summary.finished_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    target.normalization = norm
    target.adapter_source = f"tuned-{_state_digest(target.trainable_state())}"  # a unique key for embedding caches
    target.adapter_metadata = {"training": summary.to_dict(), "includes_decoder": summary.saves_decoder}
    target.version += 1
    after = summary.held_out.click_after if summary.held_out else None
    report(TuneProgress("done", summary.steps_done, steps, val_dice=after, best_val_dice=after, message="done"))
    return TuneResult(target, summary, loop.losses, loop.step_times)


def _state_digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:12]
