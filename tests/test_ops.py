"""docker-compose.yml is valid and runs the broker version ops/ pins."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def compose() -> list[str]:
    """`docker compose`, or the plugin binary itself where the docker CLI is absent."""
    plugin = Path.home() / ".docker" / "cli-plugins" / "docker-compose"
    if shutil.which("docker"):
        return ["docker", "compose"]
    assert plugin.exists(), "no docker compose: run ops/install-compose.sh"
    return [str(plugin)]


def test_compose_config_passes() -> None:
    done = subprocess.run([*compose(), "config", "--quiet"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


def test_compose_broker_is_the_pinned_version() -> None:
    pinned = re.search(r"<kafka.version>([^<]+)</kafka.version>",
                       (ROOT / "ops" / "kafka" / "pom.xml").read_text())
    assert pinned
    assert f"image: apache/kafka:{pinned.group(1)}" in (ROOT / "docker-compose.yml").read_text()
