"""What ``tune()`` takes (TuneConfig), reports while it runs (TuneProgress) and returns (TuneSummary).

Kept apart from the loop so the widget, the CLI and the adapter file's metadata share one typed vocabulary.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

HELD_OUT_KINDS = ("slice", "object")  # what the held-out check holds out (data.split_pairs)


class TuningDiverged(ValueError):
    """The loss or the weights became non-finite: the run is abandoned and the model left as it was."""


@dataclass
class TuneConfig:
    """How tuning runs (stored in the adapter file's metadata). The defaults are the few-shot case the Tune
    widget exists for, measured in benchmarks/tuning_gain.py: 1-8 labelled slices, 2-20 objects."""

    steps: int | None = None  # optimiser steps; None: scaled to the data and the model (budget)
    lr: float = 1e-4  # peak learning rate (AdamW)
    weight_decay: float = 0.01
    batch_size: int | None = None  # objects of one slice per sample; None: the model's budget (4, or 8 if light)
    slices_per_step: int = 1  # samples (slices) per step and process
    val_fraction: float = 0.2  # share of the labelled objects held out (of the slices with held_out='slice'); 0: none
    # What the held-out check holds out (data.split_pairs): 'object', val_fraction of the labelled objects, spread
    # over every labelled slice, each slice and label id keeping a training object (whole slices where none can go);
    # 'slice', whole labelled slices (val_fraction of them; objects when there is one). 'object' by default: at k = 4
    # the one held-out slice missed runs that lost session Dice on the other slices, objects of every slice did not
    # (BENCHMARKS.md, "Few-shot tuning", "Held-out objects").
    held_out: str = "object"
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
    # Share of samples drawn from zoomed views of the training objects (data.window_views: the windows a zooming
    # rule decodes corrections in), so the decoder also learns the scale it answers corrections at. 0: none.
    zoom_views: float = 0.0
    max_correction_rounds: int = 1  # 0..this many correction clicks after the first prompt
    # How the simulated session prompts each correction (engine.prompts.interaction): None, the model's own rule. The
    # previous answer's logits and shown box go in as the session would give them.
    interaction: str | None = None
    grad_rounds: int = 2  # the first prompt and the last grad_rounds - 1 corrections carry the loss; the others
    # only move the simulated session on (SAM's training does the same), so long sessions stay cheap
    iou_weight: float = 1.0
    # Extra weight of the pixels near each object's edge (losses.edge_band) in the mask loss: after five clicks most
    # of what a session leaves wrong is a rim along the reference's edge. 0: off (every pixel weighs the same).
    edge_weight: float = 0.0
    # Simulate the honour rule's edits (engine.prompts.honour) in the sessions, where the rule honours clicks: an
    # ignored correction gets the thing under it and the edits in force go into the mask shown and the logits fed
    # back, as a session at inference shows them. Off by default: users' tuning is measured without it.
    honour_edits: bool = False
    # Weight of a distillation term that keeps a lone click's three masks and scores as the starting decoder gives
    # them (in place of their task loss), so training for corrections cannot cost the first click. 0: off.
    anchor_first_clicks: float = 0.0
    # Train a *corrector*: in the simulated sessions a lone click is answered by a frozen copy of the starting
    # decoder (or of ``first_click_teacher``'s) and the model learns only what follows it (corrections, boxes), as
    # a second decoder that takes over from the first click's answer would be used. Its own lone clicks are not
    # trained. Off: one decoder answers every step.
    corrector: bool = False
    patience: int = 3  # checks without improvement (after min_steps_share of the run) before stopping; 0: never
    min_delta: float = 1e-3  # smaller held-out gains do not count as improvement (early stopping)
    # The tuned weights replace the starting ones only when they beat them on the held-out objects by this much:
    # a few held-out objects give a noisy estimate. 0.01 = the loss the few-shot goal tolerates; chosen on
    # development volumes (benchmarks/tuning_gain.py, seeds 7001-7008), where no accepted run lost more.
    accept_margin: float = 0.01
    # Besides the best check's weights, these shares of its change from the start are checked, and the smallest
    # change that scores as well is kept (loop.BestWeights.restore); () keeps the best check's weights.
    blends: tuple[float, ...] = (0.5, 0.75)
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
        if not 0 < self.lr < float("inf"):  # nan too
            raise ValueError(f"the learning rate must be a positive number (e.g. 1e-4), got {self.lr}")
        if self.held_out not in HELD_OUT_KINDS:
            raise ValueError(f"held_out is 'slice' or 'object', got {self.held_out!r}")
        if not 0 <= self.zoom_views < 1:
            raise ValueError(f"zoom_views is a share of the samples in [0, 1), got {self.zoom_views}")
        if not all(0 < share <= 1 for share in self.blends):
            raise ValueError(f"blends are shares of the tuned change, each in (0, 1], got {self.blends}")
        if not 0 <= self.edge_weight < float("inf"):
            raise ValueError(f"edge_weight is a loss weight ≥ 0, got {self.edge_weight}")
        if self.anchor_first_clicks < 0:
            raise ValueError(f"anchor_first_clicks is a loss weight ≥ 0, got {self.anchor_first_clicks}")
        if self.corrector and self.anchor_first_clicks > 0:
            raise ValueError("a corrector does not answer lone clicks: anchor_first_clicks has nothing to keep")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch size must be ≥ 1, got {self.batch_size}")
        if not (self.train_adapters or self.train_decoder or self.full_finetune):
            raise ValueError("nothing to tune: train the adapters, the decoder or both")


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
class DiceChange:
    """Held-out Dice before tuning and with the weights returned, for one click and for a box."""

    click_before: float
    click_after: float
    box_before: float
    box_after: float
    session_before: float | None = None  # after a simulated three-click session (overall figure only)
    session_after: float | None = None

    def worse(self, tolerance: float = 0.01) -> bool:
        """True when clicks, boxes or sessions lost more than ``tolerance``: shown in red in the widget, flagged
        in the CLI."""
        lost_session = self.session_before is not None and self.session_after is not None and \
            self.session_after < self.session_before - tolerance
        return self.click_after < self.click_before - tolerance or self.box_after < self.box_before - tolerance \
            or lost_session


@dataclass
class TuneSummary:
    """What a run did and measured. ``to_dict()`` is what the adapter file's metadata keeps."""

    config: TuneConfig  # as run: steps and augment resolved
    model: str
    image_size: int
    n_slices: int
    n_train_objects: int
    n_val_objects: int
    split: str  # how objects were held out: 'slice', 'object' or 'none'
    steps_done: int
    stopped: str  # 'completed' or 'early_stopping'
    # 'untuned' when no held-out check beat the starting weights by accept_margin: returned as it came.
    kept: str
    best_step: int
    epochs: float  # passes over the training slices
    held_out: DiceChange | None  # over all held-out objects; None without a held-out split
    per_label: dict[int, DiceChange] = field(default_factory=dict)
    blend: float = 1.0  # the share of the best check's change from the start kept (0: the start)
    # (label, click before, click after, box before, box after) per held-out object
    per_object: list[tuple[int, float, float, float, float]] = field(default_factory=list)
    history: list[tuple[int, float, float, float]] = field(default_factory=list)  # (step, click, box, session)
    val_clicks_per_object: int = 0
    loss_first: float | None = None  # mean of the first tenth of the steps
    loss_last: float | None = None
    lr_schedule: str = ""
    world_size: int = 1
    trainable_parameters: int = 0
    prefix_cache: bool = False
    prefix_cache_entries: int = 0
    prefix_cache_hits: int = 0
    first_trained_block: int = 0
    step_time_s: float = 0.0
    saves_decoder: bool = False  # the adapter file carries decoder weights (trained, or came with the start)
    normalization: dict = field(default_factory=dict)
    time_s: float = 0.0
    finished_at: str = ""
    method: str = "napari-msa few-shot adapter tuning"

    @property
    def tuned(self) -> bool:
        return self.kept == "tuned"

    def to_dict(self) -> dict:
        """JSON-able; per-label keys become strings."""
        d = asdict(self)
        d["per_label"] = {str(k): v for k, v in d["per_label"].items()}
        return d
