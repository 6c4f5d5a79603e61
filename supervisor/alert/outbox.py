"""The alert outbox: what a delivering sink needs from the journal, and the Alert <-> JSON codec.

An alert handed to a delivering sink is first recorded (alert id, sink, payload) and marked delivered
only when the receiver accepted it. What is still pending after the sink's retries, after `close()`,
or after the daemon died is retried later from the recorded payload (also by the next daemon): an
undeliverable alert is never dropped silently.

`supervisor.journal.Journal` implements `Outbox` (table `alert_outbox`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Protocol

from supervisor.vocabulary import Alert, Severity


class OutboxEntry(Protocol):
    """One recorded (alert, sink) pair (the journal's OutboxRow)."""

    @property
    def alert_id(self) -> str: ...
    @property
    def sink(self) -> str: ...
    @property
    def payload(self) -> str: ...
    @property
    def attempts(self) -> int: ...
    @property
    def delivered_at(self) -> float | None: ...


class Outbox(Protocol):
    """Durable record of alerts handed to sinks. Thread-safe (sinks call it from their workers)."""

    def outbox_add(self, alert_id: str, sink: str, payload: str, created_at: float) -> bool: ...

    def outbox_result(self, alert_id: str, sink: str, *, at: float, error: str | None = None) -> None: ...

    def outbox_settle(self, alert_id: str, sink: str, *, at: float, note: str) -> None: ...

    def outbox_pending(self, sink: str | None = None) -> Sequence[OutboxEntry]: ...

    def outbox(self, sink: str | None = None, *, alert_id: str | None = None) -> Sequence[OutboxEntry]: ...


def alert_id(alert: Alert) -> str:
    """The identity of one state of one incident's alert: ``<incident id>:<status>``. Sending the same
    id twice is a duplicate."""
    return f"{alert.incident_id}:{alert.status}"


def alert_to_json(alert: Alert) -> str:
    """The whole Alert as JSON (times as floats, exact), for the outbox."""
    doc: dict[str, Any] = {
        "incident_id": alert.incident_id,
        "job": alert.job,
        "status": alert.status,
        "summary": alert.summary,
        "severity": alert.severity.value,
        "page": alert.page,
        "labels": [list(kv) for kv in alert.labels],
        "details": [list(kv) for kv in alert.details],
        "evidence": list(alert.evidence),
        "created_at": alert.created_at,
    }
    return json.dumps(doc, sort_keys=True, ensure_ascii=False)


def alert_from_json(text: str) -> Alert:
    """Inverse of `alert_to_json`: ``alert_from_json(alert_to_json(a)) == a``."""
    doc = json.loads(text)
    return Alert(
        incident_id=str(doc["incident_id"]),
        job=str(doc["job"]),
        status=str(doc["status"]),
        summary=str(doc["summary"]),
        severity=Severity(doc["severity"]),
        page=bool(doc["page"]),
        labels=tuple((str(k), str(v)) for k, v in doc["labels"]),
        details=tuple((str(k), str(v)) for k, v in doc["details"]),
        evidence=tuple(str(e) for e in doc["evidence"]),
        created_at=float(doc["created_at"]),
    )
