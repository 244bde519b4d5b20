"""Promote a model mid-stream: the worker swaps between micro-batches, every event gets
exactly one prediction, and each sensor's predictions change version once, in order.
A promotion to a version the registry does not have is refused and counted."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import threading
from collections import defaultdict
from pathlib import Path

import orjson
import pytest
import torch

from models.registry import Registry
from streams.produce import produce_table
from streams.serving import publish_promotion
from streams.settings import Settings
from tests.conftest import ROOT, Worker, free_port, settings_env
from tests.test_crash import many_events, ready
from tests.test_engagement_pipeline import sample
from tests.test_pipeline import behind, caught_up, read_all
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

EVENTS = 80_000  # 32 s at 2,500/s: the promote command alone takes 6-7 s to start


def second_version(root: Path) -> int:
    """Save a v2 of the shuttle model that scores differently (a shifted output bias)."""
    registry = Registry(root)
    v1 = registry.load("shuttle")
    module = v1.module
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.add_(0.5)
    m = v1.manifest
    return registry.save("shuttle", module, m["init_args"], feature_names=m["feature_names"],
                         feature_set=m["feature_set"], metrics={})


def test_promotion_mid_stream_swaps_once_without_a_gap(settings: Settings,
                                                       tmp_path: Path) -> None:
    root = tmp_path / "registry"
    shutil.copytree(settings.registry_dir, root)
    assert second_version(root) == 2
    s = settings.model_copy(update={"registry_dir": root})
    worker = Worker(s, tmp_path / "worker.log")
    # a second worker of the same app: the partitions split between them
    s2 = s.model_copy(update={"web_port": free_port(), "data_dir": tmp_path / "worker2"})
    second = Worker(s2, tmp_path / "worker2.log")
    try:
        worker.wait_ready()
        second.wait_ready()
        wait_for(lambda: ready(s) and ready(s2), 60, "both workers holding partitions")
        events = many_events(EVENTS)
        producer = threading.Thread(target=lambda: asyncio.run(produce_table(
            s, events, s.topic("sensor-events"), rate=2500, chunk=500)))
        producer.start()
        wait_for(lambda: sample(s, 'headwater_events_total{agent="infer"}') > 5000, 120,
                 "predictions flowing")
        promote = subprocess.run([sys.executable, "-m", "streams.cli", "registry", "promote",
                                  "shuttle", "2"], cwd=ROOT, env=settings_env(s),
                                 capture_output=True, text=True, timeout=120, check=False)
        assert promote.returncode == 0, promote.stderr
        assert Registry(root).current("shuttle") == 2
        wait_for(lambda: [sample(w, 'headwater_model_version{model="shuttle"}')
                          for w in (s, s2)] == [2, 2], 30, "every worker serving v2")
        producer.join(timeout=120)
        assert not producer.is_alive()
        wait_for(lambda: asyncio.run(caught_up(s)), 120, "the worker to commit every input",
             detail=lambda: asyncio.run(behind(s)))

        predictions = [orjson.loads(v)
                       for _, _, v in asyncio.run(read_all(s, s.topic("predictions")))]
        ids = [p["event_id"] for p in predictions]
        assert len(ids) == len(set(ids)) == EVENTS  # none dropped, none twice
        versions: dict[str, list[tuple[str, int]]] = defaultdict(list)
        for p in predictions:
            versions[p["entity_id"]].append((p["event_id"], p["model_version"]))
        for sensor, seen in versions.items():
            in_order = [v for _, v in sorted(seen)]  # event ids sort in produce order
            assert in_order == sorted(in_order), f"{sensor} went back to an older version"
        assert {p["model_version"] for p in predictions} == {1, 2}  # swapped mid-stream

        # a promotion the registry cannot serve is refused; v2 keeps serving
        asyncio.run(publish_promotion(s, "shuttle", 99))
        wait_for(lambda: sample(
            s, 'headwater_model_swaps_total{model="shuttle",outcome="refused"}') == 1, 30,
            "the refused swap counted")
        assert sample(s, 'headwater_model_version{model="shuttle"}') == 2
        assert "refused to swap shuttle to v99" in worker.log.read_text()
        assert worker.running() and second.running()
        for log in (worker.log, second.log):
            print(next(line for line in log.read_text().splitlines() if "swapped" in line))
        refused = subprocess.run([sys.executable, "-m", "streams.cli", "registry", "promote",
                                  "shuttle", "99"], cwd=ROOT, env=settings_env(s),
                                 capture_output=True, text=True, timeout=120, check=False)
        assert refused.returncode == 1 and "shuttle v99" in refused.stderr
    finally:
        worker.stop()
        second.stop()
