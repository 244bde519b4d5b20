"""The registry, batched inference and training: artifacts round-trip, errors are loud."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.datasets import shuttle
from models.features import SensorConfig
from models.inference import BatchScorer, pick_device
from models.registry import Registry, RegistryError
from models.sensor import SensorMLP
from models.training import feature_matrix, roc_auc


def test_saved_model_loads_and_predicts_the_same(registry_dir: Path) -> None:
    reg = Registry(registry_dir)
    model = reg.load("shuttle")
    x, names, _ = feature_matrix(shuttle(limit=500), SensorConfig())
    assert names == model.feature_names
    before = BatchScorer(model.module, torch.device("cpu")).probabilities(x)
    copy_dir = registry_dir.parent / "copy"
    copy = Registry(copy_dir)
    v = copy.save("again", model.module, model.manifest["init_args"], feature_names=names,
                  feature_set=model.manifest["feature_set"], metrics={})
    after = BatchScorer(copy.load("again", v).module, torch.device("cpu")).probabilities(x)
    np.testing.assert_array_equal(before, after)


def test_trained_model_is_not_random(registry_dir: Path) -> None:
    m = Registry(registry_dir).load("shuttle")
    assert m.manifest["metrics"]["val_auc"] > 0.95
    events = shuttle(limit=3000)
    x, _, _ = feature_matrix(events, SensorConfig())
    p = BatchScorer(m.module, torch.device("cpu")).probabilities(x)
    assert roc_auc(events.column("label").to_numpy(), p) > 0.95


def test_batch_size_never_changes_results(registry_dir: Path) -> None:
    scorer = BatchScorer(Registry(registry_dir).load("shuttle").module, torch.device("cpu"))
    x, _, _ = feature_matrix(shuttle(limit=4096), SensorConfig())
    whole = scorer.probabilities(x)
    for size in (1, 7):
        parts = np.concatenate([scorer.probabilities(x[i:i + size])
                                for i in range(0, 300, size)])
        np.testing.assert_allclose(parts, whole[:len(parts)], atol=1e-5)


def test_load_errors_are_loud(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    with pytest.raises(RegistryError, match="no promoted version"):
        reg.load("missing")
    v = reg.save("m", SensorMLP(3, (4,)), {"n_features": 3, "hidden": [4]},
                 feature_names=["a", "b", "c"], feature_set="x", metrics={})
    (tmp_path / "m" / f"v{v}" / "model.pt").write_bytes(b"not a state dict")
    with pytest.raises(RegistryError, match=f"cannot load m v{v}"):
        reg.load("m", v)
    with pytest.raises(RegistryError, match="is not in the registry"):
        reg.promote("m", 99)


def test_device_is_cpu_without_cuda_and_cuda_cannot_be_forced() -> None:
    if torch.cuda.is_available():
        assert pick_device("auto").type == "cuda"
    else:
        assert pick_device("auto").type == "cpu"
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            pick_device("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(registry_dir: Path) -> None:
    module = Registry(registry_dir).load("shuttle").module
    x, _, _ = feature_matrix(shuttle(limit=4096), SensorConfig())
    cpu = BatchScorer(module, torch.device("cpu")).probabilities(x)
    gpu = BatchScorer(Registry(registry_dir).load("shuttle").module,
                      torch.device("cuda")).probabilities(x)
    np.testing.assert_allclose(gpu, cpu, atol=1e-5)
