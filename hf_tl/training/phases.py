"""Seconds per phase of a run (metrics.json `timings.phases`), measured where each phase's work is done.

Phases nest (the image check runs inside loading, the cache's probe inside building the trainer);
each second is counted once, in the innermost phase that holds it, so the phases add up to the
run's wall time less what no phase holds (imports, argument parsing). A phase entered twice adds up.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

_seconds: dict[str, float] = {}
_open: list[list[float]] = []  # per open phase: the seconds its inner phases took


def reset() -> None:
    """Start counting a new run."""
    _seconds.clear()
    _open.clear()


@contextmanager
def timed(name: str) -> Iterator[None]:
    _seconds.setdefault(name, 0.0)  # listed in the order phases start
    started = time.perf_counter()
    inner = [0.0]
    _open.append(inner)
    try:
        yield
    finally:
        _open.pop()  # phases nest: the innermost open phase is this one
        elapsed = time.perf_counter() - started
        _seconds[name] += elapsed - inner[0]
        if _open:
            _open[-1][0] += elapsed


def seconds() -> dict[str, float]:
    """The phases so far, in the order they first started, rounded to milliseconds."""
    return {name: round(value, 3) for name, value in _seconds.items()}
