"""The deep sensor model: a small ensemble of MLPs over the sensor feature vector.

Inputs are standardised inside the module (the training set's mean and scale are
buffers, saved with the weights), so callers pass raw features. The output is one
logit per member and row (`models.ensemble`).

>>> m = SensorMLP(n_features=3, hidden=(4,), members=5)
>>> m.eval()(torch.zeros(2, 3)).shape
torch.Size([2, 5])
"""

from __future__ import annotations

import torch
from torch import nn

from models.ensemble import EnsembleMLP

__all__ = ["SensorMLP"]


class SensorMLP(nn.Module):
    """Binary classifier: features `[N, n_features]` -> member logits `[N, members]`."""

    mean: torch.Tensor
    scale: torch.Tensor

    def __init__(self, n_features: int, hidden: tuple[int, ...] = (32, 32), members: int = 5,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.members = members
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("scale", torch.ones(n_features))
        self.body = EnsembleMLP(n_features, tuple(hidden), members, dropout)

    def set_scaling(self, mean: torch.Tensor, scale: torch.Tensor) -> None:
        """Store the standardisation learned from the training set."""
        self.mean.copy_(mean)
        self.scale.copy_(torch.where(scale > 0, scale, torch.ones_like(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body((x - self.mean) / self.scale)
        return out
