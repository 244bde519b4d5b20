"""replay: a recorded stream through the live pipeline's own code, in process (DESIGN.md
§3.5), for one or more model configurations side by side.

The events (a topic range, or a Parquet export of one) go through what the worker runs:
featurize (`models.features.sensor_features` or `models.engagement.engagement_features`,
per source partition in offset order, state carried from chunk to chunk), infer
(`models.inference.collate`, the registry model's `BatchScorer` in micro-batches of
`HEADWATER_INFER_MAX_ROWS`, `streams.infer.questions`), then learn: each candidate's
online head is a `models.trainer.Trainer` fed through `streams.learn.add_questions` and
`add_label`, the very functions the learn stage feeds its trainers with; and curate: the
settings' `Curator` over each candidate's predictions (`curate`). Questions go in
event-time order and each label is due at its own `label_time`, so the labels' delays
are the recorded ones; the trainer releases them in river's `simulate_qa` order, as the
live learner does.

A candidate is a deep model (registry name and version) with an online head (a spec and
the features it learns on); two candidates may share the deep model and differ in the
head, or the reverse. What comes out for each (`Arm`): one prediction per event (the
deep model's probability, uncertainty and member variance; the head's probability as
its prequential test saw it, before the event's label was learned; the label), the
head's prequential metrics over event time (cumulative and over the last
`HEADWATER_HEAD_ROLLING` labels: the very objects the live head reports on `metrics`)
and the deep model's alone on the same labels, in the same order.

What "the same" means, measured (tests/test_replay.py): the learner is exactly the live
one (a published metrics report equals the replayed metrics after as many labels); the
feature and deep-model numbers are the live functions', but float sums in the features
and float32 matrix products depend on how rows are cut into batches, which a live run
decides by timing (see the README's Replay section).

>>> c = Candidate.parse("candidate=shuttle:3@LogisticRegression")
>>> c.name, c.model, c.version, c.spec
('candidate', 'shuttle', 3, 'LogisticRegression')
>>> Candidate.parse("shuttle").name
'shuttle'
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from models.engagement import engagement_features
from models.features import sensor_features
from models.head import Head, HeadConfig, Outcome
from models.registry import Registry, RegistryError
from models.scores import ClassifierScores
from models.trainer import Trainer
from streams.infer import questions
from streams.learn import add_label, add_questions, head_name, label_model
from streams.serving import Served, Serving, family
from streams.settings import Settings

__all__ = ["Arm", "Candidate", "ReplayError", "ReplayResult", "curate", "document", "featurize",
           "load_parquet", "read_source", "replay", "run"]

FEATURIZE_ROWS = 8192  # rows per featurize call, as the featurize agent computes them
CURATE_ROWS = 4096  # predictions per curator call, as the curate stage polls them
PREDICTION_COLUMNS = ("event_id", "entity_id", "event_time", "probability", "uncertainty",
                      "variance", "head_probability", "label", "label_time", "curated")


class ReplayError(RuntimeError):
    """Replay cannot give a complete answer: no events, no labels, an unknown model."""


@dataclass(frozen=True)
class Candidate:
    """One model configuration: `name` (the report's), the deep model `model` at
    `version` (None: the promoted one), and its head: `spec` (None: HEADWATER_HEAD_SPEC)
    learning on `head_features` (None: the setting of the model's family)."""

    name: str
    model: str
    version: int | None = None
    spec: str | None = None
    head_features: str | None = None

    @staticmethod
    def parse(text: str) -> Candidate:
        """`[NAME=]MODEL[:VERSION][@HEAD SPEC]`."""
        name, _, rest = text.partition("=") if "=" in text.split("@", 1)[0] else ("", "", text)
        target, _, spec = rest.partition("@")
        model, _, version = target.partition(":")
        if not model.strip():
            raise ReplayError(f"bad candidate {text!r}: give [NAME=]MODEL[:VERSION][@SPEC]")
        if version and not version.strip().isdigit():
            raise ReplayError(f"bad candidate {text!r}: version {version!r} is not a number")
        model = model.strip()
        return Candidate(name.strip() or model, model,
                         int(version) if version else None, spec.strip() or None)


@dataclass
class Arm:
    """What one candidate did on the replayed stream."""

    candidate: Candidate
    model_version: int
    feature_set: str
    spec: str
    predictions: pa.Table  # PREDICTION_COLUMNS, one row per scored event
    points: list[dict[str, Any]]  # the metrics after every `every` labels, and the last
    summary: dict[str, Any]
    alerts: list[dict[str, Any]] = field(default_factory=list)
    questions: pa.Table | None = None  # what the head was asked, as infer writes it
    snapshots: dict[int, bytes] = field(default_factory=dict)  # head version -> learner


@dataclass
class ReplayResult:
    family: str
    events: int  # events read
    featurized: int  # events featurize accepted
    labels: int  # labels of replayed events
    labels_outside: int  # labels read whose event is not in the replay
    arms: list[Arm]
    seconds: dict[str, float]  # featurize, and per candidate score and learn
    delays_ms: np.ndarray  # label_time - event_time of each label of a replayed event
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def events_per_s(self) -> float:
        return self.events / max(sum(self.seconds.values()), 1e-9)


class _Recorder(Head):
    """A head that keeps, besides learning as `Head` does, the probability each event's
    test saw and the metrics after every `every` labels (and after each count in
    `at`): exactly the metric objects the learn stage reports."""

    def __init__(self, name: str, config: HeadConfig, every: int, at: frozenset[int],
                 versions: frozenset[int] = frozenset()) -> None:
        super().__init__(name, config)
        self.every = max(1, every)
        self.at = at
        self.versions = versions  # head versions whose learner to keep, as infer serves it
        self.snapshots: dict[int, bytes] = {}
        self.asked_p: dict[str, float] = {}
        self.scored: list[tuple[str, int, float, float]] = []  # event id, label time, p, y
        self.points: list[dict[str, Any]] = []

    # the prediction is made when asked, not lazily: the same one, since the learner
    # does not move between the question and its next label (Head.ask's doc)
    def ask(self, event_id: str, t: int, x: Any, entity: str = "", lazy: bool = False) -> Any:
        got = super().ask(event_id, t, x, entity, lazy=False)
        if event_id not in self.asked_p:
            self.asked_p[event_id] = _p_true(got, self.task)
        return None if lazy else got

    def _learn(self, event_id: str, t: int, y: float, weight: int = 1) -> list[Outcome]:
        out = super()._learn(event_id, t, y, weight)
        if self.updates in self.versions and self.updates not in self.snapshots:
            self.snapshots[self.updates] = self.model_bytes()
        self.scored.append((event_id, t, self.asked_p.get(event_id, float("nan")), y))
        n = len(self.scored)
        if n % self.every == 0 or self.counts["learned"] in self.at:
            self.point(t)
        return out

    def point(self, t: int) -> None:
        self.points.append({"labels": int(self.counts["learned"]), "scored": len(self.scored),
                            "version": self.updates, "event_time": int(t),
                            "cumulative": self.metrics(), "rolling": self.metrics(rolling=True)})


def _p_true(y_pred: Any, task: str) -> float:
    if task != "classification":
        return float("nan") if y_pred is None else float(y_pred)
    if not y_pred:
        return float("nan")
    return float(y_pred.get(True, 0.0))


# -- reading ----------------------------------------------------------------------------

def load_parquet(path: Path | str) -> pa.Table:
    """An export directory (`OUT/<topic>`, read with `streams.export.read_export`) or one
    Parquet file; a file that does not read is a ReplayError naming it."""
    from streams.export import ExportError, read_export  # the export module is big

    p = Path(path)
    if not p.exists():
        raise ReplayError(f"{p}: no such file or directory")
    try:
        if p.is_dir():
            return read_export(p)
        return pq.read_table(p)
    except ExportError as exc:
        raise ReplayError(str(exc)) from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise ReplayError(f"{p}: not a readable Parquet file ({str(exc).splitlines()[0]})"
                          ) from None


def _family_of(events: pa.Table) -> str:
    names = set(events.schema.names)
    if {"sensor_id", "event_time"} <= names:
        return "sensor"
    if {"user_id", "item_id", "event_time"} <= names:
        return "engagement"
    raise ReplayError("the events are neither sensor events (sensor_id) nor engagement "
                      f"events (user_id, item_id): columns {sorted(names)[:8]}")


def _kafka_order(t: pa.Table) -> pa.Table:
    """Rows in the order the worker reads them: by source partition, then offset (the
    columns an export or a range read adds); as they are otherwise."""
    for part, off in (("kafka_partition", "kafka_offset"), ("source_partition", "source_offset")):
        if part in t.schema.names and off in t.schema.names:
            return t.take(pc.sort_indices(t, [(part, "ascending"), (off, "ascending")]))
    return t


# -- the stages -------------------------------------------------------------------------

def featurize(events: pa.Table, fam: str, settings: Settings) -> pa.Table:
    """Features of `events` as featurize computes them: each source partition in offset
    order, FEATURIZE_ROWS at a time, state carried on; rows featurize rejects (late,
    duplicate, out of range) are left out, as the live stage dead-letters them."""
    events = _kafka_order(events)
    part_col = "kafka_partition" if "kafka_partition" in events.schema.names else None
    parts = pc.unique(events.column(part_col)).to_pylist() if part_col else [None]
    out: list[pa.Table] = []
    for p in sorted(parts, key=lambda v: -1 if v is None else v):
        rows = events if p is None else events.filter(pc.equal(events.column(part_col), p))
        states: dict[str, Any] = {}  # one worker's state of this partition
        for start in range(0, rows.num_rows, FEATURIZE_ROWS):
            for batch in rows.slice(start, FEATURIZE_ROWS).combine_chunks().to_batches():
                if fam == "sensor":
                    feats, moved, _ = sensor_features(batch, states,
                                                      settings.sensor_features())
                    states.update(moved)
                else:
                    feats, after = engagement_features(batch, states,
                                                       settings.engagement_features())
                    states.update(after)
                if feats.num_rows:
                    out.append(pa.Table.from_batches([feats]))
    if not out:
        return pa.table({})
    return pa.concat_tables(out, promote_options="permissive")


def _deep_only(scored: list[tuple[str, int, float, float]], deep: dict[str, float],
               rolling: int, every: int, at: frozenset[int]) -> list[dict[str, Any]]:
    """The deep model's probability scored on the head's labels, in the head's order,
    with the head's metrics (river's, cumulative and over the last `rolling`)."""
    scores = ClassifierScores(rolling)
    points = []
    for i, (event_id, t, _, y) in enumerate(scored, start=1):
        p = deep[event_id]
        scores.update(bool(y), {False: 1.0 - p, True: p})
        if i % every == 0 or i == len(scored) or i in at:
            points.append({"scored": i, "event_time": int(t), "cumulative": scores.get(),
                           "rolling": scores.get(rolling=True)})
    return points


def _load(serving: Serving, c: Candidate) -> Served:
    """The candidate's model, loaded and warmed as the worker serves it."""
    registry = serving.registry
    known = registry.versions(c.model) if (registry.root / c.model).is_dir() else []
    if not known or (c.version is not None and c.version not in known):
        what = c.model if c.version is None else f"{c.model} v{c.version}"
        has = f" (it has versions {', '.join(map(str, known))})" if known else ""
        raise ReplayError(f"candidate {c.name}: model {what} is not in the registry at "
                          f"{registry.root}{has}")
    try:
        return serving.build(c.model, c.version)
    except RegistryError as exc:
        raise ReplayError(f"candidate {c.name}: {exc}") from None


def replay(events: pa.Table, labels: pa.Table, candidates: list[Candidate], settings: Settings,
           *, every: int = 500, at: Iterable[int] = (), versions: Iterable[int] = (),
           sources: dict[str, str] | None = None) -> ReplayResult:
    """Replay `events` and `labels` (decoded rows: a range read or an export) through
    each candidate (the module doc). `every`: labels between metric points; `at`: label
    counts that get a point as well (to compare with published reports); `versions`:
    head versions whose learner each arm keeps (`Arm.snapshots`, `Head.model_bytes`),
    to score events as infer scored them with a snapshot of that version.

    Raises ReplayError for no events, no labels of the replayed events, a candidate not
    in the registry or not for these events' feature set."""
    if not candidates:
        raise ReplayError("no candidate to replay: give at least one model")
    if len({c.name for c in candidates}) != len(candidates):
        raise ReplayError("two candidates share a name: name them (NAME=MODEL)")
    if events.num_rows == 0:
        raise ReplayError("no events in the range: nothing to replay")
    fam = _family_of(events)
    seconds: dict[str, float] = {}
    registry = Registry(settings.registry_dir)
    serving = Serving(registry, [], settings.device, settings.torch_threads, settings.precision)
    serving.start()
    served = {c.name: _load(serving, c) for c in candidates}  # a bad one fails before work
    for c in candidates:
        if family(served[c.name].feature_set) != fam:
            raise ReplayError(f"candidate {c.name}: {c.model} scores "
                              f"{served[c.name].feature_set}, not {fam} events")

    started = time.perf_counter()
    feats = featurize(events, fam, settings)
    if feats.num_rows == 0:
        raise ReplayError(f"featurize accepted none of the {events.num_rows} events")
    # event-time order (stable: ties keep the worker's order)
    feats = feats.take(pc.sort_indices(feats, [("event_time", "ascending")]))
    seconds["featurize"] = time.perf_counter() - started

    ids = set(feats.column("event_id").to_pylist())
    labels = _kafka_order(labels)
    if labels.num_rows and "event_id" not in labels.schema.names:
        raise ReplayError(f"the labels have no event_id column: {labels.schema.names[:8]}")
    mine = pc.is_in(labels.column("event_id"), pa.array(list(ids))) if labels.num_rows \
        else pa.array([], pa.bool_())
    outside = labels.num_rows - (pc.sum(mine).as_py() or 0)
    labels = labels.filter(mine) if labels.num_rows else labels
    if labels.num_rows == 0:
        raise ReplayError(f"no labels for any of the {feats.num_rows} events replayed "
                          f"({outside} labels read, all for other events): nothing to score")
    label_rows = labels.select(["event_id", "value", "source", "label_time", "model"]
                               ).to_pylist()
    at_set = frozenset(at)
    arms = [_arm(c, served[c.name], feats, label_rows, fam, settings, every, at_set,
                 frozenset(versions), seconds) for c in candidates]
    event_time = dict(zip(feats.column("event_id").to_pylist(),
                          feats.column("event_time").to_pylist(), strict=True))
    delays = np.array([r["label_time"] - event_time[r["event_id"]] for r in label_rows],
                      np.int64)
    return ReplayResult(fam, events.num_rows, feats.num_rows, labels.num_rows, outside, arms,
                        seconds, delays, dict(sources or {}))


def _arm(c: Candidate, served: Served, feats: pa.Table, label_rows: list[dict[str, Any]],
         fam: str, settings: Settings, every: int, at: frozenset[int],
         versions: frozenset[int], seconds: dict[str, float]) -> Arm:
    """One candidate through infer and learn."""
    from models.inference import collate

    started = time.perf_counter()
    model = served.model
    x, bad = collate(feats, model.manifest)
    t = feats.filter(pa.array(~bad)) if bad.any() else feats
    x = x[~bad] if bad.any() else x
    n_ids = len(model.manifest.get("id_columns") or [])
    step = settings.infer_max_rows
    parts = [served.scorer.score(np.asfortranarray(x[i:i + step]))
             for i in range(0, len(x), step)]
    prob = np.concatenate([s.probability for s in parts]) if parts else np.zeros(0)
    unc = np.concatenate([s.uncertainty for s in parts]) if parts else np.zeros(0)
    var = np.concatenate([s.variance for s in parts]) if parts else np.zeros(0)
    update: dict[str, Any] = {}
    if c.spec is not None:
        update["head_spec"] = c.spec
    if c.head_features is not None:
        update[f"{fam}_head_features"] = c.head_features
    s = settings.model_copy(update=update) if update else settings
    asked = questions(t, x[:, n_ids:], prob, model, fam, s)
    seconds[f"score {c.name}"] = time.perf_counter() - started

    started = time.perf_counter()
    head = _Recorder(head_name(model.name), s.head_config(fam), every, at, versions)
    trainer = Trainer(head, s.learn_max_buffer)
    add_questions(trainer, asked)
    for row in label_rows:
        if label_model(row, {}, model.name) == model.name:
            add_label(trainer, row)
    outcomes = trainer.flush()
    if not head.scored:
        c_ = head.counts
        raise ReplayError(
            f"candidate {c.name}: no label was scored ({c_['unmatched']} unmatched, "
            f"{c_['stale']} stale, {c_['bad-value']} bad values, {c_['unlabelled']} events "
            f"unlabelled within HEADWATER_HEAD_HORIZON={s.head_horizon}): nothing to report")
    if head.scored and (not head.points or head.points[-1]["scored"] != len(head.scored)):
        head.point(head.scored[-1][1])
    seconds[f"learn {c.name}"] = time.perf_counter() - started

    deep = dict(zip(t.column("event_id").to_pylist(), prob.tolist(), strict=True))
    deep_points = _deep_only(head.scored, deep, s.head_rolling, max(1, every),
                             frozenset(p["scored"] for p in head.points))
    by_scored = {p["scored"]: p for p in deep_points}
    points = [{**p, "deep": {"cumulative": by_scored[p["scored"]]["cumulative"],
                             "rolling": by_scored[p["scored"]]["rolling"]}}
              for p in head.points]
    label_of = {e: (y, lt) for e, lt, _, y in head.scored}
    event_ids = t.column("event_id").to_pylist()
    predictions = pa.table({
        "event_id": t.column("event_id"), "entity_id": t.column("entity_id"),
        "event_time": t.column("event_time"),
        "probability": pa.array(prob, pa.float64()),
        "uncertainty": pa.array(unc, pa.float64()), "variance": pa.array(var, pa.float64()),
        "head_probability": pa.array([head.asked_p.get(e, np.nan) for e in event_ids],
                                     pa.float64()),
        "label": pa.array([label_of[e][0] if e in label_of else None for e in event_ids],
                          pa.float64()),
        "label_time": pa.array([label_of[e][1] if e in label_of else None for e in event_ids],
                               pa.int64())})
    final = points[-1] if points else {"cumulative": {}, "rolling": {}, "deep": {}}
    summary = {
        "candidate": c.name, "model": model.name, "model_version": model.version,
        "spec": s.head_spec, "head_features": list(asked.schema.names[3:]),
        "events": t.num_rows, "unscorable": int(bad.sum()), "labels": len(head.scored),
        "head": {"cumulative": final["cumulative"], "rolling": final["rolling"]},
        "deep": final.get("deep", {}), "counts": dict(head.counts)}
    curated = curate(predictions, model.name, model.version, s)
    predictions = predictions.append_column("curated", pa.array(curated))
    y = predictions.column("label").to_numpy(zero_copy_only=False)
    h = predictions.column("head_probability").to_numpy(zero_copy_only=False)
    labelled = curated & ~np.isnan(y)
    summary["curated"] = {"events": int(curated.sum()), "labelled": int(labelled.sum()),
                          "head_wrong": int((labelled & ((y >= 0.5) != (h >= 0.5))).sum())}
    alerts = [{"event_id": o.event_id, "event_time": o.time, "detector": o.reason,
               "action": str(o.extra.get("action"))} for o in outcomes if o.kind == "drift"]
    summary["drift_alerts"] = len(alerts)
    return Arm(c, model.version, served.feature_set, s.head_spec, predictions, points,
               summary, alerts, asked, head.snapshots)


def curate(predictions: pa.Table, model: str, version: int, settings: Settings,
           rows: int = CURATE_ROWS) -> np.ndarray:
    """Which events the curate stage would send for labelling: the settings' curator
    (`Settings.curator`, as the worker builds it) over the predictions in event-time
    order, in polls of `rows`, each read as the stage reads an Arrow poll
    (`streams.curate.PredictionBatch`: the head's probability where it scored an event,
    the deep model's elsewhere)."""
    from streams.curate import PredictionBatch

    curator = settings.curator()
    chosen = np.zeros(predictions.num_rows, bool)
    versions = pa.array(np.full(predictions.num_rows, version, np.int64))
    table = predictions.append_column("model_version", versions)
    for lo in range(0, table.num_rows, rows):
        batch = PredictionBatch(model, table=table.slice(lo, rows))
        for c in curator.choose(batch.columns()):
            chosen[lo + c.row] = True
    return chosen


# -- the report and the command ----------------------------------------------------------

def document(r: ReplayResult, settings: Settings) -> dict[str, Any]:
    """Every figure of a replay as plain data: what `models.report.write_report` writes."""
    from datetime import UTC, datetime

    from models.report import calibration

    delays_s = r.delays_ms / 1000.0
    counts, edges = np.histogram(delays_s, bins=min(40, max(1, len(np.unique(delays_s)))))
    candidates = []
    for arm in r.arms:
        p = arm.predictions
        y = p.column("label").to_numpy(zero_copy_only=False).astype(np.float64)
        candidates.append({
            **arm.summary, "points": arm.points, "alerts": arm.alerts,
            "calibration": {
                "head": calibration(p.column("head_probability").to_numpy(
                    zero_copy_only=False).astype(np.float64), y),
                "deep": calibration(p.column("probability").to_numpy(
                    zero_copy_only=False).astype(np.float64), y)}})
    return {
        "complete": True, "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "family": r.family, "events": r.events, "featurized": r.featurized,
        "labels": r.labels, "labels_outside": r.labels_outside, "sources": r.sources,
        "seconds": r.seconds, "events_per_s": r.events_per_s,
        "rolling_window": settings.head_rolling,
        "label_delay": {
            "labels": int(len(delays_s)),
            "median_s": float(np.median(delays_s)) if len(delays_s) else float("nan"),
            "quantiles_s": {str(q): float(np.quantile(delays_s, q)) for q in
                            (0.0, 0.1, 0.5, 0.9, 0.99, 1.0)} if len(delays_s) else {},
            "histogram": {"edges_s": edges.tolist(), "counts": counts.tolist()}},
        "candidates": candidates}


def read_source(settings: Settings, source: str, spec: Any) -> tuple[pa.Table, str]:
    """A Parquet export (directory) or file, or else a topic's range `spec`
    (`streams.export.Range`): its decoded rows, and a description of where from."""
    from streams.export import ExportError, read_range

    if Path(source).exists() or source.endswith(".parquet") or "/" in source:
        return load_parquet(source), f"Parquet {source}"
    try:
        tables = list(read_range(settings, source, spec))
    except ExportError as exc:
        raise ReplayError(str(exc)) from None
    if not tables:
        return pa.table({}), f"topic {settings.topic(source)} (empty range)"
    return (pa.concat_tables(tables, promote_options="permissive"),
            f"topic {settings.topic(source)} {spec.to_dict()}")


def run(settings: Settings, events: str, labels: str, spec: Any, candidates: list[Candidate],
        out: Path, every: int = 500) -> str:
    """`headwater replay`: read, replay, write the report; its one-line summary. Every
    failure is a ReplayError (or the export's, or an OSError) raised before the report
    is moved into place, so there is never a partial report that looks complete."""
    from models.report import write_report

    ev, ev_from = read_source(settings, events, spec)
    if ev.num_rows == 0:
        raise ReplayError(f"no events in {ev_from}: nothing to replay")
    from streams.export import Range

    lab, lab_from = read_source(settings, labels, Range())
    if lab.num_rows == 0:
        raise ReplayError(f"no labels in {lab_from}: nothing to score")
    if not candidates:
        fam = _family_of(ev)
        model = settings.sensor_model if fam == "sensor" else settings.engagement_model
        if not model:
            raise ReplayError(f"no candidate given and no {fam} model set: give --candidate")
        candidates = [Candidate(model, model)]
    result = replay(ev, lab, candidates, settings, every=every,
                    sources={"events": ev_from, "labels": lab_from})
    doc = document(result, settings)
    write_report(doc, {a.candidate.name: a.predictions for a in result.arms}, out)
    best = ", ".join(f"{a.candidate.name} head log loss "
                     f"{a.summary['head']['cumulative'].get('log_loss', float('nan')):.4f} "
                     f"(deep {a.summary['deep']['cumulative'].get('log_loss', float('nan')):.4f})"
                     for a in result.arms)
    return (f"replayed {result.events} events and {result.labels} labels through "
            f"{len(result.arms)} candidates in {sum(result.seconds.values()):.1f}s "
            f"({result.events_per_s:,.0f} events/s): {best}; report: {out / 'report.html'}")
