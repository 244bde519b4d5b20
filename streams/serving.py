"""The models the infer agent serves, and how a promotion reaches every running worker.

A worker serves one model per feature-set family (`sensor` for `sensor.v2` batches,
`engagement` for `engagement.v1`), starting with the registry's promoted versions.
`headwater registry promote NAME VERSION` checks that the version loads, moves the
registry's CURRENT, and then publishes a `model-update.v1` message keyed by the model's
name to the compacted `model-updates` topic. Every worker follows that topic outside any
consumer group (each worker must see every update) and swaps between two micro-batches:
the new version is built in full first, off the event loop, so a version that does not
load is refused with a log line and `headwater_model_swaps_total{outcome="refused"}`,
and the last good model keeps serving.

>>> family("sensor.v2"), family("engagement.v1"), family("odd")
('sensor', 'engagement', 'odd')
"""

from __future__ import annotations

import asyncio
import base64
import logging
import pickle
import time
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import torch
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from mode import Service

from models.head import HeadScorer
from models.inference import BatchScorer, collate, pick_device
from models.registry import LoadedModel, Registry, RegistryError
from schemas.codec import header
from schemas.events import HeadSnapshot, ModelUpdate
from streams.metrics import HEAD_VERSION, MODEL_SWAPS, MODEL_VERSION
from streams.settings import Settings
from streams.topics import MAX_MESSAGE_BYTES, latest_by_key, partitions_of

__all__ = ["HEAD_SNAPSHOT", "ModelUpdates", "Served", "ServedHead", "Serving", "describe",
           "describe_heads", "family", "head_from_snapshot", "publish_promotion"]

HEAD_SNAPSHOT = b"head-snapshot.v1"

log = logging.getLogger(__name__)


def family(feature_set: str) -> str:
    """A feature set's name without its version: what a model must match to score it."""
    return feature_set.rsplit(".v", 1)[0]


@dataclass(frozen=True)
class Served:
    """One loaded model and its scorer, swapped as a whole."""

    model: LoadedModel
    scorer: BatchScorer

    @property
    def feature_set(self) -> str:
        fs: str = self.model.manifest["feature_set"]
        return fs


@dataclass(frozen=True)
class ServedHead:
    """One online head's learner as infer serves it (a snapshot from the learn stage)."""

    name: str
    model: str  # the deep model it sits on
    version: int
    features: list[str]  # its inputs, in order: feature names, then `deep_score`
    scorer: HeadScorer


def head_from_snapshot(snap: HeadSnapshot) -> ServedHead:
    """Unpickle a snapshot's learner (slow for a forest: call it off the event loop)."""
    learner = pickle.loads(zlib.decompress(base64.b64decode(snap.state_b64)))
    return ServedHead(snap.name, snap.model, snap.version, list(snap.features),
                      HeadScorer(learner, list(snap.features)))


class Serving:
    """The served models by feature-set family. Readers take `get()` once per micro-batch."""

    def __init__(self, registry: Registry, names: list[str], device: str = "auto",
                 cpu_threads: int | None = None, precision: str = "fp32") -> None:
        self.registry = registry
        self.names = names
        self.device_setting = device
        self.cpu_threads = cpu_threads
        self.precision = precision
        self.device: torch.device | None = None
        self._by_family: dict[str, Served] = {}
        self._heads: dict[str, ServedHead] = {}

    def head(self, family_name: str) -> ServedHead | None:
        """The online head served on top of `family_name`'s deep model, if any yet."""
        return self._heads.get(family_name)

    def heads(self) -> dict[str, ServedHead]:
        """The online heads served, by family."""
        return dict(self._heads)

    def serve_head(self, family_name: str, head: ServedHead) -> bool:
        """Serve `head` unless this family already serves that version or a later one
        (snapshots only move forward); True if it now serves it."""
        held = self._heads.get(family_name)
        if held is not None and held.version >= head.version:
            return False
        self._heads[family_name] = head
        HEAD_VERSION.labels(head.name, "served").set(head.version)
        return True

    def start(self) -> None:
        """Pick the device and serve each named model's promoted version (idempotent).

        Raises RegistryError for a model that is missing or does not load: a worker
        never starts serving without its models.
        """
        if self.device is None:
            self.device = pick_device(self.device_setting, self.cpu_threads)
        for name in self.names:
            if self.version_of(name) is None:
                self.serve(self.build(name))

    def get(self, family_name: str) -> Served | None:
        return self._by_family.get(family_name)

    def served(self) -> list[Served]:
        return list(self._by_family.values())

    def build(self, name: str, version: int | None = None) -> Served:
        """Load and warm a model without serving it; raises RegistryError, loudly."""
        if self.device is None:
            raise RuntimeError("Serving.start() first")
        model = self.registry.load(name, version)
        scorer = BatchScorer(model.module, self.device, self.precision)
        empty = collate_probe(model)
        try:
            scorer.score(empty)  # a model that cannot score is refused here, not mid-stream
        except Exception as exc:
            raise RegistryError(f"{name} v{model.version} loads but cannot score: {exc}"
                                ) from exc
        return Served(model, scorer)

    def serve(self, served: Served) -> None:
        """Make `served` the model of its family (one assignment: never half-switched)."""
        fam = family(served.feature_set)
        held = self._by_family.get(fam)
        if held is not None and held.model.name != served.model.name:
            raise RegistryError(f"{served.model.name} scores {served.feature_set}, which "
                                f"{held.model.name} already serves")
        self._by_family[fam] = served
        MODEL_VERSION.labels(served.model.name).set(served.model.version)
        log.info("serving %s v%d for %s on %s", served.model.name, served.model.version,
                 served.feature_set, self.device)

    def version_of(self, name: str) -> int | None:
        for s in self._by_family.values():
            if s.model.name == name:
                return s.model.version
        return None

    async def swap(self, name: str, version: int, promoted_at: int | None = None) -> bool:
        """Serve `name` v`version` if it loads; else keep the last good one. True if swapped.

        `promoted_at` (epoch ms) only makes the log line say how long the promotion took
        to reach this worker."""
        if self.version_of(name) == version:
            return False
        started = time.perf_counter()
        try:
            served = await asyncio.to_thread(self.build, name, version)
            self.serve(served)
        except RegistryError as exc:
            MODEL_SWAPS.labels(name, "refused").inc()
            log.error("refused to swap %s to v%d: %s; still serving v%s", name, version, exc,
                      self.version_of(name))
            return False
        MODEL_SWAPS.labels(name, "swapped").inc()
        since = "" if promoted_at is None else \
            f", {time.time() * 1000 - promoted_at:.0f} ms after its promotion"
        log.info("swapped %s to v%d in %.0f ms%s", name, version,
                 (time.perf_counter() - started) * 1000, since)
        return True


def collate_probe(model: LoadedModel) -> np.ndarray:
    """A few rows of zeros shaped like the model's collated input."""
    ids = model.manifest.get("id_columns") or []
    cols = {c: pa.array(["probe"] * 4) for c in ids}
    cols.update({n: pa.array([0.0] * 4) for n in model.feature_names})
    x, _ = collate(pa.table(cols), model.manifest)
    return x


async def publish_promotion(settings: Settings, name: str, version: int) -> None:
    """Tell every worker to serve `name` v`version` (the caller checked that it loads)."""
    update = ModelUpdate(name=name, version=version, promoted_at=time.time_ns() // 1_000_000)
    producer = AIOKafkaProducer(**settings.kafka_options(), acks="all",
                                enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(settings.topic("model-updates"), update.to_json(),
                                     key=name.encode(), headers=update.headers())
    finally:
        await producer.stop()


class ModelUpdates(Service):
    """Follows `model-updates` from its start and swaps the served models it names."""

    def __init__(self, settings: Settings, serving: Serving) -> None:
        super().__init__()
        self.settings = settings
        self.serving = serving
        self.consumer: AIOKafkaConsumer | None = None

    async def on_start(self) -> None:
        """Note where the topic ends, then serve the registry's promoted versions (again,
        if infer loaded older ones first), then follow from that point: `headwater
        registry promote` moves the registry first and announces second, so no promotion
        falls between the two."""
        self.consumer = AIOKafkaConsumer(**self.settings.kafka_options(), group_id=None,
                                         enable_auto_commit=False, fetch_max_wait_ms=100,
                                         auto_offset_reset="earliest",
                                         max_partition_fetch_bytes=MAX_MESSAGE_BYTES)
        await self.consumer.start()
        topic = self.settings.topic("model-updates")
        tps = [TopicPartition(topic, p) for p in await partitions_of(self.consumer, topic)]
        self.consumer.assign(tps)
        ends = await self.consumer.end_offsets(tps)
        self.serving.start()
        if self.settings.learn:  # the latest snapshot of each online head on the topic
            for raw in (await latest_by_key(self.settings, "model-updates",
                                            HEAD_SNAPSHOT)).values():
                await self._apply_head(raw)
        for tp, end in ends.items():
            self.consumer.seek(tp, end)
        for name in self.serving.names:  # infer may have loaded them before that point
            current = self.serving.registry.current(name)
            if self.serving.version_of(name) != current:
                await self.serving.swap(name, current)

    async def _apply_head(self, raw: bytes | None) -> None:
        """Serve the head snapshot in `raw` if it is newer than the one served."""
        try:
            snap = HeadSnapshot(**orjson.loads(raw or b""))
            head = await asyncio.to_thread(head_from_snapshot, snap)
        except Exception as exc:  # a bad snapshot must not stop the worker
            MODEL_SWAPS.labels("head", "refused").inc()
            log.error("ignored a head snapshot that does not load (%r)", exc)
            return
        if self.serving.get(snap.family) is None:
            return  # a head on a deep model this worker does not serve
        if self.serving.serve_head(snap.family, head):
            MODEL_SWAPS.labels(snap.name, "swapped").inc()
            log.debug("serving head %s v%d", snap.name, snap.version)


    async def on_stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()

    def _parse(self, raw: bytes | None) -> ModelUpdate | None:
        try:
            return ModelUpdate.from_dict(orjson.loads(raw or b""))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            MODEL_SWAPS.labels("unknown", "refused").inc()
            log.error("ignored a model update that is not model-update.v1 (%s): %r", exc,
                      (raw or b"")[:200])
            return None

    @Service.task
    async def _follow(self) -> None:
        assert self.consumer is not None
        while not self.should_stop:
            polled = await self.consumer.getmany(timeout_ms=200)
            for records in polled.values():
                for r in records:
                    if header(r.headers, "schema") == HEAD_SNAPSHOT:
                        if self.settings.learn:
                            await self._apply_head(r.value)
                        continue
                    u = self._parse(r.value)
                    if u is None:
                        continue
                    if self.serving.version_of(u.name) is None:
                        log.info("model update for %s, which this worker does not serve",
                                 u.name)
                        continue
                    await self.serving.swap(u.name, u.version, u.promoted_at)


def describe(serving: Serving) -> dict[str, Any]:
    """What /ready reports about the served models."""
    return {s.feature_set: f"{s.model.name} v{s.model.version}" for s in serving.served()}


def describe_heads(serving: Serving) -> dict[str, str]:
    """What /ready reports about the online heads infer serves (none until one learned)."""
    return {fam: f"{h.name} v{h.version}" for fam, h in serving.heads().items()}
