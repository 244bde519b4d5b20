"""Logging: human-readable by default, one JSON object per line when asked.

>>> import logging
>>> record = logging.LogRecord("headwater", logging.INFO, __file__, 1, "served %d", (3,), None)
>>> doc = orjson.loads(JsonFormatter().format(record))
>>> doc["level"], doc["logger"], doc["msg"]
('INFO', 'headwater', 'served 3')
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import orjson

__all__ = ["JsonFormatter", "json_logging_config"]


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, exception if any."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage().strip(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc).decode()


def json_logging_config(level: str = "INFO") -> dict[str, Any]:
    """A logging.config.dictConfig that sends every record to stderr as JSON."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "streams.logs.JsonFormatter"}},
        "handlers": {"default": {"class": "logging.StreamHandler", "formatter": "json",
                                 "stream": "ext://sys.stderr"}},
        "root": {"level": level, "handlers": ["default"]},
    }
