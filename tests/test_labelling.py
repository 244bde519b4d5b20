"""The label loop without a broker: Label Studio tasks out, its export back to labels,
and the checks of POST /labels (token, all-or-nothing)."""

from __future__ import annotations

import asyncio
import copy
import math
import xml.etree.ElementTree as ET
from typing import Any

import orjson
import pytest
from pydantic import SecretStr

from schemas.codec import Rejected
from schemas.events import CurationSample, Label
from schemas.label_codec import decode_label
from streams.labelling import (
    CHOICES,
    LABEL_CONFIG,
    authorize,
    check_labels,
    decode_sample,
    from_label_studio,
    receive_labels,
    to_label_studio,
)
from streams.settings import Settings
from tests.fakes import RecordingOutbox

NOW = 1_700_000_000_000
SAMPLES = [
    CurationSample("shuttle-000101", "shuttle-1", 0.52, 0.998, "uncertainty",
                   "probability 0.52 is within 0.05 of 0.5", 3, 1_388_534_460_000,
                   {"f1.last": 41.0, "f1.z_15m": None}, slice=None, head_version=17),
    CurationSample("shuttle-000102", "shuttle-2", 0.31, 0.62, "variable-uncertainty",
                   "randomised threshold 0.7", 3, 1_388_534_520_000, {"f1.last": 37.5},
                   slice="shuttle-2", head_version=None, model_name="shuttle", weight=4),
    CurationSample("shuttle-000103", "shuttle-3", 0.70, 0.40, "margin", "margin 0.4", 4,
                   1_388_534_580_000, {}),
]


def annotation(choice: str | None = None, *, number: float | None = None, who: Any = 3,
               updated: str | None = "2024-05-02T10:15:30.123456Z", cancelled: bool = False,
               ann_id: int = 1) -> dict[str, Any]:
    """One annotation as Label Studio's JSON export writes it."""
    result: list[dict[str, Any]] = []
    if choice is not None:
        result.append({"id": "Xo1-a9Zq", "type": "choices", "value": {"choices": [choice]},
                       "origin": "manual", "to_name": "event", "from_name": "label"})
    if number is not None:
        result.append({"id": "Ny7-b2Lk", "type": "number", "value": {"number": number},
                       "origin": "manual", "to_name": "event", "from_name": "value"})
    return {"id": ann_id, "completed_by": who, "result": result, "was_cancelled": cancelled,
            "ground_truth": False, "created_at": "2024-05-02T10:15:00.000000Z",
            "updated_at": updated, "draft_created_at": None, "lead_time": 12.5,
            "prediction": {}, "result_count": 0, "unique_id": f"u-{ann_id}",
            "import_id": None, "last_action": None, "task": 1, "project": 5,
            "updated_by": who, "parent_prediction": None, "parent_annotation": None,
            "last_created_by": None}


def exported(samples: list[CurationSample], annotations: list[list[dict[str, Any]]]
             ) -> list[dict[str, Any]]:
    """What Label Studio exports after the tasks we made were annotated: our `data`,
    its own ids and timestamps, the annotations."""
    out = []
    for n, (task, anns) in enumerate(zip(to_label_studio(samples), annotations, strict=True)):
        out.append({"id": 100 + n, "annotations": anns, "file_upload": "tasks.json",
                    "drafts": [], "predictions": [], "data": copy.deepcopy(task["data"]),
                    "meta": task["meta"], "created_at": "2024-05-02T09:00:00.000000Z",
                    "updated_at": "2024-05-02T10:15:30.123456Z", "inner_id": n + 1,
                    "total_annotations": len(anns), "cancelled_annotations": 0,
                    "total_predictions": 0, "comment_count": 0, "unresolved_comment_count": 0,
                    "last_comment_updated_at": None, "project": 5, "updated_by": 3,
                    "comment_authors": []})
    # what really comes back is JSON: no tuples, no Python-only values
    result: list[dict[str, Any]] = orjson.loads(orjson.dumps(out))
    return result


def test_tasks_carry_every_sample_field_and_survive_json() -> None:
    tasks = orjson.loads(orjson.dumps(to_label_studio(SAMPLES)))
    assert len(tasks) == 3
    for task, s in zip(tasks, SAMPLES, strict=True):
        data = task["data"]
        for name in ("event_id", "entity_id", "event_time", "probability", "uncertainty",
                     "strategy", "slice", "reason", "model_version", "head_version",
                     "model_name", "weight"):
            assert data[name] == getattr(s, name), name
        assert data["features"] == s.features
        assert s.entity_id in data["summary"] and s.reason in data["summary"]
        assert task["meta"]["schema"] == "curation-sample.v1"


def test_label_config_is_xml_for_the_task_data_and_the_choices() -> None:
    root = ET.fromstring(LABEL_CONFIG)
    choices = root.find("Choices")
    assert choices is not None and choices.get("name") == "label"
    assert [c.get("value") for c in choices.iter("Choice")] == list(CHOICES)
    number = root.find("Number")
    assert number is not None and number.get("toName") == "event"
    data = to_label_studio(SAMPLES[:1])[0]["data"]
    for tag in root.iter():
        value = tag.get("value", "")
        if value.startswith("$"):
            assert value[1:] in data, value


def test_round_trip_of_an_export() -> None:
    export = exported(SAMPLES, [
        [annotation("positive", who=3)],
        [annotation("negative", who={"id": 8, "email": "ann@example.com"},
                    updated="2024-05-02T11:00:00+02:00")],
        [annotation(number=2.5, who=4, updated=None)],
    ])
    labels, errors = from_label_studio(export, now_ms=NOW)
    assert errors == []
    assert labels == [
        Label("shuttle-000101", 1.0, "human", 1_714_644_930_123, annotator="3"),
        Label("shuttle-000102", 0.0, "human", 1_714_640_400_000, annotator="ann@example.com",
              model="shuttle", weight=4),  # the sample's model and weight come back
        # no updated_at: the created_at of the annotation
        Label("shuttle-000103", 2.5, "human", 1_714_644_900_000, annotator="4"),
    ]
    for label in labels:
        assert not isinstance(decode_label(label.to_json()), Rejected)


def test_label_time_is_now_when_the_annotation_has_no_time() -> None:
    ann = annotation("positive", updated="not a time")
    ann["created_at"] = None
    labels, errors = from_label_studio(exported(SAMPLES[:1], [[ann]]), now_ms=NOW)
    assert errors == [] and labels[0].label_time == NOW


def test_cancelled_annotations_are_skipped() -> None:
    export = exported(SAMPLES[:1], [[
        annotation("positive", updated="2024-05-02T10:00:00Z", ann_id=1),
        annotation("negative", updated="2024-05-02T12:00:00Z", cancelled=True, ann_id=2),
    ]])
    labels, errors = from_label_studio(export, now_ms=NOW)
    assert errors == [] and [x.value for x in labels] == [1.0]


def test_the_latest_annotation_wins() -> None:
    export = exported(SAMPLES[:2], [
        [annotation("negative", updated="2024-05-03T08:00:00Z", who=9, ann_id=1),
         annotation("positive", updated="2024-05-02T08:00:00Z", who=3, ann_id=2)],
        # no times at all: the later in the list
        [annotation("positive", updated=None, ann_id=3),
         annotation("negative", updated=None, ann_id=4)],
    ])
    for ann in export[1]["annotations"]:
        ann["created_at"] = None
    labels, errors = from_label_studio(export, now_ms=NOW)
    assert errors == []
    assert [(x.value, x.annotator) for x in labels] == [(0.0, "9"), (0.0, "3")]
    assert labels[0].label_time == 1_714_723_200_000


def test_each_bad_task_is_named_and_gives_no_label() -> None:
    good = exported(SAMPLES[:1], [[annotation("positive")]])[0]

    def task(**change: Any) -> dict[str, Any]:
        t = copy.deepcopy(good)
        t.update(change)
        return t

    no_id = task(data={"entity_id": "shuttle-1"})
    unknown = task(annotations=[annotation("maybe")])
    bad_number = task(annotations=[annotation(number=1.0)])
    bad_number["annotations"][0]["result"][0]["value"]["number"] = "3"
    both = task(annotations=[annotation("positive", number=1.0)])
    two_choices = task(annotations=[annotation("positive")])
    two_choices["annotations"][0]["result"][0]["value"]["choices"] = ["positive", "negative"]
    long_annotator = task(annotations=[annotation("positive", who="x" * 300)],
                          data={**good["data"], "event_id": "shuttle-000999"})
    heavy = task(data={**good["data"], "event_id": "shuttle-000998", "weight": 1000})
    wordy = task(data={**good["data"], "event_id": "shuttle-000997", "weight": "4"})
    export = [good, no_id, unknown, bad_number, task(annotations=[]),
              task(annotations=[annotation("positive", cancelled=True)]), both, two_choices,
              copy.deepcopy(good), long_annotator, "not a task", heavy, wordy]
    labels, errors = from_label_studio(export, now_ms=NOW)  # type: ignore[arg-type]
    assert [x.event_id for x in labels] == ["shuttle-000101"]
    assert dict(errors) == {
        1: "no data.event_id",
        2: "shuttle-000101: unknown choice 'maybe' (expected positive or negative)",
        3: "shuttle-000101: bad number '3'",
        4: "shuttle-000101: no annotation",
        5: "shuttle-000101: every annotation was cancelled",
        6: "shuttle-000101: the annotation has more than one value (a choice and a number?)",
        7: "shuttle-000101: expected one choice, got a list of 2",
        8: "shuttle-000101: already labelled by task 0",
        9: "shuttle-000999: wrong-type: annotator: expected a string of 1..256",
        10: "no data.event_id",
        11: "shuttle-000998: out-of-range: weight: 1000 is not an integer in 1..100",
        12: "shuttle-000997: weight: '4' is not an integer",
    }


def test_deeply_nested_values_are_named_not_repr_d() -> None:
    # 1,000 levels is within orjson's limit but past Python's for repr (a fuzz find)
    deep: object = "positive"
    for _ in range(1_000):
        deep = [deep]
    t = exported(SAMPLES[:1], [[annotation("positive")]])[0]
    t["annotations"][0]["result"][0]["value"]["choices"] = [deep]
    assert from_label_studio([t], now_ms=NOW)[1] == [
        (0, "shuttle-000101: unknown choice a list of 1 (expected positive or negative)")]
    body = (b'{"event_id":"e1","value":1,"label_time":5,"source":' + b"[" * 1_000 + b"1"
            + b"]" * 1_000 + b"}")  # orjson writes no more than 255 levels, so by hand
    assert decode_label(body) == Rejected("out-of-range",
                                          "source: a list of 1 is not one of outcome, human")


def test_a_non_finite_number_is_refused() -> None:
    t = exported(SAMPLES[:1], [[annotation(number=1.0)]])[0]
    t["annotations"][0]["result"][0]["value"]["number"] = math.inf
    assert from_label_studio([t], now_ms=NOW)[1] == [(0, "shuttle-000101: bad number inf")]


def test_curation_samples_decode_back() -> None:
    for s in SAMPLES:
        assert decode_sample(s.to_json(), s.headers()) == s
    assert isinstance(decode_sample(b"[]"), Rejected)
    sample = orjson.loads(SAMPLES[1].to_json())
    for name, value, detail in (("weight", 0, "weight: 0 is not an integer in 1..100"),
                                ("weight", True, "weight: True is not an integer in 1..100"),
                                ("score", "high", "score: expected a number, got str"),
                                ("model_name", "", "model_name: length 0 not in 1..256")):
        got = decode_sample(orjson.dumps({**sample, name: value}))
        assert isinstance(got, Rejected) and got.detail == detail, got
    assert isinstance(decode_sample(SAMPLES[0].to_json(), [("schema", b"label.v1")]), Rejected)


# -- POST /labels -------------------------------------------------------------------------

LABEL = {"event_id": "e1", "value": 1, "source": "human", "label_time": 5, "annotator": "ann"}


def test_check_labels_takes_one_or_a_list_and_keeps_every_field() -> None:
    good, errors = check_labels(orjson.dumps(LABEL))
    assert errors == [] and good == [("e1", orjson.dumps(LABEL))]
    two = [LABEL, {**LABEL, "event_id": "e2", "value": 0.0, "weight": 7}]
    assert [k for k, _ in check_labels(orjson.dumps(two))[0]] == ["e1", "e2"]
    assert decode_label(orjson.dumps(two[1]))["weight"] == 7  # type: ignore[index]
    assert decode_label(orjson.dumps(LABEL))["weight"] == 1  # type: ignore[index]


@pytest.mark.parametrize(("body", "errors"), [
    (b"{nope", [None]),
    (b"[]", [None]),
    (b'"a label"', [0]),
    (orjson.dumps([LABEL, {**LABEL, "source": "bot"}, {**LABEL, "event_id": "e3"},
                   {**LABEL, "colour": "red"}]), [1, 3]),
    (orjson.dumps([LABEL, LABEL]), [1]),
    (orjson.dumps([LABEL, {**LABEL, "event_id": "e2", "weight": 0},
                   {**LABEL, "event_id": "e3", "weight": 2.5}]), [1, 2]),
    (orjson.dumps({k: v for k, v in LABEL.items() if k != "source"}), [0]),
])
def test_check_labels_refuses_the_whole_body_naming_each_bad_item(
        body: bytes, errors: list[int | None]) -> None:
    good, got = check_labels(body)
    assert good == []
    assert [i for i, _ in got] == errors


def test_authorize() -> None:
    token = SecretStr("s3cret-token")
    assert authorize("Bearer s3cret-token", token) is None
    assert authorize("bearer s3cret-token", token) is None
    for header in [None, "", "Bearer", "Bearer wrong", "Basic s3cret-token", "s3cret-token",
                   "Bearer s3cret-token-and-more", "Bearer é"]:
        refused = authorize(header, token)
        assert refused is not None and refused[0] == 401, header
    for unset in [None, SecretStr("")]:
        refused = authorize("Bearer s3cret-token", unset)
        assert refused is not None and refused[0] == 403
        assert "HEADWATER_LABELS_TOKEN" in refused[1]


def test_receive_labels_publishes_all_or_nothing() -> None:
    s = Settings(topic_prefix="p-", labels_token="tok")
    outbox = RecordingOutbox()

    def post(auth: str | None, body: bytes) -> tuple[int, dict[str, Any]]:
        return asyncio.run(receive_labels(s, outbox, auth, body))  # type: ignore[arg-type]

    assert post(None, orjson.dumps(LABEL))[0] == 401
    status, body = post("Bearer tok", orjson.dumps([LABEL, {**LABEL, "value": "yes"}]))
    assert status == 400 and body["errors"] == [
        {"index": 1, "reason": "wrong-type: value: expected a finite number, got str"}]
    assert outbox.sent == []
    status, body = post("Bearer tok", orjson.dumps([LABEL, {**LABEL, "event_id": "e2"}]))
    assert (status, body["published"]) == (202, 2)
    assert [(t, k) for t, _, k in outbox.sent] == [("p-labels", b"e1"), ("p-labels", b"e2")]
    assert post("Bearer tok", b"")[0] == 400
    off = Settings(topic_prefix="p-")
    assert asyncio.run(receive_labels(off, outbox, "Bearer tok", orjson.dumps(LABEL))  # type: ignore[arg-type]
                       )[0] == 403


def test_the_token_is_never_shown() -> None:
    s = Settings(labels_token="hunter2-labels")
    for shown in (repr(s), str(s), s.model_dump_json(), repr(s.model_dump())):
        assert "hunter2-labels" not in shown
    # a worker started as a child process still gets it
    assert s.to_env()["HEADWATER_LABELS_TOKEN"] == "hunter2-labels"
