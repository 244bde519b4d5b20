"""The Grafana dashboard only queries metrics the worker exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import REGISTRY

import streams.metrics  # noqa: F401 - registers the worker's metrics

ROOT = Path(__file__).resolve().parent.parent
SUFFIXES = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}


def exported() -> set[str]:
    names = set()
    for family in REGISTRY.collect():
        if family.name.startswith("headwater_"):
            names |= {family.name + s for s in SUFFIXES.get(family.type, [""])}
    return names


def test_every_panel_queries_an_exported_metric() -> None:
    dashboard = json.loads((ROOT / "ops" / "grafana" / "dashboard.json").read_text())
    assert dashboard["panels"]
    known = exported()
    used = set()
    for panel in dashboard["panels"]:
        exprs = [t["expr"] for t in panel["targets"]]
        assert exprs, panel["title"]
        for expr in exprs:
            names = set(re.findall(r"headwater_[a-z_]+", expr))
            assert names, (panel["title"], expr)
            assert names <= known, (panel["title"], names - known)
            used |= names
    # the loop at a glance: rates and errors per agent, batch sizes, stage and end-to-end
    # latencies, lag, curation, model and head versions, prequential metrics, drift
    assert {"headwater_events_total", "headwater_dead_letters_total",
            "headwater_batch_rows_sum", "headwater_stage_seconds_bucket",
            "headwater_end_to_end_seconds_bucket", "headwater_consumer_lag",
            "headwater_curated_total", "headwater_curation_budget_use",
            "headwater_model_version", "headwater_head_version", "headwater_prequential",
            "headwater_drift_alerts_total"} <= used, sorted(used)


def test_panels_do_not_overlap() -> None:
    dashboard = json.loads((ROOT / "ops" / "grafana" / "dashboard.json").read_text())
    cells = set()
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, panel["title"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        cells |= mine


def test_prometheus_scrapes_the_worker_port() -> None:
    text = (ROOT / "ops" / "prometheus.yml").read_text()
    assert "metrics_path: /metrics" in text and "worker:6066" in text
