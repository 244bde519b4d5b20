"""Replay (streams/replay.py): the recorded stream through the live code, in process.

In process: replay's head metrics are river's `evaluate.progressive_val_score` with the
same delay (to 1e-9). On the real broker: a live worker on a single-partition topic,
events and their labels two hours late; every metrics report it published equals the
replayed metrics after as many labels, every prediction matches the replayed one by
event id, and a Parquet export of the same topics replays to the same numbers.
"""

from __future__ import annotations

import asyncio
import base64
import io
import pickle
import subprocess
import sys
import zlib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import matplotlib.image as mpimg
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from river import compose, evaluate, metrics

from models.datasets import elec2
from models.head import HeadScorer
from models.online import build_learner
from models.registry import Registry
from models.report import FIGURES, write_report
from models.training import train_sensor_model
from streams.export import Range, export_range, read_export, read_range
from streams.produce import produce_table
from streams.replay import Candidate, ReplayError, document, replay
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.conftest import Worker, settings_env
from tests.test_pipeline import read_all
from tests.waiting import wait_for

N = 3000
DELAY_MS = 2 * 3_600_000
SPEC = "StandardScaler | LogisticRegression"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "elec2"
CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[1]


def label_table(events: pa.Table) -> pa.Table:
    n = events.num_rows
    return pa.table({"event_id": events.column("event_id"),
                     "value": events.column("label").cast(pa.int64()),
                     "source": ["outcome"] * n,
                     "label_time": pc.add(events.column("event_time"), DELAY_MS),
                     "model": pa.array([None] * n, pa.string())})


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[pa.Table, Path]:
    events = elec2(DATA, limit=N)
    root = tmp_path_factory.mktemp("replay-registry")
    train_sensor_model(events, Registry(root), "elec2", config=Settings().sensor_features(),
                       epochs=1, members=2)
    return events, root


def river_reference(arm_predictions: pa.Table, features: list[dict[str, float]],
                    labels: dict[str, int]) -> dict[str, float]:
    """river's own progressive validation of the head on replay's inputs."""
    ids = arm_predictions.column("event_id").to_pylist()
    times = arm_predictions.column("event_time").to_pylist()
    rows = [({**features[i], "t": times[i]}, bool(labels[e])) for i, e in enumerate(ids)]
    got = {}
    for key, metric in (("log_loss", metrics.LogLoss()), ("roc_auc", metrics.ROCAUC()),
                        ("accuracy", metrics.Accuracy())):
        got[key] = float(evaluate.progressive_val_score(
            rows, compose.Discard("t") | build_learner(SPEC), metric, moment="t",
            delay=DELAY_MS).get())
    return got


def test_replay_metrics_are_rivers(trained: tuple[pa.Table, Path]) -> None:
    events, root = trained
    s = Settings(registry_dir=root, head_spec=SPEC, head_horizon="30d", device="cpu",
                 drift_detector="none", sensor_head_features="*.last", curate_window="30d")
    got = replay(events.drop_columns(["label"]), label_table(events),
                 [Candidate("production", "elec2", 1),
                  Candidate.parse("fast=elec2:1@StandardScaler | "
                                  "LogisticRegression(optimizer=SGD(0.05))")], s, every=1000)
    prod, fast = got.arms
    assert got.events == got.featurized == got.labels == N
    assert prod.summary["labels"] == fast.summary["labels"] == N
    p = prod.predictions
    names = [n for n in prod.summary["head_features"] if n != "deep_score"]
    # the head's inputs as infer writes them: model features as float32, the deep score
    from streams.replay import featurize
    feats = featurize(events.drop_columns(["label"]), "sensor", s)
    feats = feats.take(pc.sort_indices(feats, [("event_time", "ascending")]))
    cols = {n: feats.column(n).cast(pa.float32()).to_numpy().astype(np.float64) for n in names}
    deep = p.column("probability").to_numpy()
    rows = [{**{n: float(cols[n][i]) for n in names}, "deep_score": float(deep[i])}
            for i in range(p.num_rows)]
    labels = dict(zip(events.column("event_id").to_pylist(), events.column("label").to_pylist(),
                      strict=True))
    want = river_reference(p, rows, labels)
    for k, v in want.items():
        assert abs(prod.summary["head"]["cumulative"][k] - v) <= 1e-9, (k, v)
    assert prod.summary["deep"] == fast.summary["deep"]  # the same deep model, same labels
    assert prod.summary["head"] != fast.summary["head"]
    assert [pt["labels"] for pt in prod.points] == [1000, 2000, 3000]

    # curate: the worker's curator over the predictions, within the 1% budget, choosing
    # (besides its random share) the events the head was least sure of
    curated = p.column("curated").to_numpy(zero_copy_only=False)
    assert prod.summary["curated"]["events"] == curated.sum()
    assert 0 < curated.sum() <= 0.01 * N + 2, curated.sum()
    sure = np.abs(p.column("head_probability").to_numpy(zero_copy_only=False) - 0.5)
    assert np.nanmean(sure[curated]) < np.nanmean(sure[~curated])


def test_bad_input_is_one_error(trained: tuple[pa.Table, Path], tmp_path: Path) -> None:
    events, root = trained
    s = Settings(registry_dir=root, device="cpu")
    ev, lab = events.drop_columns(["label"]), label_table(events)
    with pytest.raises(ReplayError, match="not in the registry"):
        replay(ev, lab, [Candidate("c", "elec2", 7)], s)
    with pytest.raises(ReplayError, match="no events"):
        replay(ev.slice(0, 0), lab, [Candidate("c", "elec2")], s)
    with pytest.raises(ReplayError, match="no labels"):
        replay(ev.slice(0, 10), lab.slice(100), [Candidate("c", "elec2")], s)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    from streams.replay import load_parquet
    with pytest.raises(ReplayError, match="not a readable Parquet file"):
        load_parquet(bad)


def reports(s: Settings) -> list[dict[str, Any]]:
    return [r for _, _, v in asyncio.run(read_all(s, s.topic("metrics")))
            if (r := orjson.loads(v))["name"] == "elec2-head"]


def rows(s: Settings, topic: str) -> pa.Table:
    return pa.concat_tables(list(read_range(s, topic, Range())), promote_options="permissive")


@pytest.mark.integration
def test_live_equals_replay(settings: Settings, trained: tuple[pa.Table, Path],
                            tmp_path: Path) -> None:
    events, root = trained
    s = settings.model_copy(update={
        "partitions": 1, "registry_dir": root, "sensor_model": "elec2", "head_spec": SPEC,
        "head_horizon": "30d", "drift_detector": "none", "learn_snapshot_s": 1.0,
        "learn_report_s": 0.3, "learn_snapshot_updates": 200, "learn_idle_flush_ms": 3000,
        "curate": False, "device": "cpu"})
    worker = Worker(s, tmp_path / "worker.log")
    try:
        worker.wait_ready()
        # 200 events at a time, 1,000 a second, each label sent once its due time has
        # passed in the stream: many small batches, many reports
        asyncio.run(produce_table(s, events.drop_columns(["label"]).append_column(
            "label", events.column("label")), s.topic("sensor-events"), rate=1000, chunk=200,
            labels_delay_ms=DELAY_MS))
        wait_for(lambda: (r := reports(s)) != [] and r[-1]["labels"] == N, 180,
                 f"a metrics report of all {N} labels (log: {worker.log})", interval=1.0)
    finally:
        worker.stop()
    live = reports(s)
    predictions = {p["event_id"]: p for _, _, v in asyncio.run(read_all(s, s.topic("predictions")))
                   if (p := orjson.loads(v))}
    assert len(predictions) == N

    ev, lab = rows(s, "sensor-events"), rows(s, "labels")
    served = {p["head_version"] for p in predictions.values() if p["head_version"] is not None}
    got = replay(ev, lab, [Candidate("live", "elec2")], s, every=10 * N,
                 at={r["labels"] for r in live}, versions=served)
    arm = got.arms[0]
    assert len(live) >= 2 and served, (len(live), served)

    # every published report: the replayed metrics after as many labels, exactly
    at = {p["labels"]: p for p in arm.points}
    for r in live:
        point = at[r["labels"]]
        assert (point["cumulative"], point["rolling"], point["version"]) == \
            (r["cumulative"], r["rolling"], r["version"]), r

    # every prediction, by event id: the deep model's numbers, and the head's as infer
    # served it (the snapshot version the live prediction names, rebuilt by replay)
    replayed = {e: i for i, e in enumerate(arm.predictions.column("event_id").to_pylist())}
    assert set(replayed) == set(predictions)
    cols = {k: arm.predictions.column(k).to_numpy() for k in ("probability", "uncertainty",
                                                               "variance")}
    q = arm.questions
    assert q is not None
    names = q.schema.names[3:]
    x = np.column_stack([q.column(n).to_numpy().astype(np.float64) for n in names])
    row_of = {e: i for i, e in enumerate(q.column("event_id").to_pylist())}
    scorers = {v: HeadScorer(pickle.loads(zlib.decompress(arm.snapshots[v])), list(names))
               for v in served}
    worst = 0.0
    for e, p in predictions.items():
        for k, c in cols.items():
            worst = max(worst, abs(c[replayed[e]] - p[k]))
        if p["head_version"] is not None:
            h = scorers[p["head_version"]](x[row_of[e]][None, :])[0]
            worst = max(worst, abs(h - p["head_probability"]))
    assert worst <= 1e-9, worst

    # a Parquet export of the same topics replays to the same numbers
    for topic in ("sensor-events", "labels"):
        asyncio.run(export_range(s, topic, Range(), tmp_path / "export"))
    again = replay(read_export(tmp_path / "export" / "sensor-events"),
                   read_export(tmp_path / "export" / "labels"), [Candidate("live", "elec2")], s,
                   every=10 * N, at={r["labels"] for r in live})
    assert again.arms[0].points == arm.points
    assert again.arms[0].predictions.equals(arm.predictions)


def chromium_console(page: Path, shot: Path) -> list[str]:
    """Open `page` in headless Chromium, render it to `shot`; the console lines it logged
    (errors, warnings, failed loads)."""
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
         "--v=0", f"--screenshot={shot}", "--window-size=1200,2400", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return [line for line in done.stderr.splitlines()
            if "CONSOLE" in line or "Failed to load resource" in line]


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.sources.append(dict(attrs)["src"] or "")


def check_renders(out: Path, shot: Path) -> None:
    """The report in `out` renders: every plot is a drawn image, embedded in the page
    (self-contained), and the page opens in headless Chromium without a console line
    and draws something (its screenshot in `shot`)."""
    for name in FIGURES:
        image = mpimg.imread(out / name)
        assert image.shape[0] > 100 and image.shape[1] > 100 and image.std() > 0, name
    parser = _Images()
    parser.feed((out / "report.html").read_text())
    assert len(parser.sources) == len(FIGURES)
    for src in parser.sources:
        assert src.startswith("data:image/png;base64,")
        raw = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert mpimg.imread(io.BytesIO(raw), format="png").std() > 0
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} missing: run ops/install-chromium.sh"
    assert chromium_console(out / "report.html", shot) == []
    assert mpimg.imread(shot).std() > 0


def test_report_files_render(trained: tuple[pa.Table, Path], tmp_path: Path) -> None:
    events, root = trained
    s = Settings(registry_dir=root, device="cpu", head_horizon="30d", drift_detector="none")
    got = replay(events.drop_columns(["label"]), label_table(events),
                 [Candidate("production", "elec2", 1),
                  Candidate.parse("fast=elec2:1@StandardScaler | "
                                  "LogisticRegression(optimizer=SGD(0.05))")], s, every=250)
    out = write_report(document(got, s), {a.candidate.name: a.predictions for a in got.arms},
                       tmp_path / "report")
    doc = orjson.loads((out / "report.json").read_bytes())
    assert doc["complete"] and [c["candidate"] for c in doc["candidates"]] == \
        ["production", "fast"]
    assert doc["label_delay"]["median_s"] == DELAY_MS / 1000
    assert len(doc["candidates"][0]["points"]) == N // 250
    assert pq.read_table(out / "predictions-fast.parquet").num_rows == N
    check_renders(out, tmp_path / "page.png")
    # the check sees errors: a page with a broken image and a script error is caught
    broken = tmp_path / "broken.html"
    broken.write_text('<html><body><img src="missing.png"><script>nope()</script></body></html>')
    assert chromium_console(broken, tmp_path / "broken.png") != []


def cli(s: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams.cli", "replay", *args], cwd=ROOT,
                          env=settings_env(s), capture_output=True, text=True, timeout=180,
                          check=False)


@pytest.mark.integration
def test_cli_bad_input_is_one_line(settings: Settings, trained: tuple[pa.Table, Path],
                                   tmp_path: Path) -> None:
    """Each bad input: one line naming the problem, exit 1, and no report."""
    events, root = trained
    s = settings.model_copy(update={"registry_dir": root, "sensor_model": "elec2",
                                    "partitions": 1, "device": "cpu", "head_horizon": "30d"})
    asyncio.run(ensure_topics(s))
    asyncio.run(produce_table(s, events.slice(0, 300), s.topic("sensor-events")))
    good = tmp_path / "labels.parquet"
    pq.write_table(label_table(events.slice(0, 300)), good)
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(pq_bytes(label_table(events.slice(0, 300)))[:-200])
    out = tmp_path / "report"
    cases = {
        "no-such-topic": ("--events", "no-such-topic", "--labels", str(good)),
        "no events": ("--events", "sensor-events", "--from-offset", "10", "--to-offset", "10",
                      "--labels", str(good)),
        "no labels": ("--events", "sensor-events", "--labels", "labels"),
        "not a readable Parquet file": ("--events", "sensor-events", "--labels", str(corrupt)),
        "elec2 v9 is not in the registry": ("--events", "sensor-events", "--labels", str(good),
                                            "--candidate", "c=elec2:9"),
    }
    for needle, args in cases.items():
        done = cli(s, *args, "--out", str(out))
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1, (needle, done.stderr[-1500:])
        assert lines and lines[-1].startswith("headwater: ") and needle in lines[-1], \
            (needle, lines[-3:])
        assert not out.exists(), needle
    done = cli(s, "--events", "sensor-events", "--labels", str(good), "--candidate",
               "production=elec2:1", "--out", str(out))
    assert done.returncode == 0, done.stderr[-1500:]
    assert "replayed 300 events and 300 labels" in done.stdout
    assert orjson.loads((out / "report.json").read_bytes())["complete"]


def pq_bytes(t: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(t, sink)
    return sink.getvalue()
