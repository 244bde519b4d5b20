"""prediction.v1 documents written column-wise: one JSON document per event, built with
Arrow string kernels instead of a dict and orjson per row (DESIGN.md §6).
"""

from __future__ import annotations

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["predictions_json"]


def predictions_json(t: pa.Table, probability: np.ndarray, uncertainty: np.ndarray,
                     variance: np.ndarray, model: tuple[str, int], predict_time: int,
                     head: tuple[int, np.ndarray] | None = None) -> list[bytes]:
    """One Prediction JSON document per row of a feature table, in row order; `model`
    is the (name, version) that scored them, `head` the online head's (version,
    probabilities; NaN where it has none) when one is served. The table's
    `features_partition` and `features_offset` columns, when present, say where each
    event's features are on the `features` topic (curate reads them back from there).

    Built column-wise with Arrow string kernels (about 0.3 us a row, against 9 us for a
    dict and orjson per row); Arrow prints floats in their shortest round-trip form.

    >>> t = pa.table({"event_id": ["e"], "entity_id": ['s"1'], "event_time": [1],
    ...               "source_time": pa.array([None], pa.int64()), "ingest_time": [3]})
    >>> doc = predictions_json(t, np.array([0.25]), np.array([0.81]), np.array([0.0]),
    ...                        ("m", 4), 5)[0]
    >>> orjson.loads(doc) == {
    ...     "event_id": "e", "entity_id": 's"1', "item_id": None, "probability": 0.25,
    ...     "uncertainty": 0.81, "variance": 0.0, "model_name": "m", "model_version": 4,
    ...     "head_version": None, "head_probability": None, "event_time": 1,
    ...     "source_time": None, "ingest_time": 3, "predict_time": 5,
    ...     "features_partition": None, "features_offset": None}
    True
    """
    if t.num_rows == 0:
        return []
    lit = pa.scalar
    items = _json_strings(t.column("item_id")) if "item_id" in t.schema.names \
        else lit("null")
    name, version = model
    head_version, head_p = ("null", lit("null")) if head is None else \
        (str(head[0]), _json_floats(head[1]))
    fixed = (f',"model_name":{orjson.dumps(name).decode()},'
             f'"model_version":{version},"head_version":{head_version},"head_probability":')
    joined = pc.binary_join_element_wise(
        lit('{"event_id":'), _json_strings(t.column("event_id")),
        lit(',"entity_id":'), _json_strings(t.column("entity_id")),
        lit(',"item_id":'), items,
        lit(',"probability":'), _json_floats(probability),
        lit(',"uncertainty":'), _json_floats(uncertainty),
        lit(',"variance":'), _json_floats(variance),
        lit(fixed), head_p, lit(',"event_time":'), _json_ints(t.column("event_time")),
        lit(',"source_time":'), _json_ints(t.column("source_time")),
        lit(',"ingest_time":'), _json_ints(t.column("ingest_time")),
        lit(f',"predict_time":{predict_time},"features_partition":'),
        _optional_ints(t, "features_partition"),
        lit(',"features_offset":'), _optional_ints(t, "features_offset"), lit("}"), "")
    docs: list[bytes] = joined.cast(pa.binary()).to_pylist()
    return docs


NEEDS_ESCAPE = r'["\\\x00-\x1f]'


def _json_strings(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    """JSON string literals for a string column (orjson only for rows that need escapes);
    null for a null value."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pc.any(pc.match_substring_regex(col, NEEDS_ESCAPE)).as_py():
        return pa.array([orjson.dumps(v).decode() for v in col.to_pylist()], pa.string())
    quoted = pc.binary_join_element_wise(pa.scalar('"'), col, pa.scalar('"'), "")
    return pc.fill_null(quoted, "null")


def _optional_ints(t: pa.Table, name: str) -> pa.Array | pa.Scalar:
    return _json_ints(t.column(name)) if name in t.schema.names else pa.scalar("null")


def _json_floats(values: np.ndarray) -> pa.Array:
    """Shortest round-trip text of each float, always with a decimal point or exponent;
    null for NaN."""
    text = pc.cast(pa.array(values, pa.float64(), from_pandas=True), pa.string())
    whole = pc.invert(pc.match_substring_regex(text, r"[.eE]"))
    out = pc.if_else(whole, pc.binary_join_element_wise(text, pa.scalar(".0"), ""), text)
    return pc.fill_null(out, "null")


def _json_ints(col: pa.ChunkedArray) -> pa.Array:
    text = pc.cast(col.combine_chunks(), pa.string())
    return pc.fill_null(text, "null")
