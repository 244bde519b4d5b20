"""Fixtures: the real local broker (through streams/broker.py), per-test settings, a worker.

The broker runs on its own ports (19092/19093, or HEADWATER_TEST_KAFKA_PORT and the next
one) so a user's broker on 9092 is left alone. If it cannot start, every test that needs
it errors: integration tests never skip.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from models.datasets import shuttle
from models.registry import Registry
from models.training import train_sensor_model
from streams.broker import LocalKafka
from streams.settings import Settings
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def kafka() -> Iterator[LocalKafka]:
    port = int(os.environ.get("HEADWATER_TEST_KAFKA_PORT", "19092"))
    node = LocalKafka(Settings().kafka_home, port=port, controller_port=port + 1)
    node.start()
    yield node
    node.stop()


@pytest.fixture(scope="session")
def registry_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry with the shuttle model trained once for the session (a few seconds)."""
    root = tmp_path_factory.mktemp("registry")
    train_sensor_model(shuttle(), Registry(root), "shuttle", config=Settings().sensor_features(),
                       epochs=4)
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def settings(kafka: LocalKafka, registry_dir: Path, tmp_path: Path) -> Settings:
    """Settings of a fresh pipeline: its own topics, consumer groups and web port."""
    tag = uuid.uuid4().hex[:8]
    return Settings(bootstrap=kafka.bootstrap, topic_prefix=f"t{tag}-", app_id=f"hw-{tag}",
                    web_port=free_port(), data_dir=tmp_path / "worker",
                    registry_dir=registry_dir, session_timeout_ms=6000, partitions=4,
                    dead_letter_log_s=1.0, log_format="json")


def settings_env(s: Settings) -> dict[str, str]:
    """The environment that makes a child process build the same Settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADWATER_")}
    return env | s.to_env()


class Worker:
    """`headwater worker` as a child process, its log in a file."""

    def __init__(self, s: Settings, log: Path) -> None:
        self.settings = s
        self.log = log
        self._out = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker", "-l", "info"],
                                     cwd=ROOT, env=settings_env(s), stdout=self._out,
                                     stderr=subprocess.STDOUT)

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self, timeout: float = 60) -> None:
        """Until the worker has joined its groups and serves /metrics."""
        wait_for(lambda: not self.running() or b"Worker ready" in self.log.read_bytes(), timeout,
                 f"worker ready (log: {self.log})")
        assert self.running(), self.log.read_text()[-3000:]

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final commit, like a machine that lost power."""
        self.proc.kill()
        self.proc.wait()

    def restart(self) -> None:
        self._out.close()
        self._out = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker", "-l", "info"],
                                     cwd=ROOT, env=settings_env(self.settings), stdout=self._out,
                                     stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.running():
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()


FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember a failed test body, so its worker fixture can show the worker's log."""
    report: pytest.TestReport = yield
    if report.when == "call" and report.failed:
        item.stash[FAILED] = True
    return report


def log_excerpt(log: Path, tail: int = 60) -> str:
    """The worker's warnings and errors, then its last `tail` lines: what a failed run
    needs to be understood where only the test output survives (CI)."""
    lines = log.read_text(errors="replace").splitlines()
    loud = [line for line in lines if '"level":"WARNING"' in line or '"level":"ERROR"' in line
            or "Traceback" in line]
    return "\n".join([f"--- worker log {log}: {len(loud)} warnings and errors (last 80)",
                      *loud[-80:], f"--- last {tail} lines", *lines[-tail:]])


@pytest.fixture
def worker(settings: Settings, tmp_path: Path, request: pytest.FixtureRequest
           ) -> Iterator[Worker]:
    w = Worker(settings, tmp_path / "worker.log")
    try:
        w.wait_ready()
        yield w
    finally:
        w.stop()
        if request.node.stash.get(FAILED, False):
            print(log_excerpt(w.log))
