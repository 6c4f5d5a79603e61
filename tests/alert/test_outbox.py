"""Undeliverable alerts are journaled and retried, never dropped; duplicates and symptoms are not sent."""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from pathlib import Path

from supervisor.alert.build import build_alert, resolve_alert
from supervisor.alert.outbox import alert_from_json, alert_id, alert_to_json
from supervisor.alert.router import AlertRouter
from supervisor.alert.sinks import WebhookAlertSink, alert_payload
from supervisor.journal import SCHEMA_VERSION, Journal
from supervisor.vocabulary import Alert, Role
from tests.alert.conftest import Receiver, wait_for
from tests.test_alerts import CORDON, INCIDENT, OK, ROOT, SYMPTOMS, T0

ALERT = build_alert(INCIDENT, CORDON, OK, budget_left=2, now=T0 + 41)


def _sink(url: str, journal: Journal, **kw: object) -> WebhookAlertSink:
    return WebhookAlertSink(
        url, timeout_s=1.0, max_attempts=2, budget_s=1.0, backoff_initial_s=0.01, backoff_max_s=0.02,
        outbox=journal, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def test_codec_round_trips() -> None:
    assert alert_from_json(alert_to_json(ALERT)) == ALERT
    assert alert_id(ALERT) == "inc-1:firing"


def test_undeliverable_alert_is_journaled_then_redelivered_when_the_receiver_is_back(
    tmp_path: Path, receiver: Receiver
) -> None:
    journal = Journal(tmp_path / "j.db")
    receiver.status = 503  # the receiver is down
    outcomes: list[bool] = []
    sink = _sink(receiver.url, journal, redeliver_every_s=0.2, on_delivery=lambda _n, ok: outcomes.append(ok))
    started = time.monotonic()
    sink.send(ALERT)
    assert time.monotonic() - started < 0.1  # never blocks the caller
    row = wait_for(lambda: [r for r in journal.outbox("webhook") if r.attempts >= 1])[0]
    assert row.delivered_at is None and row.last_error is not None and "HTTP 503" in row.last_error
    assert receiver.posts == []
    receiver.status = 202  # back up: the next sweep delivers it
    wait_for(lambda: receiver.posts, timeout_s=5.0)
    sink.close(2.0)
    assert receiver.posts == [alert_payload(ALERT)]
    (row,) = journal.outbox("webhook")
    assert row.delivered_at is not None and row.attempts >= 2
    assert outcomes[0] is False and outcomes[-1] is True
    journal.close()


def test_pending_alerts_are_delivered_by_the_next_daemon(tmp_path: Path, receiver: Receiver) -> None:
    journal = Journal(tmp_path / "j.db")
    receiver.stop()  # nothing listens: connection refused
    sink = _sink(receiver.url, journal)
    sink.send(ALERT)
    sink.send(resolve_alert(ALERT, T0 + 100))
    wait_for(lambda: all(r.attempts >= 1 for r in journal.outbox()) and len(journal.outbox()) == 2)
    sink.close(2.0)
    journal.close()
    # A new daemon: the same journal, the receiver back on the same port.
    receiver.start()
    journal = Journal(tmp_path / "j.db")
    assert [r.alert_id for r in journal.outbox_pending()] == ["inc-1:firing", "inc-1:resolved"]
    sink = _sink(receiver.url, journal)
    wait_for(lambda: receiver.posts, timeout_s=5.0)
    sink.close(2.0)
    # The firing alert is superseded by its resolution: never sent after it (it would re-open it).
    assert [p["status"] for p in receiver.posts] == ["resolved"]
    assert journal.outbox_pending() == []
    firing = journal.outbox(alert_id="inc-1:firing")[0]
    assert firing.last_error == "superseded by its resolution"
    journal.close()


def test_same_alert_twice_is_recorded_and_sent_once(tmp_path: Path, receiver: Receiver) -> None:
    journal = Journal(tmp_path / "j.db")
    sink = _sink(receiver.url, journal)
    sink.send(ALERT)
    sink.send(ALERT)
    sink.close(2.0)
    assert len(receiver.posts) == 1 and len(journal.outbox()) == 1
    journal.close()


class Recording:
    name = "rec"

    def __init__(self) -> None:
        self.sent: list[Alert] = []

    def send(self, alert: Alert) -> None:
        self.sent.append(alert)

    def close(self, timeout_s: float = 5.0) -> None:
        pass


def _symptom_alert(incident_id: str, offset_s: float) -> Alert:
    symptom = dataclasses.replace(SYMPTOMS[0], timestamp=T0 + offset_s)
    incident = dataclasses.replace(INCIDENT, incident_id=incident_id, root_cause=symptom, signals=(symptom,))
    return build_alert(
        incident, dataclasses.replace(CORDON, incident_id=incident_id), OK, budget_left=2, now=T0
    )


def test_router_dedupes_and_inhibits_symptoms_of_a_known_root_cause(tmp_path: Path) -> None:
    rec = Recording()
    router = AlertRouter([rec], inhibit_window_s=300)
    assert dict(ALERT.labels)["role"] == Role.CAUSE.value == ROOT.role.value
    router.send(ALERT)
    router.send(ALERT)  # a duplicate of the same incident state
    near = _symptom_alert("inc-2", 30)  # collective timeouts 30 s later: the Xid's consequence
    router.send(near)
    router.send(resolve_alert(near, T0 + 90))
    far = _symptom_alert("inc-3", 3600)  # an hour later: its own failure
    router.send(far)
    router.send(resolve_alert(ALERT, T0 + 100))
    assert [(a.incident_id, a.status) for a in rec.sent] == [
        ("inc-1", "firing"),
        ("inc-3", "firing"),
        ("inc-1", "resolved"),
    ]
    assert router.inhibited == {"inc-2": "inc-1"}
    assert router.duplicates == 1


def test_router_skips_what_a_previous_daemon_already_recorded(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db")
    journal.outbox_add("inc-1:firing", "webhook", alert_to_json(ALERT), T0)
    rec = Recording()
    AlertRouter([rec], outbox=journal).send(ALERT)
    assert rec.sent == []
    journal.close()


def test_a_version_1_journal_gains_the_outbox(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    Journal(path).close()
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE alert_outbox")
    conn.execute("DELETE FROM schema_version")
    conn.execute("INSERT INTO schema_version (version) VALUES (1)")
    conn.commit()
    conn.close()
    journal = Journal(path)
    assert journal.schema_version == SCHEMA_VERSION >= 2
    assert journal.outbox_add("a:firing", "s", "{}", T0) is True
    assert journal.outbox_add("a:firing", "s", "{}", T0) is False
    journal.close()
