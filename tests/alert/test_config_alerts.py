"""The `alerts:` config section: every sink kind read strictly, problems at file:line:col; the daemon
builds the sinks behind one router."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.alert.http_sinks import AlertmanagerSink, PagerDutyAlertSink, SlackAlertSink
from supervisor.alert.sinks import LogAlertSink, WebhookAlertSink
from supervisor.alert.sns import SnsAlertSink
from supervisor.config import load_config
from supervisor.daemon import alert_sink_names, aws_settings, build_alert_router
from supervisor.errors import ConfigError
from supervisor.journal import Journal

HEAD = "job: {name: llama, log_group: /ftsup/jobs/llama}\n"
GOOD = (
    HEAD
    + """\
alerts:
  inhibit_window_s: 300
  redeliver_every_s: 30
  sinks:
    - {kind: alertmanager, url: "http://127.0.0.1:9093", ttl_s: 3600}
    - {kind: sns, topic_arn: "arn:aws:sns:eu-west-1:123456789012:ftsup-alerts"}
    - {kind: slack, webhook_url: "https://hooks.slack.com/services/T/B/X", timeout_s: 3}
    - {kind: pagerduty, routing_key: R0UT1NG, events_url: "http://127.0.0.1:9/v2/enqueue", page_only: false}
    - {kind: webhook, name: audit, url: "https://audit.example.com/ftsup", max_attempts: 3, budget_s: 20}
"""
)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ftsup.yaml"
    path.write_text(text)
    return path


def test_every_sink_kind_loads_and_is_built(tmp_path: Path, aws_env: None) -> None:
    config = load_config(_write(tmp_path, GOOD))
    a = config.alerts
    assert (a.inhibit_window_s, a.redeliver_every_s) == (300, 30)
    assert [(s.kind, s.name) for s in a.sinks] == [
        ("alertmanager", "alertmanager"),
        ("sns", "sns"),
        ("slack", "slack"),
        ("pagerduty", "pagerduty"),
        ("webhook", "audit"),
    ]
    assert a.sinks[0].ttl_s == 3600 and a.sinks[3].page_only is False and a.sinks[4].max_attempts == 3
    assert alert_sink_names(config) == ["log", "alertmanager", "sns", "slack", "pagerduty", "audit"]
    journal = Journal(tmp_path / "j.db")
    router = build_alert_router(config, aws_settings(config), journal)
    kinds = [type(s) for s in router.sinks]
    assert kinds == [
        LogAlertSink,
        AlertmanagerSink,
        SnsAlertSink,
        SlackAlertSink,
        PagerDutyAlertSink,
        WebhookAlertSink,
    ]
    sns = router.sinks[2]
    assert isinstance(sns, SnsAlertSink) and sns.aws.region == "eu-west-1"  # the topic's region
    am = router.sinks[1]
    assert isinstance(am, AlertmanagerSink) and am.url == "http://127.0.0.1:9093/api/v2/alerts"
    router.close(2.0)
    journal.close()


@pytest.mark.parametrize(
    ("sinks", "expected"),
    [
        (
            "    - {kind: nagios, url: http://x}\n",
            "ftsup.yaml:4:14 alerts.sinks[0].kind: invalid value 'nagios'",
        ),
        ("    - {kind: alertmanager}\n", "ftsup.yaml:4:7 alerts.sinks[0]: missing required key 'url'"),
        ("    - {kind: slack, url: http://x}\n", "ftsup.yaml:4:21 alerts.sinks[0].url: unknown key 'url'"),
        ("    - {kind: alertmanager, url: ftp://x}\n", "ftsup.yaml:4:33 alerts.sinks[0].url: invalid URL"),
        (
            "    - {kind: sns, topic_arn: my-topic}\n",
            "ftsup.yaml:4:30 alerts.sinks[0].topic_arn: invalid SNS topic ARN",
        ),
        ("    - {kind: webhook, url: http://x, timeout_s: 0}\n", "alerts.sinks[0].timeout_s: must be > 0"),
        (
            "    - {kind: webhook, url: http://x}\n    - {kind: webhook, url: http://y}\n",
            "ftsup.yaml:5:7 alerts.sinks[1]: sink name 'webhook' is already used by alerts.sinks[0]",
        ),
    ],
)
def test_bad_sinks_are_named_in_place(tmp_path: Path, sinks: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, HEAD + "alerts:\n  sinks:\n" + sinks))
    assert expected in str(info.value), str(info.value)
