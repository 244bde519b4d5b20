"""A file-system model registry: versioned artifacts, a promoted version, loud load errors.

Layout: `root/<name>/v<N>/model.pt` (the state dict) and `manifest.json` (class, init
arguments, members, input columns, feature-set and schema versions, metrics,
created-at); `root/<name>/CURRENT` names the promoted version and `root/<name>/HISTORY`
the versions promoted so far, one a line, the current one last. Both files are replaced
atomically.

>>> import tempfile
>>> from models.sensor import SensorMLP
>>> reg = Registry(Path(tempfile.mkdtemp()))
>>> for _ in range(2):
...     v = reg.save("demo", SensorMLP(2, (3,), members=2),
...                  {"n_features": 2, "hidden": [3], "members": 2},
...                  feature_names=["a", "b"], feature_set="sensor-basic.v1", metrics={})
...     reg.promote("demo", v)
>>> reg.current("demo"), reg.rollback("demo"), reg.current("demo")
(2, 1, 1)
>>> loaded = reg.load("demo")
>>> loaded.version, loaded.manifest["feature_names"], loaded.manifest["members"]
(1, ['a', 'b'], 2)
>>> [(m["version"], m["promoted"]) for m in reg.list("demo")]
[(1, True), (2, False)]
"""

from __future__ import annotations

import builtins
import importlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["SCHEMA_VERSION", "LoadedModel", "Registry", "RegistryError"]

#: 2: models are ensembles returning logits [N, members]; manifests name `members` and,
#: for models that embed ids, `id_columns` and `id_buckets` (1 returned one logit a row)
SCHEMA_VERSION = 2


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


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


class Registry:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def names(self) -> builtins.list[str]:
        """Names with at least one saved version, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(d.name for d in self.root.iterdir() if d.is_dir() and self.versions(d.name))

    def versions(self, name: str) -> builtins.list[int]:
        """Saved versions of `name`, oldest first."""
        d = self.root / name
        if not d.is_dir():
            return []
        return sorted(int(p.name[1:]) for p in d.iterdir()
                      if p.name.startswith("v") and p.name[1:].isdigit()
                      and (p / "manifest.json").exists())

    def save(self, name: str, module: nn.Module, init_args: dict[str, Any], *,
             feature_names: builtins.list[str], feature_set: str, metrics: dict[str, float],
             id_columns: builtins.list[str] | None = None,
             id_buckets: int | None = None) -> int:
        """Store a new version (not promoted) and return its number.

        `module` must be an ensemble from `models/` (its `members` attribute is recorded);
        `id_columns` and `id_buckets` are given together, for models that embed ids.
        """
        cls = type(module)
        if not cls.__module__.startswith("models."):
            raise RegistryError(f"{cls.__qualname__}: only classes from models/ can be saved")
        members = getattr(module, "members", None)
        if not isinstance(members, int):
            raise RegistryError(f"{cls.__qualname__}: not an ensemble (no int `members`)")
        if (id_columns is None) != (id_buckets is None):
            raise RegistryError(f"{name}: id_columns and id_buckets go together")
        version = (self.versions(name) or [0])[-1] + 1
        final = self.root / name / f"v{version}"
        tmp = final.with_name(f".v{version}.tmp{os.getpid()}")
        tmp.mkdir(parents=True)
        torch.save(module.state_dict(), tmp / "model.pt")
        manifest: dict[str, Any] = {
            "name": name, "version": version,
            "class": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args,
            "members": members, "feature_names": feature_names, "feature_set": feature_set,
            "schema_version": SCHEMA_VERSION, "metrics": metrics,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if id_columns is not None:
            manifest |= {"id_columns": id_columns, "id_buckets": id_buckets}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        tmp.rename(final)
        return version

    def history(self, name: str) -> builtins.list[int]:
        """Versions promoted so far, oldest first; the current one is last."""
        try:
            return [int(v) for v in (self.root / name / "HISTORY").read_text().split()]
        except FileNotFoundError:  # promoted before HISTORY existed, or never
            return [self.current(name)] if (self.root / name / "CURRENT").exists() else []

    def promote(self, name: str, version: int) -> None:
        """Make `version` the one workers serve."""
        if version not in self.versions(name):
            raise RegistryError(f"{name} v{version} is not in the registry at {self.root}")
        history = self.history(name)
        if history[-1:] != [version]:
            history.append(version)
        # HISTORY first: after a crash between the two writes, CURRENT still names the
        # version before, and rollback() trims HISTORY back to it
        _write_atomically(self.root / name / "HISTORY", "".join(f"{v}\n" for v in history))
        _write_atomically(self.root / name / "CURRENT", f"{version}\n")

    def previous(self, name: str) -> int:
        """The version `rollback` would promote; RegistryError when there is none."""
        return self._rolled_back(name)[-1]

    def rollback(self, name: str) -> int:
        """Promote the version promoted before the current one again, and return it.

        Each rollback steps one promotion further back.
        """
        history = self._rolled_back(name)
        # CURRENT first: after a crash between the two writes, HISTORY still ends with
        # the rolled-back version, and the next rollback trims it to CURRENT's
        _write_atomically(self.root / name / "CURRENT", f"{history[-1]}\n")
        _write_atomically(self.root / name / "HISTORY", "".join(f"{v}\n" for v in history))
        return history[-1]

    def _rolled_back(self, name: str) -> builtins.list[int]:
        """The promotion history once the current version is rolled back."""
        current = self.current(name)
        history = self.history(name)
        if current not in history:
            raise RegistryError(f"{name}: v{current} is not in the promotion history at "
                                f"{self.root / name / 'HISTORY'}: nothing to roll back to")
        history = history[:len(history) - history[::-1].index(current) - 1]
        if not history:
            raise RegistryError(f"{name}: v{current} is the first version promoted: "
                                "nothing to roll back to")
        return history

    def current(self, name: str) -> int:
        """The promoted version of `name`."""
        try:
            return int((self.root / name / "CURRENT").read_text())
        except (FileNotFoundError, ValueError) as exc:
            raise RegistryError(f"{name}: no promoted version in {self.root} "
                                "(run `headwater train` first)") from exc

    def load(self, name: str, version: int | None = None) -> LoadedModel:
        """Build the module of `name` (the promoted version unless given), in eval mode.

        The module is built, its weights loaded and one forward pass checked against the
        manifest before it is returned, so a caller swaps models only after all of that.
        """
        version = self.current(name) if version is None else version
        d = self.root / name / f"v{version}"
        where = f"{name} v{version} from {d}"
        try:
            manifest = json.loads((d / "manifest.json").read_text())
            if manifest.get("schema_version") != SCHEMA_VERSION:
                raise RegistryError(
                    f"cannot load {where}: its manifest has schema_version "
                    f"{manifest.get('schema_version')!r} and this headwater reads "
                    f"{SCHEMA_VERSION} (retrain it with `headwater train`)")
            module_path, _, cls_name = manifest["class"].rpartition(".")
            if not module_path.startswith("models."):
                raise RegistryError(f"refusing class {manifest['class']} outside models/")
            cls = getattr(importlib.import_module(module_path), cls_name)
            module: nn.Module = cls(**manifest["init_args"])
            state = torch.load(d / "model.pt", map_location="cpu", weights_only=True)
            module.load_state_dict(state, strict=True)
            module.eval()
            width = len(manifest.get("id_columns") or []) + len(manifest["feature_names"])
            with torch.inference_mode():
                shape = tuple(module(torch.zeros(2, width)).shape)
            if shape != (2, manifest["members"]):
                raise RegistryError(f"cannot load {where}: it returns logits of shape {shape} "
                                    f"for 2 rows, not (2, {manifest['members']}) members")
        except RegistryError:
            raise
        except Exception as exc:
            raise RegistryError(f"cannot load {where}: {exc!r}") from exc
        return LoadedModel(name, version, module, manifest)

    def list(self, name: str) -> builtins.list[dict[str, Any]]:
        """Every saved version of `name`, oldest first: version, created_at, feature_set,
        members, metrics, and whether it is the promoted one."""
        try:
            current: int | None = self.current(name)
        except RegistryError:
            current = None
        out = []
        for v in self.versions(name):
            path = self.root / name / f"v{v}" / "manifest.json"
            try:
                m = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise RegistryError(f"cannot read {path}: {exc}") from exc
            out.append({"version": v, "created_at": m.get("created_at"),
                        "feature_set": m.get("feature_set"), "members": m.get("members"),
                        "metrics": m.get("metrics", {}), "promoted": v == current})
        return out
