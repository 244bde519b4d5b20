"""The README stays true: reading order, commands, settings table, and its code runs."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from streams.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.S | re.M)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def test_start_here_names_files_that_exist() -> None:
    items = re.findall(r"^\d+\. (.*)$", section("Start here"), re.M)
    assert len(items) >= 8
    paths = [p for item in items for p in re.findall(r"`([^`]+)`", item)]
    assert paths
    for p in paths:
        assert (ROOT / p).exists(), f"README 'Start here' names missing {p}"
    listed = {p for p in paths if p.endswith(".py")}
    for module in ["streams/ingest.py", "streams/agents.py", "schemas/codec.py",
                   "models/features.py", "streams/broker.py"]:
        assert module in listed


def test_the_two_commands_exist_and_ci_runs_the_test_command() -> None:
    commands = re.findall(r"^bash (\S+)", section("Set-up: two commands"), re.M)
    assert commands == ["ops/demo.sh", "ops/test.sh"]
    for c in commands:
        assert (ROOT / c).exists()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash ops/test.sh" in ci


def test_configuration_table_lists_every_setting_with_its_default() -> None:
    rows = {k: v.replace("\\|", "|") for k, v in re.findall(  # \| is a | in a cell
        r"^\| `(HEADWATER_[A-Z_]+)` \| ((?:[^|\\]|\\\|)+) \|", section("Configuration"), re.M)}
    fields = Settings.model_fields
    assert set(rows) == {f"HEADWATER_{name.upper()}" for name in fields}
    for name, field in fields.items():
        default = field.default
        shown = rows[f"HEADWATER_{name.upper()}"].strip()
        if isinstance(default, (int, str)) and default != "":
            assert shown == f"`{default}`", (name, shown)


def test_results_table_has_the_slice_and_both_ceilings() -> None:
    results = section("Results")
    assert "RESULTS_TABLE" not in results
    for label in ["raw aiokafka consume-only", "raw aiokafka consume->produce pass-through",
                  "headwater JSON in -> predictions (json out)"]:
        assert re.search(rf"\| {re.escape(label)}\s*\| [\d,]+", results), label
    assert "python bench/e2e.py" in results


@pytest.mark.integration
def test_the_python_consumer_example_runs(settings: Settings) -> None:
    block = re.search(r"```python\n(import asyncio, orjson.*?)```", README, re.S)
    assert block
    topic = settings.topic("predictions")
    code = block.group(1).replace('"predictions"', repr(topic)).replace(
        "127.0.0.1:9092", settings.bootstrap)

    async def fill() -> None:
        from streams.topics import ensure_topics

        await ensure_topics(settings, ("predictions",))
        p = AIOKafkaProducer(bootstrap_servers=settings.bootstrap)
        await p.start()
        for i in range(10):
            await p.send_and_wait(topic, orjson.dumps(
                {"event_id": f"e{i}", "probability": 0.5, "model_version": 1}))
        await p.stop()

    asyncio.run(fill())
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    assert sorted(out.getvalue().splitlines()) == sorted(f"e{i} 0.5 1" for i in range(10))
