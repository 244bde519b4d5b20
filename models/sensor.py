"""The deep sensor model: a small MLP over the sensor feature vector.

Inputs are standardised inside the module (the training set's mean and scale are
buffers, saved with the weights), so callers pass raw features.

>>> m = SensorMLP(n_features=3, hidden=(4,))
>>> m.eval()(torch.zeros(2, 3)).shape
torch.Size([2])
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SensorMLP"]


class SensorMLP(nn.Module):
    """Binary classifier: features -> one logit per row."""

    mean: torch.Tensor
    scale: torch.Tensor

    def __init__(self, n_features: int, hidden: tuple[int, ...] = (32, 32),
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("scale", torch.ones(n_features))
        layers: list[nn.Module] = []
        width = n_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def set_scaling(self, mean: torch.Tensor, scale: torch.Tensor) -> None:
        """Store the standardisation learned from the training set."""
        self.mean.copy_(mean)
        self.scale.copy_(torch.where(scale > 0, scale, torch.ones_like(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.mean) / self.scale
        out: torch.Tensor = self.net(z).squeeze(-1)
        return out
