"""How much training a ``tune()`` run gets when the user does not say: objects per step and the step count.

The budget follows gain per minute (BENCHMARKS.md, "Few-shot tuning"; measured on development volumes, not on the
reported ones). A decoder-only step costs in proportion to the image embedding's token grid: a model that decodes on
64×64 tokens (LiteMedSAM, SAM at 1024 px) gets the standard budget; a light decoder (≤ 32×32 tokens: the demo
model, SAM at 256 px) is cheap enough for more objects per step and more passes. Adapters in the encoder recompute
its last blocks every step: always the standard budget."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..model.msa_model import MSAModel
    from .tune_types import TuneConfig

LIGHT_DECODER_TOKENS = 32 * 32  # embedding grids up to this many tokens count as a light decoder


@dataclass(frozen=True)
class StepBudget:
    """Objects per step, and the step count as passes over the training objects within bounds."""

    batch_size: int
    epochs: float
    min_steps: int
    max_steps: int

    def steps(self, n_train_objects: int, objects_per_step: int) -> int:
        """About ``epochs`` passes over the training objects, within [min_steps, max_steps]."""
        wanted = math.ceil(self.epochs * n_train_objects / max(1, objects_per_step))
        return int(min(self.max_steps, max(self.min_steps, wanted)))


STANDARD = StepBudget(batch_size=4, epochs=8, min_steps=40, max_steps=200)
LIGHT_DECODER = StepBudget(batch_size=8, epochs=64, min_steps=40, max_steps=400)


def decoder_tokens(model: MSAModel) -> int:
    """Tokens of the image embedding the mask decoder attends to (64×64 for LiteMedSAM and SAM at 1024 px)."""
    rows, cols = model.sam.prompt_encoder.image_embedding_size
    return int(rows * cols)


def step_budget(model: MSAModel, cfg: TuneConfig) -> StepBudget:
    """The budget for this model and what trains: light only for a decoder-only run on a small token grid."""
    decoder_only = cfg.train_decoder and not cfg.train_adapters and not cfg.full_finetune
    return LIGHT_DECODER if decoder_only and decoder_tokens(model) <= LIGHT_DECODER_TOKENS else STANDARD
