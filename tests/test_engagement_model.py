"""The engagement ensemble: trained on MovieLens through the live feature function and
collate, it beats chance, round-trips through the registry and batches invariantly."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from models.datasets import movielens, shuttle
from models.engagement import (
    ENGAGEMENT_FEATURE_SET,
    EngagementConfig,
    engagement_feature_names,
    engagement_features,
)
from models.inference import BatchScorer, collate
from models.ranker import EngagementMLP
from models.registry import LoadedModel, Registry
from models.training import ENGAGEMENT_MODEL, engagement_training_set, event_kind, roc_auc
from models.training import train_engagement_model as train
from tests.data import shared
from tests.test_models import assert_batch_invariant

CPU = torch.device("cpu")
CONFIG = EngagementConfig()
SLICE = 10_000  # the first ratings in time: about a second to train on two cores


@pytest.fixture(scope="module")
def events() -> pa.Table:
    return movielens(shared("movielens-100k"), limit=SLICE)


@pytest.fixture(scope="module")
def model(events: pa.Table, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    registry = Registry(tmp_path_factory.mktemp("engagement"))
    train(events, registry, config=CONFIG, epochs=3, buckets=1 << 12)
    return registry.load(ENGAGEMENT_MODEL)


def inputs(events: pa.Table, model: LoadedModel) -> tuple[np.ndarray, np.ndarray]:
    feats, y = engagement_training_set(events, CONFIG)
    x, bad = collate(feats, model.manifest)
    assert not bad.any()
    return x, y


def test_engagement_feature_batches_carry_the_item_beside_the_user() -> None:
    b = pa.record_batch({"event_id": ["e"], "user_id": ["u7"], "item_id": ["i9"],
                         "category": [None], "event_time": [0], "kind": ["click"],
                         "value": [1.0]})
    out, _ = engagement_features(b, {}, CONFIG)
    assert out.column("entity_id").to_pylist() == ["u7"]
    assert out.column("item_id").to_pylist() == ["i9"]


def test_train_tells_engagement_from_sensor_events_by_their_columns(events: pa.Table) -> None:
    assert event_kind(events.schema.names) == "engagement"
    assert event_kind(shuttle(limit=3).schema.names) == "sensor"
    assert event_kind(shuttle(limit=3).drop_columns(["label"]).schema.names) is None


def test_engagement_manifest_names_the_model_inputs(model: LoadedModel) -> None:
    m = model.manifest
    assert m["class"] == "models.ranker.EngagementMLP"
    assert m["feature_set"] == ENGAGEMENT_FEATURE_SET and m["members"] == 5
    assert m["id_columns"] == ["entity_id", "item_id"] and m["id_buckets"] == 1 << 12
    assert m["metrics"]["train_rows"] + m["metrics"]["val_rows"] == SLICE


def test_engagement_model_beats_chance_on_a_movielens_slice(events: pa.Table,
                                                            model: LoadedModel) -> None:
    metrics = model.manifest["metrics"]
    assert metrics["val_auc"] > 0.65, metrics
    # serving's collate of the held-out rows gives the very AUC training measured
    x, y = inputs(events, model)
    val = slice(int(metrics["train_rows"]), None)
    p = BatchScorer(model.module, CPU).probabilities(x[val])
    assert roc_auc(y[val], p) == pytest.approx(metrics["val_auc"], abs=1e-9)


def test_saved_engagement_model_loads_and_predicts_the_same(
        events: pa.Table, model: LoadedModel, tmp_path: Path) -> None:
    x, _ = inputs(events.slice(0, 500), model)
    before = BatchScorer(model.module, CPU).score(x)
    copy = Registry(tmp_path)
    m = model.manifest
    v = copy.save("again", model.module, m["init_args"], feature_names=m["feature_names"],
                  feature_set=m["feature_set"], metrics={}, id_columns=m["id_columns"],
                  id_buckets=m["id_buckets"])
    after = BatchScorer(copy.load("again", v).module, CPU).score(x)
    np.testing.assert_array_equal(before.probability, after.probability)
    np.testing.assert_array_equal(before.variance, after.variance)
    assert (before.variance > 0).any()


def test_batch_size_never_changes_engagement_results(events: pa.Table,
                                                     model: LoadedModel) -> None:
    x, _ = inputs(events.slice(0, 4096), model)
    assert_batch_invariant(BatchScorer(model.module, CPU), x)


def test_a_row_collate_marks_bad_scores_nan_not_a_number_that_looks_right(
        model: LoadedModel) -> None:
    x = np.full((1, 2 + len(model.feature_names)), np.nan, np.float32)
    assert np.isnan(BatchScorer(model.module, CPU).probabilities(x)).all()


@pytest.mark.gpu
def test_cuda_matches_cpu_for_the_engagement_ensemble() -> None:
    """Device and precision do not change scores (weights need not be trained for that,
    so the check runs where the MovieLens files are not)."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    torch.manual_seed(0)
    n = len(engagement_feature_names(CONFIG))
    module = EngagementMLP(n, buckets=1 << 12).eval()
    rng = np.random.default_rng(0)
    x = np.column_stack([rng.integers(0, 1 << 12, (4096, 2)),
                         rng.standard_normal((4096, n))]).astype(np.float32)
    cpu = BatchScorer(copy.deepcopy(module), CPU).score(x)
    cuda = torch.device("cuda")
    # bf16 keeps 8 bits of mantissa in the matmuls: on an H100, probabilities moved up to
    # 0.010 (fp16: 0.001) from fp32
    for precision, atol in (("fp32", 1e-5), ("bf16", 3e-2), ("fp16", 5e-3)):
        # a scorer moves its module to its device: each gets its own copy
        got = BatchScorer(copy.deepcopy(module), cuda, precision=precision).score(x)
        np.testing.assert_allclose(got.probability, cpu.probability, atol=atol,
                                   err_msg=precision)
        np.testing.assert_allclose(got.variance, cpu.variance, atol=atol, err_msg=precision)
    scorer = BatchScorer(copy.deepcopy(module), cuda)
    for size in (1, 7):
        parts = [scorer.score(x[i:i + size]).probability for i in range(0, 700, size)]
        np.testing.assert_allclose(np.concatenate(parts), cpu.probability[:700], atol=1e-5)
