"""A file-system model registry: versioned artifacts, a promoted version, loud load errors.

Layout: `root/<name>/v<N>/model.pt` (the state dict) and `manifest.json` (class, init
arguments, feature names, feature-set and schema versions, metrics, created-at);
`root/<name>/CURRENT` names the promoted version.

>>> import tempfile
>>> from models.sensor import SensorMLP
>>> reg = Registry(Path(tempfile.mkdtemp()))
>>> v = reg.save("demo", SensorMLP(2, (3,)), {"n_features": 2, "hidden": [3]},
...              feature_names=["a", "b"], feature_set="sensor-basic.v1", metrics={})
>>> reg.promote("demo", v); reg.current("demo")
1
>>> loaded = reg.load("demo")
>>> loaded.version, loaded.manifest["feature_names"]
(1, ['a', 'b'])
"""

from __future__ import annotations

import importlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["LoadedModel", "Registry", "RegistryError"]

SCHEMA_VERSION = 1


class RegistryError(RuntimeError):
    """A model could not be saved or loaded; the message names the artifact and why."""


@dataclass(frozen=True)
class LoadedModel:
    name: str
    version: int
    module: nn.Module
    manifest: dict[str, Any]

    @property
    def feature_names(self) -> list[str]:
        names: list[str] = self.manifest["feature_names"]
        return names


class Registry:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def versions(self, name: str) -> list[int]:
        """Saved versions of `name`, oldest first."""
        d = self.root / name
        if not d.is_dir():
            return []
        return sorted(int(p.name[1:]) for p in d.iterdir()
                      if p.name.startswith("v") and p.name[1:].isdigit()
                      and (p / "manifest.json").exists())

    def save(self, name: str, module: nn.Module, init_args: dict[str, Any], *,
             feature_names: list[str], feature_set: str, metrics: dict[str, float]) -> int:
        """Store a new version (not promoted) and return its number."""
        cls = type(module)
        if not cls.__module__.startswith("models."):
            raise RegistryError(f"{cls.__qualname__}: only classes from models/ can be saved")
        version = (self.versions(name) or [0])[-1] + 1
        final = self.root / name / f"v{version}"
        tmp = final.with_name(f".v{version}.tmp{os.getpid()}")
        tmp.mkdir(parents=True)
        torch.save(module.state_dict(), tmp / "model.pt")
        manifest = {
            "name": name, "version": version,
            "class": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args,
            "feature_names": feature_names, "feature_set": feature_set,
            "schema_version": SCHEMA_VERSION, "metrics": metrics,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        tmp.rename(final)
        return version

    def promote(self, name: str, version: int) -> None:
        """Make `version` the one workers serve (also how to roll back)."""
        if version not in self.versions(name):
            raise RegistryError(f"{name} v{version} is not in the registry at {self.root}")
        cur = self.root / name / "CURRENT"
        tmp = cur.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(f"{version}\n")
        tmp.replace(cur)

    def current(self, name: str) -> int:
        """The promoted version of `name`."""
        try:
            return int((self.root / name / "CURRENT").read_text())
        except (FileNotFoundError, ValueError) as exc:
            raise RegistryError(f"{name}: no promoted version in {self.root} "
                                "(run `headwater train` first)") from exc

    def load(self, name: str, version: int | None = None) -> LoadedModel:
        """Build the module of `name` (the promoted version unless given), in eval mode."""
        version = self.current(name) if version is None else version
        d = self.root / name / f"v{version}"
        try:
            manifest = json.loads((d / "manifest.json").read_text())
            module_path, _, cls_name = manifest["class"].rpartition(".")
            if not module_path.startswith("models."):
                raise RegistryError(f"refusing class {manifest['class']} outside models/")
            cls = getattr(importlib.import_module(module_path), cls_name)
            module: nn.Module = cls(**manifest["init_args"])
            state = torch.load(d / "model.pt", map_location="cpu", weights_only=True)
            module.load_state_dict(state, strict=True)
        except RegistryError:
            raise
        except Exception as exc:
            raise RegistryError(f"cannot load {name} v{version} from {d}: {exc}") from exc
        module.eval()
        return LoadedModel(name, version, module, manifest)
