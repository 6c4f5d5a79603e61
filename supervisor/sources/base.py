"""The boundary every source implements."""

from __future__ import annotations

from typing import Protocol

from supervisor.vocabulary import Cursor, SourceBatch


class Source(Protocol):
    """A pull-based source with an explicit cursor.

    `poll()` never raises for an outside failure (throttling, network, 5xx): it retries
    within its budget and then returns a batch whose `health.up` is False, with no events
    and an unchanged cursor, so nothing is skipped and blindness is visible.
    `restore()` sets the position to resume from (the last cursor the engine persisted).
    """

    name: str

    def poll(self) -> SourceBatch: ...

    def restore(self, cursor: Cursor) -> None: ...
