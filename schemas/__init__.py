"""Message shapes: JSON Schema files, the Python types, and the codec for input topics."""

__all__ = ["codec", "engagement_codec", "events"]
