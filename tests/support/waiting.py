"""Waiting on a condition, for tests that start and disturb real clusters."""

from __future__ import annotations

import time
from typing import Any

import httpx


def wait_until(predicate, timeout_s: float, what: str, period_s: float = 2.0) -> Any:
    """``predicate()``'s first truthy value, polled every ``period_s``; an AssertionError
    naming ``what`` and the last value (or error) after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (httpx.HTTPError, AssertionError, KeyError, TypeError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(period_s)
    raise AssertionError(f"{what} not reached in {timeout_s:.0f} s; last: {last!r}")
