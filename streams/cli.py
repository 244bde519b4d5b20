"""The `headwater` command: Faust's own CLI (`worker`, ...) plus headwater's commands.

    headwater kafka start|stop|status    the local broker (ops/, no Docker)
    headwater kafka start --sasl         ... with a SASL_SSL listener (SCRAM, test CA)
    headwater train shuttle|movielens    train the sensor or engagement model, promote it
    headwater train --parquet EVENTS     the same from a Parquet file of either kind of event
    headwater produce shuttle            replay a dataset into sensor-events
    headwater watch                      follow predictions: count, rate, latency
    headwater registry list|promote|rollback   models; a promotion reaches every worker
    headwater worker -l info             run ingest, featurize and infer
    headwater bench                      the end-to-end benchmark (bench/e2e.py)
    headwater status                     the running worker's /health and /ready
    headwater labels export|import       curation samples to Label Studio, its labels back
    headwater export TOPIC --out DIR     a topic range to Parquet (resumable)
    headwater replay --events T --out DIR   recorded events through candidate models, a report
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any, NoReturn

import click
from faust.cli import AppCommand, argument, option
from tqdm import tqdm

from streams.broker import OPS_DIR, BrokerError, LocalKafka
from streams.security import BrokerSecurityError, check_broker
from streams.settings import Settings

if TYPE_CHECKING:
    from streams.app import HeadwaterApp

__all__ = ["local_kafka", "main"]

#: where a checkout's sibling `shared/data` holds the NAB, UCI occupancy and MovieLens data
SHARED_DATA = OPS_DIR.parent.parent / "shared" / "data"


def local_kafka(settings: Settings, sasl: bool = False) -> LocalKafka:
    """The local broker that `settings` describe; `sasl`: with its SASL_SSL listener, for
    the SCRAM user `sasl_username` (default `headwater`) with password `sasl_password`."""
    if not sasl:
        return LocalKafka(settings.kafka_home, settings.kafka_port,
                          settings.kafka_controller_port)
    return LocalKafka(settings.kafka_home, settings.kafka_port, settings.kafka_controller_port,
                      sasl_port=settings.kafka_sasl_port,
                      sasl_username=settings.sasl_username or "headwater",
                      sasl_password=settings.sasl_password.get_secret_value()
                      if settings.sasl_password else "")


def fail(message: str) -> NoReturn:
    """One error line on stderr and exit status 1 (no traceback for operator errors)."""
    sys.stdout.flush()
    print(f"headwater: {message}", file=sys.stderr, flush=True)
    os._exit(1)


def register_commands(app: HeadwaterApp) -> None:
    settings = app.hw

    @app.command(argument("action", type=click.Choice(["start", "stop", "status"])),
                 option("--sasl", is_flag=True, default=False,
                        help="Also listen for SASL_SSL (SCRAM-SHA-512 over TLS, a test CA) on "
                             "HEADWATER_KAFKA_SASL_PORT, for HEADWATER_SASL_USERNAME with "
                             "HEADWATER_SASL_PASSWORD"))
    async def kafka(self: AppCommand, action: str, sasl: bool) -> None:
        """Start, stop or report the local Kafka broker (resolved by ops/ from Maven)."""
        node = local_kafka(settings, sasl=sasl)
        try:
            if action == "start":
                t = time.monotonic()
                pid = node.start()
                secured = (f" sasl_ssl={node.sasl_bootstrap} ca={node.ca_file}"
                           if sasl else "")
                print(f"kafka running pid={pid} bootstrap={node.bootstrap}{secured} "
                      f"({time.monotonic() - t:.1f}s) log: {node.log_path}")
            elif action == "stop":
                print("kafka stopped" if node.stop() else "kafka was not running")
            else:
                print(node.status())
        except BrokerError as exc:
            fail(str(exc))

    @app.command(
        argument("dataset", type=click.Choice(["shuttle", "movielens"]), required=False),
        option("--parquet", type=click.Path(dir_okay=False, exists=True), default=None,
               help="Train on a Parquet file of sensor events (with `label`) or engagement "
                    "events instead of a dataset"),
        option("--data", type=click.Path(file_okay=False), default=str(SHARED_DATA),
               help="Folder holding movielens-100k/"),
        option("--limit", type=int, default=None, help="First N events (in time) only"),
        option("--name", default=None,
               help="Registry name; default the sensor model setting, or movielens"),
        option("--sensors", type=int, default=4, help="shuttle: simulated sensors to deal to"),
        option("--epochs", type=int, default=None, help="Default: 15 sensor, 3 engagement"),
        option("--seed", type=int, default=0),
    )
    async def train(self: AppCommand, dataset: str | None, parquet: str | None, data: str,
                    limit: int | None, name: str | None, sensors: int, epochs: int | None,
                    seed: int) -> None:
        """Train a deep model (sensor or engagement) on a dataset or a Parquet file of
        events, save it to the registry and promote it."""
        from pathlib import Path

        import pyarrow.parquet as pq

        from models import datasets
        from models.inference import pick_device
        from models.registry import Registry
        from models.training import (
            ENGAGEMENT_MODEL,
            TrainResult,
            event_kind,
            train_engagement_model,
            train_sensor_model,
        )

        if (dataset is None) == (parquet is None):
            fail("name a dataset (shuttle or movielens) or pass --parquet PATH: one of them")
        if parquet is not None:
            events = pq.read_table(parquet)
            source = parquet
        elif dataset == "shuttle":
            events, source = datasets.shuttle(limit=limit, sensors=sensors), "shuttle"
        else:
            folder = Path(data) / "movielens-100k"
            if not folder.is_dir():
                fail(f"{folder} not found: pass --data, the folder holding movielens-100k/")
            events, source = datasets.movielens(folder, limit=limit), "movielens"
        if parquet is not None and limit is not None:
            events = events.sort_by("event_time").slice(0, limit)
        kind = event_kind(events.schema.names)
        registry = Registry(settings.registry_dir)
        device = pick_device(settings.device)
        extra: dict[str, Any] = {} if epochs is None else {"epochs": epochs}
        result: TrainResult
        if kind == "engagement":
            result = train_engagement_model(events, registry, name or ENGAGEMENT_MODEL,
                                            config=settings.engagement_features(), seed=seed,
                                            device=device, **extra)
        elif kind == "sensor":
            result = train_sensor_model(events, registry, name or settings.sensor_model,
                                        config=settings.sensor_features(), seed=seed,
                                        device=device, **extra)
        else:
            fail(f"{source}: neither engagement events (user_id, item_id, event_time, kind) "
                 "nor labelled sensor events (sensor_id, event_time, readings.*, label)")
        m = result.metrics
        print(f"trained {result.name} v{result.version} on {int(m['train_rows'])} events of "
              f"{source}, validated on {int(m['val_rows'])}: AUC {m['val_auc']:.4f}, "
              f"log loss {m['val_log_loss']:.4f}, accuracy {m['val_accuracy']:.4f} "
              f"({settings.registry_dir})")

    @app.command(
        argument("dataset", type=click.Choice(["shuttle", "nab", "occupancy", "movielens"])),
        option("--topic", default=None,
               help="Topic (before the prefix); default sensor-events or engagement-events"),
        option("--limit", type=int, default=None, help="First N events only"),
        option("--rate", type=float, default=0.0, help="Events/s; 0 = as fast as possible"),
        option("--sensors", type=int, default=4, help="shuttle: simulated sensors to deal to"),
        option("--format", "fmt", type=click.Choice(["json", "arrow"]), default="json"),
        option("--data", type=click.Path(file_okay=False), default=str(SHARED_DATA),
               help="Folder of the nab, uci-occupancy and movielens-100k datasets"),
        option("--labels-delay", default=None,
               help="Also send each event's outcome label to `labels`, due this long "
                    "after it (e.g. 1m)"),
    )
    async def produce(self: AppCommand, dataset: str, topic: str | None, limit: int | None,
                      rate: float, sensors: int, fmt: str, data: str,
                      labels_delay: str | None) -> None:
        """Replay a dataset into a topic in event-time order, with a progress bar."""
        from pathlib import Path

        from models import datasets
        from models.features import parse_duration
        from streams.produce import produce_table
        from streams.topics import ensure_topics

        folder = Path(data) / {"nab": "nab", "occupancy": "uci-occupancy",
                               "movielens": "movielens-100k"}.get(dataset, "")
        if dataset != "shuttle" and not folder.is_dir():
            fail(f"{folder} not found: pass --data, the folder holding {folder.name}/")
        await ensure_topics(settings)
        if dataset == "shuttle":
            table = datasets.shuttle(limit=limit, sensors=sensors)
        elif dataset == "movielens":
            table = datasets.movielens(folder, limit=limit)
        else:
            table = getattr(datasets, dataset)(folder).slice(0, limit)
        topic = topic or ("engagement-events" if dataset == "movielens" else "sensor-events")
        t = time.monotonic()
        with tqdm(total=table.num_rows, unit="ev", unit_scale=True, file=sys.stderr,
                  disable=None) as bar:
            n = await produce_table(
                settings, table, settings.topic(topic), rate=rate, fmt=fmt,
                progress=bar.update, labels_delay_ms=None if labels_delay is None
                else parse_duration(labels_delay))
        dt = time.monotonic() - t
        print(f"produced {n} {dataset} events to {settings.topic(topic)} "
              f"in {dt:.1f}s ({n / dt:,.0f}/s)")

    @app.command(
        option("--since-ms", type=int, default=None, help="Start at this Kafka timestamp"),
        option("--expect", type=int, default=None, help="Stop after this many predictions"),
        option("--idle", type=float, default=10.0, help="Stop after this long with none"),
        option("--samples", type=int, default=3, help="Sample predictions to print"),
    )
    async def watch(self: AppCommand, since_ms: int | None, expect: int | None, idle: float,
                    samples: int) -> None:
        """Follow the predictions topic: live count, rate, latency and samples."""
        from streams.watch import WatchError, watch_predictions

        try:
            s = await watch_predictions(settings, since_ms=since_ms, expect=expect, idle=idle,
                                        samples=samples)
        except WatchError as exc:
            fail(str(exc))
        if expect is not None and s.count < expect:
            fail(f"saw {s.count} predictions, expected {expect}")

    @app.command(
        option("--events", type=int, default=200_000),
        option("--repeat", type=int, default=3),
        option("--formats", default="json,arrow"),
    )
    async def bench(self: AppCommand, events: int, repeat: int, formats: str) -> None:
        """Run bench/e2e.py: the slice's events/s beside the raw aiokafka ceilings."""
        script = OPS_DIR.parent / "bench" / "e2e.py"
        if not script.exists():
            fail(f"{script} not found: run `headwater bench` from a headwater checkout")
        done = subprocess.run([sys.executable, str(script), "--events", str(events),
                               "--repeat", str(repeat), "--formats", formats], check=False)
        if done.returncode:
            fail(f"bench failed with exit code {done.returncode}")

    @app.command(
        argument("action", type=click.Choice(["list", "promote", "rollback"])),
        argument("name", required=False),
        argument("version", type=int, required=False),
    )
    async def registry(self: AppCommand, action: str, name: str | None, version: int | None
                       ) -> None:
        """List registry versions; promote one (or roll back) on every running worker."""
        from aiokafka.errors import KafkaError

        from models.registry import Registry, RegistryError
        from streams.serving import publish_promotion
        from streams.topics import ensure_topics

        models = Registry(settings.registry_dir)
        try:
            if action == "list":
                for n in [name] if name else models.names():
                    for v in models.list(n):
                        metrics = " ".join(f"{k}={val:.4g}" for k, val in v["metrics"].items()
                                           if k.startswith("val_"))
                        print(f"{n} v{v['version']}{' *' if v['promoted'] else '  '} "
                              f"{v['feature_set']} {v['created_at']} {metrics}")
                return
            if not name:
                fail(f"`headwater registry {action}` needs a model name")
            if action == "rollback":
                version = models.previous(name)
            elif version is None:
                fail("`headwater registry promote NAME VERSION` needs a version")
            models.load(name, version)  # a version that does not load is never promoted
            if action == "rollback":
                models.rollback(name)
            else:
                models.promote(name, version)
        except RegistryError as exc:
            fail(str(exc))
        try:  # the registry first: a worker starting meanwhile loads the new version
            await ensure_topics(settings, ("model-updates",))
            await publish_promotion(settings, name, version)
        except (KafkaError, RuntimeError) as exc:
            fail(f"the registry now serves {name} v{version}, but running workers were not "
                 f"told ({exc!r}); run `headwater registry promote {name} {version}` again")
        print(f"promoted {name} v{version}: running workers swap to it between two "
              f"micro-batches ({settings.topic('model-updates')})")

    @app.command(argument("action", type=click.Choice(["create", "drop"])))
    async def topics(self: AppCommand, action: str) -> None:
        """Create the topics (idempotent), or drop this prefix's and app id's topics."""
        from streams.topics import drop_topics, ensure_topics

        try:
            names = await (ensure_topics(settings) if action == "create"
                           else drop_topics(settings))
        except RuntimeError as exc:
            fail(str(exc))
        print(f"{'created' if action == 'create' else 'dropped'} {len(names)} topics")

    @app.command()
    async def status(self: AppCommand) -> None:
        """Ask the running worker's /health and /ready and print what they say."""
        base = f"http://{settings.web_host}:{settings.web_port}"
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=5) as r:
                print("health:", r.read().decode())
        except OSError as exc:
            fail(f"no worker answers at {base} ({exc})")
        try:
            with urllib.request.urlopen(f"{base}/ready", timeout=5) as r:
                print("ready:", r.read().decode())
        except urllib.error.HTTPError as exc:
            print("not ready:", exc.read().decode())
            fail("worker is not ready")

    @app.command(
        argument("action", type=click.Choice(["export", "import"])),
        argument("export_file", required=False),
        option("--out", type=click.Path(dir_okay=False), default=None,
               help="export: the Label Studio tasks file to write"),
        option("--config", type=click.Path(dir_okay=False), default=None,
               help="export: also write the Label Studio labelling config (XML) here"),
        option("--skip-bad", is_flag=True, default=False,
               help="import: publish the good tasks' labels even when some are bad"),
    )
    async def labels(self: AppCommand, action: str, export_file: str | None, out: str | None,
                     config: str | None, skip_bad: bool) -> None:
        """Export the curation topic as Label Studio tasks (`--out tasks.json`), or import
        a Label Studio JSON export (EXPORT_FILE) and publish its labels to `labels`.

        An import with any bad task publishes nothing and exits 1, one line per bad task;
        with --skip-bad the good ones are published, and it still exits 1."""
        from pathlib import Path

        import orjson
        from aiokafka.errors import KafkaError

        from streams.labelling import (
            LABEL_CONFIG,
            LabellingError,
            from_label_studio,
            publish_labels,
            read_curation,
            to_label_studio,
        )
        from streams.outbox import Outbox

        if action == "export":
            if out is None:
                fail("`headwater labels export` needs --out FILE")
            try:
                samples, bad = await read_curation(settings)
            except LabellingError as exc:
                fail(str(exc))
            tasks = to_label_studio(samples)
            Path(out).write_bytes(orjson.dumps(tasks, option=orjson.OPT_INDENT_2))
            if config:
                Path(config).write_text(LABEL_CONFIG)
            skipped = f"; {len(bad)} messages that are not curation samples skipped" \
                if bad else ""
            print(f"exported {len(tasks)} tasks from {len(samples)} curation samples of "
                  f"{settings.topic('curation')} to {out}{skipped}")
            return
        if export_file is None:
            fail("`headwater labels import` needs the Label Studio JSON export file")
        try:
            export = orjson.loads(Path(export_file).read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            fail(f"{export_file}: {exc}")
        if not isinstance(export, list):
            fail(f"{export_file}: not a Label Studio JSON export (a list of tasks)")
        good, errors = from_label_studio(export, now_ms=time.time_ns() // 1_000_000)
        for i, reason in errors:
            print(f"headwater: {export_file}: task {i}: {reason}", file=sys.stderr)
        if errors and not skip_bad:
            fail(f"{len(errors)} of {len(export)} tasks are bad: nothing published "
                 "(--skip-bad publishes the good ones)")
        topic = settings.topic("labels")
        outbox = Outbox(settings)
        try:
            await outbox.start()
            await publish_labels(outbox, topic, [(x.event_id, x.to_json()) for x in good])
        except (KafkaError, OSError, RuntimeError) as exc:
            fail(f"publishing to {topic} failed ({exc!r}); run the import again (a second "
                 "label of an event is not learned)")
        finally:
            await outbox.stop()
        print(f"published {len(good)} labels to {topic}"
              + (f"; {len(errors)} bad tasks skipped" if errors else ""))
        if errors:
            fail(f"{len(errors)} of {len(export)} tasks were bad and not published")

    @app.command(
        argument("topic"),
        option("--out", type=click.Path(file_okay=False), default=None,
               help="Output folder: rows go to OUT/TOPIC/date=YYYY-MM-DD/*.parquet"),
        option("--partition", "partitions", type=int, multiple=True,
               help="A partition to export (repeat for more); default all"),
        option("--from-offset", type=int, default=None, help="First offset (inclusive)"),
        option("--from-time", default=None,
               help="First Kafka timestamp (inclusive): ISO 8601 (UTC if no zone) or ms"),
        option("--to-offset", type=int, default=None, help="End offset (exclusive)"),
        option("--to-time", default=None, help="End Kafka timestamp (exclusive)"),
        option("--limit", type=int, default=None,
               help="Stop after about N messages; the same command again goes on"),
        option("--rows-per-file", type=int, default=500_000,
               help="Write a partition's rows when this many are waiting"),
    )
    async def export(self: AppCommand, topic: str, out: str | None, partitions: tuple[int, ...],
                     from_offset: int | None, from_time: str | None, to_offset: int | None,
                     to_time: str | None, limit: int | None, rows_per_file: int) -> None:
        """Export a topic range (TOPIC before the prefix, e.g. sensor-events) to Parquet,
        decoded as the pipeline decodes it; an interrupted export goes on where it stopped
        when run again with the same arguments."""
        from pathlib import Path

        from aiokafka.errors import KafkaError

        from streams.export import ExportError, Range, Summary, export_range, parse_time

        if out is None:
            fail("`headwater export` needs --out DIR")
        bars: list[tqdm[Any]] = []  # made once the range is known to be good

        def started(s: Summary) -> None:  # rate and ETA over the whole range
            bars.append(tqdm(total=s.total, initial=s.messages, unit="msg", unit_scale=True,
                             file=sys.stderr, disable=None))

        t = time.monotonic()
        try:
            spec = Range(partitions=tuple(partitions) or None, start_offset=from_offset,
                         end_offset=to_offset,
                         start_time=None if from_time is None else parse_time(from_time),
                         end_time=None if to_time is None else parse_time(to_time))
            s = await export_range(settings, topic, spec, Path(out), limit=limit,
                                   rows_per_file=rows_per_file, on_start=started,
                                   progress=lambda n: bars[0].update(n))
        except ExportError as exc:
            fail(str(exc))
        except KafkaError as exc:
            fail(f"export of {settings.topic(topic)} failed ({exc!r}); run it again to go on")
        except OSError as exc:
            fail(f"cannot write the export to {out}: {exc}")
        finally:
            for bar in bars:
                bar.close()
        if s.already:
            print(f"export of {s.topic} to {s.path} was already complete: {s.rows} rows, "
                  f"{s.rejected} rejected")
            return
        dt = time.monotonic() - t
        rejected = f"; {s.rejected} rejected ({s.path}/_rejected)" if s.rejected else \
            "; 0 rejected"
        status = "complete" if s.complete else \
            f"INCOMPLETE ({s.messages} of {s.total} messages): run the same command to go on"
        print(f"exported {s.rows} rows from {s.messages} messages of {s.topic} to {s.path} "
              f"in {dt:.1f}s{rejected}; {status}")

    @app.command(
        option("--events", default=None,
               help="Events: a topic (before the prefix, e.g. sensor-events) or a Parquet "
                    "export (OUT/TOPIC) or file"),
        option("--labels", default="labels",
               help="Labels: a topic (all of it) or a Parquet export or file"),
        option("--candidate", "candidates", multiple=True,
               help="[NAME=]MODEL[:VERSION][@HEAD SPEC], repeat to compare; default the "
                    "promoted version of the events' model"),
        option("--out", type=click.Path(file_okay=False), default=None,
               help="Report folder: report.html, report.json, PNG plots, predictions"),
        option("--partition", "partitions", type=int, multiple=True,
               help="A partition of the events topic (repeat for more); default all"),
        option("--from-offset", type=int, default=None, help="First offset (inclusive)"),
        option("--from-time", default=None,
               help="First Kafka timestamp (inclusive): ISO 8601 (UTC if no zone) or ms"),
        option("--to-offset", type=int, default=None, help="End offset (exclusive)"),
        option("--to-time", default=None, help="End Kafka timestamp (exclusive)"),
        option("--every", type=int, default=500, help="Labels between metric points"),
    )
    async def replay(self: AppCommand, events: str | None, labels: str,
                     candidates: tuple[str, ...], out: str | None, partitions: tuple[int, ...],
                     from_offset: int | None, from_time: str | None, to_offset: int | None,
                     to_time: str | None, every: int) -> None:
        """Replay recorded events and labels through featurize, infer, learn and curate in
        process, for one or more candidates side by side, and write a report."""
        from pathlib import Path

        from aiokafka.errors import KafkaError

        from streams.export import ExportError, Range, parse_time
        from streams.replay import Candidate, ReplayError, run

        if events is None or out is None:
            fail("`headwater replay` needs --events TOPIC|PARQUET and --out DIR")
        try:
            spec = Range(partitions=tuple(partitions) or None, start_offset=from_offset,
                         end_offset=to_offset,
                         start_time=None if from_time is None else parse_time(from_time),
                         end_time=None if to_time is None else parse_time(to_time))
            chosen = [Candidate.parse(c) for c in candidates]
            # read_range runs its own event loop: off this one
            line = await asyncio.to_thread(run, settings, events, labels, spec, chosen,
                                           Path(out), every)
        except (ReplayError, ExportError) as exc:
            fail(str(exc))
        except KafkaError as exc:
            fail(f"replay could not read from Kafka: {exc!r}")
        except OSError as exc:
            fail(f"cannot write the report to {out}: {exc}")
        print(line)

    _ = (kafka, train, produce, watch, bench, registry, topics, status, labels, export, replay)


#: commands that talk to the broker (`registry list` aside)
BROKER_COMMANDS = frozenset({"worker", "produce", "watch", "registry", "topics", "labels",
                             "export", "send", "replay"})


def check_security(settings: Settings, args: list[str]) -> None:
    """Before a command that talks to the broker over TLS or SASL: one connection with the
    clients' options; an untrusted certificate or a refused login is one line and exit 1
    (the clients would retry it for ever)."""
    command = next((i for i, a in enumerate(args) if a in BROKER_COMMANDS), None)
    if command is None or args[command:command + 2] == ["registry", "list"]:
        return
    try:
        asyncio.run(check_broker(settings))
    except BrokerSecurityError as exc:
        fail(str(exc))


def main() -> None:
    """Entry point of the `headwater` console script."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    settings = Settings()
    check_security(settings, sys.argv[1:])
    from streams.app import create_app  # after the check: the app imports torch and river

    app = create_app(settings)
    register_commands(app)
    app.main()


if __name__ == "__main__":
    main()
