"""The one way tests wait: poll a condition until it holds, with a liveness bound.

The bound is never a claim about speed (that is for benchmarks); it only keeps a test that
would wait forever from hanging the suite, so it is generous for a busy machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

BOUND_S = 30.0
POLL_S = 0.02


def wait_for(what: str, probe: Callable[[], T], bound_s: float = BOUND_S) -> T:
    """Poll ``probe`` until it returns something truthy, and return that; fail naming
    ``what`` once ``bound_s`` has passed."""
    deadline = time.monotonic() + bound_s
    while not (got := probe()):
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(POLL_S)
    return got
