"""Regression tests for what the SIGKILL chaos test (tests/chaos/test_sigkill.py) found: a daemon that
dies mid-incident must, once restarted, finish that incident exactly once and page for it once.

A "kill" here is modelled by abandoning the engine at the stage under test (its journal closed
without the rest of the pipeline running, or a BaseException leaving the transaction uncommitted,
as a SIGKILL leaves it) and building a new engine on the same journal and the same living target.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from supervisor.classify.policy import PolicySet, load_policies
from supervisor.config import Config, JobConfig, default_policy_dir
from supervisor.daemon import Daemon
from supervisor.engine import Engine
from supervisor.journal import Journal
from supervisor.sources.aws import ApiCallCounter
from supervisor.vocabulary import Action, Alert, Mode
from tests.builders import T0
from tests.unit.test_engine import GLOO, Clock, RecordingActuator, logs, make_engine, run_action


class Killed(BaseException):
    """Stands for SIGKILL: nothing catches it, the open journal transaction is not committed."""


class Pager:
    """An AlertSink that records what it is given; `die_on_send` kills the daemon at the first send."""

    name = "pager"

    def __init__(self, die_on_send: bool = False) -> None:
        self.sent: list[Alert] = []
        self.die_on_send = die_on_send

    def send(self, alert: Alert) -> None:
        if self.die_on_send:
            raise Killed
        self.sent.append(alert)

    def close(self, timeout_s: float = 5.0) -> None:
        pass


@pytest.fixture(scope="module")
def policy() -> PolicySet:
    return load_policies([default_policy_dir()])


def restarted(
    tmp_path: Path, policy: PolicySet, clock: Clock, actuator: RecordingActuator, pager: Pager
) -> Engine:
    return Engine(
        job="job", policy=policy, journal=Journal(tmp_path / "journal.db"), actuator=actuator,
        mode=Mode.ACT, settle_s=4.0, clock=clock, sinks=[pager],
    )  # fmt: skip


def decided_then_killed(tmp_path: Path, policy: PolicySet) -> tuple[Clock, RecordingActuator, Action]:
    """A collective timeout decided as a restart: intent journaled, then the daemon dies."""
    clock = Clock()
    engine, actuator = make_engine(tmp_path, policy, clock)
    clock.now = T0 + 10
    engine.process_batch(logs(("node-0", 9.0, GLOO)))
    clock.now = T0 + 15
    engine.tick()
    action = engine._actions.get_nowait()
    assert action is not None
    engine.journal.close()
    return clock, actuator, action


def test_an_intent_killed_before_apply_is_done_once_at_restart_and_paged(
    tmp_path: Path, policy: PolicySet
) -> None:
    clock, actuator, action = decided_then_killed(tmp_path, policy)
    clock.now = T0 + 20
    pager = Pager()
    engine = restarted(tmp_path, policy, clock, actuator, pager)
    engine.reconcile()
    engine.reconcile()  # idempotent: nothing pending any more
    assert [a.idempotency_key for a in actuator.applied] == [action.idempotency_key]
    (row,) = engine.journal.actions("job")
    assert row.result is not None and row.result.ok and row.result.attempt == 1
    attempts = engine.journal.attempts("job")
    assert [(a.attempt, a.cause_incident) for a in attempts] == [(0, None), (1, action.incident_id)]
    assert attempts[0].end_reason == action.incident_id
    assert [(a.incident_id, a.status) for a in pager.sent] == [(action.incident_id, "firing")]
    assert engine.snapshot().attempt == 1


def test_an_intent_killed_after_apply_is_journaled_done_never_repeated(
    tmp_path: Path, policy: PolicySet
) -> None:
    """Through Daemon.start, as `ftsup run` restarts: the intent is settled before the job is
    launched or adopted, so the relaunch is journaled as the incident's."""
    clock, actuator, action = decided_then_killed(tmp_path, policy)
    actuator.apply(action)  # the target changed; the daemon died before journaling the result
    clock.now = T0 + 20
    pager = Pager()
    engine = restarted(tmp_path, policy, clock, actuator, pager)
    config = Config(job=JobConfig("job", "group"), mode=Mode.ACT)
    daemon = Daemon(
        config, policy, engine, engine.journal, actuator, CollectorRegistry(), ApiCallCounter()
    )  # fmt: skip
    daemon.start(launch=True)
    engine.stop()
    assert [a.idempotency_key for a in actuator.applied] == [action.idempotency_key]
    (row,) = engine.journal.actions("job")
    assert row.result is not None and row.result.ok and "not repeated" in row.result.detail
    attempts = engine.journal.attempts("job")
    assert [(a.attempt, a.cause_incident) for a in attempts] == [(0, None), (1, action.incident_id)]
    assert [(a.incident_id, a.status) for a in pager.sent] == [(action.incident_id, "firing")]


def test_a_kill_between_the_result_and_the_alert_loses_no_page(tmp_path: Path, policy: PolicySet) -> None:
    clock = Clock()
    actuator = RecordingActuator(clock)
    engine = restarted(tmp_path, policy, clock, actuator, Pager(die_on_send=True))
    engine.launch()
    clock.now = T0 + 10
    engine.process_batch(logs(("node-0", 9.0, GLOO)))
    clock.now = T0 + 15
    engine.tick()
    with pytest.raises(Killed):
        run_action(engine, actuator)  # applied; killed while recording the alert
    engine.journal.close()
    clock.now = T0 + 20
    pager = Pager()
    again = restarted(tmp_path, policy, clock, actuator, pager)
    again.reconcile()
    assert len(actuator.applied) == 1
    (row,) = again.journal.actions("job")
    assert row.result is not None and row.result.ok
    assert [a.status for a in pager.sent] == ["firing"]


def test_late_lines_of_the_replaced_attempt_open_no_incident_after_a_restart(
    tmp_path: Path, policy: PolicySet
) -> None:
    """A new engine that adopts the running attempt (HA takeover, a restart) knows its launch time:
    a peer's collective timeout from before the relaunch, read only now, is stale."""
    clock = Clock()
    engine, actuator = make_engine(tmp_path, policy, clock)
    clock.now = T0 + 10
    engine.process_batch(logs(("node-0", 9.0, GLOO)))
    clock.now = T0 + 15
    engine.tick()
    run_action(engine, actuator)  # relaunched at T0+15
    engine.journal.close()
    again = restarted(tmp_path, policy, clock, actuator, Pager())
    again.process_batch(logs(("node-1", 12.0, GLOO)))
    clock.now = T0 + 30
    again.tick()
    assert again.snapshot().handled == ()
    assert len(actuator.applied) == 1
    assert len(again.journal.incidents("job")) == 1
