"""The boundary every alert sink implements."""

from __future__ import annotations

from typing import Protocol

from supervisor.vocabulary import Alert


class AlertSink(Protocol):
    """Delivers alerts. `send` must not block the decision loop for long: a sink that talks to
    the network queues the alert and delivers it from its own thread with retries."""

    name: str

    def send(self, alert: Alert) -> None: ...

    def close(self, timeout_s: float = 5.0) -> None: ...
