"""A *corrector*: a second prompt side (prompt encoder + mask decoder) that answers every step of an interaction
but a lone click's.

One decoder could not learn correction clicks without moving its first click (BENCHMARKS.md, "A corrector"): a
lone click is ambiguous and wants SAM's three candidates, a correction wants the object the clicks so far pin
down. So the model's own decoder answers lone clicks (segment everything's grid, propagation's per-slice prompt
and any single pass outside an interaction too), and the corrector — the same decoder plus a stored *change* —
answers an interaction's other steps: corrections, boxes, refining. The change is kept
small: each 2-D weight's change as a low-rank product ``lora_a @ lora_b`` (an SVD of what training changed), every
other tensor's change in full. It is added to whatever the decoder is now, so a tuned decoder keeps its tuning in
the corrector as well.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field

import torch
from torch import nn

from ..file_checks import CheckpointError
from .adapters import is_decoder_weight

PREFIX = "corrector."  # a corrector's tensors in an adapter file: corrector.<decoder weight>.<part>
PARTS = ("lora_a", "lora_b", "delta")


@dataclass(frozen=True)
class CorrectorChange:
    """What turns a model's decoder into its corrector: {decoder weight: (lora_a, lora_b) or delta}."""

    low_rank: dict[str, tuple[torch.Tensor, torch.Tensor]]
    full: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)  # how it was made (stored in the adapter file's metadata)

    @property
    def names(self) -> list[str]:
        return sorted([*self.low_rank, *self.full])

    def change_of(self, name: str) -> torch.Tensor:
        if name in self.low_rank:
            a, b = self.low_rank[name]
            return a.float() @ b.float()
        return self.full[name].float()

    def file_tensors(self) -> dict[str, torch.Tensor]:
        """Its tensors under ``PREFIX`` names, as an adapter file stores them."""
        out = {}
        for name, (a, b) in self.low_rank.items():
            out[f"{PREFIX}{name}.lora_a"], out[f"{PREFIX}{name}.lora_b"] = a.contiguous(), b.contiguous()
        for name, delta in self.full.items():
            out[f"{PREFIX}{name}.delta"] = delta.contiguous()
        return out

    @classmethod
    def from_file_tensors(cls, tensors: dict[str, torch.Tensor], shapes: dict[str, torch.Size], source: str,
                          meta: dict | None = None) -> CorrectorChange:
        """The change stored in an adapter file's ``PREFIX`` tensors, checked against the model's decoder weight
        ``shapes``: one clear error for a name the model lacks, a missing half of a product, or a wrong shape."""
        parts: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in tensors.items():
            name, _, part = key[len(PREFIX):].rpartition(".")
            if part not in PARTS or not is_decoder_weight(name) or name not in shapes:
                raise CheckpointError(f"{source}: corrector tensor '{key}' names no decoder weight of this model")
            parts.setdefault(name, {})[part] = tensor
        low_rank, full = {}, {}
        for name, got in parts.items():
            want = tuple(shapes[name])
            if set(got) == {"delta"} and tuple(got["delta"].shape) == want:
                full[name] = got["delta"]
            elif (set(got) == {"lora_a", "lora_b"} and got["lora_a"].ndim == got["lora_b"].ndim == 2
                  and (got["lora_a"].shape[0], got["lora_b"].shape[1]) == want
                  and got["lora_a"].shape[1] == got["lora_b"].shape[0]):
                low_rank[name] = (got["lora_a"], got["lora_b"])
            else:
                found = {k: tuple(v.shape) for k, v in got.items()}
                raise CheckpointError(f"{source}: the corrector's change of '{name}' is {found}, the weight is "
                                      f"{want}; the file is damaged or for another model")
        return cls(low_rank, full, dict(meta or {}))

    @classmethod
    def between(cls, before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], rank: int,
                meta: dict | None = None) -> CorrectorChange:
        """The change from decoder weights ``before`` to ``after`` (state dicts by name): each 2-D weight larger
        than ``rank`` both ways as its best rank-``rank`` product (truncated SVD), other changed tensors in full;
        fp16. Unchanged weights are left out."""
        low_rank, full = {}, {}
        for name, new in after.items():
            if not is_decoder_weight(name):
                continue
            delta = new.detach().float().cpu() - before[name].detach().float().cpu()
            if not delta.abs().max() > 0:
                continue
            if delta.ndim == 2 and min(delta.shape) > rank:
                u, s, vh = torch.linalg.svd(delta, full_matrices=False)
                low_rank[name] = ((u[:, :rank] * s[:rank]).half(), vh[:rank].half())
            else:
                full[name] = delta.half()
        return cls(low_rank, full, {"rank": rank, **(meta or {})})

    def meta_json(self) -> str:
        return json.dumps(self.meta)


class PromptSide(nn.Module):
    """A prompt encoder and mask decoder without an image encoder: what ``decoding.decode`` and the decoder
    graph need of a model."""

    def __init__(self, prompt_encoder: nn.Module, mask_decoder: nn.Module) -> None:
        super().__init__()
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder


@torch.no_grad()
def corrector_of(sam: nn.Module, change: CorrectorChange) -> PromptSide:
    """A copy of ``sam``'s prompt side with ``change`` added (on ``sam``'s device, in eval mode)."""
    side = PromptSide(copy.deepcopy(sam.prompt_encoder), copy.deepcopy(sam.mask_decoder)).eval()
    state = side.state_dict()
    for name in change.names:
        if name not in state:
            raise CheckpointError(f"the corrector changes '{name}', which this model lacks")
        state[name].add_(change.change_of(name).to(state[name].device, state[name].dtype))
    for p in side.parameters():
        p.requires_grad_(False)
    return side
