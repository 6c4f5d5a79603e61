"""Supervisor metrics: every known label set exists at 0 from the start; scraped over real HTTP."""

from __future__ import annotations

import math
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from supervisor.report.metrics import SupervisorMetrics, bound_port, serve
from supervisor.vocabulary import Mode, Verdict

SOURCES = ("logs", "metrics")
RULES = ("gpu-fallen-off-bus", "nccl-watchdog-timeout")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(registry: CollectorRegistry) -> Samples:
    """Serves `registry` on a free loopback port, scrapes /metrics once, parses the exposition."""
    server, thread = serve(registry, "127.0.0.1", 0)
    try:
        port = bound_port(server)
        assert port > 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode("utf-8")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def metrics() -> Iterator[tuple[SupervisorMetrics, CollectorRegistry]]:
    registry = CollectorRegistry()
    yield SupervisorMetrics(registry, SOURCES, RULES, sinks=["slack"], jobs=["llama"]), registry


def test_every_known_label_set_starts_at_zero(metrics: tuple[SupervisorMetrics, CollectorRegistry]) -> None:
    _, registry = metrics
    s = scrape(registry)
    for source in SOURCES:
        assert s[("ftsup_events_total", (("source", source),))] == 0
        assert s[("ftsup_source_up", (("source", source),))] == 0  # not yet polled: not up
        assert math.isnan(s[("ftsup_source_lag_seconds", (("source", source),))])  # unknown, never 0
    for rule in RULES:
        assert s[("ftsup_signals_total", (("rule", rule),))] == 0
    for v in Verdict:
        assert s[("ftsup_incidents_total", (("verdict", v.value),))] == 0
        for m in Mode:
            assert s[("ftsup_decisions_total", (("mode", m.value), ("verdict", v.value)))] == 0
    for kind in ("restart", "cordon_and_restart", "halt"):
        for result in ("ok", "failed"):
            assert s[("ftsup_actions_total", (("kind", kind), ("result", result)))] == 0
    assert s[("ftsup_alerts_total", (("result", "ok"), ("sink", "slack")))] == 0
    assert s[("ftsup_alerts_total", (("result", "failed"), ("sink", "slack")))] == 0
    assert math.isnan(s[("ftsup_restart_budget_left", (("job", "llama"),))])
    assert s[("ftsup_job_attempt", (("job", "llama"),))] == 0
    assert s[("ftsup_degraded", ())] == 1  # blind until the sources report
    assert s[("ftsup_detection_latency_seconds_count", ())] == 0


def test_updates_are_scraped(metrics: tuple[SupervisorMetrics, CollectorRegistry]) -> None:
    m, registry = metrics
    m.event_seen("logs", 120)
    m.event_seen("logs", 5)
    m.signal("gpu-fallen-off-bus")
    m.signal("new-rule-from-reload")
    m.incident(Verdict.CORDON_AND_RESTART)
    m.decision(Verdict.CORDON_AND_RESTART, Mode.ACT)
    m.decision("halt", "observe")
    m.action(Verdict.CORDON_AND_RESTART, ok=True)
    m.action("restart", ok=False)
    m.alert("slack", True)
    m.alert("log", False)
    m.source_health("logs", True, 12.5)
    m.source_health("metrics", True, None)
    m.budget_left("llama", 2)
    m.attempt("llama", 3)
    m.detection_latency(14.0)
    m.detection_latency(-0.5)  # node clock ahead: clamped, not dropped
    s = scrape(registry)
    assert s[("ftsup_events_total", (("source", "logs"),))] == 125
    assert s[("ftsup_signals_total", (("rule", "gpu-fallen-off-bus"),))] == 1
    assert s[("ftsup_signals_total", (("rule", "new-rule-from-reload"),))] == 1
    assert s[("ftsup_incidents_total", (("verdict", "cordon_and_restart"),))] == 1
    assert s[("ftsup_decisions_total", (("mode", "act"), ("verdict", "cordon_and_restart")))] == 1
    assert s[("ftsup_decisions_total", (("mode", "observe"), ("verdict", "halt")))] == 1
    assert s[("ftsup_actions_total", (("kind", "cordon_and_restart"), ("result", "ok")))] == 1
    assert s[("ftsup_actions_total", (("kind", "restart"), ("result", "failed")))] == 1
    assert s[("ftsup_alerts_total", (("result", "ok"), ("sink", "slack")))] == 1
    assert s[("ftsup_alerts_total", (("result", "failed"), ("sink", "log")))] == 1
    assert s[("ftsup_source_up", (("source", "logs"),))] == 1
    assert s[("ftsup_source_lag_seconds", (("source", "logs"),))] == 12.5
    assert math.isnan(s[("ftsup_source_lag_seconds", (("source", "metrics"),))])
    assert s[("ftsup_degraded", ())] == 0
    assert s[("ftsup_restart_budget_left", (("job", "llama"),))] == 2
    assert s[("ftsup_job_attempt", (("job", "llama"),))] == 3
    assert s[("ftsup_detection_latency_seconds_count", ())] == 2
    assert s[("ftsup_detection_latency_seconds_bucket", (("le", "1.0"),))] == 1
    assert s[("ftsup_detection_latency_seconds_bucket", (("le", "20.0"),))] == 2


def test_one_source_down_means_degraded(metrics: tuple[SupervisorMetrics, CollectorRegistry]) -> None:
    m, registry = metrics
    m.source_health("logs", True, 1.0)
    m.source_health("metrics", True, 1.0)
    assert not m.is_degraded
    m.source_health("metrics", False, None)
    assert m.is_degraded
    s = scrape(registry)
    assert s[("ftsup_degraded", ())] == 1
    assert s[("ftsup_source_up", (("source", "metrics"),))] == 0
    m.source_health("metrics", True, 2.0)
    assert scrape(registry)[("ftsup_degraded", ())] == 0


def test_registries_are_independent() -> None:
    """Nothing lands on the global registry: two instances coexist in one process."""
    a, b = CollectorRegistry(), CollectorRegistry()
    ma = SupervisorMetrics(a, ["logs"], [])
    SupervisorMetrics(b, ["logs"], [])
    ma.event_seen("logs", 3)
    assert scrape(a)[("ftsup_events_total", (("source", "logs"),))] == 3
    assert scrape(b)[("ftsup_events_total", (("source", "logs"),))] == 0


def test_alert_method_is_a_sink_delivery_hook(metrics: tuple[SupervisorMetrics, CollectorRegistry]) -> None:
    from supervisor.alert.sinks import LogAlertSink

    m, registry = metrics
    sink = LogAlertSink(name="log", on_delivery=m.alert)
    m.add_sink(sink.name)
    assert scrape(registry)[("ftsup_alerts_total", (("result", "ok"), ("sink", "log")))] == 0


def test_negative_event_count_is_refused(metrics: tuple[SupervisorMetrics, CollectorRegistry]) -> None:
    with pytest.raises(ValueError):
        metrics[0].event_seen("logs", -1)
