"""Shared pieces of the fuzzers: hypothesis settings sized for CI, and a hard per-example time bound.

Hypothesis' own `deadline` only reports a slow example after it returned; `bounded` interrupts one
that does not return (SIGALRM, main thread), so a hang fails the test instead of stalling CI.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from hypothesis import HealthCheck, settings

EXAMPLE_BOUND_S = 5.0
"""No single example may take longer than this (a loader or classifier that hangs fails here)."""


def fuzz_settings(max_examples: int) -> settings:
    """Reproducible (derandomized, no example database) and time-bounded per example."""
    return settings(
        max_examples=max_examples,
        derandomize=True,
        database=None,
        deadline=None,  # wall-clock noise on 2 shared cores; `bounded` is the hard limit
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
        print_blob=True,
    )


class Hang(AssertionError):
    """An example ran past EXAMPLE_BOUND_S."""


@contextmanager
def bounded(seconds: float = EXAMPLE_BOUND_S) -> Iterator[None]:
    def expire(signum: int, frame: FrameType | None) -> None:
        raise Hang(f"example ran longer than {seconds:g}s (hang?)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
