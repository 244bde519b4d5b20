"""Broker security on a real broker: SASL_SSL (SCRAM-SHA-512 over TLS) and the web server.

The broker here is this module's own LocalKafka (ports 59092-59094, or
HEADWATER_TEST_SASL_KAFKA_PORT and the next two; its files under a temporary home), with
a SASL_SSL listener beside PLAINTEXT and a test CA made when it starts: the session
broker of tests/conftest.py is left alone.

POST /labels without the bearer token is refused (401) on a running worker in
tests/test_labelling_pipeline.py (test_post_labels_needs_the_token_and_is_all_or_nothing),
and without a token configured every request is refused (403) in tests/test_labelling.py
(test_authorize); it is not repeated here.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from models.datasets import shuttle
from streams.broker import LocalKafka, make_ca
from streams.cli import local_kafka
from streams.produce import produce_table
from streams.settings import Settings
from tests.conftest import ROOT, Worker, free_port, log_excerpt, settings_env
from tests.test_labelling_pipeline import listening_addresses
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

USER = "hw-test"
PASSWORD = f"pw-{uuid.uuid4().hex}"  # random, so that finding it anywhere is a leak
TOKEN = f"tok-{uuid.uuid4().hex}"
EVENTS = 200


@pytest.fixture(scope="module")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """A broker of our own with a SASL_SSL listener; its jars are the shared ones."""
    shared = LocalKafka(Settings().kafka_home)
    shared.resolve()
    home = tmp_path_factory.mktemp("secure-kafka")
    (home / "lib").symlink_to(shared.lib)
    port = int(os.environ.get("HEADWATER_TEST_SASL_KAFKA_PORT", "59092"))
    node = LocalKafka(home, port, port + 1, sasl_port=port + 2, sasl_username=USER,
                      sasl_password=PASSWORD)
    node.start()
    yield node
    node.stop()


def secure(node: LocalKafka, registry_dir: Path, tmp_path: Path, **changes: object
           ) -> Settings:
    """Settings of a fresh pipeline that reaches `node` over SASL_SSL."""
    tag = uuid.uuid4().hex[:8]
    values: dict[str, object] = dict(
        bootstrap=node.sasl_bootstrap, security_protocol="SASL_SSL", sasl_username=USER,
        sasl_password=PASSWORD, ssl_cafile=node.ca_file, labels_token=TOKEN,
        topic_prefix=f"s{tag}-", app_id=f"hws-{tag}", web_port=free_port(),
        data_dir=tmp_path / "worker", registry_dir=registry_dir, session_timeout_ms=6000,
        partitions=2, log_format="json")
    return Settings(**(values | changes))  # type: ignore[arg-type]  # pydantic checks them


async def predicted_ids(s: Settings) -> set[str]:
    """The event ids in the predictions topic now, read over SASL_SSL."""
    c = AIOKafkaConsumer(s.topic("predictions"), **s.kafka_options(), group_id=None,
                         enable_auto_commit=False, auto_offset_reset="earliest")
    await c.start()
    try:
        parts = c.assignment()
        while not parts:
            await asyncio.sleep(0.05)
            parts = c.assignment()
        end = await c.end_offsets(list(parts))
        ids: set[str] = set()
        while [tp for tp in parts if await c.position(tp) < end[tp]]:
            for recs in (await c.getmany(timeout_ms=500)).values():
                ids |= {orjson.loads(r.value)["event_id"] for r in recs}
        return ids
    finally:
        await c.stop()


def test_worker_over_sasl_ssl_predicts_and_logs_no_secret(
        secure_kafka: LocalKafka, registry_dir: Path, tmp_path: Path) -> None:
    s = secure(secure_kafka, registry_dir, tmp_path)
    assert Settings.model_fields["web_host"].default == s.web_host == "127.0.0.1"
    events = shuttle(limit=EVENTS, sensors=2)
    expected = set(events.column("event_id").to_pylist())
    worker = Worker(s, tmp_path / "worker.log")
    try:
        worker.wait_ready(90)
        assert listening_addresses(s.web_port) == {"0100007F"}  # 127.0.0.1 only
        sent = asyncio.run(produce_table(s, events.drop_columns(["label"]),
                                         s.topic("sensor-events")))
        assert sent == EVENTS
        wait_for(lambda: asyncio.run(predicted_ids(s)) >= expected, 60,
                 f"{EVENTS} predictions over SASL_SSL",
                 detail=lambda: f"{len(asyncio.run(predicted_ids(s)) & expected)} so far")
        assert worker.running()
    except BaseException:
        print(log_excerpt(worker.log))
        raise
    finally:
        worker.stop()
    log = worker.log.read_text()
    assert f"Authenticated as {USER} via SCRAM-SHA-512" in log
    assert PASSWORD not in log and TOKEN not in log


def run_cli(s: Settings, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    t = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "streams.cli", *args], cwd=ROOT,
                          env=settings_env(s), capture_output=True, text=True, timeout=120,
                          check=False)
    return done, time.monotonic() - t


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The one line a refused start prints; nothing else, no traceback, exit 1."""
    output = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == 1, output
    assert len(output) == 1 and output[0].startswith("headwater: "), output
    return output[0]


def test_a_wrong_password_or_an_untrusted_ca_is_one_line_and_exit_1(
        secure_kafka: LocalKafka, registry_dir: Path, tmp_path: Path) -> None:
    """The worker and two CLI clients, started together (each would take as long alone)."""
    wrong = f"wrong-{uuid.uuid4().hex}"
    other = make_ca(tmp_path / "other-ca", "other-ca-store", name="not-the-broker-ca")
    bad_password = secure(secure_kafka, registry_dir, tmp_path, sasl_password=wrong)
    bad_ca = secure(secure_kafka, registry_dir, tmp_path, ssl_cafile=other)
    refused = (f"broker {secure_kafka.sasl_bootstrap} refused the SCRAM-SHA-512 login of "
               f"user '{USER}'")
    untrusted = (f"the TLS certificate of broker {secure_kafka.sasl_bootstrap} is not trusted"
                 f" (self-signed certificate in certificate chain): HEADWATER_SSL_CAFILE must "
                 f"name the CA that signed it (now {other})")
    cases = [(bad_password, ["worker", "-l", "info"], refused),
             (bad_password, ["topics", "create"], refused),
             (bad_ca, ["worker", "-l", "info"], untrusted),
             (bad_ca, ["watch", "--idle", "1"], untrusted)]
    with ThreadPoolExecutor(len(cases)) as pool:
        runs = list(pool.map(lambda case: run_cli(case[0], *case[1]), cases))
    for (_, command, expected), (done, took) in zip(cases, runs, strict=True):
        line = one_error_line(done)
        print(f"{command[0]}: exit {done.returncode} after {took:.1f}s: {line}")
        assert expected in line, line
        assert wrong not in line and PASSWORD not in line
        assert took < 60  # the process start is most of it; the check itself takes < 1 s


def test_secrets_are_not_in_repr(tmp_path: Path) -> None:
    s = Settings(security_protocol="SASL_SSL", sasl_username=USER, sasl_password=PASSWORD,
                 labels_token=TOKEN, kafka_sasl_port=59094)
    for shown in (repr(s), str(s), s.model_dump_json(), repr(s.model_dump())):
        assert PASSWORD not in shown and TOKEN not in shown
    node = local_kafka(s, sasl=True)
    assert (node.sasl_port, node.sasl_username, node.sasl_password) == (59094, USER, PASSWORD)
    assert PASSWORD not in repr(node)
    assert local_kafka(s).sasl_port is None
