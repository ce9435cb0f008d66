"""SGZ's training objective: the weighted sum of its five losses, each reported on its own."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from . import ops

COMPONENTS = ("tv", "spa", "col", "exp", "sem")


@dataclass(frozen=True)
class LossWeights:
    """The reference's weights: 1600 TV + 1 spa + 5 col + 10 exp + 0.1 sem."""
    tv: float = 1600.0
    spa: float = 1.0
    col: float = 5.0
    exp: float = 10.0
    sem: float = 0.1


class SGZLoss(nn.Module):
    """Total loss of SGZ. ``forward`` returns (total, {component: weighted value}).

    ``semantic`` is a module mapping the enhanced image to its semantic loss (sgllie.semantic.
    SemanticLoss), or None to train without that term (then weights.sem must be 0).
    """

    def __init__(self, weights: LossWeights = LossWeights(), patch_size: int = 4, exp_level: float = 0.6,
                 semantic: nn.Module | None = None):
        super().__init__()
        if semantic is None and weights.sem != 0:
            raise ValueError("a semantic weight other than 0 needs a semantic loss module")
        self.weights = weights
        self.patch_size = patch_size
        self.exp_level = exp_level
        self.semantic = semantic

    def forward(self, enhanced: Tensor, r: Tensor, low: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        spa, exp, col = ops.zero_reference_loss(enhanced, low, patch=self.patch_size, level=self.exp_level)
        w = self.weights
        parts = {"tv": w.tv * ops.tv_loss(r), "spa": w.spa * spa, "col": w.col * col, "exp": w.exp * exp}
        if self.semantic is not None and w.sem != 0:
            parts["sem"] = w.sem * self.semantic(enhanced)
        total = torch.stack(list(parts.values())).sum()
        return total, parts
