"""How a sequence of clicks on one object, on one slice, becomes the model's prompts: the one interaction rule.

An annotator clicks, looks, clicks again. Each click is a decoder pass whose prompt is every click so far plus what
the rule adds from the previous answer: its low-res logits as mask input (SAM's own iterative protocol), the box of
the mask shown (which steadies a model trained on boxes), both or neither. A box drawn by the user is the first
step of its object's interaction and stays in every later prompt. An optional *prior* (an object that already
exists, when refining it) is the answer before the first click. With ``zoom`` the rule decodes every click after
the first answer (and a box the user drew, at once) in a window around the object (``engine.prompts.zoom``),
re-encoded at the model's full input size; its answers are pasted back on the slice, and the previous answer's
logits are resampled into a new window. A zoomed answer that contradicts its click (a positive click that keeps
less than 0.8 of the object shown, a negative one that grows it over 1.25 times) is decoded again on the whole
slice, and that answer is kept when it does not contradict the click too: some objects look unlike themselves in
their window, small ones above all (measured: benchmarks/click_protocol.py, BENCHMARKS.md "Zoom-in" and "Small
objects").
With ``honour`` a correction the answer leaves unhonoured (a positive click outside the mask, a negative one inside)
gets the thing under the click, as the model's own decoder sees it at a lone click there, added or taken away within
the click's reach (``engine.prompts.honour``; not for a click on the shown edge, unless it is the same pixel
clicked again); the edit stays in force at every later step (until a click of the other sign falls inside it) and
the logits fed back carry it. A fine correction (a click near the shown edge, for the object's size) whose answer
changes much of the mask far from the click keeps only the change within the click's reach (``stray_reach``): such
answers flood a neighbour or take away the object's other side, and lost Dice nearly every time (BENCHMARKS.md, "A
fine click changes the mask near it"). Refining an existing object is left as it was.
Tuning simulates sessions on whole slices: ``zoom`` is an inference choice, not something an adapter learns; the
honour rule's edits go into the simulated sessions only when asked (``TuneConfig.honour_edits``).

The answer for a sequence is a function of the sequence alone: ``Interaction.run`` replays it from the start,
reusing the steps it already decoded when the new sequence extends the old one. So the API, the command line and
the widget, which all go through ``Session.predict``, give the same mask for the same clicks, whatever order the
calls came in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial

import numpy as np

from ..catalog import INTERACTION_RULES as RULE_NAMES
from .geometry import clicked_object_box
from .honour import click_depth, click_edit, edge_rim, edits_in_force, honoured, reach_disc, with_edits
from .zoom import Window, inside, zoom_window


@dataclass(frozen=True)
class InteractionRule:
    """What the previous answer adds to the next click's prompt."""

    feed_logits: bool = False  # its low-res logits as the decoder's mask input
    shown_box: bool = False  # the box around it (and the positive clicks), unless the user drew a box
    zoom: bool = False  # later clicks decoded in a window around the object (engine.prompts.zoom)
    honour: bool = False  # a correction the answer ignores edits it (engine.prompts.honour)

    @property
    def name(self) -> str:
        parts = [n for n, on in (("box", self.shown_box), ("logits", self.feed_logits)) if on] or ["clicks"]
        return "+".join(parts + [n for n, on in (("zoom", self.zoom), ("honour", self.honour)) if on])

    @classmethod
    def from_name(cls, name: str) -> InteractionRule:
        if name not in RULE_NAMES:
            raise ValueError(f"unknown interaction rule {name!r}; choose one of {', '.join(RULE_NAMES)}")
        parts = set(name.split("+"))
        return cls(feed_logits="logits" in parts, shown_box="box" in parts, zoom="zoom" in parts,
                   honour="honour" in parts)


@dataclass(frozen=True)
class Prompt:
    """One decoder pass, in slice pixels: (row, col) points, their labels, a (min_row, min_col, max_row, max_col)
    box, low-res mask-input logits (g, g) in the frame decoded, and whether SAM should answer with its three masks.
    ``window``: decode in that window of the slice (None: the whole slice); ``carried``: the previous answer,
    decoded in another frame, whose logits are to be resampled into this one as mask input."""

    points: np.ndarray
    labels: np.ndarray
    box: np.ndarray | None
    mask_input: np.ndarray | None
    multimask: bool
    window: Window | None = None
    carried: Answer | None = None

    @property
    def lone_click(self) -> bool:
        """One point and nothing else: no box, no earlier answer (the prompt a model's own decoder answers, a
        corrector every other)."""
        return len(self.points) == 1 and self.box is None and self.mask_input is None and self.carried is None


@dataclass
class Answer:
    """A decoder pass's candidates, best predicted IoU first, and the one kept (``chosen``)."""

    masks: np.ndarray  # (M, h, w) bool, on the whole slice
    scores: np.ndarray  # (M,)
    logits: np.ndarray  # (M, g, g) low-res, in the frame decoded (``window``)
    chosen: int = 0
    window: Window | None = None  # where it was decoded (None: the whole slice)
    edit: tuple[np.ndarray, int] | None = None  # what an ignored click got (engine.prompts.honour): pixels, label

    @property
    def mask(self) -> np.ndarray:
        return self.masks[self.chosen]

    @property
    def score(self) -> float:
        return float(self.scores[self.chosen])

    @property
    def low_logits(self) -> np.ndarray:
        return self.logits[self.chosen]

    def ranked(self) -> Answer:
        order = np.argsort(-self.scores, kind="stable")
        return Answer(self.masks[order], self.scores[order], self.logits[order], 0, self.window)


DecodeFn = Callable[[Prompt], Answer]  # must return candidates best-first (Answer.ranked)
# (answer, pixels to flip on the slice, the click's label) -> the answer with its kept mask and logits edited
AmendFn = Callable[[Answer, np.ndarray, int], Answer]


@dataclass
class _Step:
    key: tuple
    answer: Answer
    edits: tuple[tuple[np.ndarray, int], ...] = ()  # the edits in force after it (honour), in click order


PRIOR_FEEDS_LOGITS = False  # refining: the object's box only, no mask input (measured best, refine_quality.py)


@dataclass
class Interaction:
    """One object's clicks on one slice and the answers decoded so far."""

    rule: InteractionRule
    steps: list[_Step] = field(default_factory=list)
    last: tuple | None = None  # (points, labels, box) of the last run

    def run(self, points: np.ndarray, labels: np.ndarray, box: np.ndarray | None, decode: DecodeFn, *,
            prior: Prior | None = None, candidate: int = 0, shape: tuple[int, int] | None = None,
            amend: AmendFn | None = None) -> Answer:
        """The answer to the whole sequence: a box first (if any), then one step per click, in order.

        ``candidate`` picks among the ranked masks of an ambiguous step (a lone click with nothing before it):
        0 is the model's choice, 1 and 2 the others. ``shape``: the slice's (h, w), where a zooming rule zooms into
        a user's box before any answer. ``amend``: how an answer takes an edit, for a rule that honours clicks.
        """
        if self.rule.honour and amend is None:
            raise ValueError("a rule that honours clicks needs an amend function")
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        box = None if box is None else np.asarray(box, dtype=np.float64).reshape(4)
        if len(points) == 0 and box is None:
            raise ValueError("give at least one point or a box")
        counts = ([0] if box is not None else []) + list(range(1, len(points) + 1))
        base = (None if box is None else tuple(np.round(box, 3)), None if prior is None else prior.key)
        previous = prior.answer if prior is not None else None
        edits: tuple[tuple[np.ndarray, int], ...] = ()
        kept: list[_Step] = []
        reuse = True
        for i, n in enumerate(counts):
            ambiguous = previous is None and n == 1 and box is None
            key = (base, tuple(map(tuple, np.round(points[:n], 3))), tuple(labels[:n].tolist()),
                   candidate if ambiguous else 0)
            if reuse and i < len(self.steps) and self.steps[i].key == key:
                step = self.steps[i]
            else:
                reuse = False
                prompt = self._prompt(points[:n], labels[:n], box, previous, ambiguous,
                                      None if prior is None else prior.answer.mask, shape)
                correction = previous is not None and n >= 1 and not ambiguous
                honouring = correction and self.rule.honour and prior is None
                decode_step = partial(_honouring, decode=decode, amend=amend) if honouring else decode
                answer = decode_step(prompt)
                answer.window = prompt.window
                if prompt.window is not None and correction \
                        and contradicts(answer.mask, previous.mask, int(labels[n - 1])):
                    answer = self._unzoomed(prompt, previous, decode_step, answer, int(labels[n - 1]))
                reach = stray_reach(answer.mask, previous.mask, points[n - 1], int(labels[n - 1])) \
                    if honouring and answer.edit is None else None
                if reach is not None:
                    answer = _localized(answer, previous, reach, amend)
                if honouring:
                    answer, edits = _sticky(answer, edits, points[n - 1], int(labels[n - 1]), amend)
                if ambiguous:
                    answer.chosen = min(max(0, int(candidate)), len(answer.scores) - 1)
                step = _Step(key, answer, edits)
            kept.append(step)
            previous = step.answer
            edits = step.edits
        self.steps = kept
        self.last = (points, labels, box)
        return previous

    @staticmethod
    def _unzoomed(prompt: Prompt, previous: Answer, decode: DecodeFn, zoomed: Answer, label: int) -> Answer:
        """The step decoded again on the whole slice, kept when it does not contradict the click as ``zoomed`` did."""
        fed = prompt.mask_input is not None or prompt.carried is not None  # the rule feeds the previous logits
        same_frame = previous.window is None  # its logits are the whole slice's already: no resampling
        prompt = replace(prompt, window=None, mask_input=previous.low_logits if fed and same_frame else None,
                         carried=previous if fed and not same_frame else None)
        answer = decode(prompt)
        answer.window = None
        return zoomed if contradicts(answer.mask, previous.mask, label) else answer

    def likely_window(self, shape: tuple[int, int]) -> Window | None:
        """The window the next click will most likely be decoded in, when it is not the last answer's own (which
        is encoded already): around the object as last shown. None without zoom or before any answer."""
        if not self.steps or self.last is None or self.steps[-1].answer.window is not None:
            return None
        points, labels, box = self.last
        return self._window(points, labels, box, self.steps[-1].answer, shape)  # as a click inside would get

    def _prompt(self, points: np.ndarray, labels: np.ndarray, box: np.ndarray | None, previous: Answer | None,
                ambiguous: bool, prior_mask: np.ndarray | None = None, shape: tuple[int, int] | None = None) -> Prompt:
        window = self._window(points, labels, box, previous, shape)
        mask_input = carried = None
        if previous is not None and self.rule.feed_logits and (prior_mask is None or PRIOR_FEEDS_LOGITS):
            if window == previous.window:
                mask_input = previous.low_logits
            else:
                carried = previous
        if box is None and prior_mask is not None and prior_mask.any():
            # refining: the object as it is bounds every step (grown to hold the positive clicks); measured better
            # than its mask as the only context (benchmarks/refine_quality.py)
            box = clicked_object_box(prior_mask, points, labels)
        elif box is None and previous is not None and self.rule.shown_box:
            box = clicked_object_box(previous.mask, points, labels)
        return Prompt(points, labels, box, mask_input, multimask=ambiguous, window=window, carried=carried)

    def _window(self, points: np.ndarray, labels: np.ndarray, box: np.ndarray | None, previous: Answer | None,
                shape: tuple[int, int] | None) -> Window | None:
        """Where a step is decoded: a user's box at once in a window around it; a lone click on the whole slice;
        a later click in the previous step's window while it falls there, else in a new one around the object
        as the previous answer shows it."""
        if not self.rule.zoom:
            return None
        if previous is None:
            return None if box is None or shape is None else zoom_window(shape, None, points, labels, box)
        if previous.window is not None and len(points) and inside(previous.window, points[-1]):
            return previous.window
        return zoom_window(previous.mask.shape, previous.mask, points, labels, box)


def _honouring(prompt: Prompt, decode: DecodeFn, amend: AmendFn) -> Answer:
    """A correction step's answer, edited where it leaves its click unhonoured (``engine.prompts.honour``): the
    model's own decoder answers a lone click there, in the same frame, and its smallest candidate holding the click
    is added or taken away within the click's reach."""
    answer = decode(prompt)
    point, label = prompt.points[-1], int(prompt.labels[-1])
    if honoured(answer.mask, point, label):
        return answer
    lone = decode(Prompt(point[None], np.ones(1, np.int64), None, None, multimask=True, window=prompt.window))
    edit = click_edit(answer.mask, lone.masks, point, label, rim=edge_rim(prompt.points, prompt.labels))
    if edit is None:
        return answer
    answer.window = prompt.window
    edited = amend(answer, edit, label)
    edited.edit = (edit, label)
    return edited


def _localized(answer: Answer, previous: Answer, reach: np.ndarray, amend: AmendFn) -> Answer:
    """The mask shown with the answer's change kept only within the click's ``reach`` (``stray_reach``)."""
    shown = previous.mask
    target = shown ^ ((answer.mask ^ shown) & reach)
    out = previous
    for flip, lab in ((target & ~shown, 1), (shown & ~target, 0)):
        if flip.any():
            out = amend(out, flip, lab)
    if out is previous:  # nothing changed within reach: the mask shown, as a new answer
        out = Answer(previous.masks.copy(), previous.scores, previous.logits.copy(), previous.chosen, previous.window)
    return out


def _sticky(answer: Answer, earlier: tuple[tuple[np.ndarray, int], ...], point: np.ndarray, label: int,
            amend: AmendFn) -> tuple[Answer, tuple[tuple[np.ndarray, int], ...]]:
    """The step's answer with every earlier edit still in force (in click order, this step's own last) and the edits
    in force after it: what an ignored click was given stays given, measured better than letting the next answer
    take a quarter of it back (BENCHMARKS.md, "Sticky edits"), until a click of the other sign falls inside it."""
    in_force = edits_in_force(earlier, answer.edit, point, label, answer.mask.shape)
    target = with_edits(answer.mask, in_force)
    out = answer
    for flip, lab in ((target & ~answer.mask, 1), (answer.mask & ~target, 0)):
        if flip.any():
            out = amend(out, flip, lab)
    out.edit = answer.edit
    return out, in_force


# chosen on the real sets and the ct phantom volumes' small objects (BENCHMARKS.md "Small objects"; 0.5 and 2.0 before)
POSITIVE_KEEPS = 0.8  # a positive click's zoomed answer keeping less of the mask shown contradicts it
NEGATIVE_GROWS = 1.25  # a negative click's zoomed answer growing the mask shown more than this contradicts it


def contradicts(mask: np.ndarray, shown: np.ndarray, label: int) -> bool:
    """Whether an answer to a correction click contradicts it: a positive click (add this) that keeps less
    than ``POSITIVE_KEEPS`` of the mask shown, or a negative one (remove this) that grows it over ``NEGATIVE_GROWS``."""
    if not shown.any():
        return False
    if label == 1:
        return int(np.count_nonzero(mask & shown)) < POSITIVE_KEEPS * int(np.count_nonzero(shown))
    return int(np.count_nonzero(mask)) > NEGATIVE_GROWS * int(np.count_nonzero(shown))


FINE = 0.12  # a click closer to the shown edge than this times the object's side is a fine correction ...
FAR_SHARE = 0.3  # ... and an answer to it that changes more than this share of the mask beyond its reach strays


def stray_reach(mask: np.ndarray, shown: np.ndarray, point: np.ndarray, label: int) -> np.ndarray | None:
    """The click's reach (``honour.reach_disc``) where an answer to a fine correction (a click near the shown edge,
    for the object's size: the error it marks is small) changes much of the mask beyond it — a flood or a collapse
    away from the click, measured to lose Dice nearly every time (BENCHMARKS.md, "A fine click changes the mask near
    it"); None otherwise."""
    area = int(np.count_nonzero(shown))
    if area == 0:
        return None
    fine = FINE * np.sqrt(area)
    depth = click_depth(shown, point, label, within=fine)
    if depth == 0.0 or depth >= fine:
        return None
    reach = reach_disc(shown.shape, point, depth)
    return reach if int(np.count_nonzero((mask ^ shown) & ~reach)) > FAR_SHARE * area else None


def strays(mask: np.ndarray, shown: np.ndarray, point: np.ndarray, label: int) -> bool:
    """Whether the answer to a correction changes much of the mask far from a fine click (``stray_reach``)."""
    return stray_reach(mask, shown, point, label) is not None


@dataclass(frozen=True)
class Prior:
    """An existing object as the answer before the first click (refining it)."""

    answer: Answer
    key: str

    @classmethod
    def of(cls, mask: np.ndarray, logits: np.ndarray) -> Prior:
        mask = np.asarray(mask, dtype=bool)
        digest = hashlib.sha1(np.packbits(mask).tobytes() + str(mask.shape).encode()).hexdigest()[:16]
        return cls(Answer(mask[None], np.ones(1, np.float32), logits[None]), digest)
