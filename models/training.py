"""Offline training of the deep models from event tables (no Kafka here).

The features come from the functions the featurize agents run (`sensor_features`,
`engagement_features`) over the events in event-time order, from empty state, and the
model input from `models.inference.collate` with the manifest that is saved: training
sees exactly what serving will. Rows collate marks bad are left out, as infer
dead-letters them. The last `val_fraction` of the stream (by time) is held out for the
validation metrics stored in the manifest.

Every member of an ensemble trains on the same mini-batches with its own initial
weights and its own bootstrap weights (a Poisson(1) count per row and member); the loss
is the members' losses summed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F
from scipy.stats import rankdata

from models.engagement import (
    ENGAGEMENT_FEATURE_SET,
    EngagementConfig,
    engagement_features,
    positive_events,
)
from models.features import FEATURE_SET, SensorConfig, sensor_features
from models.inference import BatchScorer, collate
from models.ranker import EngagementMLP
from models.registry import Registry
from models.sensor import SensorMLP

__all__ = ["ENGAGEMENT_ID_BUCKETS", "ENGAGEMENT_ID_COLUMNS", "ENGAGEMENT_MODEL", "TrainResult",
           "engagement_training_set", "event_kind", "roc_auc", "sensor_training_set",
           "train_engagement_model", "train_sensor_model"]

log = logging.getLogger(__name__)

ENGAGEMENT_MODEL = "movielens"  # registry name of the engagement model
#: engagement feature batches: entity_id is the user id
ENGAGEMENT_ID_COLUMNS = ["entity_id", "item_id"]
ENGAGEMENT_ID_BUCKETS = 1 << 14


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


def event_kind(columns: Iterable[str]) -> str | None:
    """Which model a table of events trains: "engagement", "sensor" (labelled sensor
    events) or None.

    >>> event_kind(["event_id", "user_id", "item_id", "event_time", "kind", "value"])
    'engagement'
    >>> event_kind(["sensor_id", "event_time", "readings.t", "label"]), event_kind(["x"])
    ('sensor', None)
    """
    names = set(columns)
    if {"user_id", "item_id", "event_time", "kind"} <= names:
        return "engagement"
    if {"sensor_id", "event_time", "label"} <= names and any(
            n.startswith("readings.") for n in names):
        return "sensor"
    return None


def _in_time_order(events: pa.Table) -> pa.RecordBatch:
    """The events as one batch, stably sorted by event time."""
    order = pc.sort_indices(events, sort_keys=[("event_time", "ascending")])
    return events.take(order).combine_chunks().to_batches()[0]


def sensor_training_set(events: pa.Table, config: SensorConfig
                        ) -> tuple[pa.RecordBatch, np.ndarray]:
    """The feature batch of the events the featurize agent accepts (from empty state, in
    event-time order) and their labels (the events' `label` column, 0 or 1)."""
    batch = _in_time_order(events)
    feats, _, skipped = sensor_features(batch, {}, config)
    kept = np.setdiff1d(np.arange(batch.num_rows), [s.row for s in skipped])
    y = batch.column("label").to_numpy(zero_copy_only=False).astype(np.float32)[kept]
    return feats, y


def engagement_training_set(events: pa.Table, config: EngagementConfig
                            ) -> tuple[pa.RecordBatch, np.ndarray]:
    """The feature batch of the events (from empty state, in event-time order) and their
    labels: 1 for a positive event (`models.engagement.positive_events`), else 0."""
    batch = _in_time_order(events)
    feats, _ = engagement_features(batch, {}, config)
    return feats, positive_events(batch, config).astype(np.float32)


def _fit(model: SensorMLP | EngagementMLP, x: np.ndarray, y: np.ndarray, *, epochs: int,
         rng: np.random.Generator, device: torch.device, pos_weight: float = 1.0,
         lr: float = 3e-3, batch_size: int = 512) -> None:
    """Train all members together: binary cross-entropy, bootstrap-weighted per member,
    summed over members."""
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    boot = torch.from_numpy(rng.poisson(1.0, (len(x), model.members)).astype(np.float32))
    boot = boot.to(device)
    pw = torch.tensor(pos_weight, device=device)
    for _ in range(epochs):
        perm = torch.from_numpy(rng.permutation(len(x))).to(device)
        for i in range(0, len(perm), batch_size):
            idx = perm[i:i + batch_size]
            logits = model(xt[idx])
            loss = F.binary_cross_entropy_with_logits(
                logits, yt[idx, None].expand_as(logits), weight=boot[idx], pos_weight=pw,
                reduction="none").sum(1).mean()
            opt.zero_grad()
            torch.autograd.backward(loss)
            opt.step()
    model.eval()


def _metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    pc_ = np.clip(p, 1e-7, 1 - 1e-7)
    return {
        "val_auc": roc_auc(y, p),
        "val_accuracy": float(((p >= 0.5) == (y == 1)).mean()),
        "val_log_loss": float(-np.mean(y * np.log(pc_) + (1 - y) * np.log(1 - pc_))),
    }


def _train(model: SensorMLP | EngagementMLP, init_args: dict[str, Any], feats: pa.RecordBatch,
           y: np.ndarray, inputs: dict[str, Any], *, registry: Registry, name: str,
           feature_set: str, epochs: int, seed: int, device: torch.device,
           val_fraction: float, promote: bool, balance: bool) -> TrainResult:
    """Collate, split by time, scale, fit, validate, save (and promote)."""
    x, bad = collate(feats, inputs)
    x, y = x[~bad], y[~bad]
    cut = int(len(x) * (1 - val_fraction))
    x_tr, y_tr, x_va, y_va = x[:cut], y[:cut], x[cut:], y[cut:]
    if not len(x_tr) or not len(x_va):
        raise ValueError(f"{name}: {len(x)} usable rows cannot be split into training and "
                         f"validation at val_fraction={val_fraction}")
    ids = len(inputs.get("id_columns") or [])
    feats_tr = x_tr[:, ids:].astype(np.float64)
    model.set_scaling(torch.from_numpy(feats_tr.mean(0)).float(),
                      torch.from_numpy(feats_tr.std(0)).float())
    pos = max(float(y_tr.sum()), 1.0)
    _fit(model, x_tr, y_tr, epochs=epochs, rng=np.random.default_rng(seed), device=device,
         pos_weight=(len(y_tr) - pos) / pos if balance else 1.0)
    p = BatchScorer(model, device).score(x_va).probability
    model.cpu()
    metrics = _metrics(y_va, p) | {"train_rows": float(len(x_tr)), "val_rows": float(len(x_va))}
    version = registry.save(name, model, init_args, feature_names=inputs["feature_names"],
                            feature_set=feature_set, metrics=metrics,
                            id_columns=inputs.get("id_columns"),
                            id_buckets=inputs.get("id_buckets"))
    if promote:
        registry.promote(name, version)
    log.info("trained %s v%d: %s", name, version, metrics)
    return TrainResult(name, version, metrics, inputs["feature_names"])


def train_sensor_model(events: pa.Table, registry: Registry, name: str, *,
                       config: SensorConfig, epochs: int = 15, seed: int = 0,
                       device: torch.device | None = None, val_fraction: float = 0.2,
                       promote: bool = True, members: int = 5) -> TrainResult:
    """Train the sensor ensemble on sensor events with a `label` column, validate, save to
    the registry (and promote); return the version and metrics.

    Positives are up-weighted to balance the classes (the shuttle set has about 7%).
    """
    torch.manual_seed(seed)
    feats, y = sensor_training_set(events, config)
    names = feats.schema.metadata[b"feature_names"].decode().split(",")
    init_args: dict[str, Any] = {"n_features": len(names), "hidden": [32, 32],
                                 "members": members, "dropout": 0.1}
    model = SensorMLP(**init_args)
    return _train(model, init_args, feats, y, {"feature_names": names}, registry=registry,
                  name=name, feature_set=FEATURE_SET, epochs=epochs, seed=seed,
                  device=device or torch.device("cpu"), val_fraction=val_fraction,
                  promote=promote, balance=True)


def train_engagement_model(events: pa.Table, registry: Registry,
                           name: str = ENGAGEMENT_MODEL, *, config: EngagementConfig,
                           epochs: int = 3, seed: int = 0, device: torch.device | None = None,
                           val_fraction: float = 0.2, promote: bool = True,
                           members: int = 5, buckets: int = ENGAGEMENT_ID_BUCKETS
                           ) -> TrainResult:
    """Train the engagement ensemble on engagement events (`models.datasets.movielens`'s
    columns), validate, save to the registry (and promote); return the version and metrics.

    The label of an event is whether it is a positive; the user and item ids are hashed
    into `buckets` embedding rows each.
    """
    torch.manual_seed(seed)
    feats, y = engagement_training_set(events, config)
    names = feats.schema.metadata[b"feature_names"].decode().split(",")
    inputs = {"feature_names": names, "id_columns": ENGAGEMENT_ID_COLUMNS,
              "id_buckets": buckets}
    init_args: dict[str, Any] = {"n_features": len(names), "buckets": buckets, "dim": 16,
                                 "hidden": [64, 32], "members": members, "dropout": 0.1}
    model = EngagementMLP(**init_args)
    return _train(model, init_args, feats, y, inputs, registry=registry, name=name,
                  feature_set=ENGAGEMENT_FEATURE_SET, epochs=epochs, seed=seed,
                  device=device or torch.device("cpu"), val_fraction=val_fraction,
                  promote=promote, balance=False)
