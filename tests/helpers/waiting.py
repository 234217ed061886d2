"""Polling for a condition that another thread or process makes true."""
from __future__ import annotations

import time


def until(condition, timeout_s: float = 10, poll_s: float = 0.01) -> None:
    """Return once `condition()` is true; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(poll_s)
