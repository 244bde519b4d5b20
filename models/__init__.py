"""ML models: sensor and engagement features, window maths, deep nets, batched inference,
uncertainty, registry, training.

Nothing here imports Kafka, Faust or `streams`: the same code runs live and offline.
"""

__all__ = ["datasets", "engagement", "features", "inference", "registry", "sensor", "training",
           "uncertainty", "windows"]
