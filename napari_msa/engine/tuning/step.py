"""One tuning step: up to ``batch_size`` objects of one slice, prompted the way an annotator prompts, decoded
together, and their loss.

A sample is one slice (one dihedral variant) and several of its objects: a click deep inside (or, for a share,
a jittered box), then 0..n correction clicks at the centre of the largest error. The loss is BCE + soft Dice on
the masks of every round (for a lone click SAM answers with three masks; the best one is trained, as in SAM) plus
SAM's IoU-score regression, so the mask the session picks by its score is the good one. The step is an
``nn.Module`` so DistributedDataParallel can wrap it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import partial
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..inference.decoding import decode, to_mask_input, upscale_logits
from ..model.msa_model import MSAModel
from ..network.corrector import CorrectorChange
from ..prompts.geometry import clicked_object_box, depth_map, interior_click
from ..prompts.honour import EDIT_LOGIT, Edit, click_edit, edge_rim, edits_in_force, honoured, with_edits
from ..prompts.interaction import InteractionRule
from .data import TrainingSlice, correction_click, jittered_box
from .losses import bce_dice_loss, edge_band, hard_iou
from .prefix_cache import SplitEncoder, dihedral


@dataclass
class Sample:
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


LOGIT_RANGE = 8.0  # sigmoid(±8) is 0.9997 / 0.0003: beyond it a logit's exact value changes no mask


def frozen_prompting(sam: nn.Module) -> SimpleNamespace:
    """A frozen copy of a SAM's prompt encoder and mask decoder: what ``decode`` reads of a SAM."""
    return SimpleNamespace(**{name: copy.deepcopy(getattr(sam, name)).eval().requires_grad_(False)
                              for name in ("prompt_encoder", "mask_decoder")})


@dataclass
class FirstClickAnchor:
    """A frozen copy of the starting prompt encoder and decoder: a lone click's answers are trained towards
    its answers (low-res logits and scores, mean squared error × ``weight``) instead of towards the object, so
    training for correction clicks (e.g. on whole objects, which a click deep inside may not mean) keeps the
    first click's masks and choice as they were."""

    teacher: SimpleNamespace  # prompt_encoder, mask_decoder: what ``decode`` reads of a SAM
    weight: float

    @classmethod
    def of(cls, sam: nn.Module, weight: float) -> FirstClickAnchor:
        return cls(frozen_prompting(sam), float(weight))

    def loss(self, emb: torch.Tensor, points: np.ndarray, labels: np.ndarray, low: torch.Tensor,
             iou_pred: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            want_low, want_iou = decode(self.teacher, emb, points, labels, None, True)
        # logits only where a sigmoid still tells them apart; scores ×10, as hundredths decide which mask is kept
        logits = F.mse_loss(low.float().clamp(-LOGIT_RANGE, LOGIT_RANGE), want_low.float().clamp(-LOGIT_RANGE,
                                                                                                 LOGIT_RANGE))
        return self.weight * (logits + 10.0 * F.mse_loss(iou_pred.float(), want_iou.float()))


class _PromptSideDecoding(nn.Module):
    """A SAM's prompt encoder and mask decoder (shared, not copied) whose forward is ``decode``."""

    def __init__(self, sam: nn.Module) -> None:
        super().__init__()
        self.prompt_encoder, self.mask_decoder = sam.prompt_encoder, sam.mask_decoder

    def forward(self, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        return decode(self, *args, **kwargs)


class CorrectedDecoding:
    """``decode`` through a model's corrector (``network.corrector``) with the gradient reaching the model's own
    decoder weights: each weight the change touches is used as (weight + change). Tuning a model that has a
    corrector trains each prompt through the decoder the session answers it with: lone clicks through the
    decoder, every other prompt through the corrector, whose change stays as it is."""

    def __init__(self, sam: nn.Module, change: CorrectorChange) -> None:
        self._side = _PromptSideDecoding(sam)
        device = next(sam.mask_decoder.parameters()).device
        self._change = {name: change.change_of(name).to(device) for name in change.names}

    def __call__(self, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        own = dict(self._side.named_parameters())
        weights = {name: own[name] + delta.to(own[name].dtype) for name, delta in self._change.items()}
        return torch.func.functional_call(self._side, weights, args, kwargs)


class StepModule(nn.Module):
    """Computes the loss of one sample: the encoder once, the decoder once per prompt kind and round."""

    def __init__(self, model: MSAModel, encoder: SplitEncoder, slices: list[TrainingSlice], iou_weight: float,
                 rule: InteractionRule | None = None, grad_rounds: int = 2,
                 anchor: FirstClickAnchor | None = None, first_clicker: SimpleNamespace | None = None,
                 edge_weight: float = 0.0, honour_edits: bool = False) -> None:
        super().__init__()
        self._anchor = (anchor,)  # a tuple: not a submodule (its frozen weights are no part of the step's)
        # a corrector's training (TuneConfig.corrector): who answers the lone click that every correction follows
        self._first_clicker = (first_clicker,)
        # every prompt but a lone click goes through the corrector, as the session sends it (network.corrector)
        change = None if first_clicker is not None else model.corrector_change
        self._corrected = (None if change is None else CorrectedDecoding(model.sam, change),)
        self.rule = rule or InteractionRule()
        self.grad_rounds = max(1, int(grad_rounds))
        self.sam = model.sam
        self.image_size = model.image_size
        self.enc = encoder
        self.slices = slices
        self.iou_weight = iou_weight
        self.edge_weight = float(edge_weight)  # TuneConfig.edge_weight
        self.honour_edits = bool(honour_edits)  # TuneConfig.honour_edits
        self._depths: dict[tuple[int, int], np.ndarray] = {}
        self._click_depths: dict[tuple[int, int], np.ndarray] = {}

    def depth(self, slice_id: int, object_id: int) -> np.ndarray:
        """The object's depth map, computed once (a flipped depth map is the flipped mask's depth map)."""
        key = (slice_id, object_id)
        if key not in self._depths:
            self._depths[key] = depth_map(self.slices[slice_id].mask(object_id))
        return self._depths[key]

    def click_depth(self, slice_id: int, object_id: int) -> np.ndarray:
        """The depth map of where the object's first click lands (``TrainingSlice.click_region``)."""
        if self.slices[slice_id].clickable is None:
            return self.depth(slice_id, object_id)
        key = (slice_id, object_id)
        if key not in self._click_depths:
            self._click_depths[key] = depth_map(self.slices[slice_id].click_region(object_id))
        return self._click_depths[key]

    def forward(self, samples: list[Sample]) -> torch.Tensor:
        return torch.stack([self._sample_loss(s) for s in samples]).mean()

    def _sample_loss(self, s: Sample) -> torch.Tensor:
        rgb = dihedral(self.slices[s.slice_id].rgb, s.variant)
        if self.enc.cache is not None:
            def make_input(key: tuple[int, int]) -> torch.Tensor:
                return self.enc.pixels(dihedral(self.slices[key[0]].rgb, key[1]))

            emb = self.enc.suffix(self.enc.tokens([(s.slice_id, s.variant)], make_input))
        else:
            emb = self.enc.full(self.enc.pixels(rgb, s.contrast, s.brightness)[None])
        depths = [dihedral(self.depth(s.slice_id, o), s.variant) for o in s.object_ids]
        click_depths = [dihedral(self.click_depth(s.slice_id, o), s.variant) for o in s.object_ids]
        losses = []
        for use_box in (False, True):  # clicks and boxes are decoded apart (different prompt shapes)
            keep = [b == use_box for b in s.use_box]
            chosen = [d for d, k in zip(depths, keep, strict=True) if k]
            if chosen:
                clicks = [d for d, k in zip(click_depths, keep, strict=True) if k]
                losses.append(self._loss(emb, chosen, use_box, s.rounds, s.rng, clicks) * len(chosen))
        return torch.stack(losses).sum() / len(depths)

    def _loss(self, emb: torch.Tensor, depths: list[np.ndarray], use_box: bool, rounds: int,
              rng: np.random.Generator, click_depths: list[np.ndarray] | None = None) -> torch.Tensor:
        """Mean loss over the rounds that carry it: the first prompt, then ``rounds`` correction clicks at the
        largest error of the mask the session shows, each prompted by the interaction rule (the previous
        logits as mask input, the shown mask's box) as ``Session.predict`` prompts it."""
        truth_np = np.stack([d > 0 for d in depths])  # (N, h, w)
        truth = torch.as_tensor(truth_np, dtype=torch.float32, device=emb.device)
        weight = None
        if self.edge_weight > 0:  # (N, 1, h, w): 1 everywhere, 1 + edge_weight near each object's edge
            band = torch.as_tensor(edge_band(truth_np), dtype=torch.float32, device=emb.device)
            weight = (1.0 + self.edge_weight * band)[:, None]
        total, counted = emb.new_zeros(()), 0
        corrector = self._first_clicker[0] is not None and not use_box
        if corrector:  # the lone click is not the model's to answer: at least one correction to learn from
            rounds = max(1, rounds)

        def carries_loss(r: int) -> bool:
            return r == 0 or r >= rounds - self.grad_rounds + 2

        anchor = self._anchor[0]
        for r, low, iou_pred, logits, prompt in self.session(emb, depths, use_box, rounds, rng, carries_loss,
                                                             click_depths):
            if r == 0 and corrector:
                continue
            if r == 0 and not use_box and anchor is not None:
                total = total + anchor.loss(emb, *prompt, low, iou_pred)
                counted += 1
            elif carries_loss(r):
                with torch.no_grad():
                    iou_true = hard_iou(logits > 0, truth[:, None] > 0)
                mask_loss = bce_dice_loss(logits, truth[:, None].expand_as(logits), weight)  # (N, M)
                iou_loss = F.mse_loss(iou_pred.float(), iou_true)
                total = total + mask_loss.min(1).values.mean() + self.iou_weight * iou_loss
                counted += 1
        return total / counted

    def session(self, emb: torch.Tensor, depths: list[np.ndarray], use_box: bool, rounds: int,
                rng: np.random.Generator, with_grad=lambda r: False, click_depths: list[np.ndarray] | None = None):
        """A simulated annotation session on N objects of one slice, round by round: yields (round, low-res
        logits, predicted IoU, logits at the slice's size, (points, labels)) of every prompt, the first (a click
        inside each object, or a jittered box) and ``rounds`` corrections at the largest error of the mask shown,
        prompted by the interaction rule as ``Session.predict`` prompts them. ``with_grad(round)``: that round keeps
        the graph. ``click_depths``: depth maps of where the first clicks land (default: the objects' own)."""
        truth_np = np.stack([d > 0 for d in depths])
        n, hw = len(depths), truth_np.shape[1:]
        user_boxes = np.stack([jittered_box(t, rng) for t in truth_np]) if use_box else None
        aims = depths if click_depths is None else click_depths
        points = [[] if use_box else [interior_click(d > 0, rng, d)] for d in aims]
        labels = [[] if use_box else [1] for _ in depths]
        previous_low: torch.Tensor | None = None  # (N, 1, g, g) logits of the masks shown
        shown_np: np.ndarray | None = None
        edits: list[tuple[Edit, ...]] = [() for _ in depths]  # each object's edits in force (honour_edits)
        for r in range(1 + rounds):
            multimask = r == 0 and not use_box  # a lone click: SAM answers with three masks
            boxes = user_boxes
            if boxes is None and r > 0 and self.rule.shown_box:
                boxes = np.stack([_shown_box(shown_np[i], points[i], labels[i]) for i in range(n)])
            mask_input = previous_low if r > 0 and self.rule.feed_logits else None
            first_clicker = self._first_clicker[0] if multimask else None
            corrected = None if multimask else self._corrected[0]
            with torch.set_grad_enabled(with_grad(r) and torch.is_grad_enabled() and first_clicker is None):
                low, iou_pred = (corrected or partial(decode, first_clicker or self.sam))(
                    emb, np.array(points) if points[0] else None, np.array(labels) if labels[0] else None, boxes,
                    multimask, mask_input=mask_input)
                logits = upscale_logits(low, self.image_size, hw)  # (N, M, h, w)
            yield r, low, iou_pred, logits, (np.array(points) if points[0] else None,
                                              np.array(labels) if labels[0] else None)
            if r < rounds:
                with torch.no_grad():
                    shown = iou_pred.argmax(1) if multimask else torch.zeros(n, dtype=torch.long,
                                                                             device=low.device)
                    rows = torch.arange(n, device=low.device)
                    previous_low = low[rows, shown][:, None].detach()
                    shown_np = (logits[rows, shown] > 0).cpu().numpy()
                    if self.honour_edits and r > 0:  # the answer to a correction, as the honour rule shows it
                        previous_low, shown_np = self._honoured(emb, previous_low, logits[rows, shown], shown_np,
                                                                points, labels, edits)
                for i in range(n):
                    point, label = correction_click(shown_np[i], truth_np[i], rng)
                    points[i].append(point)
                    labels[i].append(label)


    def _honoured(self, emb: torch.Tensor, low: torch.Tensor, logits: torch.Tensor, shown: np.ndarray,
                  points: list, labels: list, edits: list[tuple[Edit, ...]]) -> tuple[torch.Tensor, np.ndarray]:
        """The masks shown after a correction round and the logits fed back, edited as ``Session`` edits them
        (``engine.prompts.interaction``): an ignored click gets the thing under it, which the model's own decoder
        finds at a lone click there, and every edit in force is written in. ``edits`` is updated in place."""
        hw = shown.shape[1:]
        ignored = [i for i in range(len(shown)) if not honoured(shown[i], points[i][-1], labels[i][-1])]
        things = {}
        if ignored:  # one decoder pass for every object whose click was ignored
            lone, _ = decode(self._first_clicker[0] or self.sam, emb, np.array([[points[i][-1]] for i in ignored]),
                             np.ones((len(ignored), 1), np.int64), None, True)
            things = dict(zip(ignored, (upscale_logits(lone, self.image_size, hw) > 0).cpu().numpy(), strict=True))
        low, shown = low.clone(), shown.copy()
        for i in range(len(shown)):
            point, label = points[i][-1], int(labels[i][-1])
            rim = edge_rim(points[i], labels[i])
            edit = click_edit(shown[i], things[i], point, label, rim=rim) if i in things else None
            edits[i] = edits_in_force(edits[i], None if edit is None else (edit, label), point, label, hw)
            target = with_edits(shown[i], edits[i])
            if (target != shown[i]).any():
                values = logits[i].float().cpu().numpy().copy()
                values[target & ~shown[i]], values[shown[i] & ~target] = EDIT_LOGIT, -EDIT_LOGIT
                low[i, 0] = torch.as_tensor(to_mask_input(self.sam, values, hw), dtype=low.dtype, device=low.device)
                shown[i] = target
        return low, shown


def _shown_box(mask: np.ndarray, points: list, labels: list) -> np.ndarray:
    """The box the session adds to a correction click (engine.prompts.interaction), or the whole plane for an empty mask
    (the session then sends no box; a batch needs one per object)."""
    box = clicked_object_box(mask, np.array(points), np.array(labels))
    return box if box is not None else np.array([0.0, 0.0, mask.shape[0] - 1.0, mask.shape[1] - 1.0])
