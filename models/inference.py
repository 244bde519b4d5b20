"""Batched inference: one collate, one host-to-device copy, inference mode, input order.

`collate` turns a feature table into the float32 matrix a model takes, by the model's
manifest; training calls it too, so what is trained on is what is served. `BatchScorer`
scores such a matrix with an ensemble (logits `[N, K]`) and returns `Scores`: the mean
of the members' probabilities, its predictive entropy, and the members' variance.

>>> import pyarrow as pa
>>> from models.sensor import SensorMLP
>>> t = pa.table({"a": [0.5, None, 2.0], "b": [1.0, 2.0, 3.0]})
>>> x, bad = collate(t, {"feature_names": ["a", "b"]})
>>> x.dtype, bad.tolist()
(dtype('float32'), [False, True, False])
>>> s = BatchScorer(SensorMLP(2, (3,), members=5), torch.device("cpu")).score(x[~bad])
>>> s.probability.shape, bool(((s.probability > 0) & (s.probability < 1)).all())
((2,), True)
>>> bool((s.variance > 0).all()), bool((s.uncertainty <= 1).all())
(True, True)
"""

from __future__ import annotations

import contextlib
import functools
import logging
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import nn

from models.uncertainty import binary_entropy

__all__ = ["PRECISIONS", "BatchScorer", "Scores", "collate", "id_bucket", "pick_device"]

log = logging.getLogger(__name__)

PRECISIONS: dict[str, torch.dtype | None] = {
    "fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
MAX_BUCKETS = 1 << 24  # every bucket index is exact in float32


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


@functools.lru_cache(maxsize=1 << 20)
def id_bucket(key: str, buckets: int) -> int:
    """The embedding bucket of an id: CRC-32 of its UTF-8 bytes modulo `buckets`.

    The same in every process and run (unlike `hash()`, which is salted per process).

    >>> id_bucket("42", 1 << 14), id_bucket("42", 1 << 14) == zlib.crc32(b"42") % (1 << 14)
    (12424, True)
    """
    return zlib.crc32(key.encode("utf-8")) % buckets


def _buckets(col: pa.Array | pa.ChunkedArray, buckets: int) -> np.ndarray:
    """Bucket of each row's id as float64, NaN where the id is null; each distinct id of
    the column is hashed once."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    encoded = pc.dictionary_encode(col if pa.types.is_string(col.type) else col.cast(pa.string()))
    lookup = np.array([id_bucket(k, buckets) for k in encoded.dictionary.to_pylist()] + [0],
                      np.float64)
    codes = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False)
    return np.where(codes >= 0, lookup[codes], np.nan)


def _numeric(t: pa.DataType) -> bool:
    return bool(pa.types.is_floating(t) or pa.types.is_integer(t))


def collate(table: pa.Table | pa.RecordBatch, manifest: Mapping[str, Any]
            ) -> tuple[np.ndarray, np.ndarray]:
    """The float32 model input of each row of `table`, in row order, and which rows cannot
    be scored.

    Columns: the manifest's `id_columns` first (if any), each id hashed into
    `id_buckets` buckets by `id_bucket`, then its `feature_names`. A row is bad when an
    id is null or a feature is null, NaN or infinite; every row is bad when a column is
    missing or not numeric. Bad rows are all NaN, so scoring one by mistake gives NaN,
    never a plausible number.

    >>> t = pa.table({"user": ["u1", None], "f": [1.0, 2.0]})
    >>> x, bad = collate(t, {"id_columns": ["user"], "id_buckets": 100, "feature_names": ["f"]})
    >>> x.tolist(), bad.tolist()
    ([[22.0, 1.0], [nan, nan]], [False, True])
    >>> collate(t, {"feature_names": ["f", "g"]})[1].tolist()
    [True, True]
    """
    ids: list[str] = list(manifest.get("id_columns") or [])
    names: list[str] = list(manifest["feature_names"])
    n = table.num_rows
    # column-major: each column is written contiguously (a row-major scatter was twice
    # as slow), and x.T is the C-contiguous block that goes to the device in one copy
    x = np.empty((n, len(ids) + len(names)), np.float32, order="F")
    schema = table.schema
    types = dict(zip(schema.names, schema.types, strict=True))
    usable = all(c in types for c in ids) and all(
        c in types and _numeric(types[c]) for c in names)
    if not usable:
        x.fill(np.nan)
        return x, np.ones(n, bool)
    if ids:
        buckets = int(manifest["id_buckets"])
        if not 0 < buckets <= MAX_BUCKETS:
            raise ValueError(f"id_buckets must be in 1..{MAX_BUCKETS}, not {buckets}")
        for j, c in enumerate(ids):
            x[:, j] = _buckets(table.column(c), buckets)
    columns = dict(zip(schema.names, table.columns, strict=True))
    for j, c in enumerate(names, start=len(ids)):
        col = columns[c]
        x[:, j] = (col if pa.types.is_floating(types[c]) else col.cast(pa.float64())
                   ).to_numpy(zero_copy_only=False)
    bad = np.logical_not(np.isfinite(x).all(axis=1))
    if bad.any():
        x[bad] = np.nan
    return x, bad


@dataclass(frozen=True)
class Scores:
    """What an ensemble says about each row, in input order (float64 arrays).

    `probability` is the mean of the members' probabilities, `uncertainty` its
    predictive entropy in bits (`binary_entropy(probability)`), and `variance` the
    variance of the members' probabilities (0 with one member): their disagreement.
    """

    probability: np.ndarray
    uncertainty: np.ndarray
    variance: np.ndarray

    def __len__(self) -> int:
        return len(self.probability)


class BatchScorer:
    """Scores float32 matrices with an ensemble that returns member logits `[N, K]`.

    `precision` ("fp32", "bf16" or "fp16") is the autocast dtype on CUDA; on a CPU
    scoring is always fp32. Outputs are float64 whatever the precision.
    """

    def __init__(self, module: nn.Module, device: torch.device,
                 precision: str = "fp32") -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, not {precision!r}")
        self.device = device
        self.module = module.to(device).eval()
        self.precision = precision if device.type == "cuda" else "fp32"
        if precision != self.precision:
            log.info("precision %s applies on CUDA only: scoring in fp32 on %s", precision, device)
        self._pinned: torch.Tensor | None = None

    def _to_device(self, x: np.ndarray) -> torch.Tensor:
        """`x` on the device as a `[N, F]` view of a feature-major `[F, N]` block: a
        column-major `x` (as `collate` makes it) crosses in one contiguous copy, through
        pinned memory and without blocking on CUDA."""
        columns = torch.from_numpy(np.ascontiguousarray(x.T, np.float32))  # no copy if F-order
        if self.device.type != "cuda":
            return columns.T
        need = columns.numel()
        if self._pinned is None or self._pinned.numel() < need:
            self._pinned = torch.empty(max(need, 1 << 20), dtype=torch.float32).pin_memory()
        staged = self._pinned[:need].view(columns.shape)
        staged.copy_(columns)  # the last call's copy is done: score() waited for its result
        return staged.to(self.device, non_blocking=True).T

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=dtype)

    def _members(self, x: np.ndarray) -> torch.Tensor:
        """The members' probabilities `[N, K]` (float32, on the device); in inference mode."""
        with self._autocast():
            logits = self.module(self._to_device(x))
        if logits.dim() != 2 or logits.shape[0] != x.shape[0]:
            raise ValueError(f"{type(self.module).__name__} returned logits of shape "
                             f"{tuple(logits.shape)} for {x.shape[0]} rows, not [rows, members]")
        return torch.sigmoid(logits.float())

    def member_probabilities(self, x: np.ndarray) -> np.ndarray:
        """Each member's P(positive) for each row of `x` (float32, rows x inputs): `[N, K]`."""
        with torch.inference_mode():
            probs: np.ndarray = self._members(x).cpu().numpy()
        return probs.astype(np.float64)

    def score(self, x: np.ndarray) -> Scores:
        """Probability, uncertainty and member variance of each row of `x`, in input order.

        Mean and variance are taken on the device, so one `[N, 2]` copy comes back.
        """
        if x.shape[0] == 0:
            return Scores(np.zeros(0), np.zeros(0), np.zeros(0))
        with torch.inference_mode():
            p = self._members(x)
            stats = torch.stack([p.mean(dim=1), p.var(dim=1, correction=0)], dim=1)
            host = stats.cpu().numpy().astype(np.float64)
        mean = np.ascontiguousarray(host[:, 0])
        return Scores(mean, binary_entropy(mean), np.ascontiguousarray(host[:, 1]))

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """P(positive) for each row of `x`: `score(x).probability`."""
        return self.score(x).probability
