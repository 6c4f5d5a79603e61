"""The alert pipeline in front of the sinks: deduplicate, inhibit, fan out (Alertmanager's stages).

The engine hands every alert to one `AlertRouter` (itself an AlertSink); the router passes what is
left to each configured sink.

dedupe   one notification per state of an incident: an alert whose id (``<incident>:<status>``) was
         already routed is dropped (logged); with an `outbox`, so is one a previous daemon already
         recorded for delivery.
inhibit  a firing alert whose root cause is a symptom (label ``role=symptom``, e.g. collective timeouts)
         is not sent while a firing alert of the same job whose root cause is a cause (``role=cause``,
         e.g. an Xid) began within `inhibit_window_s` of it: the root cause's alert already says
         "also seen on N nodes". Its resolution is not sent either. Inhibited alerts are logged and
         listed in `inhibited` (incident id -> inhibiting incident id). The same rule, written for a
         team's own Alertmanager, is in deploy/alertmanager/alertmanager.yml (the labels we send make
         it work there too).
fan out  every sink's `send` is called in order; a sink that raises is logged and skipped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from supervisor.alert.base import AlertSink
from supervisor.alert.outbox import Outbox, alert_id
from supervisor.alert.payloads import parse_iso
from supervisor.logs import get_logger
from supervisor.vocabulary import Alert

_log = get_logger(__name__)

DEFAULT_INHIBIT_WINDOW_S = 600.0


def _first_seen(alert: Alert) -> float:
    return parse_iso(dict(alert.details).get("first_seen", "")) or alert.created_at


class AlertRouter:
    """Deduplicates and inhibits, then sends to `sinks`. Thread-safe; `send` never raises."""

    def __init__(
        self,
        sinks: Sequence[AlertSink],
        *,
        outbox: Outbox | None = None,
        inhibit_window_s: float = DEFAULT_INHIBIT_WINDOW_S,
        name: str = "router",
    ) -> None:
        self.name = name
        self.sinks = list(sinks)
        self.outbox = outbox
        self.inhibit_window_s = inhibit_window_s
        self._lock = threading.Lock()
        self._routed: set[str] = set()
        self._firing: dict[str, Alert] = {}
        self._inhibited: dict[str, str] = {}
        self.duplicates = 0

    @property
    def inhibited(self) -> dict[str, str]:
        """Incident id of each inhibited alert -> the incident whose alert inhibited it."""
        with self._lock:
            return dict(self._inhibited)

    def _recorded_before(self, key: str) -> bool:
        if self.outbox is None:
            return False
        try:
            return bool(self.outbox.outbox(alert_id=key))
        except Exception as exc:
            _log.error("alert_outbox_failed", alert_id=key, error=f"{type(exc).__name__}: {exc}")
            return False

    def _inhibitor(self, alert: Alert) -> str | None:
        if dict(alert.labels).get("role") != "symptom":
            return None
        start = _first_seen(alert)
        for other in self._firing.values():
            labels = dict(other.labels)
            if (
                other.job == alert.job
                and labels.get("role") == "cause"
                and abs(_first_seen(other) - start) <= self.inhibit_window_s
            ):
                return other.incident_id
        return None

    def send(self, alert: Alert) -> None:
        key = alert_id(alert)
        with self._lock:
            duplicate = key in self._routed
            if not duplicate:
                self._routed.add(key)
        if duplicate or self._recorded_before(key):
            self.duplicates += 1
            _log.info("alert_duplicate_suppressed", alert_id=key)
            return
        with self._lock:
            if alert.status == "firing":
                by = self._inhibitor(alert)
                if by is not None:
                    self._inhibited[alert.incident_id] = by
                else:
                    self._firing[alert.incident_id] = alert
            else:
                by = self._inhibited.get(alert.incident_id)
                self._firing.pop(alert.incident_id, None)
        if by is not None:
            _log.warning(
                "alert_inhibited",
                incident_id=alert.incident_id,
                status=alert.status,
                inhibited_by=by,
                summary=alert.summary,
            )
            return
        for sink in self.sinks:
            try:
                sink.send(alert)
            except Exception:  # the contract says sinks never raise; the engine must not die if one does
                _log.exception("alert_sink_raised", sink=sink.name, incident_id=alert.incident_id)

    def close(self, timeout_s: float = 5.0) -> None:
        """Closes every sink within `timeout_s` overall."""
        deadline = time.monotonic() + timeout_s
        for sink in self.sinks:
            sink.close(max(0.1, deadline - time.monotonic()))
