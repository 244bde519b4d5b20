"""The deep engagement model: user and item embeddings beside the engagement features,
into a small ensemble of MLPs that scores P(positive engagement).

Input rows are `[user_bucket, item_bucket, *features]` as float32, the layout
`models.inference.collate` builds from a feature batch whose manifest names
`id_columns` (hashed ids, exact in float32 below 2**24) before its `feature_names`. The
embedding tables are shared by all members; the features are standardised inside the
module (the training set's mean and scale are buffers), so callers pass raw features.

>>> m = EngagementMLP(n_features=3, buckets=16, dim=4, hidden=(8,), members=5).eval()
>>> x = torch.tensor([[0.0, 15.0, 1.0, 2.0, 3.0], [7.0, 7.0, 0.0, 0.0, 0.0]])
>>> m(x).shape
torch.Size([2, 5])
"""

from __future__ import annotations

import torch
from torch import nn

from models.ensemble import EnsembleMLP

__all__ = ["EngagementMLP"]

ID_COLUMNS = 2  # user bucket, item bucket


class EngagementMLP(nn.Module):
    """Binary classifier: `[N, 2 + n_features]` -> member logits `[N, members]`.

    `n_features` counts the engagement features only; `buckets` is the size of each
    embedding table (ids are hashed into it), `dim` the embedding width.
    """

    mean: torch.Tensor
    scale: torch.Tensor

    def __init__(self, n_features: int, buckets: int = 1 << 14, dim: int = 16,
                 hidden: tuple[int, ...] = (64, 32), members: int = 5,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.members = members
        self.users = nn.Embedding(buckets, dim)
        self.items = nn.Embedding(buckets, dim)
        for table in (self.users, self.items):  # near zero: an unseen id adds little
            nn.init.normal_(table.weight, std=0.01)
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("scale", torch.ones(n_features))
        self.body = EnsembleMLP(2 * dim + n_features, tuple(hidden), members, dropout)

    def set_scaling(self, mean: torch.Tensor, scale: torch.Tensor) -> None:
        """Store the standardisation of the features learned from the training set."""
        self.mean.copy_(mean)
        self.scale.copy_(torch.where(scale > 0, scale, torch.ones_like(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a row collate marked bad is all NaN: bucket 0 keeps the lookup in range and the
        # NaN features still make its logits NaN
        ids = torch.nan_to_num(x[:, :ID_COLUMNS], nan=0.0).long()
        z = (x[:, ID_COLUMNS:] - self.mean) / self.scale
        out: torch.Tensor = self.body(torch.cat([self.users(ids[:, 0]), self.items(ids[:, 1]),
                                                 z], dim=1))
        return out
