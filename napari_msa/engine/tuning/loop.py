"""The tuning loop: which weights train, which sample each step sees, held-out checks, early stopping, and which
weights are returned."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..model.msa_model import MSAModel
from ..network.adapters import set_depth_slices, set_trainable
from ..prompts.interaction import InteractionRule
from . import distributed
from .data import Pair, TrainingSlice
from .held_out import VAL_CLICKS, AnnotatorSessions, HeldOut, evaluate
from .prefix_cache import PrefixCache, SplitEncoder, first_adapted_block
from .step import FirstClickAnchor, Sample, StepModule, frozen_prompting
from .tune_types import DiceChange, TuneConfig, TuneProgress, TuneSummary, TuningDiverged

FINAL_LR_SHARE = 0.1  # the cosine decay ends at this share of the peak learning rate
# Blends within this of the best held-out score count as equal, and the smallest change among equals is kept: a
# few held-out objects cannot tell such scores apart, and on the slices they do not show, the smaller change loses
# less (BENCHMARKS.md, "Few-shot tuning").
BLEND_TOLERANCE = 0.005


def lr_factor(steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Linear warm-up from 10 % to the peak, then cosine decay to FINAL_LR_SHARE: zero-initialised adapters
    take a high peak learning rate once the first steps have set the direction, and settle at the end."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return 0.1 + 0.9 * step / warmup_steps
        t = (step - warmup_steps) / max(1, steps - warmup_steps)
        return FINAL_LR_SHARE + (1 - FINAL_LR_SHARE) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return factor


class SampleSchedule:
    """The ``turn``-th sample of a run: every training slice once per cycle in a seeded order, with up to
    ``batch_size`` of its objects. Turns are numbered over all processes, so N processes with one slice per step
    train exactly like one process with N slices per step."""

    def __init__(self, train_pairs: list[Pair], cfg: TuneConfig, jitter_intensity: bool,
                 zoom_pairs: list[Pair] | None = None) -> None:
        self.cfg = cfg
        self.jitter = jitter_intensity
        self.by_slice: dict[int, list[Pair]] = {}
        for pair in train_pairs:
            self.by_slice.setdefault(pair.slice_id, []).append(pair)
        self.slice_ids = sorted(self.by_slice)
        self.zoom_pairs = list(zoom_pairs or [])  # one object each, on its own zoomed view (cfg.zoom_views)

    def __call__(self, turn: int) -> Sample:
        cfg = self.cfg
        cycle, pos = divmod(turn, len(self.slice_ids))
        sid = self.slice_ids[int(np.random.default_rng([cfg.seed, 1, cycle]).permutation(len(self.slice_ids))[pos])]
        r = np.random.default_rng([cfg.seed, 2, turn])
        pairs = self.by_slice[sid]
        if self.zoom_pairs and r.random() < cfg.zoom_views:
            pairs = [self.zoom_pairs[int(r.integers(len(self.zoom_pairs)))]]
            sid = pairs[0].slice_id
        chosen = r.permutation(len(pairs))[: cfg.batch_size]
        return Sample(
            slice_id=sid,
            object_ids=[pairs[i].object_id for i in chosen],
            use_box=[bool(r.random() < cfg.box_share) for _ in chosen],
            variant=int(r.integers(8)) if cfg.augment else 0,
            contrast=float(r.uniform(0.8, 1.2)) if cfg.augment and self.jitter else 1.0,
            brightness=float(r.uniform(-0.1, 0.1)) if cfg.augment and self.jitter else 0.0,
            rounds=int(r.integers(0, cfg.max_correction_rounds + 1)),
            rng=r,
        )


@dataclass
class BestWeights:
    """Early stopping and the weights to return: the best held-out check, or the start unless a check beat it by
    ``accept_margin``."""

    params: list[nn.Parameter]
    cfg: TuneConfig
    min_steps: int
    first: HeldOut | None
    history: list[tuple[int, HeldOut]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.best, self.best_step, self.stale = self.first, 0, 0
        self.blend = 1.0  # the share of the best check's change kept (restore)
        self.start_state = self.best_state = self._copy() if self.first is not None else None
        if self.first is not None:
            self.history.append((0, self.first))

    def _copy(self) -> list[torch.Tensor]:
        return [p.detach().clone() for p in self.params]

    def update(self, step: int, held: HeldOut) -> bool:
        """Record a check; True when the run should stop (``patience`` checks without gain in its later part)."""
        self.history.append((step, held))
        if held.score(self.first) > self.best.score(self.first) + self.cfg.min_delta:
            self.best, self.best_step, self.best_state, self.stale = held, step, self._copy(), 0
        elif step >= self.min_steps:  # checks in the first part of the run do not count against it
            self.stale += 1
        return bool(self.cfg.patience and self.stale >= self.cfg.patience)

    def restore(self, check: Callable[[], HeldOut] | None = None) -> None:
        """Put the chosen weights in place. With ``check`` (the held-out check of the weights in place), the best
        check's change is also tried in part (``cfg.blends`` of the way from the start, as WiSE-FT blends a tuned
        model with its start) and the smallest change scoring within BLEND_TOLERANCE of the best is kept. Then the
        start, unless the kept weights beat it by ``accept_margin``."""
        first = self.first
        if first is not None and self.best_step and check is not None and self.cfg.blends:
            self._blend(check)
        if first is not None and self.best.score(first) < first.score(first) + self.cfg.accept_margin:
            self.best, self.best_step, self.best_state, self.blend = first, 0, self.start_state, 0.0
        if self.best_state is not None:
            self._load(self.best_state)

    def _blend(self, check: Callable[[], HeldOut]) -> None:
        options = [(1.0, self.best, self.best_state)]
        for share in sorted(set(self.cfg.blends) - {1.0}):
            state = [s + share * (b - s) for s, b in zip(self.start_state, self.best_state, strict=True)]
            self._load(state)
            options.append((share, check(), state))
        top = max(held.score(self.first) for _, held, _ in options)
        share, held, state = min((o for o in options if o[1].score(self.first) >= top - BLEND_TOLERANCE),
                                 key=lambda o: o[0])
        self.best, self.best_state, self.blend = held, state, share

    def _load(self, state: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for p, saved in zip(self.params, state, strict=True):
                p.copy_(saved)


@dataclass
class LoopResult:
    summary: TuneSummary
    losses: list[float]
    step_times: list[float]


def train(model: MSAModel, slices: list[TrainingSlice], train_pairs: list[Pair], val_pairs: list[Pair], split: str,
          cfg: TuneConfig, *, dist_info: distributed.DistInfo, report: Callable[[TuneProgress], None],
          check_cancel: Callable[[], None], zoom_pairs: list[Pair] | None = None,
          first_click_teacher: MSAModel | None = None) -> LoopResult:
    """Train ``model`` in place for ``cfg.steps`` steps (fewer if it stops early) and leave the chosen weights in it."""
    sam, device, world = model.sam, model.device, dist_info.world_size
    set_depth_slices(sam, 1)
    params = set_trainable(sam, adapters=cfg.train_adapters, decoder=cfg.train_decoder, everything=cfg.full_finetune)
    units = len(sam.image_encoder.units())
    start = 0 if cfg.full_finetune else first_adapted_block(sam) if cfg.train_adapters else units
    use_cache = (start > 0) if cfg.cache_prefix is None else bool(cfg.cache_prefix)
    if use_cache and start == 0:
        raise ValueError("the prefix cache needs adapters only in the last blocks (AdapterConfig(blocks=...))")
    encoder = SplitEncoder(model, start, PrefixCache(cfg.cache_budget_bytes) if use_cache else None,
                           cfg.checkpoint_blocks)
    rule = InteractionRule.from_name(cfg.interaction) if cfg.interaction else model.interaction
    teacher = sam if first_click_teacher is None else first_click_teacher.sam
    anchor = FirstClickAnchor.of(teacher, cfg.anchor_first_clicks) if cfg.anchor_first_clicks > 0 else None
    first_clicker = frozen_prompting(teacher) if cfg.corrector else None
    step_module = StepModule(model, encoder, slices, cfg.iou_weight, rule, cfg.grad_rounds, anchor, first_clicker,
                             edge_weight=cfg.edge_weight, honour_edits=cfg.honour_edits and rule.honour)
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
    interval = cfg.eval_every or max(1, math.ceil(cfg.steps / cfg.evaluations))
    samples = SampleSchedule(train_pairs, cfg, jitter_intensity=not use_cache, zoom_pairs=zoom_pairs)
    per_step = world * cfg.slices_per_step

    sessions = AnnotatorSessions(model, slices)
    first = evaluate(step_module, val_pairs, dist_info, device, sessions)
    tracker = BestWeights(params, cfg, round(cfg.min_steps_share * cfg.steps), first)
    report(TuneProgress("eval", 0, cfg.steps, val_dice=_click(first), best_val_dice=_click(first),
                        message="held-out Dice before tuning"))

    losses: list[float] = []
    step_times: list[float] = []
    stopped = "completed"
    step = 0
    for step in range(1, cfg.steps + 1):
        check_cancel()
        ts = time.perf_counter()
        first_turn = (step - 1) * per_step + dist_info.rank * cfg.slices_per_step
        loss = runner([samples(first_turn + j) for j in range(cfg.slices_per_step)])
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
        epoch = step * per_step // len(samples.slice_ids)
        eta = sum(step_times) / step * (cfg.steps - step)
        latest = _click(tracker.history[-1][1]) if tracker.history else None
        report(TuneProgress("train", step, cfg.steps, loss=loss_value, val_dice=latest,
                            best_val_dice=_click(tracker.best), epoch=epoch, eta_s=eta))
        if val_pairs and (step % interval == 0 or step == cfg.steps):
            check_cancel()
            held = evaluate(step_module, val_pairs, dist_info, device, sessions)
            stop = tracker.update(step, held)
            report(TuneProgress("eval", step, cfg.steps, loss=loss_value, val_dice=held.click,
                                best_val_dice=tracker.best.click, epoch=epoch, eta_s=eta))
            if stop:
                stopped = "early_stopping"
                break
    steps_done = step if cfg.steps else 0
    tracker.restore(lambda: evaluate(step_module, val_pairs, dist_info, device, sessions))
    del runner

    n = len(losses)
    k = max(1, n // 10)
    best = tracker.best
    summary = TuneSummary(
        config=cfg,
        model=model.config.name,
        image_size=model.image_size,
        n_slices=len(slices) - len(zoom_pairs or []),  # the zoomed views are not slices the user labelled
        n_train_objects=len(train_pairs),
        n_val_objects=len(val_pairs),
        split=split,
        steps_done=steps_done,
        stopped=stopped,
        kept="tuned" if tracker.best_step or first is None else "untuned",
        best_step=tracker.best_step,
        blend=tracker.blend,
        epochs=round(steps_done * per_step / len(samples.slice_ids), 2),
        held_out=_change(first.click, best.click, first.box, best.box, first.session, best.session)
        if first is not None else None,
        per_label={label: _change(first.per_label[label][0], best.per_label[label][0], first.per_label[label][1],
                                  best.per_label[label][1]) for label in sorted(first.per_label)} if first else {},
        per_object=[(p.label, *(_r(v) for v in (a[0], b[0], a[1], b[1])))
                    for p, a, b in zip(val_pairs, first.objects, best.objects, strict=True)] if first else [],
        history=[(s, _r(h.click), _r(h.box), _r(h.session)) for s, h in tracker.history],
        val_clicks_per_object=VAL_CLICKS,
        loss_first=_r(float(np.mean(losses[:k]))) if n else None,
        loss_last=_r(float(np.mean(losses[-k:]))) if n else None,
        lr_schedule=f"linear warm-up over {warmup_steps} steps, then cosine to {FINAL_LR_SHARE:g}x",
        world_size=world,
        trainable_parameters=sum(p.numel() for p in params),
        prefix_cache=use_cache,
        prefix_cache_entries=len(encoder.cache) if encoder.cache is not None else 0,
        prefix_cache_hits=encoder.cache.hits if encoder.cache is not None else 0,
        first_trained_block=start,
        step_time_s=_r(sum(step_times) / max(1, n)),
    )
    return LoopResult(summary, losses, step_times)


def _click(held: HeldOut | None) -> float | None:
    return None if held is None else held.click


def _change(click_before: float, click_after: float, box_before: float, box_after: float,
            session_before: float | None = None, session_after: float | None = None) -> DiceChange:
    return DiceChange(*(_r(v) for v in (click_before, click_after, box_before, box_after, session_before,
                                        session_after)))


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 5)
