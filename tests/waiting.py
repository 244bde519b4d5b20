"""Deadline waits on a condition: the only way tests wait."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(condition: Callable[[], bool], timeout: float, what: str,
             interval: float = 0.1, detail: Callable[[], object] | None = None) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout` seconds, with
    `detail()` (what is still missing) in the message when given."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            extra = f": {detail()}" if detail is not None else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{extra}")
        time.sleep(interval)
