"""Offline training of the deep sensor model from an event table (no Kafka here).

The features come from `models.features.sensor_features`, the function the featurize
agent runs, over the events in event-time order; the last `val_fraction` of the stream
(by time) is held out for the validation metrics stored in the manifest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from scipy.stats import rankdata
from torch import nn

from models.features import FEATURE_SET, SensorConfig, feature_names, sensor_features
from models.inference import BatchScorer
from models.registry import Registry
from models.sensor import SensorMLP

__all__ = ["TrainResult", "feature_matrix", "roc_auc", "train_sensor_model"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    name: str
    version: int
    metrics: dict[str, float]
    feature_names: list[str]


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties averaged).

    >>> roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    0.75
    """
    pos = y == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(p)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def feature_matrix(events: pa.Table, config: SensorConfig
                   ) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Features of the events the featurize agent accepts (from empty state), as float32
    rows, their names, and the accepted rows' indices into `events`."""
    batch = events.combine_chunks().to_batches()[0]
    feats, _, skipped = sensor_features(batch, {}, config)
    readings = [n.removeprefix("readings.") for n in events.schema.names
                if n.startswith("readings.")]
    names = feature_names(readings, config)
    x = np.column_stack([feats.column(n).to_numpy(zero_copy_only=False) for n in names])
    kept = np.setdiff1d(np.arange(events.num_rows), [s.row for s in skipped])
    return np.nan_to_num(x.astype(np.float32)), names, kept


def train_sensor_model(events: pa.Table, registry: Registry, name: str, *,
                       config: SensorConfig,
                       epochs: int = 15, seed: int = 0, device: torch.device | None = None,
                       val_fraction: float = 0.2, promote: bool = True) -> TrainResult:
    """Train, validate, save to the registry (and promote), return the version and metrics."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    device = device or torch.device("cpu")
    x, names, kept = feature_matrix(events, config)
    y = events.column("label").to_numpy().astype(np.float32)[kept]
    cut = int(len(x) * (1 - val_fraction))
    x_tr, y_tr, x_va, y_va = x[:cut], y[:cut], x[cut:], y[cut:]

    init_args = {"n_features": len(names), "hidden": [32, 32], "dropout": 0.1}
    model = SensorMLP(len(names), hidden=(32, 32), dropout=0.1)
    model.set_scaling(torch.from_numpy(x_tr.mean(0)), torch.from_numpy(x_tr.std(0)))
    model.to(device).train()
    pos = max(float(y_tr.sum()), 1.0)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor((len(y_tr) - pos) / pos,
                                                           device=device))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x_tr).to(device), torch.from_numpy(y_tr).to(device)
    for _ in range(epochs):
        perm = torch.from_numpy(rng.permutation(len(x_tr))).to(device)
        for i in range(0, len(perm), 512):
            idx = perm[i:i + 512]
            opt.zero_grad()
            loss_fn(model(xt[idx]), yt[idx]).backward()
            opt.step()
    model.eval().cpu()
    p = BatchScorer(model, torch.device("cpu")).probabilities(x_va)
    pc = np.clip(p, 1e-7, 1 - 1e-7)
    metrics = {
        "val_auc": roc_auc(y_va, p),
        "val_accuracy": float(((p >= 0.5) == (y_va == 1)).mean()),
        "val_log_loss": float(-np.mean(y_va * np.log(pc) + (1 - y_va) * np.log(1 - pc))),
        "train_rows": float(len(x_tr)), "val_rows": float(len(x_va)),
    }
    version = registry.save(name, model, init_args, feature_names=names,
                            feature_set=FEATURE_SET, metrics=metrics)
    if promote:
        registry.promote(name, version)
    log.info("trained %s v%d: %s", name, version, metrics)
    return TrainResult(name, version, metrics, names)
