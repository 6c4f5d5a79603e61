"""Supervisor metrics: every known label set exists at 0 from the start; scraped over real HTTP."""

from __future__ import annotations

import math
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from supervisor.journal import AttemptRow
from supervisor.report.metrics import SupervisorMetrics, bound_port, ettr_from_attempts, serve
from supervisor.vocabulary import FailureClass, Mode, Verdict

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
        for c in FailureClass:
            assert s[("ftsup_incidents_total", (("class", c.value), ("verdict", v.value)))] == 0
        for m in Mode:
            assert s[("ftsup_decisions_total", (("mode", m.value), ("verdict", v.value)))] == 0
    for kind in ("restart", "cordon_and_restart", "halt"):
        for result in ("ok", "failed"):
            assert s[("ftsup_actions_total", (("kind", kind), ("result", result)))] == 0
    assert s[("ftsup_alerts_total", (("result", "ok"), ("sink", "slack")))] == 0
    assert s[("ftsup_alerts_total", (("result", "failed"), ("sink", "slack")))] == 0
    assert math.isnan(s[("ftsup_restart_budget_left", (("training_job", "llama"),))])
    assert math.isnan(s[("ftsup_ettr", (("training_job", "llama"),))])  # unknown until the journal says
    assert s[("ftsup_job_attempt", (("training_job", "llama"),))] == 0
    assert s[("ftsup_degraded", ())] == 1  # blind until the sources report
    assert s[("ftsup_detection_latency_seconds_count", ())] == 0


def test_updates_are_scraped(metrics: tuple[SupervisorMetrics, CollectorRegistry]) -> None:
    m, registry = metrics
    m.event_seen("logs", 120)
    m.event_seen("logs", 5)
    m.signal("gpu-fallen-off-bus")
    m.signal("new-rule-from-reload")
    m.incident(Verdict.CORDON_AND_RESTART, FailureClass.NON_RECOVERABLE)
    m.incident("restart", "recoverable")
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
    m.ettr("llama", 0.75)
    m.detection_latency(14.0)
    m.detection_latency(-0.5)  # node clock ahead: clamped, not dropped
    s = scrape(registry)
    assert s[("ftsup_events_total", (("source", "logs"),))] == 125
    assert s[("ftsup_signals_total", (("rule", "gpu-fallen-off-bus"),))] == 1
    assert s[("ftsup_signals_total", (("rule", "new-rule-from-reload"),))] == 1
    assert (
        s[("ftsup_incidents_total", (("class", "non_recoverable"), ("verdict", "cordon_and_restart")))] == 1
    )
    assert s[("ftsup_incidents_total", (("class", "recoverable"), ("verdict", "restart")))] == 1
    assert s[("ftsup_incidents_total", (("class", "recoverable"), ("verdict", "cordon_and_restart")))] == 0
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
    assert s[("ftsup_restart_budget_left", (("training_job", "llama"),))] == 2
    assert s[("ftsup_job_attempt", (("training_job", "llama"),))] == 3
    assert s[("ftsup_ettr", (("training_job", "llama"),))] == 0.75
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


def attempt(n: int, launched: float | None, first: float | None, last: float | None) -> AttemptRow:
    return AttemptRow("job", n, ("node-0",), launched, None, None, first, None, last, None, None)


def test_ettr_is_stepping_time_over_wall_time_since_the_first_launch() -> None:
    # Launched at 0; stepped 10..60; failed; relaunched at 100, stepping 120..200; now 200.
    attempts = [attempt(0, 0.0, 10.0, 60.0), attempt(1, 100.0, 120.0, 200.0)]
    assert ettr_from_attempts(attempts, 200.0) == pytest.approx((50 + 80) / 200)
    # While the job is down the ratio falls: wall time grows, productive time does not.
    assert ettr_from_attempts(attempts, 400.0) == pytest.approx(130 / 400)


def test_ettr_unknown_is_never_zero() -> None:
    assert ettr_from_attempts([], 100.0) is None
    assert ettr_from_attempts([attempt(0, None, None, None)], 100.0) is None  # nothing known
    assert ettr_from_attempts([attempt(0, 100.0, None, None)], 100.0) is None  # no wall time yet
    assert ettr_from_attempts([attempt(0, 50.0, None, None)], 100.0) == 0.0  # launched, never stepped
    # A job only watched (no launch time): measured from its first step.
    assert ettr_from_attempts([attempt(0, None, 10.0, 20.0)], 30.0) == pytest.approx(0.5)


def test_the_engine_updates_the_series_of_an_incident(tmp_path: Path) -> None:
    """A real Xid 79 line through the engine (act mode, recording actuator): signals by rule, the
    incident by class and verdict, the action, detection latency from the line's own time, the
    budget and ETTR from the journal."""
    from supervisor.classify.policy import load_policies
    from supervisor.config import default_policy_dir
    from tests.builders import T0
    from tests.unit.test_engine import XID, Clock, logs, make_engine, run_action

    policy = load_policies([default_policy_dir()])
    registry = CollectorRegistry()
    m = SupervisorMetrics(registry, ["logs"], [r.name for r in policy.rules], jobs=["job"])
    clock = Clock()
    engine, actuator = make_engine(tmp_path, policy, clock, metrics=m)
    steps = [("node-0", float(i), f'{{"event": "step", "step": {i}, "loss": 5.0}}') for i in range(1, 6)]
    clock.now = T0 + 12
    engine.process_batch(logs(*steps, ("node-1", 10.0, XID)))
    engine.tick()
    run_action(engine, actuator)

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("ftsup_events_total", source="logs") == 6
    assert value("ftsup_signals_total", rule="gpu-fallen-off-bus") == 1
    assert (
        value("ftsup_incidents_total", **{"class": "non_recoverable", "verdict": "cordon_and_restart"}) == 1
    )
    assert value("ftsup_incidents_total", **{"class": "recoverable", "verdict": "restart"}) == 0
    assert value("ftsup_actions_total", kind="cordon_and_restart", result="ok") == 1
    assert value("ftsup_detection_latency_seconds_count") == 1
    assert value("ftsup_detection_latency_seconds_sum") == pytest.approx(2.0)  # written at +10, decided +12
    assert value("ftsup_restart_budget_left", training_job="job") == policy.budgets.restart.max - 1
    assert value("ftsup_ettr", training_job="job") == pytest.approx(4.0 / 12.0)  # stepped +1..+5 of 12 s
    assert value("ftsup_job_attempt", training_job="job") == 1
