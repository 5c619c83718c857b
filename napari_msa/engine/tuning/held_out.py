"""The held-out check: how well the model segments the labelled objects it does not train on.

Every held-out object gets several simulated single clicks (the most interior pixel and two seeded points of its
inner half), its tight box, and a simulated three-click session (a seeded first click inside it, two corrections at
the largest error, prompted by the model's interaction rule as the widget prompts them), the same prompts at every
check, all prompts of a slice in one decoder pass each.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..inference.decoding import decode, upscale_logits
from ..prompts.geometry import dice, interior_click, mask_box
from . import distributed
from .data import Pair
from .step import StepModule


@dataclass
class HeldOut:
    """Held-out Dice at one point of the run. ``click`` averages several simulated single clicks per object (the
    most interior pixel and two seeded points of its inner half), so one object flipping between SAM's
    multimask outputs moves it less than a single click would."""

    click: float
    box: float
    per_label: dict[int, tuple[float, float]]  # label id -> (click, box)
    objects: np.ndarray  # (n objects, 2): each held-out object's (click, box) Dice, in the order of the pairs
    session: float = 0.0  # Dice after a simulated session of SESSION_CLICKS clicks

    def score(self, start: HeldOut) -> float:
        """The selection criterion: one-click Dice, less any loss of box Dice or of session Dice against the
        starting weights (clicks are what tuning is for, but not at the expense of boxes or of the corrections
        that follow a first click)."""
        return self.click + min(0.0, self.box - start.box) + min(0.0, self.session - start.session)


VAL_CLICKS = 3  # simulated single clicks per held-out object
SESSION_CLICKS = 3  # clicks of the simulated session per held-out object (a first click and two corrections)


@torch.no_grad()
def evaluate(step_module: StepModule, pairs: list[Pair], dist_info: distributed.DistInfo,
              device: torch.device) -> HeldOut | None:
    """Held-out Dice over all processes' shares of ``pairs`` (the same prompts at every evaluation)."""
    if not pairs:
        return None
    enc, sam, size = step_module.enc, step_module.sam, step_module.image_size
    per_object = np.zeros((len(pairs), 3))  # click, box, session; each process fills its share, summed below
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
        depths = [step_module.depth(sid, p.object_id) for _, p in group]
        rounds = list(step_module.session(emb, depths, False, SESSION_CLICKS - 1, np.random.default_rng([sid, 11])))
        session_masks = (rounds[-1][3][:, 0] > 0).cpu().numpy()
        for j, ((index, _), gt) in enumerate(zip(group, truths, strict=True)):
            click_dice = np.mean([dice(m, gt) for m in click_masks[j * VAL_CLICKS : (j + 1) * VAL_CLICKS]])
            per_object[index] = (click_dice, dice(box_masks[j], gt), dice(session_masks[j], gt))
    per_object = np.asarray(distributed.all_reduce_sum(per_object.ravel().tolist(), device)).reshape(-1, 3)
    labels = np.array([p.label for p in pairs])
    per_label = {int(label): tuple(float(v) for v in per_object[labels == label, :2].mean(0))
                 for label in sorted(set(labels.tolist()))}
    click, box, session = per_object.mean(0)
    return HeldOut(float(click), float(box), per_label, per_object[:, :2], float(session))
