"""Alert sinks: a structured log line, and a JSON webhook delivered from its own thread.

Webhook payload (``alert_payload``), version "1", every key always present::

    {
      "version": "1",
      "incident_id": "inc-...",
      "job": "llama-7b",
      "status": "firing" | "resolved",
      "summary": "gpu.xid.79 on node-1: cordoned node-1, restarted on node-2, node-3 (attempt 1)",
      "severity": "info" | "warning" | "critical",
      "page": true | false,
      "labels":   {"job": ..., "node": ..., "rule": ..., "signal": ..., "class": ..., "scope": ...,
                   "severity": ..., "verdict": ...[, "rule_verdict": ...]},
      "details":  {"root_cause": ..., "first_seen": ..., "last_seen": ..., "action_result": ...,
                   "budget_left": ..., ...[, "runbook": ...]},
      "evidence": ["<UTC time> <node> [<rule>] <line>", ...],   # root cause first, at most 5
      "created_at": "2024-05-01T12:00:03.250Z"
    }

Serialised with sorted keys, UTF-8, Content-Type ``application/json``.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

import structlog
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
    wait_random,
)
from tenacity.stop import stop_base

from supervisor.logs import get_logger
from supervisor.report.timefmt import iso_utc
from supervisor.vocabulary import Alert, Severity

PAYLOAD_VERSION = "1"

DeliveryCallback = Callable[[str, bool], None]
"""on_delivery(sink_name, ok): called once per alert when delivery finally succeeds or gives up."""

_log = get_logger(__name__)


def alert_payload(alert: Alert) -> dict[str, Any]:
    """The webhook JSON document for `alert` (the documented version-1 shape above)."""
    return {
        "version": PAYLOAD_VERSION,
        "incident_id": alert.incident_id,
        "job": alert.job,
        "status": alert.status,
        "summary": alert.summary,
        "severity": alert.severity.value,
        "page": alert.page,
        "labels": dict(alert.labels),
        "details": dict(alert.details),
        "evidence": list(alert.evidence),
        "created_at": iso_utc(alert.created_at),
    }


def _notify(callback: DeliveryCallback | None, name: str, ok: bool) -> None:
    if callback is None:
        return
    try:
        callback(name, ok)
    except Exception:  # a metrics hook must never take down delivery
        _log.exception("alert_delivery_callback_failed", sink=name)


class LogAlertSink:
    """Writes each alert as one structured log event named "alert". Never blocks, never raises."""

    def __init__(
        self,
        *,
        name: str = "log",
        logger: structlog.stdlib.BoundLogger | None = None,
        on_delivery: DeliveryCallback | None = None,
    ) -> None:
        self.name = name
        self._logger = logger if logger is not None else get_logger("supervisor.alert")
        self._on_delivery = on_delivery
        self._lock = threading.Lock()
        self._delivered = 0

    @property
    def delivered(self) -> int:
        with self._lock:
            return self._delivered

    @property
    def failed(self) -> int:
        return 0

    def send(self, alert: Alert) -> None:
        payload = alert_payload(alert)
        payload.pop("version")
        # Paging or critical alerts are warnings in the log so a log-only deployment still surfaces them.
        loud = alert.status == "firing" and (alert.page or alert.severity is Severity.CRITICAL)
        emit = self._logger.warning if loud else self._logger.info
        emit("alert", sink=self.name, **payload)
        with self._lock:
            self._delivered += 1
        _notify(self._on_delivery, self.name, True)

    def close(self, timeout_s: float = 5.0) -> None:
        """Nothing is queued; nothing to drain."""


class _PermanentFailure(Exception):
    """The receiver refused the alert in a way a retry cannot fix (4xx other than 408 / 429)."""


class _RetryableFailure(Exception):
    """A timeout, a connection failure or a 5xx / 408 / 429 answer: worth another try."""


_STOP = object()  # the sentinel close() enqueues after the last alert


class _StopWhen(stop_base):
    """Tenacity stop condition: gives up at once when the sink is abandoning its queue."""

    def __init__(self, flag: threading.Event) -> None:
        self._flag = flag

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self._flag.is_set()


class WebhookAlertSink:
    """POSTs each alert as JSON (`alert_payload`) to `url` from a daemon worker thread.

    send()   enqueues and returns at once; never blocks and never raises. When the queue is full
             (`queue_size`) or the sink is closed, the alert is dropped, logged and counted as failed.
    delivery each alert gets up to `max_attempts` POSTs, each bounded by `timeout_s`, with exponential
             back-off plus jitter, and all attempts together bounded by `budget_s`. 2xx is delivered;
             timeouts, connection errors, 5xx, 408 and 429 are retried; other 4xx fail at once. A
             failure after the budget is logged and counted, never raised.
    close()  stops taking alerts and waits up to `timeout_s` for the queue to drain; what is still
             queued after that is abandoned (counted failed) and the worker gives up its retries.
    counts   `delivered` and `failed` (per alert, not per attempt); `on_delivery(name, ok)` is called
             once per alert with the same outcome, for metrics.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 5.0,
        max_attempts: int = 5,
        name: str = "webhook",
        budget_s: float = 60.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 10.0,
        queue_size: int = 1000,
        headers: Mapping[str, str] | None = None,
        on_delivery: DeliveryCallback | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"webhook url must be http(s), not {url!r}")
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self.name = name
        self.url = url
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.budget_s = budget_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._headers = {"Content-Type": "application/json", "User-Agent": "ftsup-alert/1", **(headers or {})}
        self.on_delivery = on_delivery
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._delivered = 0
        self._failed = 0
        self._closed = False
        self._abandon = threading.Event()
        self._log = _log.bind(sink=name, url=url)
        self._worker = threading.Thread(target=self._run, name=f"alert-sink-{name}", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ counters

    @property
    def delivered(self) -> int:
        with self._lock:
            return self._delivered

    @property
    def failed(self) -> int:
        with self._lock:
            return self._failed

    @property
    def pending(self) -> int:
        """Alerts queued and not yet delivered or given up (approximate while the worker runs)."""
        return self._queue.qsize()

    def _count(self, ok: bool) -> None:
        with self._lock:
            if ok:
                self._delivered += 1
            else:
                self._failed += 1
        _notify(self.on_delivery, self.name, ok)

    # ------------------------------------------------------------------ caller side

    def send(self, alert: Alert) -> None:
        with self._lock:
            closed = self._closed
        if closed:
            self._log.error("alert_dropped", reason="sink closed", incident_id=alert.incident_id)
            self._count(False)
            return
        try:
            self._queue.put_nowait(alert)
        except queue.Full:
            self._log.error("alert_dropped", reason="queue full", incident_id=alert.incident_id)
            self._count(False)

    def close(self, timeout_s: float = 5.0) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        # The sentinel must get in even if the queue is full: wait for room, within the same timeout.
        deadline = time.monotonic() + timeout_s
        with contextlib.suppress(queue.Full):
            self._queue.put(_STOP, timeout=max(0.0, timeout_s))
        self._worker.join(max(0.0, deadline - time.monotonic()))
        if self._worker.is_alive():
            self._abandon.set()
            self._worker.join(min(1.0, self.timeout_s))
        self._abandon_rest()

    def _abandon_rest(self) -> None:
        """Counts whatever is still queued as failed (close() ran out of time)."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, Alert):
                self._log.error("alert_abandoned", incident_id=item.incident_id)
                self._count(False)

    # ------------------------------------------------------------------ worker side

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if not isinstance(item, Alert):
                continue
            if self._abandon.is_set():
                self._log.error("alert_abandoned", incident_id=item.incident_id)
                self._count(False)
                continue
            try:
                self._deliver(item)
            except Exception as exc:
                # Logged and counted, never raised: an alert outage must not stop the supervisor.
                self._log.error(
                    "alert_delivery_failed",
                    incident_id=item.incident_id,
                    error=f"{type(exc).__name__}: {exc}",
                )
                self._count(False)
            else:
                self._count(True)

    def _deliver(self, alert: Alert) -> None:
        body = json.dumps(alert_payload(alert), sort_keys=True, ensure_ascii=False).encode("utf-8")
        retrying = Retrying(
            stop=stop_after_attempt(self.max_attempts)
            | stop_after_delay(self.budget_s)
            | _StopWhen(self._abandon),
            # Exponential back-off plus uniform jitter (written out rather than wait_exponential_jitter,
            # whose parameters changed across the tenacity versions pyproject allows).
            wait=wait_exponential(multiplier=self._backoff_initial_s, max=self._backoff_max_s)
            + wait_random(0, self._backoff_initial_s),
            retry=retry_if_exception(lambda e: isinstance(e, _RetryableFailure)),
            before_sleep=self._before_sleep,
            reraise=True,
        )
        for attempt in retrying:
            with attempt:
                self._post_once(body)

    def _before_sleep(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        self._log.warning(
            "alert_delivery_retry",
            attempt=state.attempt_number,
            error=f"{type(exc).__name__}: {exc}" if exc is not None else None,
        )

    def _post_once(self, body: bytes) -> None:
        request = urllib.request.Request(self.url, data=body, headers=self._headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code >= 500 or exc.code in (408, 429):
                raise _RetryableFailure(f"HTTP {exc.code}") from exc
            raise _PermanentFailure(f"HTTP {exc.code}") from exc
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
            raise _RetryableFailure(str(exc)) from exc
