"""The shared real datasets (../shared/data), as event tables; a missing folder fails."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from models import datasets

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def shared(*parts: str) -> Path:
    """A path under ../shared/data that must exist (CI has it: never skip without it)."""
    path = SHARED.joinpath(*parts)
    assert path.exists(), f"{path} is missing: the tests read the shared datasets there"
    return path


def nab() -> pa.Table:
    """The four NAB series, each sensor's rows in file order (12 of them out of order)."""
    return datasets.nab(shared("nab"))


def occupancy() -> pa.Table:
    """UCI occupancy in event-time order, five readings per event."""
    return datasets.occupancy(shared("uci-occupancy")).drop_columns(["label"])
