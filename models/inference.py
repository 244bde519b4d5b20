"""Batched inference: one collate, one host-to-device copy, inference mode, input order.

>>> from models.sensor import SensorMLP
>>> s = BatchScorer(SensorMLP(2, (3,)), torch.device("cpu"))
>>> p = s.probabilities(np.zeros((5, 2), dtype=np.float32))
>>> p.shape, bool(((p > 0) & (p < 1)).all())
((5,), True)
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

__all__ = ["BatchScorer", "pick_device"]

log = logging.getLogger(__name__)


def pick_device(setting: str = "auto", cpu_threads: int | None = None) -> torch.device:
    """`cuda` when available and not overridden, else CPU; chosen once and logged.

    `cpu_threads` caps PyTorch's intra-op threads: a worker shares its cores with the
    event loop and often the broker, and small batches gain nothing from more threads.
    """
    if cpu_threads is not None:
        torch.set_num_threads(cpu_threads)
    if setting == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(setting)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {setting!r} requested but CUDA is not available")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    log.info("inference device: %s (%s)", device, name)
    return device


class BatchScorer:
    """Scores float32 feature matrices with a binary classifier that returns logits."""

    def __init__(self, module: nn.Module, device: torch.device) -> None:
        self.device = device
        self.module = module.to(device).eval()
        self._pinned: torch.Tensor | None = None

    def _to_device(self, x: np.ndarray) -> torch.Tensor:
        host = torch.from_numpy(x)
        if self.device.type != "cuda":
            return host
        if self._pinned is None or self._pinned.shape[0] < x.shape[0] \
                or self._pinned.shape[1] != x.shape[1]:
            self._pinned = torch.empty(max(x.shape[0], 1024), x.shape[1]).pin_memory()
        staged = self._pinned[: x.shape[0]]
        staged.copy_(host)
        return staged.to(self.device, non_blocking=True)

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """P(positive) for each row of `x` (float32, rows x features), in input order."""
        if x.shape[0] == 0:
            return np.zeros(0)
        with torch.inference_mode():
            logits = self.module(self._to_device(np.ascontiguousarray(x, np.float32)))
            probs = torch.sigmoid(logits.float()).cpu().numpy()
        return probs.astype(np.float64)
