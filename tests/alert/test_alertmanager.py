"""A real Prometheus Alertmanager (Debian's prometheus-alertmanager on 127.0.0.1): the alerts we send
are read back through its API v2, grouped by incident, inhibited by its own inhibit rule, resolved."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path
from typing import Any

import pytest

from supervisor.alert.build import AlertContext, build_alert, resolve_alert
from supervisor.alert.http_sinks import AlertmanagerSink
from supervisor.alert.router import AlertRouter
from supervisor.classify.policy import load_policies
from supervisor.config import default_policy_dir
from supervisor.engine import Engine
from supervisor.journal import Journal
from supervisor.local_alertmanager import EmbeddedAlertmanager
from supervisor.vocabulary import Alert, LogEvent, Mode, SourceBatch, SourceHealth
from tests.alert.conftest import wait_for
from tests.test_alerts import CORDON, INCIDENT, OK, SYMPTOMS, T0
from tests.unit.test_engine import Clock, RecordingActuator, run_action
from tests.unit.test_replay_splits import DATA

pytestmark = pytest.mark.alertmanager


def _sink(am: EmbeddedAlertmanager, **kw: Any) -> AlertmanagerSink:
    return AlertmanagerSink(am.url, timeout_s=3.0, backoff_initial_s=0.05, backoff_max_s=0.2, **kw)


def _job_alert(job: str, incident_id: str, *, symptom: bool = False) -> Alert:
    root = dataclasses.replace(SYMPTOMS[0], node="node-3") if symptom else INCIDENT.root_cause
    incident = dataclasses.replace(INCIDENT, job=job, incident_id=incident_id, root_cause=root)
    return build_alert(
        incident, dataclasses.replace(CORDON, incident_id=incident_id), OK, budget_left=2, now=T0 + 41
    )


def test_alerts_are_grouped_by_incident_inhibited_and_resolved(alertmanager: EmbeddedAlertmanager) -> None:
    job = f"am-{uuid.uuid4().hex[:8]}"
    cause = _job_alert(job, "inc-cause")
    symptom = _job_alert(job, "inc-symptom", symptom=True)
    sink = _sink(alertmanager)
    sink.send(cause)
    sink.send(symptom)  # sent straight to Alertmanager (no router): its inhibit rule must hold it
    sink.send(cause)  # re-asserting the same alert updates it, never adds one
    wait_for(lambda: sink.delivered == 3)

    alerts = wait_for(lambda: len(alertmanager.alerts(job)) == 2 and alertmanager.alerts(job))
    by_incident = {a["labels"]["incident"]: a for a in alerts}
    xid = by_incident["inc-cause"]
    assert xid["labels"]["alertname"] == "FtsupGpuFallenOffBus"
    assert xid["labels"]["severity"] == "warning" and xid["labels"]["node"] == "node-1"
    assert xid["annotations"]["summary"] == cause.summary
    assert "also seen on 7 nodes" in xid["annotations"]["also_seen"]
    assert xid["status"]["state"] == "active"
    assert xid["startsAt"].startswith("2024-05-01T12:00:01")
    held = by_incident["inc-symptom"]
    assert held["status"]["state"] == "suppressed"
    assert held["status"]["inhibitedBy"] == [xid["fingerprint"]]

    groups = alertmanager.groups(job)
    assert sorted(g["labels"]["incident"] for g in groups) == ["inc-cause", "inc-symptom"]
    assert all(len(g["alerts"]) == 1 for g in groups)

    sink.send(resolve_alert(cause, T0 + 300))
    sink.send(resolve_alert(symptom, T0 + 300))
    wait_for(lambda: alertmanager.alerts(job) == [])
    sink.close(5.0)
    assert sink.failed == 0


def _events(kind: str, start: float) -> list[LogEvent]:
    """A fault's real output of both nodes (tests/data/fault_logs), in time order from `start`."""
    events = []
    for node in ("node-0", "node-1"):
        lines = (DATA / f"{kind}.{node}.log").read_text().splitlines()
        events += [LogEvent(f"{kind}-{node}-{i}", node, start + i * 0.01, t) for i, t in enumerate(lines)]
    return sorted(events, key=lambda e: (e.timestamp, e.event_id))


def _feed(engine: Engine, clock: Clock, events: list[LogEvent]) -> None:
    clock.now = max(clock.now, events[-1].timestamp + 1.0)
    engine.process_batch(SourceBatch("logs", tuple(events), (), None, SourceHealth("logs", True, clock.now)))
    for _ in range(40):  # the engine keeps ticking: tracebacks close, incidents settle
        clock.now += 0.5
        engine.tick()


def _engine(
    job: str, tmp_path: Path, alertmanager: EmbeddedAlertmanager, mode: Mode
) -> tuple[Engine, Any, Any, Any]:
    clock = Clock()
    journal = Journal(tmp_path / f"{job}.db")
    sink = _sink(alertmanager, outbox=journal)
    router = AlertRouter([sink], outbox=journal)
    actuator = RecordingActuator(clock)
    engine = Engine(
        job=job, policy=load_policies([default_policy_dir()]), journal=journal, actuator=actuator,
        mode=mode, settle_s=4.0, sinks=[router], clock=clock, observe_hold_s=5.0,
    )  # fmt: skip
    engine.alert_context = AlertContext(region="us-east-1", log_group=f"/ftsup/jobs/{job}")
    engine.launch()
    return engine, clock, actuator, router


def test_engine_on_real_fault_logs_gives_one_grouped_alert_then_resolves(
    alertmanager: EmbeddedAlertmanager, tmp_path: Path
) -> None:
    """The demo's Xid fault through the production engine (act mode): one alert for the incident,
    grouped by incident in Alertmanager; training resumes on the spare and the alert resolves."""
    job = f"e2e-{uuid.uuid4().hex[:8]}"
    engine, clock, actuator, _router = _engine(job, tmp_path, alertmanager, Mode.ACT)
    _feed(engine, clock, _events("xid79", clock.now + 1))
    run_action(engine, actuator)  # cordon node-1, restart on the spare
    (handled,) = engine.snapshot().handled
    xid_incident = handled.incident.incident_id
    assert handled.incident.root_cause.rule == "gpu-fallen-off-bus"

    (alert,) = wait_for(lambda: alertmanager.alerts(job))
    assert alert["labels"]["incident"] == xid_incident
    assert alert["labels"]["alertname"] == "FtsupGpuFallenOffBus"
    assert alert["labels"]["node"] == "node-1" and alert["labels"]["verdict"] == "cordon_and_restart"
    assert alert["annotations"]["action"].startswith("cordoned node-1, restarted on node-0, node-2")
    assert "Xid" in alert["annotations"]["evidence"]
    assert alert["annotations"]["logs_insights"].startswith("https://us-east-1.console.aws.amazon.com/")
    assert alert["generatorURL"] == alert["annotations"]["logs_insights"]
    groups = alertmanager.groups(job)
    assert [(g["labels"], len(g["alerts"])) for g in groups] == [({"incident": xid_incident}, 1)]

    # Training steps again on the new attempt: the alert resolves in Alertmanager.
    step = '{"event": "step", "step": 21, "loss": 5.1}'
    _feed(engine, clock, [LogEvent("step-after", "node-0", clock.now + 1, step)])
    wait_for(lambda: alertmanager.alerts(job) == [])
    engine.stop(timeout_s=1.0)
    assert engine.journal.outbox_pending() == []
    assert [r.alert_id for r in engine.journal.outbox()] == [
        f"{xid_incident}:firing",
        f"{xid_incident}:resolved",
    ]
    engine.journal.close()


def test_symptoms_after_a_root_cause_are_inhibited_not_paged(
    alertmanager: EmbeddedAlertmanager, tmp_path: Path
) -> None:
    """Observe mode: the Xid is alerted at once; the collective timeouts that come after it form their
    own (symptom) incident, which the router folds under the Xid's alert: Alertmanager sees one alert."""
    job = f"e2e-{uuid.uuid4().hex[:8]}"
    engine, clock, _actuator, router = _engine(job, tmp_path, alertmanager, Mode.OBSERVE)
    _feed(engine, clock, _events("xid79", clock.now + 1))
    clock.now += 10  # past the observe hold: the next lines are a new incident
    late = [e for e in _events("collective_timeout", clock.now + 1) if '"event"' not in e.text]
    _feed(engine, clock, late)
    handled = engine.snapshot().handled
    assert len(handled) == 2
    xid, symptom = (h.incident for h in handled)
    assert xid.root_cause.rule == "gpu-fallen-off-bus" and symptom.root_cause.role.value == "symptom"
    assert router.inhibited == {symptom.incident_id: xid.incident_id}
    (alert,) = wait_for(lambda: alertmanager.alerts(job))
    assert alert["labels"]["incident"] == xid.incident_id
    assert alert["annotations"]["action"].startswith("decided to cordon node-1")
    engine.stop(timeout_s=1.0)
    engine.journal.close()
