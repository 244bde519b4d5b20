"""Every schema is valid JSON Schema 2020-12; every example in it and in the docs validates."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from jsonschema import Draft202012Validator

from schemas.codec import Rejected
from schemas.events import (
    CurationSample,
    DeadLetter,
    DriftAlert,
    EngagementEvent,
    HeadSnapshot,
    Label,
    MetricsReport,
    ModelUpdate,
    Prediction,
    SensorEvent,
    json_schema,
)
from schemas.predictions import predictions_json

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = sorted((ROOT / "schemas" / "json").glob("*.json"))
TYPES = [SensorEvent, EngagementEvent, Label, Prediction, CurationSample, DeadLetter,
         MetricsReport, DriftAlert, HeadSnapshot,
         ModelUpdate]


def validator(sid: str) -> Draft202012Validator:
    return Draft202012Validator(json_schema(sid))


@pytest.mark.parametrize("path", SCHEMAS, ids=lambda p: p.stem)
def test_schema_is_valid_and_its_examples_validate(path: Path) -> None:
    doc = json.loads(path.read_text())
    Draft202012Validator.check_schema(doc)
    assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert path.stem == f"{doc['x-schema-name']}.v{doc['x-schema-version']}"
    assert doc["examples"]
    for example in doc["examples"]:
        Draft202012Validator(doc).validate(example)


def test_every_type_has_its_schema_and_its_example_builds_the_type() -> None:
    arrow_rows = {"feature-batch.v1"}  # only ever rows of Arrow batches: no Python type
    assert {t.schema() for t in TYPES} | arrow_rows == {p.stem for p in SCHEMAS}
    for t in TYPES:
        example = json_schema(t.schema())["examples"][0]
        obj = t(**example)
        validator(t.schema()).validate(json.loads(obj.to_json()))


def test_readme_json_examples_validate() -> None:
    """Each ```json block in the README names its schema on its first line."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```json\n// (\S+)\n(.*?)```", text, re.S)
    assert len(blocks) >= 3
    for sid, body in blocks:
        validator(sid).validate(json.loads(body))


def test_predictions_the_agent_writes_validate() -> None:
    t = pa.table({"event_id": ["e1", "e2"], "entity_id": ["s", "s"], "event_time": [1, 2],
                  "source_time": [None, 5], "ingest_time": [6, 7]})
    for doc in predictions_json(t, np.array([0.1, 1.0]), np.array([0.47, 0.0]),
                                np.array([0.01, 0.0]), ("shuttle", 2), 9):
        validator("prediction.v1").validate(json.loads(doc))


def test_dead_letters_validate() -> None:
    dl = DeadLetter(agent="ingest", reason=Rejected("not-json", "x").reason, detail="x",
                    source_topic="t", source_partition=0, source_offset=3, raw_b64="",
                    dead_time=1)
    validator("dead-letter.v1").validate(json.loads(dl.to_json()))


def test_feature_batches_of_both_kinds_validate() -> None:
    """Rows the featurize agents write match feature-batch.v1, and name their feature set."""
    from models.engagement import EngagementConfig, engagement_features
    from models.features import SensorConfig, sensor_features

    sensors = pa.record_batch({"event_id": ["a", "b"], "sensor_id": ["s", "s"],
                               "event_time": [0, 1000], "ingest_time": [5, 6],
                               "readings.t": [1.0, None], "readings.u": [2.0, 3.0]})
    engagement = pa.record_batch({"event_id": ["e"], "user_id": ["u"], "item_id": ["i"],
                                  "category": [None], "event_time": [0], "kind": ["click"],
                                  "value": [1.0]})
    outs = [sensor_features(sensors, {}, SensorConfig())[0],
            engagement_features(engagement, {}, EngagementConfig())[0]]
    for out, name in zip(outs, ["sensor.v2", "engagement.v1"], strict=True):
        assert out.schema.metadata[b"feature_set"].decode() == name
        names = out.schema.metadata[b"feature_names"].decode().split(",")
        assert out.schema.names[-len(names):] == names
        for row in out.to_pylist():
            validator("feature-batch.v1").validate(row)
