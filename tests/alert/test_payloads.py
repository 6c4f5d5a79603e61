"""The shapes each receiver gets, byte for byte (golden files), delivered to real local HTTP receivers."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest

from supervisor.alert.build import AlertContext, build_alert, resolve_alert
from supervisor.alert.http_sinks import AlertmanagerSink, PagerDutyAlertSink, SlackAlertSink
from supervisor.alert.payloads import alertmanager_alert, alertname, pagerduty_event, slack_message, text_body
from supervisor.alert.sinks import WebhookAlertSink, alert_payload
from supervisor.alert.sns import sns_publish_args, sns_subject
from supervisor.vocabulary import Decision, Verdict
from tests.alert.conftest import Receiver
from tests.test_alerts import CORDON, INCIDENT, OK, T0

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
CONTEXT = AlertContext(
    region="us-east-1", log_group="/ftsup/jobs/llama", instance_ids={"node-1": "i-0123456789abcdef0"}
)
ALERT = build_alert(INCIDENT, CORDON, OK, budget_left=2, now=T0 + 41, context=CONTEXT)
HALT = build_alert(
    INCIDENT,
    Decision(
        "inc-1",
        Verdict.HALT,
        "restart budget spent",
        T0 + 10,
        page=True,
        rule_verdict=Verdict.CORDON_AND_RESTART,
    ),
    dataclasses.replace(OK, detail="stopped", attempt=None, nodes=()),
    budget_left=0,
    now=T0 + 41,
    context=CONTEXT,
)
RESOLVED = resolve_alert(HALT, T0 + 300)
NOW = T0 + 42


def golden(name: str, doc: Any) -> None:
    """Compare `doc` with tests/golden/<name>; regenerate with FTSUP_REGEN_GOLDEN=1."""
    path = GOLDEN / name
    text = json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    if os.environ.get("FTSUP_REGEN_GOLDEN") == "1":
        path.write_text(text)
    assert text == path.read_text()


def test_alertmanager_shape_matches_golden() -> None:
    doc = alertmanager_alert(ALERT, now=NOW, ttl_s=3600)
    golden("alert_alertmanager.json", doc)
    assert doc["labels"]["alertname"] == "FtsupGpuFallenOffBus"
    for key in ("alertname", "severity", "job", "node", "incident", "rule", "role", "instance_id"):
        assert doc["labels"][key]
    assert doc["startsAt"] == "2024-05-01T12:00:01.000Z"  # the first signal
    assert doc["endsAt"] == "2024-05-01T13:00:42.000Z"  # now + ttl
    assert doc["generatorURL"].startswith("https://us-east-1.console.aws.amazon.com/cloudwatch/")
    assert doc["annotations"]["runbook_url"] == "https://docs.nvidia.com/deploy/xid-errors/"


def test_alertmanager_resolved_ends_in_the_past() -> None:
    resolved = alertmanager_alert(RESOLVED, now=T0 + 400, ttl_s=3600)
    assert resolved["endsAt"] == "2024-05-01T12:05:00.000Z"
    early = alertmanager_alert(RESOLVED, now=T0 + 100, ttl_s=3600)  # the clock lags the event time
    assert early["endsAt"] == "2024-05-01T12:01:40.000Z"
    assert alertname("nccl-watchdog-timeout") == "FtsupNcclWatchdogTimeout"


def test_slack_shape_matches_golden() -> None:
    doc = slack_message(HALT)
    golden("alert_slack.json", doc)
    assert doc["text"].startswith(":rotating_light: FIRING: gpu.xid.79 on node-1: halted the job")
    assert len(doc["blocks"][0]["text"]["text"]) <= 150
    assert all(len(f["text"]) <= 2000 for f in doc["blocks"][2]["fields"])
    assert len(doc["blocks"][2]["fields"]) <= 10
    assert slack_message(RESOLVED)["text"].startswith(":white_check_mark: RESOLVED")


def test_pagerduty_shapes_match_golden() -> None:
    trigger = pagerduty_event(HALT, routing_key="R0UT1NGKEY")
    golden("alert_pagerduty_trigger.json", trigger)
    assert trigger["dedup_key"] == "inc-1" and trigger["event_action"] == "trigger"
    assert trigger["payload"]["severity"] == "critical"
    assert trigger["payload"]["source"] == "i-0123456789abcdef0"
    resolve = pagerduty_event(RESOLVED, routing_key="R0UT1NGKEY")
    assert resolve == {"routing_key": "R0UT1NGKEY", "event_action": "resolve", "dedup_key": "inc-1"}


def test_text_and_sns_shapes() -> None:
    text = text_body(ALERT)
    assert text.splitlines()[0] == "[FIRING] " + ALERT.summary
    for needle in (
        "Job: llama",
        "Instance: i-0123456789abcdef0",
        "Restart budget left: 2",
        "Evidence:",
        "runbook:",
    ):
        assert needle in text
    args = sns_publish_args(ALERT, "arn:aws:sns:us-east-1:123456789012:alerts")
    message = json.loads(args["Message"])
    assert json.loads(message["sqs"]) == alert_payload(ALERT)
    assert message["default"] == text
    assert args["MessageStructure"] == "json" and "MessageGroupId" not in args
    fifo = sns_publish_args(ALERT, "arn:aws:sns:us-east-1:123456789012:alerts.fifo")
    assert fifo["MessageGroupId"] == "llama" and len(fifo["MessageDeduplicationId"]) == 64
    odd = dataclasses.replace(ALERT, summary="Xid → node\n" + "x" * 200)
    subject = sns_subject(odd)
    assert len(subject) <= 100 and subject.isascii() and "\n" not in subject


def _fast(kind: type[Any], *args: Any, **kw: Any) -> Any:
    return kind(*args, timeout_s=2.0, backoff_initial_s=0.01, backoff_max_s=0.05, **kw)


@pytest.mark.parametrize(
    ("make", "path", "expected"),
    [
        (lambda url: _fast(SlackAlertSink, url + "/slack"), "/slack", slack_message(HALT)),
        (lambda url: _fast(WebhookAlertSink, url + "/hook"), "/hook", alert_payload(HALT)),
        (
            lambda url: _fast(PagerDutyAlertSink, "R0UT1NGKEY", events_url=url + "/v2/enqueue"),
            "/v2/enqueue",
            pagerduty_event(HALT, routing_key="R0UT1NGKEY"),
        ),
        (
            lambda url: _fast(AlertmanagerSink, url, clock=lambda: NOW, ttl_s=3600),
            "/api/v2/alerts",
            [alertmanager_alert(HALT, now=NOW, ttl_s=3600)],
        ),
    ],
    ids=["slack", "webhook", "pagerduty", "alertmanager"],
)
def test_sinks_post_their_shape_to_a_real_receiver(
    receiver: Receiver, make: Any, path: str, expected: Any
) -> None:
    sink = make(receiver.url)
    sink.send(HALT)
    sink.send(RESOLVED)
    sink.close(5.0)
    assert receiver.paths == [path, path]
    assert receiver.posts[0] == expected
    assert (sink.delivered, sink.failed) == (2, 0)


def test_pagerduty_pages_only_what_needs_a_human(receiver: Receiver) -> None:
    sink = _fast(PagerDutyAlertSink, "K", events_url=receiver.url + "/v2/enqueue")
    sink.send(ALERT)  # a successful cordon: warning, no page
    sink.send(HALT)
    sink.close(5.0)
    assert [p["payload"]["summary"] for p in receiver.posts] == [HALT.summary]
