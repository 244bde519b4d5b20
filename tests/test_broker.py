"""The local broker through `headwater kafka`: idempotent start, clean stop, clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from streams.broker import LocalKafka
from streams.settings import Settings

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent


def headwater(*args: str, port: int, path: str | None = None
              ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HEADWATER_KAFKA_PORT": str(port),
           "HEADWATER_KAFKA_CONTROLLER_PORT": str(port + 1)}
    if path is not None:
        env["PATH"] = path
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def our_java(node_dir: Path) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"kafka.Kafka" in cmd and str(node_dir).encode() in cmd:
                pids.append(int(proc.name))
    return pids


def test_start_twice_then_stop_leaves_no_java_behind() -> None:
    port = 19192
    node = LocalKafka(Settings().kafka_home, port, port + 1)
    first = headwater("kafka", "start", port=port)
    assert first.returncode == 0, first.stderr
    assert f"bootstrap=127.0.0.1:{port}" in first.stdout
    assert str(node.log_path) in first.stdout
    second = headwater("kafka", "start", port=port)
    assert second.returncode == 0, second.stderr
    assert our_java(node.node_dir) == [node.pid()]
    assert "kafka running" in headwater("kafka", "status", port=port).stdout
    assert node.answers()

    stop = headwater("kafka", "stop", port=port)
    assert stop.returncode == 0 and "kafka stopped" in stop.stdout
    assert our_java(node.node_dir) == []
    assert not node.answers()
    assert "kafka stopped" in headwater("kafka", "status", port=port).stdout


def test_missing_java_is_one_clear_line() -> None:
    empty = "/nonexistent-bin"
    done = headwater("kafka", "start", port=19292, path=empty)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("headwater: `java` not found: install"), done.stderr
    assert "Traceback" not in done.stderr
