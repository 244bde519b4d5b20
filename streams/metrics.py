"""Prometheus metrics the worker exports on its web port (`/metrics`)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = ["BATCH_ROWS", "CONSUMER_LAG", "CURATED", "CURATION_BUDGET_USE", "DEAD_LETTERS",
           "DRIFT_ALERTS", "DUPLICATES", "END_TO_END_SECONDS", "EVENTS", "HEAD_LABELS",
           "HEAD_METRIC", "HEAD_VERSION", "LABEL_REQUESTS", "MODEL_SWAPS", "MODEL_VERSION",
           "OFFSET_GAPS", "REPLAYED", "STAGE_SECONDS", "STATE_RESETS", "UNSCORED"]

EVENTS = Counter("headwater_events_total", "Events processed, by agent", ["agent"])
DEAD_LETTERS = Counter("headwater_dead_letters_total", "Messages sent to dead-letters",
                       ["agent", "reason"])
BATCH_ROWS = Histogram("headwater_batch_rows", "Rows per batch handled, by agent", ["agent"],
                       buckets=(1, 8, 32, 128, 512, 1024, 2048, 4096, 8192, 16384))
STAGE_SECONDS = Histogram("headwater_stage_seconds", "Time spent per batch, by stage",
                          ["stage"],
                          buckets=(1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1.0))
END_TO_END_SECONDS = Histogram(
    "headwater_end_to_end_seconds",
    "Source message timestamp to prediction, sampled (up to 64 events per micro-batch)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
MODEL_SWAPS = Counter("headwater_model_swaps_total",
                      "Model promotions applied (swapped) or refused, by model",
                      ["model", "outcome"])
OFFSET_GAPS = Counter("headwater_offset_gaps_total",
                      "Input messages Faust skipped, read back from the broker", ["topic"])
MODEL_VERSION = Gauge("headwater_model_version", "Model version being served", ["model"])
CONSUMER_LAG = Gauge("headwater_consumer_lag", "Messages behind the end of the partition",
                     ["group", "topic", "partition"])
DUPLICATES = Counter("headwater_duplicates_total",
                     "Events skipped because their event id was already processed", ["agent"])
REPLAYED = Counter("headwater_replayed_rows_total",
                   "Rows skipped after a restart because their state already includes them",
                   ["agent"])
UNSCORED = Counter("headwater_unscored_rows_total",
                   "Feature rows of a feature set no served model scores", ["feature_set"])
STATE_RESETS = Counter("headwater_state_resets_total",
                       "Stored states dropped because other feature code or settings wrote them",
                       ["agent"])
HEAD_VERSION = Gauge("headwater_head_version",
                     "Online head version (labels learned): learned by learn, served by infer",
                     ["head", "role"])
HEAD_LABELS = Counter("headwater_head_labels_total",
                      "Labels and asked events of each online head, by outcome "
                      "(learned, duplicate, unmatched, stale, bad-value, unlabelled, implicit, "
                      "evicted)", ["head", "outcome"])
HEAD_METRIC = Gauge("headwater_prequential", "Prequential metric of each online head",
                    ["head", "metric", "window"])
DRIFT_ALERTS = Counter("headwater_drift_alerts_total", "Drift alerts raised", ["head"])
LABEL_REQUESTS = Counter("headwater_label_requests_total",
                         "POST /labels requests, by outcome (accepted, unauthorized, disabled, "
                         "bad-request, unavailable)", ["outcome"])
CURATED = Counter("headwater_curated_total", "Predictions sent for labelling, by model and slice",
                  ["model", "slice"])
CURATION_BUDGET_USE = Gauge("headwater_curation_budget_use",
                            "Labels asked in the current budget window over the labels the "
                            "budget allows there, by model and slice", ["model", "slice"])
