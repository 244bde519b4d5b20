"""ML models: sensor and engagement features, window maths, deep ensembles, batched
inference, uncertainty, registry, training.

Nothing here imports Kafka, Faust or `streams`: the same code runs live and offline.
"""

__all__ = ["datasets", "engagement", "ensemble", "features", "inference", "ranker", "registry",
           "sensor", "training", "uncertainty", "windows"]
