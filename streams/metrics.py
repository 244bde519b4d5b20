"""Prometheus metrics the worker exports on its web port (`/metrics`)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

__all__ = ["BATCH_ROWS", "DEAD_LETTERS", "EVENTS", "STAGE_SECONDS"]

EVENTS = Counter("headwater_events_total", "Events processed, by agent", ["agent"])
DEAD_LETTERS = Counter("headwater_dead_letters_total", "Messages sent to dead-letters",
                       ["agent", "reason"])
BATCH_ROWS = Histogram("headwater_batch_rows", "Rows per batch handled, by agent", ["agent"],
                       buckets=(1, 8, 32, 128, 512, 1024, 2048, 4096, 8192, 16384))
STAGE_SECONDS = Histogram("headwater_stage_seconds", "Time spent per batch, by stage",
                          ["stage"],
                          buckets=(1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1.0))
