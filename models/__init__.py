"""ML models: features, deep nets, batched inference, uncertainty, registry, training.

Nothing here imports Kafka, Faust or `streams`: the same code runs live and offline.
"""

__all__ = ["datasets", "features", "inference", "registry", "sensor", "training", "uncertainty"]
