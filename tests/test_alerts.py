"""Alerts: built from the data (no case list), delivered by sinks that never block or raise."""

from __future__ import annotations

import io
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from supervisor.alert.base import AlertSink
from supervisor.alert.build import MAX_EVIDENCE, build_alert, resolve_alert
from supervisor.alert.sinks import LogAlertSink, WebhookAlertSink, alert_payload
from supervisor.logs import configure_logging, get_logger, reset_logging
from supervisor.vocabulary import (
    ActionResult,
    Decision,
    FailureClass,
    Incident,
    Role,
    Scope,
    Severity,
    Signal,
    Verdict,
)

T0 = 1_714_564_800.0  # 2024-05-01T12:00:00Z


def _sig(node: str, t: float, **kw: Any) -> Signal:
    fields: dict[str, Any] = {
        "rule": "gpu-fallen-off-bus",
        "signal": "gpu.xid.79",
        "node": node,
        "timestamp": t,
        "failure_class": FailureClass.NON_RECOVERABLE,
        "scope": Scope.NODE,
        "verdict": Verdict.CORDON_AND_RESTART,
        "severity": Severity.WARNING,
        "role": Role.CAUSE,
        "evidence": "NVRM: Xid (PCI:0000:3b:00): 79, pid=812, GPU has fallen off the bus.",
        "runbook": "https://docs.nvidia.com/deploy/xid-errors/",
    }
    fields.update(kw)
    return Signal(**fields)


ROOT = _sig("node-1", T0 + 1)
SYMPTOMS = tuple(
    _sig(
        f"node-{i}",
        T0 + i,
        rule="nccl-watchdog-timeout",
        signal="nccl.timeout",
        role=Role.SYMPTOM,
        evidence=f"[Rank {i}] Watchdog caught collective operation timeout",
        runbook=None,
    )
    for i in range(2, 9)
)
INCIDENT = Incident("inc-1", "llama", 0, T0 + 1, ROOT, (SYMPTOMS[0], ROOT, *SYMPTOMS[1:]))
CORDON = Decision("inc-1", Verdict.CORDON_AND_RESTART, "gpu.xid.79 on node-1", T0 + 10, node="node-1")
OK = ActionResult("k", True, "relaunched", T0 + 11, T0 + 40, attempt=1, nodes=("node-2", "node-9"))


# ----------------------------------------------------------------------------- build


def test_cordon_summary_labels_details_evidence() -> None:
    alert = build_alert(INCIDENT, CORDON, OK, budget_left=2, now=T0 + 41)
    assert alert.summary == "gpu.xid.79 on node-1: cordoned node-1, restarted on node-2, node-9 (attempt 1)"
    assert alert.status == "firing"
    assert alert.created_at == T0 + 41
    labels = dict(alert.labels)
    assert labels == {
        "job": "llama",
        "node": "node-1",
        "incident": "inc-1",
        "role": "cause",
        "rule": "gpu-fallen-off-bus",
        "signal": "gpu.xid.79",
        "class": "non_recoverable",
        "scope": "node",
        "severity": "warning",
        "verdict": "cordon_and_restart",
    }
    details = dict(alert.details)
    assert details["root_cause"] == ROOT.evidence
    assert details["first_seen"] == "2024-05-01T12:00:01.000Z"
    assert details["last_seen"] == "2024-05-01T12:00:08.000Z"
    assert details["action_result"] == "ok: relaunched (finished 2024-05-01T12:00:40.000Z)"
    assert details["budget_left"] == "2"
    assert details["runbook"] == ROOT.runbook
    assert details["action"] == "cordoned node-1, restarted on node-2, node-9 (attempt 1)"
    # One alert for the incident: the symptoms on the 7 other nodes are folded in, not sent apart.
    assert details["also_seen"] == (
        "also seen on 7 nodes: node-2, node-3, node-4, ... (nccl-watchdog-timeout x7)"
    )
    assert len(alert.evidence) == MAX_EVIDENCE
    assert alert.evidence[0].startswith("2024-05-01T12:00:01.000Z node-1 [gpu-fallen-off-bus] NVRM: Xid")
    assert "node-2" in alert.evidence[1]  # the rest in time order
    assert alert.page is False
    assert [k for k, _ in alert.labels] == sorted(k for k, _ in alert.labels)


def test_budget_override_is_visible_and_pages() -> None:
    halt = Decision(
        "inc-1",
        Verdict.HALT,
        "restart budget spent",
        T0 + 10,
        page=True,
        rule_verdict=Verdict.CORDON_AND_RESTART,
    )
    alert = build_alert(INCIDENT, halt, ActionResult("k", True, "stopped", T0, T0 + 1), budget_left=0, now=T0)
    assert alert.summary == (
        "gpu.xid.79 on node-1: halted the job (rule asked to cordon node-1 and restart: restart budget spent)"
    )
    assert dict(alert.labels)["rule_verdict"] == "cordon_and_restart"
    assert dict(alert.labels)["severity"] == "critical"
    assert alert.page is True


@pytest.mark.parametrize(
    ("decision", "result", "expected"),
    [
        (Decision("i", Verdict.RESTART, "r", T0), None, "decided to restart, not acted"),
        (
            Decision("i", Verdict.RESTART, "r", T0),
            ActionResult("k", False, "sbatch: error", T0, T0),
            "restart FAILED: sbatch: error",
        ),
        (Decision("i", Verdict.IGNORE, "teardown noise", T0), None, "ignored (teardown noise)"),
        (
            Decision("i", Verdict.RESTART, "r", T0),
            ActionResult("k", True, "ok", T0, T0, attempt=4, nodes=tuple(f"n{i}" for i in range(8))),
            "restarted on 8 nodes (attempt 4)",
        ),
    ],
)
def test_outcome_phrases_come_from_the_data(
    decision: Decision, result: ActionResult | None, expected: str
) -> None:
    alert = build_alert(INCIDENT, decision, result, budget_left=None, now=T0)
    assert alert.summary == f"gpu.xid.79 on node-1: {expected}"
    assert dict(alert.details)["budget_left"] == "unknown"


def test_resolve_keeps_identity() -> None:
    alert = build_alert(INCIDENT, CORDON, OK, budget_left=2, now=T0)
    resolved = resolve_alert(alert, T0 + 500)
    assert resolved.status == "resolved"
    assert resolved.created_at == T0 + 500
    assert (resolved.incident_id, resolved.labels, resolved.evidence) == (
        alert.incident_id,
        alert.labels,
        alert.evidence,
    )


def test_payload_shape() -> None:
    alert = build_alert(INCIDENT, CORDON, OK, budget_left=2, now=T0 + 41)
    payload = alert_payload(alert)
    assert set(payload) == {
        "version",
        "incident_id",
        "job",
        "status",
        "summary",
        "severity",
        "page",
        "labels",
        "details",
        "evidence",
        "created_at",
    }
    assert payload["version"] == "1"
    assert payload["created_at"] == "2024-05-01T12:00:41.000Z"
    assert payload["labels"]["node"] == "node-1"
    json.dumps(payload)  # serialisable as is


# ----------------------------------------------------------------------------- sinks

ALERT = build_alert(INCIDENT, CORDON, OK, budget_left=2, now=T0 + 41)


def test_sinks_satisfy_the_protocol() -> None:
    sinks: list[AlertSink] = [LogAlertSink(), WebhookAlertSink("http://127.0.0.1:9/")]
    for s in sinks:
        s.close(0.1)


def test_log_sink_emits_one_alert_event() -> None:
    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    try:
        seen: list[tuple[str, bool]] = []
        sink = LogAlertSink(on_delivery=lambda name, ok: seen.append((name, ok)))
        sink.send(ALERT)
        line = json.loads(out.getvalue().strip().splitlines()[-1])
        assert line["event"] == "alert"
        assert line["incident_id"] == "inc-1"
        assert line["labels"]["rule"] == "gpu-fallen-off-bus"
        assert line["summary"] == ALERT.summary
        assert seen == [("log", True)]
        assert sink.delivered == 1
    finally:
        reset_logging()


@dataclass
class Receiver:
    """A real HTTP server on 127.0.0.1 that records POSTs and fails the first `fail_first` of them."""

    fail_first: int = 0
    status_on_fail: int = 500
    delay_s: float = 0.0
    posts: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    rec = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with rec.lock:
                rec.requests += 1
                n = rec.requests
            if rec.delay_s:
                time.sleep(rec.delay_s)
            if rec.fail_first < 0 or n <= rec.fail_first:
                self.send_response(rec.status_on_fail)
                self.end_headers()
                return
            assert self.headers["Content-Type"] == "application/json"
            with rec.lock:
                rec.posts.append(json.loads(body))
            self.send_response(202)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield rec, f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()


def _fast(url: str, **kw: Any) -> WebhookAlertSink:
    return WebhookAlertSink(url, timeout_s=2.0, backoff_initial_s=0.01, backoff_max_s=0.05, **kw)


def test_webhook_delivers_json(receiver: tuple[Receiver, str]) -> None:
    rec, url = receiver
    seen: list[tuple[str, bool]] = []
    sink = _fast(url, name="slack", on_delivery=lambda n, ok: seen.append((n, ok)))
    sink.send(ALERT)
    sink.send(resolve_alert(ALERT, T0 + 100))
    sink.close(5.0)
    assert [p["status"] for p in rec.posts] == ["firing", "resolved"]
    assert rec.posts[0] == alert_payload(ALERT)
    assert (sink.delivered, sink.failed) == (2, 0)
    assert seen == [("slack", True), ("slack", True)]


def test_webhook_retries_500s_and_delivers_once(receiver: tuple[Receiver, str]) -> None:
    rec, url = receiver
    rec.fail_first = 2
    sink = _fast(url)
    sink.send(ALERT)
    sink.close(5.0)
    assert rec.requests == 3
    assert len(rec.posts) == 1
    assert (sink.delivered, sink.failed) == (1, 0)


def test_webhook_always_failing_never_blocks_or_raises(receiver: tuple[Receiver, str]) -> None:
    rec, url = receiver
    rec.fail_first = -1  # every request fails
    seen: list[tuple[str, bool]] = []
    sink = _fast(url, max_attempts=3, on_delivery=lambda n, ok: seen.append((n, ok)))
    started = time.monotonic()
    for _ in range(3):
        sink.send(ALERT)
    assert time.monotonic() - started < 0.1  # send only enqueues
    sink.close(10.0)
    assert rec.posts == []
    assert rec.requests == 9  # 3 alerts x 3 attempts
    assert (sink.delivered, sink.failed) == (0, 3)
    assert seen == [("webhook", False)] * 3


def test_webhook_client_error_is_not_retried(receiver: tuple[Receiver, str]) -> None:
    rec, url = receiver
    rec.fail_first = -1
    rec.status_on_fail = 400
    sink = _fast(url)
    sink.send(ALERT)
    sink.close(5.0)
    assert rec.requests == 1
    assert sink.failed == 1


def test_webhook_unreachable_counts_failure_within_budget() -> None:
    # Port 9 (discard) on loopback is closed in test environments: connection refused at once.
    sink = _fast("http://127.0.0.1:9/", max_attempts=10, budget_s=0.3)
    sink.send(ALERT)
    sink.close(5.0)
    assert (sink.delivered, sink.failed) == (0, 1)


def test_webhook_close_abandons_what_it_cannot_drain(receiver: tuple[Receiver, str]) -> None:
    rec, url = receiver
    rec.delay_s = 0.3
    sink = _fast(url)
    for _ in range(20):
        sink.send(ALERT)
    started = time.monotonic()
    sink.close(0.5)
    assert time.monotonic() - started < 3.5
    assert sink.delivered + sink.failed == 20
    assert sink.failed >= 1
    sink.send(ALERT)  # after close: dropped and counted, never raised
    assert sink.delivered + sink.failed == 21


def test_webhook_queue_full_drops_and_counts() -> None:
    sink = _fast("http://127.0.0.1:9/", queue_size=1, max_attempts=1)
    for _ in range(50):
        sink.send(ALERT)
    sink.close(5.0)
    assert sink.delivered + sink.failed == 50
    assert sink.delivered == 0


def test_get_logger_binds_context() -> None:
    out = io.StringIO()
    configure_logging("json", "debug", stream=out)
    try:
        get_logger("ftsup.test").bind(job="llama", incident="inc-1").debug("hello", n=1)
        import logging

        logging.getLogger("botocore.endpoint").info("noise")  # held at WARNING
        logging.getLogger("thirdparty").warning("routed %s", "too")
        lines = [json.loads(x) for x in out.getvalue().splitlines()]
        assert lines[0]["event"] == "hello"
        assert lines[0]["job"] == "llama" and lines[0]["level"] == "debug"
        assert lines[0]["timestamp"].endswith("Z")
        assert lines[0]["logger"] == "ftsup.test"
        assert lines[1]["event"] == "routed too"
        assert lines[1]["level"] == "warning"
        assert len(lines) == 2
    finally:
        reset_logging()


# ----------------------------------------------------------------------------- golden


def test_webhook_payload_matches_the_golden_file() -> None:
    """The JSON a receiver gets for a cordon, byte for byte; regenerate with FTSUP_REGEN_GOLDEN=1."""
    golden = Path(__file__).parent / "golden" / "alert_cordon.json"
    payload = alert_payload(build_alert(INCIDENT, CORDON, OK, budget_left=2, now=T0 + 41))
    text = json.dumps(payload, indent=2, sort_keys=True) + "\n"
    if os.environ.get("FTSUP_REGEN_GOLDEN") == "1":
        golden.write_text(text)
    assert text == golden.read_text()
