"""The Faust app: settings in, topics, table, agents, ingest and the web page wired up.

>>> app = create_app(Settings(app_id="doc", topic_prefix="doc-"))
>>> sorted(app.agents)
['featurize', 'featurize-engagement', 'infer']
"""

from __future__ import annotations

import logging
from typing import Any

import faust
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from models.registry import Registry
from streams.agents import wire_agents
from streams.curate import Curate
from streams.gaps import Gaps
from streams.ingest import Ingest
from streams.labelling import receive_labels
from streams.learn import Learn
from streams.logs import json_logging_config
from streams.metrics import CONSUMER_LAG
from streams.outbox import Outbox
from streams.serving import ModelUpdates, Serving, describe, describe_heads
from streams.settings import Settings
from streams.topics import commit_unstarted, ensure_topics

__all__ = ["HeadwaterApp", "create_app"]

log = logging.getLogger(__name__)

#: the topics the agents read (ingest's own consumer group commits for its inputs)
AGENT_INPUTS = ("sensor-batches", "engagement-batches", "features")
LAG_INTERVAL_S = 5.0  # how often the agents' consumer lag is measured


class HeadwaterApp(faust.App):
    """A Faust app that creates its topics first and runs ingest beside the agents."""

    hw: Settings
    outbox: Outbox
    ingest: Ingest
    serving: Serving
    model_updates: ModelUpdates
    learn: Learn
    curate: Curate
    gaps: list[Gaps]

    def readiness(self) -> dict[str, Any]:
        """What /ready reports: partitions held, model loaded, table state recovered."""
        checks = {
            "ingest_partitions": sorted({tp.partition for tp in self.ingest.assigned()}),
            "agent_partitions": sorted(f"{tp.topic}:{tp.partition}"
                                       for tp in self.consumer.assignment()),
            "models": describe(self.serving),
            "heads": describe_heads(self.serving),
            "learning": self.learn.trainers is not None,
            "curating": sorted(self.curate.curators),
            # TableManager has `recovery`; the TableManagerT protocol does not declare it
            "state_recovered": self.tables.recovery.completed.is_set(),  # type: ignore[attr-defined]
        }
        checks["ready"] = bool(len(checks["models"]) == len(self.hw.served_models())
                               and checks["state_recovered"] and checks["ingest_partitions"]
                               and checks["agent_partitions"])
        return checks

    def internal_topics(self) -> dict[str, int]:
        """The topics Faust makes for this app (table changelogs, the leader topic), created
        with ours so that the consumer group sees them all when it first joins."""
        topics = {t.changelog_topic.get_topic_name(): t.partitions or self.hw.partitions
                  for t in self.tables.values()}
        topics[f"{self.conf.id}-__assignor-__leader"] = 1
        return topics

    async def on_first_start(self) -> None:
        self.hw.data_dir.mkdir(parents=True, exist_ok=True)
        await ensure_topics(self.hw, internal=self.internal_topics())
        await commit_unstarted(self.hw, self.conf.id, AGENT_INPUTS)
        await self.outbox.start()
        await super().on_first_start()

    async def on_started(self) -> None:
        await super().on_started()
        await self.add_runtime_dependency(self.model_updates)
        await self.add_runtime_dependency(self.ingest)
        if self.hw.learn:
            await self.add_runtime_dependency(self.learn)
        if self.hw.curate:
            await self.add_runtime_dependency(self.curate)

    async def on_stop(self) -> None:
        await super().on_stop()
        for gaps in self.gaps:
            await gaps.stop()
        await self.outbox.stop()


def create_app(settings: Settings) -> HeadwaterApp:
    """Build the app; nothing connects until a worker or command starts it."""
    creds: Any = None
    if settings.sasl_username:
        creds = faust.SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_password.get_secret_value() if settings.sasl_password else "",
            mechanism="SCRAM-SHA-512", ssl_context=settings.ssl_context())
    app = HeadwaterApp(
        settings.app_id,
        broker=f"kafka://{settings.bootstrap}",
        broker_credentials=creds,
        store="memory://",
        autodiscover=False,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication,
        datadir=str(settings.data_dir / settings.app_id),
        web_bind=settings.web_host,
        web_host=settings.web_host,
        web_port=settings.web_port,
        producer_linger=settings.producer_linger_ms / 1000,
        producer_max_request_size=8 * 1024 * 1024,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout_ms / 1000,
        broker_heartbeat_interval=max(settings.session_timeout_ms / 5000, 0.5),
        broker_commit_interval=1.0,
        logging_config=json_logging_config() if settings.log_format == "json" else None,
    )
    app.hw = settings
    app.outbox = Outbox(settings)
    app.ingest = Ingest(settings, app.outbox)
    app.serving = Serving(Registry(settings.registry_dir), settings.served_models(),
                          settings.device, settings.torch_threads, settings.precision)
    app.model_updates = ModelUpdates(settings, app.serving)
    app.learn = Learn(settings, app.outbox, {
        m: fam for m, fam in ((settings.sensor_model, "sensor"),
                              (settings.engagement_model, "engagement")) if m})
    app.curate = Curate(settings, app.outbox)
    app.gaps = wire_agents(app, settings, app.outbox, app.serving)

    # faust's App.timer returns a bare Callable, which mypy --strict calls untyped
    @app.timer(interval=settings.dead_letter_log_s)  # type: ignore[untyped-decorator]
    async def dead_letter_summary() -> None:
        """One log line per interval about dead letters, never one per message."""
        line = app.outbox.summary()
        if line:
            log.warning(line)

    inputs = {settings.topic(name) for name in AGENT_INPUTS}

    @app.timer(interval=LAG_INTERVAL_S)  # type: ignore[untyped-decorator]
    async def agent_lag() -> None:
        """headwater_consumer_lag of the agents' input partitions: the partition's end
        minus the offset Faust committed for the group."""
        consumer = app.consumer
        for tp in consumer.assignment():
            high = consumer.highwater(tp) if tp.topic in inputs else None
            done = consumer._committed_offset.get(tp)  # type: ignore[attr-defined]  # Faust-internal
            if high is not None and done is not None:
                CONSUMER_LAG.labels(settings.app_id, tp.topic, str(tp.partition)).set(
                    max(0, high - done))

    @app.page("/metrics")
    async def metrics(self: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        # aiohttp refuses a charset inside content_type; Prometheus reads utf-8 anyway
        return self.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0]
                          + "; version=0.0.4")

    @app.page("/health")
    async def health(self: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        """Liveness: the event loop answers."""
        return self.json({"status": "ok", "app_id": settings.app_id})

    @app.page("/ready")
    async def ready(self: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        """Readiness: partitions assigned, model loaded, state recovered (503 until then)."""
        checks = app.readiness()
        return self.json(checks, status=200 if checks["ready"] else 503)

    class Labels(faust.web.View):
        """POST /labels: label.v1 documents (one, or a list) to `labels`, all or nothing,
        for a client sending `Authorization: Bearer <HEADWATER_LABELS_TOKEN>`."""

        async def post(self, request: faust.web.Request, **kwargs: Any) -> faust.web.Response:
            status, body = await receive_labels(
                settings, app.outbox, request.headers.get("Authorization"), await request.read())
            extra = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            return self.json(body, status=status, headers=extra)

    app.page("/labels")(Labels)
    _ = (metrics, health, ready, dead_letter_summary, agent_lag)
    return app
