"""Alert sinks: a structured log line, and the delivering sinks' base (queue, worker thread, tenacity
retries, outbox) with the generic JSON webhook. Alertmanager, Slack and PagerDuty shapes are in
supervisor.alert.http_sinks, SNS in supervisor.alert.sns.

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

from supervisor.alert.outbox import Outbox, alert_from_json, alert_id, alert_to_json
from supervisor.chaos import crash_point
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


class QueuedAlertSink:
    """Base of every sink that talks to the network: a queue, a daemon worker thread, retries, and
    (with an `outbox`) a durable record of what is not delivered yet. Subclasses implement
    `_deliver_once(alert)`, raising `_RetryableFailure` / `_PermanentFailure`, and may override
    `accepts(alert)` (an alert a sink does not take is skipped, not counted).

    send()   records the alert in the outbox (when given; a pair (alert id, sink) already recorded is a
             duplicate and is skipped) and enqueues it; returns at once and never raises. When the queue
             is full or the sink is closed, the alert is not sent now: counted failed and logged; with
             an outbox it stays pending there and is retried later.
    delivery each alert gets up to `max_attempts` tries, each bounded by `timeout_s`, with exponential
             back-off plus jitter, all together bounded by `budget_s`. Timeouts, connection errors,
             5xx, 408 and 429 are retried; other 4xx fail at once. A failure after the budget is
             logged and counted, never raised; with an outbox the row keeps its `last_error` and is
             retried every `redeliver_every_s` (oldest first; a firing alert whose resolution is
             recorded too is settled as superseded, never sent after it).
    restart  a sink built with an outbox enqueues the rows still pending for its name at once: what
             the previous daemon could not deliver is delivered by this one.
    close()  stops taking alerts and waits up to `timeout_s` for the queue to drain; what is still
             queued after that is abandoned (counted failed; kept pending in the outbox when there is
             one) and the worker gives up its retries.
    counts   `delivered` and `failed` (per delivery round, not per try); `on_delivery(name, ok)` is
             called once per round with the same outcome, for metrics.
    """

    kind = "queued"

    def __init__(
        self,
        *,
        name: str,
        timeout_s: float = 5.0,
        max_attempts: int = 5,
        budget_s: float = 60.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 10.0,
        queue_size: int = 1000,
        on_delivery: DeliveryCallback | None = None,
        outbox: Outbox | None = None,
        redeliver_every_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if timeout_s <= 0 or redeliver_every_s <= 0:
            raise ValueError("timeout_s and redeliver_every_s must be > 0")
        self.name = name
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.budget_s = budget_s
        self.redeliver_every_s = redeliver_every_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self.on_delivery = on_delivery
        self.outbox = outbox
        self._clock = clock
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._delivered = 0
        self._failed = 0
        self._closed = False
        self._queued: set[str] = set()  # alert ids in the queue or being delivered (outbox mode)
        self._abandon = threading.Event()
        self._log = _log.bind(sink=name, kind=self.kind)
        if outbox is not None:
            self._requeue_pending(startup=True)
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

    def accepts(self, alert: Alert) -> bool:
        """Whether this sink delivers `alert` at all (default: every alert)."""
        return True

    def send(self, alert: Alert) -> None:
        if not self.accepts(alert):
            return
        key = alert_id(alert)
        if self.outbox is not None:
            try:
                fresh = self.outbox.outbox_add(key, self.name, alert_to_json(alert), alert.created_at)
            except Exception as exc:  # the journal is the engine's; a failure here must not stop it
                self._log.error("alert_outbox_failed", alert_id=key, error=f"{type(exc).__name__}: {exc}")
                fresh = True
            if not fresh:
                self._log.info("alert_duplicate_skipped", alert_id=key)
                return
            crash_point("alert.recorded")
        with self._lock:
            closed = self._closed
        if closed:
            self._log.error("alert_dropped", reason="sink closed", incident_id=alert.incident_id,
                            kept_in_outbox=self.outbox is not None)  # fmt: skip
            self._count(False)
            return
        self._enqueue(alert)

    def _enqueue(self, alert: Alert) -> bool:
        key = alert_id(alert)
        with self._lock:
            if self.outbox is not None and key in self._queued:
                return False
            self._queued.add(key)
        try:
            self._queue.put_nowait(alert)
        except queue.Full:
            with self._lock:
                self._queued.discard(key)
            self._log.error("alert_dropped", reason="queue full", incident_id=alert.incident_id,
                            kept_in_outbox=self.outbox is not None)  # fmt: skip
            self._count(False)
            return False
        return True

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
                self._log.error("alert_abandoned", incident_id=item.incident_id,
                                kept_in_outbox=self.outbox is not None)  # fmt: skip
                self._count(False)

    # ------------------------------------------------------------------ outbox

    def _requeue_pending(self, *, startup: bool = False) -> None:
        """Enqueue this sink's pending outbox rows that are not queued already, oldest first; a firing
        row whose resolution is recorded as well is settled as superseded instead."""
        assert self.outbox is not None
        try:
            rows = list(self.outbox.outbox_pending(self.name))
            resolved = {
                r.alert_id.rsplit(":", 1)[0]
                for r in self.outbox.outbox(self.name)
                if r.alert_id.endswith(":resolved")
            }
        except Exception as exc:
            self._log.error("alert_outbox_failed", error=f"{type(exc).__name__}: {exc}")
            return
        for row in rows:
            incident, _, status = row.alert_id.rpartition(":")
            if status == "firing" and incident in resolved:
                with contextlib.suppress(Exception):
                    self.outbox.outbox_settle(
                        row.alert_id, self.name, at=self._clock(), note="superseded by its resolution"
                    )
                continue
            try:
                alert = alert_from_json(row.payload)
            except (ValueError, KeyError, TypeError) as exc:
                self._log.error("alert_outbox_unreadable", alert_id=row.alert_id, error=str(exc))
                continue
            if self._enqueue(alert):
                self._log.info("alert_redelivery", alert_id=row.alert_id, attempts=row.attempts,
                               after_restart=startup)  # fmt: skip

    def _record(self, alert: Alert, error: str | None) -> None:
        if self.outbox is None:
            return
        try:
            self.outbox.outbox_result(alert_id(alert), self.name, at=self._clock(), error=error)
        except Exception as exc:
            self._log.error(
                "alert_outbox_failed", alert_id=alert_id(alert), error=f"{type(exc).__name__}: {exc}"
            )

    # ------------------------------------------------------------------ worker side

    def _run(self) -> None:
        next_sweep = time.monotonic() + self.redeliver_every_s
        while True:
            wait = max(0.0, next_sweep - time.monotonic()) if self.outbox is not None else None
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                item = None
            if self.outbox is not None and time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + self.redeliver_every_s
                if not self._abandon.is_set():
                    self._requeue_pending()
            if item is _STOP:
                return
            if not isinstance(item, Alert):
                continue
            try:
                self._process(item)
            finally:
                with self._lock:
                    self._queued.discard(alert_id(item))

    def _process(self, item: Alert) -> None:
        if self._abandon.is_set():
            self._log.error("alert_abandoned", incident_id=item.incident_id,
                            kept_in_outbox=self.outbox is not None)  # fmt: skip
            self._count(False)
            return
        crash_point("alert.deliver")
        try:
            self._deliver(item)
        except Exception as exc:
            # Logged and counted, never raised: an alert outage must not stop the supervisor.
            error = f"{type(exc).__name__}: {exc}"
            self._log.error(
                "alert_delivery_failed",
                incident_id=item.incident_id,
                status=item.status,
                error=error,
                kept_in_outbox=self.outbox is not None,
            )
            self._record(item, error)
            self._count(False)
        else:
            crash_point("alert.sent")
            self._record(item, None)
            self._count(True)

    def _deliver(self, alert: Alert) -> None:
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
                self._deliver_once(alert)

    def _deliver_once(self, alert: Alert) -> None:
        raise NotImplementedError

    def _before_sleep(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        self._log.warning(
            "alert_delivery_retry",
            attempt=state.attempt_number,
            error=f"{type(exc).__name__}: {exc}" if exc is not None else None,
        )


def post_json(url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> None:
    """One POST bounded by `timeout_s`. 2xx returns; 5xx, 408, 429, timeouts and connection errors
    raise `_RetryableFailure`; other statuses raise `_PermanentFailure`."""
    request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        detail = ""
        with contextlib.suppress(Exception):
            detail = exc.read(300).decode("utf-8", "replace").strip()
        exc.close()
        message = f"HTTP {exc.code}" + (f": {detail}" if detail else "")
        if exc.code >= 500 or exc.code in (408, 429):
            raise _RetryableFailure(message) from exc
        raise _PermanentFailure(message) from exc
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
        raise _RetryableFailure(str(exc)) from exc


class HttpAlertSink(QueuedAlertSink):
    """A QueuedAlertSink that POSTs `body(alert)` as JSON to `url` (subclasses choose the shape)."""

    kind = "http"

    def __init__(self, url: str, *, headers: Mapping[str, str] | None = None, **kw: Any) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"{self.kind} url must be http(s), not {url!r}")
        self.url = url
        self._headers = {"Content-Type": "application/json", "User-Agent": "ftsup-alert/1", **(headers or {})}
        super().__init__(**kw)

    def body(self, alert: Alert) -> Any:
        """The JSON document POSTed for `alert`."""
        return alert_payload(alert)

    def target(self, alert: Alert) -> str:
        """Where `alert` is POSTed (default: `url`)."""
        return self.url

    def _deliver_once(self, alert: Alert) -> None:
        body = json.dumps(self.body(alert), sort_keys=True, ensure_ascii=False).encode("utf-8")
        post_json(self.target(alert), body, self._headers, self.timeout_s)


class WebhookAlertSink(HttpAlertSink):
    """POSTs each alert as the generic JSON document (`alert_payload`, version 1) to `url`.
    Delivery, retries, outbox and counting: see QueuedAlertSink."""

    kind = "webhook"

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
        outbox: Outbox | None = None,
        redeliver_every_s: float = 60.0,
    ) -> None:
        super().__init__(
            url,
            headers=headers,
            name=name,
            timeout_s=timeout_s,
            max_attempts=max_attempts,
            budget_s=budget_s,
            backoff_initial_s=backoff_initial_s,
            backoff_max_s=backoff_max_s,
            queue_size=queue_size,
            on_delivery=on_delivery,
            outbox=outbox,
            redeliver_every_s=redeliver_every_s,
        )
