"""The label loop: curation samples out to Label Studio, people's labels back to `labels`.

`to_label_studio` turns curation samples into Label Studio tasks (its JSON import
format); `LABEL_CONFIG` is the labelling interface those tasks are made for (a
positive/negative choice, or a number); `from_label_studio` turns Label Studio's JSON
export back into `label.v1` labels, each checked by `schemas.label_codec.decode_label`,
the one validator of labels. `receive_labels` is `POST /labels` on the worker.

>>> s = CurationSample("e1", "s1", 0.55, 0.9, "uncertainty", "p near 0.5", 3, 5000,
...                    {"x.last": 1.5})
>>> task = to_label_studio([s])[0]
>>> task["data"]["event_id"], task["data"]["features"]
('e1', {'x.last': 1.5})
>>> task["annotations"] = [{"result": [{"from_name": "label", "to_name": "event",
...     "type": "choices", "value": {"choices": ["positive"]}}], "completed_by": 7,
...     "was_cancelled": False, "updated_at": "2024-01-01T00:00:00Z"}]
>>> labels, errors = from_label_studio([task], now_ms=1)
>>> labels[0].source, labels[0].value, labels[0].label_time, labels[0].annotator, errors
('human', 1.0, 1704067200000, '7', [])
"""

from __future__ import annotations

import asyncio
import hmac
import math
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from pydantic import SecretStr

from schemas.codec import MAX_TIME, Rejected, check_id, content_kind, shown
from schemas.events import JSON, CurationSample, Label, headers
from schemas.label_codec import check_weight, decode_label
from streams.metrics import LABEL_REQUESTS
from streams.outbox import Outbox
from streams.settings import Settings

__all__ = ["CHOICES", "LABEL_CONFIG", "LabellingError", "authorize", "check_labels",
           "decode_sample", "from_label_studio", "publish_labels", "read_curation",
           "receive_labels", "to_label_studio"]

#: the choices of LABEL_CONFIG and the label value each one stands for
CHOICES = {"positive": 1.0, "negative": 0.0}

#: the Label Studio labelling interface the exported tasks are made for: a
#: positive/negative choice (`label`), or a number (`value`, for regression heads)
LABEL_CONFIG = """\
<View>
  <Header value="Event $event_id of $entity_id: was it positive?"/>
  <Text name="event" value="$summary"/>
  <Table name="features" value="$features"/>
  <Choices name="label" toName="event" choice="single" showInline="true">
    <Choice value="positive"/>
    <Choice value="negative"/>
  </Choices>
  <Header value="... or, for a numeric target, its value"/>
  <Number name="value" toName="event"/>
</View>
"""

CURATION_SCHEMAS = frozenset({b"curation-sample.v1"})
LABEL_HEADERS = headers(JSON, "label.v1")


class LabellingError(RuntimeError):
    """A labelling command cannot go on (a missing topic, a broker that does not answer)."""


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def to_label_studio(samples: Iterable[CurationSample]) -> list[dict[str, Any]]:
    """Label Studio tasks (its JSON import format), one per sample, first sample of an
    event id only. `data` holds the sample's fields and a one-line `summary` that
    `LABEL_CONFIG` shows; `meta` says where the task came from.

    >>> s = CurationSample("e1", "s1", 0.55, 0.9, "uncertainty", "p near 0.5", 3, 0)
    >>> to_label_studio([s, s])[0]["data"]["summary"]
    's1 at 1970-01-01T00:00:00.000+00:00: p=0.550, uncertainty=0.900 (uncertainty: p near 0.5)'
    >>> len(to_label_studio([s, s]))
    1
    """
    tasks: list[dict[str, Any]] = []
    seen: set[str] = set()
    for s in samples:
        if s.event_id in seen:
            continue
        seen.add(s.event_id)
        summary = (f"{s.entity_id} at {_iso(s.event_time)}: p={s.probability:.3f}, "
                   f"uncertainty={s.uncertainty:.3f} ({s.strategy}: {s.reason})")
        tasks.append({
            "data": {"event_id": s.event_id, "entity_id": s.entity_id,
                     "event_time": s.event_time, "probability": s.probability,
                     "uncertainty": s.uncertainty, "strategy": s.strategy, "slice": s.slice,
                     "reason": s.reason, "model_version": s.model_version,
                     "head_version": s.head_version, "model_name": s.model_name,
                     "weight": s.weight, "features": dict(s.features), "summary": summary},
            "meta": {"source": "headwater", "schema": CurationSample.schema()},
        })
    return tasks


def _time_ms(text: object) -> int | None:
    """Epoch ms of a Label Studio timestamp (ISO 8601; UTC when it names no zone).

    >>> _time_ms("2021-03-09T22:16:08.728353Z"), _time_ms("yesterday"), _time_ms(None)
    (1615328168728, None, None)
    """
    if not isinstance(text, str):
        return None
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    ms = int(t.timestamp() * 1000)
    return ms if 0 <= ms <= MAX_TIME else None


def _annotation_time(a: dict[str, Any]) -> int | None:
    got = _time_ms(a.get("updated_at"))
    return got if got is not None else _time_ms(a.get("created_at"))


def _annotator(who: object) -> str | None:
    """`completed_by` as a string: a user id, or the user's email in expanded exports."""
    if isinstance(who, dict):
        who = who.get("email") or who.get("id")
    if who is None or isinstance(who, bool):
        return None
    return str(who)


def _value(result: object) -> float | str:
    """The label value of an annotation's `result`, or why there is none."""
    if not isinstance(result, list):
        return "result is not a list"
    found: list[float] = []
    for r in result:
        if not isinstance(r, dict) or not isinstance(r.get("value"), dict):
            continue
        kind, value = r.get("type"), r["value"]
        if kind == "choices":
            choices = value.get("choices")
            if not (isinstance(choices, list) and len(choices) == 1):
                return f"expected one choice, got {shown(choices)}"
            if not isinstance(choices[0], str) or choices[0] not in CHOICES:
                return f"unknown choice {shown(choices[0])} (expected {' or '.join(CHOICES)})"
            found.append(CHOICES[choices[0]])
        elif kind == "number":
            n = value.get("number")
            if not isinstance(n, int | float) or isinstance(n, bool) or not math.isfinite(n):
                return f"bad number {shown(n)}"
            found.append(float(n))
    if not found:
        return "the annotation has neither a choice nor a number"
    if len(found) > 1:
        return "the annotation has more than one value (a choice and a number?)"
    return found[0]


def from_label_studio(export: list[dict[str, Any]], now_ms: int
                      ) -> tuple[list[Label], list[tuple[int, str]]]:
    """Labels (`source` human) from a Label Studio JSON export, and the tasks that gave
    none as (task index, reason).

    Cancelled (skipped) annotations are ignored; of the others, the latest wins (by
    `updated_at`, else `created_at`; the later in the list when neither says). A task
    with no annotation left is an error, as are a missing `data.event_id`, an unknown
    choice, a bad number and an event id a task before it already labelled. The label
    time is the winning annotation's time, else `now_ms`; the annotator is its
    `completed_by`. Every label is checked by `decode_label` before it is returned.

    >>> ok = {"data": {"event_id": "e1"}, "annotations": [
    ...     {"result": [{"type": "number", "value": {"number": 3}}], "completed_by": 2}]}
    >>> labels, errors = from_label_studio([ok, {"data": {}}], now_ms=9)
    >>> [(x.event_id, x.value, x.label_time, x.annotator) for x in labels], errors
    ([('e1', 3.0, 9, '2')], [(1, 'no data.event_id')])
    """
    labels: list[Label] = []
    errors: list[tuple[int, str]] = []
    first: dict[str, int] = {}
    for i, task in enumerate(export):
        data = task.get("data") if isinstance(task, dict) else None
        event_id = data.get("event_id") if isinstance(data, dict) else None
        if not isinstance(event_id, str) or not event_id:
            errors.append((i, "no data.event_id"))
            continue
        anns = task.get("annotations") or []
        if not isinstance(anns, list) or not anns:
            errors.append((i, f"{event_id}: no annotation"))
            continue
        kept = [(a, n) for n, a in enumerate(anns)
                if isinstance(a, dict) and not a.get("was_cancelled")]
        if not kept:
            errors.append((i, f"{event_id}: every annotation was cancelled"))
            continue
        latest, _ = max(kept, key=lambda an: (_annotation_time(an[0]) or -1, an[1]))
        value = _value(latest.get("result"))
        if isinstance(value, str):
            errors.append((i, f"{event_id}: {value}"))
            continue
        if event_id in first:
            errors.append((i, f"{event_id}: already labelled by task {first[event_id]}"))
            continue
        assert isinstance(data, dict)  # it gave an event id
        model, weight = data.get("model_name"), data.get("weight", 1)
        if type(weight) is float and weight.is_integer():
            weight = int(weight)
        if type(weight) is not int:
            errors.append((i, f"{event_id}: weight: {shown(weight)} is not an integer"))
            continue
        label = Label(event_id, value, "human", _annotation_time(latest) or now_ms,
                      annotator=_annotator(latest.get("completed_by")),
                      model=model if isinstance(model, str) and model else None,
                      weight=weight)
        checked = decode_label(label.to_json())
        if isinstance(checked, Rejected):
            errors.append((i, f"{event_id}: {checked.reason}: {checked.detail}"))
            continue
        first[event_id] = i
        labels.append(label)
    return labels, errors


def check_labels(body: bytes) -> tuple[list[tuple[str, bytes]], list[tuple[int | None, str]]]:
    """The labels of a `POST /labels` body (one label.v1 object or a list of them) as
    (event id, JSON), or every reason to refuse it as (item index, reason); index None
    when the body as a whole is wrong. Each item is checked by `decode_label`.

    >>> check_labels(b'{"event_id":"e","value":1,"source":"human","label_time":5}')
    ([('e', b'{"event_id":"e","value":1,"source":"human","label_time":5}')], [])
    >>> for error in check_labels(b'[{"event_id":"e","value":1,"source":"human"}, 3]')[1]:
    ...     print(error)
    (0, 'wrong-type: label_time: expected integer ms in 0..32503680000000')
    (1, 'wrong-type: a label is a JSON object, not int')
    >>> check_labels(b'{oops')[1][0][:2]
    (None, 'not-json: unexpected character, expected a string key: line 1 column 2 (char 1)')
    """
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return [], [(None, f"not-json: {exc}"[:200])]
    items = doc if isinstance(doc, list) else [doc]
    if not items:
        return [], [(None, "no labels: an empty list")]
    good: list[tuple[str, bytes]] = []
    errors: list[tuple[int | None, str]] = []
    first: dict[str, int] = {}
    for i, item in enumerate(items):
        raw = orjson.dumps(item)
        got = decode_label(raw)
        if isinstance(got, Rejected):
            errors.append((i, f"{got.reason}: {got.detail}"))
        elif got["event_id"] in first:
            errors.append((i, f"duplicate: {got['event_id']} is also item "
                              f"{first[got['event_id']]}"))
        else:
            first[got["event_id"]] = i
            good.append((got["event_id"], raw))
    return ([], errors) if errors else (good, [])


def authorize(authorization: str | None, token: SecretStr | None) -> tuple[int, str] | None:
    """None when `authorization` is `Bearer <token>`; else the HTTP status and why.
    With no token configured every request is refused: the endpoint is never open.

    >>> authorize("Bearer s3cret", SecretStr("s3cret")) is None
    True
    >>> authorize("Bearer guess", SecretStr("s3cret"))[0], authorize(None, SecretStr("s3cret"))[0]
    (401, 401)
    >>> authorize("Bearer s3cret", None)
    (403, 'HEADWATER_LABELS_TOKEN is unset: POST /labels is disabled')
    """
    if token is None or not token.get_secret_value():
        return 403, "HEADWATER_LABELS_TOKEN is unset: POST /labels is disabled"
    scheme, _, given = (authorization or "").partition(" ")
    expected = token.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
        return 401, "missing or wrong token: send Authorization: Bearer <HEADWATER_LABELS_TOKEN>"
    return None


async def publish_labels(outbox: Outbox, topic: str, labels: Sequence[tuple[str, bytes]]
                         ) -> None:
    """Send (event id, label.v1 JSON) pairs to `topic` keyed by event id, with the
    headers `headwater produce --labels-delay` sends, and wait until the broker has
    acknowledged every one (raises the broker's error otherwise)."""
    futures = await outbox.send_keyed(topic, [k for k, _ in labels], [v for _, v in labels],
                                      LABEL_HEADERS)
    await asyncio.gather(*futures)


async def receive_labels(settings: Settings, outbox: Outbox, authorization: str | None,
                         body: bytes) -> tuple[int, dict[str, Any]]:
    """`POST /labels`: the HTTP status and JSON body answering one request.

    All or nothing: one bad item refuses the request (400, naming every bad item) and
    nothing is published; 202 comes only once the broker has acknowledged every label.
    Each answer is counted in `headwater_label_requests_total{outcome}`.
    """
    refused = authorize(authorization, settings.labels_token)
    if refused is not None:
        status, why = refused
        LABEL_REQUESTS.labels("unauthorized" if status == 401 else "disabled").inc()
        return status, {"error": why}
    good, errors = check_labels(body)
    if errors:
        LABEL_REQUESTS.labels("bad-request").inc()
        return 400, {"error": f"{len(errors)} bad item(s): nothing published",
                     "errors": [{"index": i, "reason": r} for i, r in errors]}
    try:
        await publish_labels(outbox, settings.topic("labels"), good)
    except (KafkaError, RuntimeError) as exc:
        LABEL_REQUESTS.labels("unavailable").inc()
        return 503, {"error": f"the broker did not acknowledge the labels ({exc!r}); some may "
                              "be published: send them again (a second label of an event "
                              "is not learned)"}
    LABEL_REQUESTS.labels("accepted").inc()
    return 202, {"published": len(good), "topic": settings.topic("labels")}


def decode_sample(value: bytes | None, hdrs: Sequence[tuple[str, bytes]] = ()
                  ) -> CurationSample | Rejected:
    """One curation-sample.v1 message, or why it is not one.

    >>> decode_sample(b'{"event_id":"e","entity_id":"s","probability":0.5,"uncertainty":1,'
    ...               b'"strategy":"u","reason":"r","model_version":1,"event_time":5}').event_id
    'e'
    >>> decode_sample(b'{"event_id":"e"}')
    Rejected(reason='wrong-type', detail='entity_id: expected string, got NoneType', row=None)
    """
    kind = content_kind(list(hdrs), CURATION_SCHEMAS)
    if isinstance(kind, Rejected):
        return kind
    if kind != JSON:
        return Rejected("unknown-content-type", "curation samples are JSON")
    try:
        d = orjson.loads(value or b"")
    except orjson.JSONDecodeError as exc:
        return Rejected("not-json", str(exc)[:200])
    if not isinstance(d, dict):
        return Rejected("wrong-type", "a curation sample is a JSON object")
    types: dict[str, tuple[type, ...]] = {
        "event_id": (str,), "entity_id": (str,), "strategy": (str,), "reason": (str,),
        "probability": (int, float), "uncertainty": (int, float), "model_version": (int,),
        "event_time": (int,)}
    for name, allowed in types.items():
        v = d.get(name)
        if not isinstance(v, allowed) or isinstance(v, bool):
            want = "string" if allowed == (str,) else "number"
            return Rejected("wrong-type", f"{name}: expected {want}, got {type(v).__name__}")
    for name in ("event_id", "entity_id"):
        if isinstance(got := check_id(d, name), Rejected):
            return got
    head, where = d.get("head_version"), d.get("slice")
    if not (head is None or (type(head) is int)) or not (where is None or isinstance(where, str)):
        return Rejected("wrong-type", "head_version: integer or null; slice: string or null")
    features = d.get("features") or {}
    if not isinstance(features, dict):
        return Rejected("wrong-type", "features: expected an object")
    model, score, weight = d.get("model_name"), d.get("score"), d.get("weight", 1)
    if model is not None and isinstance(got := check_id(d, "model_name"), Rejected):
        return got
    if score is not None and (not isinstance(score, int | float) or isinstance(score, bool)):
        return Rejected("wrong-type", f"score: expected a number, got {type(score).__name__}")
    if isinstance(weight := check_weight(weight), Rejected):
        return weight
    try:
        return CurationSample(
            d["event_id"], d["entity_id"], float(d["probability"]), float(d["uncertainty"]),
            d["strategy"], d["reason"], d["model_version"], d["event_time"],
            {str(k): None if v is None else float(v) for k, v in features.items()},
            d.get("slice"), d.get("head_version"), model,
            None if score is None else float(score), weight)
    except (TypeError, ValueError) as exc:
        return Rejected("wrong-type", str(exc)[:200])


async def read_curation(settings: Settings, timeout_s: float = 60.0
                        ) -> tuple[list[CurationSample], list[Rejected]]:
    """Every curation sample in `curation` from the beginning up to the end offsets at
    the start of the call (partition by partition, in offset order), and the messages
    that are not samples. Raises LabellingError when the topic does not exist."""
    topic = settings.topic("curation")
    # `earliest` before seeking: with `latest`, the reset of a newly assigned partition
    # can race the seek to its beginning and read nothing (tests/test_pipeline.py)
    c = AIOKafkaConsumer(**settings.kafka_options(), enable_auto_commit=False,
                         auto_offset_reset="earliest")
    await c.start()
    try:
        await c._client.force_metadata_update()
        parts = c.partitions_for_topic(topic)
        if not parts:
            raise LabellingError(f"topic {topic} does not exist (HEADWATER_TOPIC_PREFIX?)")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        end = await c.end_offsets(tps)
        by_tp: dict[Any, list[Any]] = {tp: [] for tp in tps}
        deadline = time.monotonic() + timeout_s
        while [tp for tp in tps if await c.position(tp) < end[tp]]:
            if time.monotonic() > deadline:
                raise LabellingError(f"reading {topic} took over {timeout_s:.0f}s")
            for tp, recs in (await c.getmany(timeout_ms=500)).items():
                by_tp[tp] += [r for r in recs if r.offset < end[tp]]
    finally:
        await c.stop()
    samples: list[CurationSample] = []
    bad: list[Rejected] = []
    for tp in tps:
        for r in by_tp[tp]:
            got = decode_sample(r.value, r.headers or [])
            if isinstance(got, Rejected):
                bad.append(got)
            else:
                samples.append(got)
    return samples, bad
