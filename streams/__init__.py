"""Kafka wiring: settings, the Faust app, topics, ingest, agents, CLI and the local broker.

No ML math here: agents call the pure functions in `models/`.
"""

__all__ = ["agents", "app", "broker", "cli", "ingest", "labelling", "logs", "metrics", "outbox",
           "produce", "security", "settings", "topics", "watch"]
