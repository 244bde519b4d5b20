"""Deep ensembles in one forward pass: K members' weights stacked, one batched matmul.

The contract every deep model in `models/` keeps: `forward(x)` takes float32 rows
`[N, F]` and returns the members' logits `[N, K]`, one column per member. Members differ
by their initial weights (and, in training, by their bootstrap weights); dropout runs in
training only, so a model in eval mode is deterministic.

>>> torch.manual_seed(0) is not None
True
>>> body = EnsembleMLP(3, hidden=(4,), members=5).eval()
>>> out = body(torch.zeros(2, 3))
>>> out.shape, bool(out[0, 0] != out[0, 1])
(torch.Size([2, 5]), True)
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["EnsembleLinear", "EnsembleMLP"]


class EnsembleLinear(nn.Module):
    """K independent affine maps: `[N, in]` (shared by all) or `[K, N, in]` -> `[K, N, out]`.

    Weights are `[K, in, out]`, each member drawn like `nn.Linear`'s
    (uniform in +-1/sqrt(in)) from the global generator, so `torch.manual_seed` fixes them.
    """

    def __init__(self, members: int, n_in: int, n_out: int) -> None:
        super().__init__()
        if members < 1:
            raise ValueError(f"an ensemble needs at least one member, not {members}")
        bound = 1 / math.sqrt(n_in)
        self.weight = nn.Parameter(torch.empty(members, n_in, n_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(members, 1, n_out).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # the same rows for every member: a view, nothing copied
            x = x.expand(self.weight.shape[0], -1, -1)
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleMLP(nn.Module):
    """K MLPs of the same shape, evaluated together: `[N, F]` -> logits `[N, K]`."""

    def __init__(self, n_in: int, hidden: tuple[int, ...] = (32, 32), members: int = 5,
                 dropout: float = 0.1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = n_in
        for h in hidden:
            layers += [EnsembleLinear(members, width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        layers.append(EnsembleLinear(members, width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)  # [K, N, 1]
        return out.squeeze(-1).transpose(0, 1)
