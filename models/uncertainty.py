"""Uncertainty scores: pure functions of what a model predicted, never a change to it.

>>> binary_entropy(np.array([0.5, 1.0, 0.0])).tolist()
[1.0, 0.0, 0.0]
"""

from __future__ import annotations

import numpy as np

__all__ = ["binary_entropy"]


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """Predictive entropy of Bernoulli(p), in bits: 0 when sure, 1 at p = 0.5."""
    q = np.clip(p.astype(np.float64), 1e-12, 1 - 1e-12)
    h = -(q * np.log2(q) + (1 - q) * np.log2(1 - q))
    return np.where(h < 1e-9, 0.0, h)
