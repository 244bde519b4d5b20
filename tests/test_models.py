"""The registry, collate, batched ensemble scoring and sensor training: artifacts
round-trip, errors are loud, batching never changes a result."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from models.datasets import shuttle
from models.ensemble import EnsembleLinear
from models.features import SensorConfig
from models.inference import BatchScorer, collate, pick_device
from models.registry import SCHEMA_VERSION, Registry, RegistryError
from models.sensor import SensorMLP
from models.training import roc_auc, sensor_training_set
from models.uncertainty import binary_entropy

CPU = torch.device("cpu")


def shuttle_inputs(registry_dir: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `n` shuttle events collated for the session's sensor model, and labels."""
    feats, y = sensor_training_set(shuttle(limit=n), SensorConfig())
    x, bad = collate(feats, Registry(registry_dir).load("shuttle").manifest)
    assert not bad.any()
    return x, y


def tiny(tmp_path: Path, members: int = 5) -> Registry:
    reg = Registry(tmp_path)
    for _ in range(3):
        reg.save("m", SensorMLP(3, (4,), members=members),
                 {"n_features": 3, "hidden": [4], "members": members},
                 feature_names=["a", "b", "c"], feature_set="x", metrics={})
    return reg


def test_saved_sensor_ensemble_loads_and_predicts_the_same(registry_dir: Path,
                                                           tmp_path: Path) -> None:
    model = Registry(registry_dir).load("shuttle")
    assert model.manifest["members"] == 5 and "id_columns" not in model.manifest
    x, _ = shuttle_inputs(registry_dir, 500)
    before = BatchScorer(model.module, CPU).score(x)
    copy = Registry(tmp_path)
    v = copy.save("again", model.module, model.manifest["init_args"],
                  feature_names=model.feature_names,
                  feature_set=model.manifest["feature_set"], metrics={})
    after = BatchScorer(copy.load("again", v).module, CPU).score(x)
    np.testing.assert_array_equal(before.probability, after.probability)
    np.testing.assert_array_equal(before.variance, after.variance)


def test_trained_sensor_ensemble_is_not_random(registry_dir: Path) -> None:
    m = Registry(registry_dir).load("shuttle")
    assert m.manifest["metrics"]["val_auc"] > 0.95
    x, y = shuttle_inputs(registry_dir, 3000)
    assert roc_auc(y, BatchScorer(m.module, CPU).probabilities(x)) > 0.95


def test_batch_size_never_changes_sensor_results(registry_dir: Path) -> None:
    scorer = BatchScorer(Registry(registry_dir).load("shuttle").module, CPU)
    x, _ = shuttle_inputs(registry_dir, 4096)
    assert_batch_invariant(scorer, x)


def assert_batch_invariant(scorer: BatchScorer, x: np.ndarray) -> None:
    """Scores of 4,096 rows in one batch equal those in batches of 1 and 7, to 1e-5."""
    whole = scorer.score(x[:4096])
    for size, rows in ((1, 1024), (7, 4096)):  # one row at a time is slow: 1024 of them
        parts = [scorer.score(x[i:min(i + size, rows)]) for i in range(0, rows, size)]
        for field in ("probability", "uncertainty", "variance"):
            got = np.concatenate([getattr(p, field) for p in parts])
            np.testing.assert_allclose(got, getattr(whole, field)[:rows], atol=1e-5,
                                       err_msg=f"{field} at batch size {size}")


def test_ensemble_members_disagree_and_one_member_never_does() -> None:
    torch.manual_seed(0)
    x = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    five = BatchScorer(SensorMLP(3, (8,), members=5), CPU).score(x)
    one = BatchScorer(SensorMLP(3, (8,), members=1), CPU).score(x)
    assert (five.variance > 0).any()
    np.testing.assert_array_equal(one.variance, np.zeros(64))
    for s in (five, one):
        np.testing.assert_array_equal(s.uncertainty, binary_entropy(s.probability))
        assert s.probability.dtype == s.uncertainty.dtype == s.variance.dtype == np.float64
    again = BatchScorer(SensorMLP(3, (8,), members=5), CPU).score(x)  # other init, dropout off
    assert not np.allclose(again.probability, five.probability)
    scorer = BatchScorer(SensorMLP(3, (8,), members=5), CPU)
    np.testing.assert_array_equal(scorer.score(x).probability, scorer.score(x).probability)


def test_scoring_no_rows_gives_empty_scores_and_cpu_ignores_half_precision() -> None:
    module = SensorMLP(3, (4,))
    empty = BatchScorer(module, CPU).score(np.zeros((0, 3), np.float32))
    assert len(empty) == 0 and empty.variance.shape == (0,)
    x = np.ones((4, 3), np.float32)
    np.testing.assert_array_equal(BatchScorer(module, CPU, precision="bf16").probabilities(x),
                                  BatchScorer(module, CPU).probabilities(x))
    with pytest.raises(ValueError, match="precision must be one of"):
        BatchScorer(module, CPU, precision="int8")


def test_collate_keeps_row_order_and_marks_rows_it_cannot_score() -> None:
    t = pa.table({"a": [1.0, float("nan"), 3.0, None, float("inf")],
                  "b": pa.array([10, 20, 30, 40, 50], pa.int64())})
    x, bad = collate(t, {"feature_names": ["b", "a"]})
    assert x.dtype == np.float32 and x.shape == (5, 2)
    assert bad.tolist() == [False, True, False, True, True]
    assert x[~bad].tolist() == [[10.0, 1.0], [30.0, 3.0]]
    assert np.isnan(x[bad]).all()
    for manifest in ({"feature_names": ["a", "missing"]},
                     {"feature_names": ["a"], "id_columns": ["user"], "id_buckets": 8}):
        x, bad = collate(t, manifest)
        assert bad.all() and np.isnan(x).all()
    words = pa.table({"a": ["1.0", "2.0"]})  # a feature that is not numeric: none scored
    assert collate(words, {"feature_names": ["a"]})[1].all()


def test_collate_hashes_ids_with_crc32_the_same_in_every_process() -> None:
    ids = ["123456789", "ü-42", "7", None, "7"]
    t = pa.table({"user": ids, "item": pa.array([1, 2, 3, 4, 5], pa.int64()),
                  "f": [0.0] * 5})
    manifest = {"id_columns": ["user", "item"], "id_buckets": 1 << 24, "feature_names": ["f"]}
    x, bad = collate(t, manifest)
    assert bad.tolist() == [False, False, False, True, False]
    # CRC-32's published check value: crc32("123456789") = 0xCBF43926
    assert x[0, 0] == 0xCBF43926 % (1 << 24)
    want = [zlib.crc32(i.encode("utf-8")) % (1 << 24) for i in ("ü-42", "7", "7")]
    assert x[[1, 2, 4], 0].tolist() == want
    assert x[:, 1].tolist()[:3] == [zlib.crc32(str(i).encode()) % (1 << 24) for i in (1, 2, 3)]
    # the same ids in another batch, in another order, land in the same buckets
    again, _ = collate(pa.table({"user": ["7", "123456789"], "item": pa.array([5, 1]),
                                 "f": [1.0, 1.0]}), manifest)
    assert again[:, :2].tolist() == [x[4, :2].tolist(), x[0, :2].tolist()]


def test_registry_lists_versions_and_rolls_back_through_its_history(tmp_path: Path) -> None:
    reg = tiny(tmp_path)
    assert reg.names() == ["m"] and [e["promoted"] for e in reg.list("m")] == [False] * 3
    for v in (1, 3, 2):
        reg.promote("m", v)
    listed = reg.list("m")
    assert [(e["version"], e["promoted"]) for e in listed] == [(1, False), (2, True), (3, False)]
    assert set(listed[0]) == {"version", "created_at", "feature_set", "members", "metrics",
                              "promoted"}
    assert reg.history("m") == [1, 3, 2]
    assert reg.rollback("m") == 3 and reg.current("m") == 3
    assert reg.load("m").version == 3
    assert reg.rollback("m") == 1 and reg.history("m") == [1]
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        reg.rollback("m")
    assert reg.current("m") == 1
    with pytest.raises(RegistryError, match="no promoted version"):
        reg.rollback("other")


def test_rollback_after_a_crash_between_the_two_writes_of_a_promotion(tmp_path: Path) -> None:
    reg = tiny(tmp_path)
    reg.promote("m", 1)
    reg.promote("m", 2)
    (tmp_path / "m" / "HISTORY").write_text("1\n2\n3\n")  # promote(3) died before CURRENT
    assert reg.current("m") == 2
    assert reg.rollback("m") == 1 and reg.history("m") == [1]


def test_load_errors_are_loud(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    with pytest.raises(RegistryError, match="no promoted version"):
        reg.load("missing")
    reg = tiny(tmp_path)
    (tmp_path / "m" / "v1" / "model.pt").write_bytes(b"not a state dict")
    with pytest.raises(RegistryError, match="cannot load m v1"):
        reg.load("m", 1)
    with pytest.raises(RegistryError, match="is not in the registry"):
        reg.promote("m", 99)
    with pytest.raises(RegistryError, match="not an ensemble"):
        reg.save("bad", EnsembleLinear(2, 3, 1), {}, feature_names=[], feature_set="x",
                 metrics={})


def test_load_refuses_a_manifest_of_another_schema_version(tmp_path: Path) -> None:
    reg = tiny(tmp_path)
    path = tmp_path / "m" / "v2" / "manifest.json"
    manifest = json.loads(path.read_text())
    assert manifest["schema_version"] == SCHEMA_VERSION
    manifest["schema_version"] = SCHEMA_VERSION - 1
    path.write_text(json.dumps(manifest))
    with pytest.raises(RegistryError, match=rf"cannot load m v2 .*schema_version "
                                            rf"{SCHEMA_VERSION - 1} and this headwater reads "
                                            rf"{SCHEMA_VERSION}"):
        reg.load("m", 2)
    manifest["schema_version"] = SCHEMA_VERSION
    manifest["members"] = 4  # the weights hold 5: the check after building catches it
    path.write_text(json.dumps(manifest))
    with pytest.raises(RegistryError, match=r"not \(2, 4\) members"):
        reg.load("m", 2)


def test_device_is_cpu_without_cuda_and_cuda_cannot_be_forced() -> None:
    if torch.cuda.is_available():
        assert pick_device("auto").type == "cuda"
    else:
        assert pick_device("auto").type == "cpu"
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            pick_device("cuda")


@pytest.mark.gpu
def test_cuda_matches_cpu_for_the_sensor_ensemble(registry_dir: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    x, _ = shuttle_inputs(registry_dir, 4096)
    cpu = BatchScorer(Registry(registry_dir).load("shuttle").module, CPU).score(x)
    cuda = torch.device("cuda")
    # bf16 keeps 8 bits of mantissa in the matmuls: on an H100, probabilities moved up to
    # 0.010 (fp16: 0.001) from fp32
    for precision, atol in (("fp32", 1e-5), ("bf16", 3e-2), ("fp16", 5e-3)):
        got = BatchScorer(Registry(registry_dir).load("shuttle").module, cuda,
                          precision=precision).score(x)
        np.testing.assert_allclose(got.probability, cpu.probability, atol=atol,
                                   err_msg=precision)
        np.testing.assert_allclose(got.variance, cpu.variance, atol=atol, err_msg=precision)
    scorer = BatchScorer(Registry(registry_dir).load("shuttle").module, cuda)
    for size in (1, 7):
        parts = [scorer.score(x[i:i + size]).probability for i in range(0, 700, size)]
        np.testing.assert_allclose(np.concatenate(parts), cpu.probability[:700], atol=1e-5)
