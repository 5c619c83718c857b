"""The held-out check: how well the model segments the labelled objects it does not train on.

Every held-out object gets several simulated single clicks (the most interior pixel and two seeded points of its
inner half) and its tight box, the same prompts at every check, all prompts of a slice in one decoder pass each;
and an annotator's three-click session (the automatic annotator's clicks, ``geometry.next_click``) through a real
``Session`` on the model being tuned, prompted by the model's own interaction rule, zoom-in included, so a tuning
that helps single clicks but spoils the corrections an annotator makes next is seen.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..inference.decoding import decode, upscale_logits
from ..inference.session import Session
from ..model.msa_model import MSAModel
from ..network.preprocessing import Normalization
from ..prompts.geometry import automatic_clicks, dice, interior_click, mask_box
from . import distributed
from .data import Pair, TrainingSlice
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
PLANE_WINDOW = Normalization("limits", limits=(0.0, 255.0))  # training planes are 8-bit RGB already


class AnnotatorSessions:
    """The held-out slices as an annotator's ``Session`` sees them, on the model being tuned: one per slice, kept
    for the whole run, so the slice (and, while the encoder does not train, its zoom windows) is encoded once."""

    def __init__(self, model: MSAModel, slices: list[TrainingSlice]) -> None:
        self.model = model
        self.slices = slices
        self._sessions: dict[int, Session] = {}

    def weights_moved(self) -> None:
        """Before a check: new interactions, re-keyed embeddings, a corrector built on the weights as they are."""
        self.model.version += 1

    def dice_after_clicks(self, slice_id: int, truths: list[np.ndarray], clicks: int = SESSION_CLICKS) -> list[float]:
        """Each object's Dice after the automatic annotator's ``clicks`` clicks, under the model's own rule."""
        session = self._sessions.get(slice_id)
        if session is None:
            session = self._sessions[slice_id] = Session(self.model, normalization=PLANE_WINDOW)
            session.set_image(self.slices[slice_id].rgb, rgb=True)
        out = []
        for truth in truths:
            masks = list(automatic_clicks(lambda p, lab: session.predict(points=p, labels=lab)[0], truth, clicks))
            out.append(dice(masks[-1] if masks else np.zeros_like(truth), truth))
        return out


@torch.no_grad()
def evaluate(step_module: StepModule, pairs: list[Pair], dist_info: distributed.DistInfo,
              device: torch.device, sessions: AnnotatorSessions) -> HeldOut | None:
    """Held-out Dice over all processes' shares of ``pairs`` (the same prompts at every evaluation)."""
    if not pairs:
        return None
    enc, sam, size = step_module.enc, step_module.sam, step_module.image_size
    sessions.weights_moved()
    boxes_by = sessions.model.corrector() or sam  # who answers a box in a session (network.corrector)
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
        low, _ = decode(boxes_by, emb, None, None, np.array([mask_box(gt) for gt in truths]), False)
        box_masks = upscale_logits(low, size, sl.rgb.shape[:2])[:, 0] > 0
        click_masks, box_masks = click_masks.cpu().numpy(), box_masks.cpu().numpy()
        session_dice = sessions.dice_after_clicks(sid, truths)
        for j, ((index, _), gt) in enumerate(zip(group, truths, strict=True)):
            click_dice = np.mean([dice(m, gt) for m in click_masks[j * VAL_CLICKS : (j + 1) * VAL_CLICKS]])
            per_object[index] = (click_dice, dice(box_masks[j], gt), session_dice[j])
    per_object = np.asarray(distributed.all_reduce_sum(per_object.ravel().tolist(), device)).reshape(-1, 3)
    labels = np.array([p.label for p in pairs])
    per_label = {int(label): tuple(float(v) for v in per_object[labels == label, :2].mean(0))
                 for label in sorted(set(labels.tolist()))}
    click, box, session = per_object.mean(0)
    return HeldOut(float(click), float(box), per_label, per_object[:, :2], float(session))
