"""Delivering sinks for Prometheus Alertmanager, Slack-compatible webhooks and PagerDuty Events v2.

Each is a QueuedAlertSink (supervisor.alert.sinks): `send` never blocks, delivery runs on the sink's
own thread with tenacity retries (jitter, attempt and time budget), every POST has a timeout, and with
an outbox what cannot be delivered is journaled and retried later. The bodies are the pure shapes of
supervisor.alert.payloads.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from supervisor.alert.payloads import alertmanager_alert, pagerduty_event, slack_message
from supervisor.alert.sinks import HttpAlertSink
from supervisor.vocabulary import Alert, Severity

PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
DEFAULT_ALERTMANAGER_TTL_S = 24 * 3600.0


class AlertmanagerSink(HttpAlertSink):
    """POSTs each alert to ``<url>/api/v2/alerts`` as a one-element list (see
    payloads.alertmanager_alert for labels, annotations, startsAt / endsAt and generatorURL).
    `url` is Alertmanager's base URL (``http://alertmanager:9093``, a path prefix is kept).
    A firing alert stays active for `ttl_s` after it was delivered; a resolved one is sent with
    endsAt in the past, which resolves it."""

    kind = "alertmanager"

    def __init__(
        self,
        url: str,
        *,
        ttl_s: float = DEFAULT_ALERTMANAGER_TTL_S,
        clock: Callable[[], float] = time.time,
        **kw: Any,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be > 0")
        self.ttl_s = ttl_s
        self._now = clock
        kw.setdefault("name", "alertmanager")
        super().__init__(url.rstrip("/") + "/api/v2/alerts", clock=clock, **kw)

    def body(self, alert: Alert) -> Any:
        return [alertmanager_alert(alert, now=self._now(), ttl_s=self.ttl_s)]


class SlackAlertSink(HttpAlertSink):
    """POSTs a Slack-compatible message (``text`` + ``blocks``, payloads.slack_message) to an
    incoming-webhook URL (Slack, Mattermost and other Slack-compatible receivers)."""

    kind = "slack"

    def __init__(self, url: str, **kw: Any) -> None:
        kw.setdefault("name", "slack")
        super().__init__(url, **kw)

    def body(self, alert: Alert) -> Any:
        return slack_message(alert)


class PagerDutyAlertSink(HttpAlertSink):
    """POSTs PagerDuty Events API v2 events (payloads.pagerduty_event) to `events_url`.

    Only alerts that need a human are sent (`page_only`, the default: the decision pages or the
    severity is critical), and their resolutions (a resolved alert keeps the firing one's page and
    severity). With `page_only` False every alert triggers."""

    kind = "pagerduty"

    def __init__(
        self,
        routing_key: str,
        *,
        events_url: str = PAGERDUTY_EVENTS_URL,
        page_only: bool = True,
        **kw: Any,
    ) -> None:
        if not routing_key:
            raise ValueError("routing_key must not be empty")
        self.routing_key = routing_key
        self.page_only = page_only
        kw.setdefault("name", "pagerduty")
        super().__init__(events_url, **kw)

    def accepts(self, alert: Alert) -> bool:
        return not self.page_only or alert.page or alert.severity is Severity.CRITICAL

    def body(self, alert: Alert) -> Any:
        return pagerduty_event(alert, routing_key=self.routing_key)
