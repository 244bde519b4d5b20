"""The infer step: route feature batches to the model of their feature set, score them in
micro-batches, and write one prediction per event (DESIGN.md §6).

The agent loop itself lives in `streams.agents`; everything here is a plain function of
tables, so it is tested without a broker.
"""

from __future__ import annotations

import fnmatch
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from models.inference import collate
from schemas.codec import Rejected, read_ipc
from schemas.events import ARROW, JSON, headers
from schemas.predictions import predictions_json
from streams.metrics import BATCH_ROWS, END_TO_END_SECONDS, EVENTS, STAGE_SECONDS, UNSCORED
from streams.outbox import now_ms
from streams.serving import Served, ServedHead, Serving, family
from streams.settings import Settings

__all__ = ["QUESTION_HEADERS", "Routed", "chunks", "head_columns", "infer_batch", "route"]

log = logging.getLogger(__name__)

JSON_HEADERS = headers(JSON, "prediction.v1")
ARROW_HEADERS = headers(ARROW, "prediction.v1")
QUESTION_HEADERS = headers(ARROW, "head-question.v1")
DEEP_SCORE = "deep_score"


class Sender(Protocol):
    """What infer needs of streams.outbox.Outbox."""

    async def send(self, topic: str, value: bytes, *, key: bytes | None = None,
                   partition: int | None = None, headers: Any = None) -> Any: ...

    async def send_keyed(self, topic: str, keys: Any, values: Any, headers: Any) -> Any: ...

    async def send_table(self, topic: str, table: Any, *, partition: int | None = None,
                         headers: Any = None) -> Any: ...

    async def dead_letter(self, agent: str, rejected: Rejected, *, topic: str, partition: int,
                          offset: int, key: bytes | None, raw: bytes | None) -> Any: ...


@dataclass
class Routed:
    """One micro-batch's feature tables grouped by the model that scores them."""

    groups: dict[str, tuple[Served, list[pa.Table]]] = field(default_factory=dict)
    rejected: list[tuple[int, Rejected]] = field(default_factory=list)  # (message index, why)


_warned: set[str] = set()


def route(values: list[bytes], partitions: list[int], serving: Serving,
          offsets: list[int] | None = None) -> Routed:
    """Decode feature messages and group them by served model, in message order.

    A message that is not Arrow, or whose feature set has the family of a served model
    but another version, is rejected whole (the caller dead-letters it). A feature set
    no served model scores is counted in `headwater_unscored_rows_total`.
    Each model is taken once here: a swap lands between micro-batches, never inside one.
    With `offsets` (of the messages), each row keeps where its features are
    (`features_partition`, `features_offset`), for its prediction to say.
    """
    out = Routed()
    for i, (value, partition) in enumerate(zip(values, partitions, strict=True)):
        try:
            t = read_ipc(value)
        except (pa.ArrowInvalid, OSError) as exc:
            out.rejected.append((i, Rejected("bad-arrow", str(exc)[:300])))
            continue
        fs = (t.schema.metadata or {}).get(b"feature_set", b"").decode()
        fam = family(fs)
        if fam in out.groups:
            served = out.groups[fam][0]
        elif (got := serving.get(fam)) is not None:
            served = got
        else:
            UNSCORED.labels(fs or "unknown").inc(t.num_rows)
            if fs not in _warned:
                _warned.add(fs)
                log.warning("infer: no served model scores feature set %r; its rows are "
                            "counted in headwater_unscored_rows_total", fs)
            continue
        if served.feature_set != fs:
            out.rejected.append((i, Rejected(
                "feature-set-mismatch", f"{t.num_rows} rows of {fs or 'no feature set'}; "
                f"{served.model.name} v{served.model.version} takes {served.feature_set}")))
            continue
        t = t.append_column("source_partition", pa.array([partition] * t.num_rows, pa.int32()))
        if offsets is not None:
            t = t.append_column("features_partition",
                                pa.array([partition] * t.num_rows, pa.int32()))
            t = t.append_column("features_offset",
                                pa.array([offsets[i]] * t.num_rows, pa.int64()))
        out.groups.setdefault(fam, (served, []))[1].append(t)
    return out


def chunks(tables: list[pa.Table], max_rows: int) -> list[pa.Table]:
    """Merge small tables and split big ones into pieces of at most `max_rows` rows."""
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return []
    whole = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 \
        else tables[0]
    return [whole.slice(i, max_rows) for i in range(0, whole.num_rows, max_rows)]


async def infer_batch(t: pa.Table, served: Served, outbox: Sender, settings: Settings,
                      served_head: ServedHead | None = None) -> list[Any]:
    """Score one micro-batch, send its predictions, dead-letter rows it cannot score;
    with the learn stage on, the online head `served_head` scores on top, and the rows
    go to the training topic as questions."""
    topic = settings.topic("predictions")
    started = time.perf_counter()
    model = served.model
    pending: list[Any] = []
    x, bad = collate(t, model.manifest)
    if bad.any():
        have = set(t.schema.names)
        missing = [n for n in model.feature_names if n not in have]
        detail = ", ".join(missing[:5]) if missing else "a null or NaN model feature"
        source = settings.topic(f"{family(served.feature_set)}-events")
        offsets = t.column("source_offset").to_pylist()
        partitions = t.column("source_partition").to_pylist()
        for row in np.nonzero(bad)[0].tolist():
            pending.append(await outbox.dead_letter(
                "infer", Rejected("missing-feature", detail), topic=source,
                partition=partitions[row], offset=offsets[row],
                key=t.column("entity_id")[row].as_py().encode(),
                raw=t.column("event_id")[row].as_py().encode()))
        t, x = t.filter(pa.array(~bad)), x[~bad]
    scores = served.scorer.score(x)
    fam = family(served.feature_set)
    ids = len(model.manifest.get("id_columns") or [])
    head = None
    if settings.learn and served_head is not None:
        cols = head_columns(served_head.features, model.feature_names, ids)
        inputs = np.column_stack([scores.probability if j < 0 else x[:, j] for j in cols]) \
            if t.num_rows else np.empty((0, len(cols)))
        head = (served_head.version, served_head.scorer(inputs))
    predict_time = now_ms()
    if settings.predictions_format == "arrow":
        keep = [c for c in ("event_id", "entity_id", "item_id", "event_time", "source_time",
                            "ingest_time", "features_partition", "features_offset")
                if c in t.schema.names]
        out = t.select(keep)
        for name, col in (("probability", scores.probability),
                          ("uncertainty", scores.uncertainty), ("variance", scores.variance)):
            out = out.append_column(name, pa.array(col, pa.float64()))
        out = out.append_column("model_version", pa.array([model.version] * t.num_rows))
        out = out.append_column("head_probability", pa.array(
            head[1] if head else [None] * t.num_rows, pa.float64(), from_pandas=True))
        out = out.append_column("head_version", pa.array(
            [head[0] if head else None] * t.num_rows, pa.int64()))
        out = out.append_column("predict_time", pa.array([predict_time] * t.num_rows))
        out = out.replace_schema_metadata({**(out.schema.metadata or {}),
                                           b"model_name": model.name.encode()})
        pending += await outbox.send_table(topic, out, headers=ARROW_HEADERS)
    else:
        values = predictions_json(t, scores.probability, scores.uncertainty, scores.variance,
                                  (model.name, model.version), predict_time, head)
        pending += await outbox.send_keyed(topic, t.column("entity_id").to_pylist(), values,
                                           JSON_HEADERS)
    if settings.learn and t.num_rows:
        pending += await outbox.send_table(
            settings.topic("training"), questions(t, x[:, ids:], scores.probability, model,
                                                  fam, settings),
            partition=0, headers=QUESTION_HEADERS)
    _observe_latency(t, predict_time)
    EVENTS.labels("infer").inc(t.num_rows)
    BATCH_ROWS.labels("infer").observe(t.num_rows)
    STAGE_SECONDS.labels("infer").observe(time.perf_counter() - started)
    return pending


def head_columns(features: list[str], model_features: list[str], ids: int) -> list[int]:
    """Where each input of a head is in the deep model's collated matrix (-1: the deep
    score). A head fed other features than the model's is a settings error.

    >>> head_columns(["b", "deep_score"], ["a", "b"], 1)
    [2, -1]
    """
    at = {n: j for j, n in enumerate(model_features, start=ids)}
    missing = [n for n in features if n != DEEP_SCORE and n not in at]
    if missing:
        raise ValueError(f"the head learns on {missing[:3]}, which the model does not take")
    return [-1 if n == DEEP_SCORE else at[n] for n in features]


def head_features(names: list[str], patterns: str) -> list[str]:
    """The model features a head learns on (`head_features` setting), then the deep score.

    >>> head_features(["t.last", "t.mean_1m", "h.last"], "*.last")
    ['t.last', 'h.last', 'deep_score']
    """
    if patterns.strip() == "all":
        return [*names, DEEP_SCORE]
    globs = [p.strip() for p in patterns.split(",") if p.strip()]
    return [n for n in names if any(fnmatch.fnmatchcase(n, g) for g in globs)] + [DEEP_SCORE]


def questions(t: pa.Table, x: np.ndarray, deep: np.ndarray, model: Any, fam: str,
              settings: Settings) -> pa.Table:
    """The rows of a scored batch as the learn stage's questions: ids, event time, the
    head's features (as the deep model saw them: float32) and the deep score."""
    names = head_features(list(model.feature_names), settings.engagement_head_features
                          if fam == "engagement" else settings.sensor_head_features)
    at = {n: j for j, n in enumerate(model.feature_names)}
    cols: dict[str, Any] = {"event_id": t.column("event_id"),
                            "entity_id": t.column("entity_id"),
                            "event_time": t.column("event_time")}
    for n in names[:-1]:
        cols[n] = pa.array(x[:, at[n]], pa.float32())
    cols[DEEP_SCORE] = pa.array(deep, pa.float64())
    return pa.table(cols, metadata={"model": model.name, "family": fam})


def _observe_latency(t: pa.Table, predict_time: int, most: int = 64) -> None:
    """Feed the end-to-end histogram an even sample of the batch (observe is per value)."""
    sources = t.column("source_time").to_numpy(zero_copy_only=False)
    if not len(sources):
        return
    step = max(1, len(sources) // most)
    for s in sources[::step]:
        if s is not None and s == s:  # null source times arrive as None or NaN
            END_TO_END_SECONDS.observe(max(0.0, (predict_time - int(s)) / 1000))
