"""The engine, driven batch by batch with a fixed clock and a recording actuator (same Protocol).

Hazards under test: blindness read as health, a crash that skips or repeats an incident, teardown
lines of a replaced attempt opening a new incident, observe mode acting.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from supervisor.classify.policy import PolicySet, load_policies
from supervisor.config import default_policy_dir
from supervisor.engine import Engine
from supervisor.journal import Journal
from supervisor.report.metrics import SupervisorMetrics
from supervisor.sources.aws import AwsSettings, make_client
from supervisor.sources.cloudwatch_metrics import CloudWatchMetricsSource
from supervisor.vocabulary import (
    Action,
    ActionResult,
    Cursor,
    JobObservation,
    LogEvent,
    MetricSample,
    Mode,
    SourceBatch,
    SourceHealth,
    Verdict,
)
from tests.builders import T0

XID = "[ 1536.275317] NVRM: Xid (PCI:0000:3b:00): 79, pid=16395, name=python, GPU has fallen off the bus."
GLOO = (
    "[rank0]: RuntimeError: [/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:129] "
    "Timed out waiting 15000ms for send operation to complete"
)
TEARDOWN = (
    "W1128 04:45:05.700000 123 torch/distributed/elastic/multiprocessing/api.py:900] "
    "Sending process 77 closing signal SIGTERM"
)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class RecordingActuator:
    """Implements the Actuator protocol in memory: records what it was asked to do."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.nodes = ["node-0", "node-1"]
        self.spares = ["node-2"]
        self.cordoned: list[str] = []
        self.attempt = 0
        self.launched_at = clock()
        self.applied: list[Action] = []

    def launch(self) -> ActionResult:
        self.launched_at = self.clock()
        return ActionResult("launch", True, "launched", self.clock(), self.clock(), 0, tuple(self.nodes))

    def plan(self, action: Action) -> list[str]:
        return [f"{action.kind.value} {action.node or ''}".strip()]

    def apply(self, action: Action) -> ActionResult:
        self.applied.append(action)
        if action.kind is Verdict.CORDON_AND_RESTART and action.node:
            self.nodes[self.nodes.index(action.node)] = self.spares.pop(0)
            self.cordoned.append(action.node)
        self.attempt += 1
        self.launched_at = self.clock()
        now = self.clock()
        return ActionResult(action.idempotency_key, True, "done", now, now, self.attempt, tuple(self.nodes))

    def observe(self) -> JobObservation:
        return JobObservation(
            job="job",
            attempt=self.attempt,
            nodes=tuple(self.nodes),
            spares=tuple(self.spares),
            cordoned=tuple(self.cordoned),
            running=True,
            launched_at=self.launched_at,
            exit_codes=tuple((n, None) for n in self.nodes),
        )

    def stop(self) -> None:
        pass

    def clear_halt(self) -> None:
        pass


@pytest.fixture(scope="module")
def policy() -> PolicySet:
    return load_policies([default_policy_dir()])


def make_engine(
    tmp_path: Path,
    policy: PolicySet,
    clock: Clock,
    mode: Mode = Mode.ACT,
    metrics: SupervisorMetrics | None = None,
) -> tuple[Engine, RecordingActuator]:
    actuator = RecordingActuator(clock)
    engine = Engine(
        metrics=metrics,
        job="job",
        policy=policy,
        journal=Journal(tmp_path / "journal.db"),
        actuator=actuator,
        mode=mode,
        settle_s=4.0,
        clock=clock,
    )
    engine.launch()
    return engine, actuator


def logs(*lines: tuple[str, float, str], cursor_ms: int | None = None, up: bool = True) -> SourceBatch:
    events = tuple(LogEvent(f"e-{node}-{at}", node, T0 + at, text) for node, at, text in lines)
    cursor = Cursor("logs", f'{{"t_ms": {cursor_ms}}}') if cursor_ms is not None else None
    return SourceBatch("logs", events, (), cursor, SourceHealth("logs", up, T0))


def run_action(engine: Engine, actuator: RecordingActuator) -> None:
    """What the action thread does, inline."""
    action = engine._actions.get_nowait()
    assert action is not None
    engine.complete_action(action, actuator.apply(action))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_blind_metrics_source_never_reads_as_a_dead_node(
    tmp_path: Path, policy: PolicySet, aws_env: None
) -> None:
    clock = Clock()
    registry = CollectorRegistry()
    metrics = SupervisorMetrics(registry, sources=["logs", "metrics"], rules=[r.name for r in policy.rules])
    engine, actuator = make_engine(tmp_path, policy, clock, metrics=metrics)
    settings = AwsSettings(
        endpoint_url=f"http://127.0.0.1:{closed_port()}", connect_timeout_s=0.5, read_timeout_s=0.5,
        max_attempts=2, retry_budget_s=1.0,
    )  # fmt: skip
    source = CloudWatchMetricsSource(
        make_client("cloudwatch", settings),
        "ftsup/Trainer",
        "job",
        engine.current_nodes,
        settings,
        clock=clock,
    )
    batch = source.poll()  # real boto3 over HTTP to a port nobody listens on
    assert not batch.health.up
    assert batch.health.error is not None and "connect" in batch.health.error.lower()
    with capture_logs() as logged:
        engine.process_batch(batch)
    assert any(e["event"].startswith("source blind") and e["source"] == "metrics" for e in logged)
    assert registry.get_sample_value("ftsup_source_up", {"source": "metrics"}) == 0
    assert registry.get_sample_value("ftsup_degraded") == 1
    for _ in range(10):  # 10 minutes of blindness: far past no-heartbeat (60s) and no-step-progress (120s)
        clock.now += 60
        engine.tick()
    snap = engine.snapshot()
    assert snap.degraded == ("metrics",)
    assert snap.handled == ()
    assert actuator.applied == []

    # The source comes back with node-0's heartbeat only: absence is counted from the recovery, not before.
    clock.now += 1
    sample = MetricSample("node-0", "heartbeat", clock.now, 1.0)
    engine.process_batch(
        SourceBatch("metrics", (), (sample,), None, SourceHealth("metrics", True, clock.now))
    )
    engine.tick()  # the engine ticks every 0.25 s; absence clocks restart at the first tick after recovery
    clock.now += 30
    engine.tick()
    assert engine.snapshot().handled == ()
    clock.now += 40  # 70 s since the recovery: node-1 has been silent while we could see
    engine.tick()
    clock.now += 5
    engine.tick()
    assert registry.get_sample_value("ftsup_source_up", {"source": "metrics"}) == 1
    (handled,) = engine.snapshot().handled
    assert handled.incident.root_cause.rule == "no-heartbeat"
    assert {s.node for s in handled.incident.signals if s.rule == "no-heartbeat"} >= {"node-1"}


def test_hardware_cause_read_after_its_symptoms_still_decides_the_incident(
    tmp_path: Path, policy: PolicySet
) -> None:
    clock = Clock()
    engine, actuator = make_engine(tmp_path, policy, clock)
    clock.now = T0 + 10
    engine.process_batch(logs(("node-0", 9.0, GLOO)))
    engine.tick()
    clock.now = T0 + 12  # the Xid was written earlier on node-1 but read later
    engine.process_batch(logs(("node-1", 8.5, XID), ("node-1", 9.5, TEARDOWN)))
    engine.tick()
    run_action(engine, actuator)
    (handled,) = engine.snapshot().handled
    assert handled.decision.verdict is Verdict.CORDON_AND_RESTART
    assert handled.decision.node == "node-1"
    assert actuator.nodes == ["node-0", "node-2"]
    assert engine.snapshot().nodes == ("node-0", "node-2")


def test_lines_of_a_replaced_attempt_never_open_a_new_incident(tmp_path: Path, policy: PolicySet) -> None:
    clock = Clock()
    engine, actuator = make_engine(tmp_path, policy, clock)
    clock.now = T0 + 10
    engine.process_batch(logs(("node-0", 9.0, GLOO)))
    clock.now = T0 + 15
    engine.tick()
    run_action(engine, actuator)  # relaunched at T0+15
    # Late lines from the old attempt's teardown (event time before the relaunch) arrive now.
    engine.process_batch(logs(("node-1", 14.0, GLOO), ("node-1", 14.5, XID)))
    clock.now = T0 + 30
    engine.tick()
    assert len(engine.snapshot().handled) == 1
    assert len(actuator.applied) == 1


def test_observe_mode_decides_and_journals_but_never_acts(tmp_path: Path, policy: PolicySet) -> None:
    clock = Clock()
    engine, actuator = make_engine(tmp_path, policy, clock, mode=Mode.OBSERVE)
    clock.now = T0 + 5
    engine.process_batch(logs(("node-1", 4.0, XID)))
    engine.tick()
    (handled,) = engine.snapshot().handled
    assert handled.decision.verdict is Verdict.CORDON_AND_RESTART
    assert handled.result is None
    assert actuator.applied == []
    assert engine.journal.actions() == []
    assert [d.decision.verdict for d in engine.journal.decisions()] == [Verdict.CORDON_AND_RESTART]


def test_cursor_is_held_back_while_an_incident_gathers_and_a_restart_does_not_repeat_it(
    tmp_path: Path, policy: PolicySet
) -> None:
    clock = Clock()
    engine, actuator = make_engine(tmp_path, policy, clock, mode=Mode.OBSERVE)
    clock.now = T0 + 10
    engine.process_batch(logs(("node-0", 9.0, GLOO), cursor_ms=int((T0 + 9) * 1000)))
    assert engine.journal.load_cursor("logs") is None  # incident still gathering: a crash must re-read
    clock.now = T0 + 15
    engine.tick()
    saved = engine.journal.load_cursor("logs")
    assert saved is not None and saved.position == f'{{"t_ms": {int((T0 + 9) * 1000)}}}'
    engine.journal.close()

    # The daemon restarts and re-reads the overlap window: the same lines are not a second incident.
    again = Engine(
        job="job", policy=policy, journal=Journal(tmp_path / "journal.db"), actuator=actuator,
        mode=Mode.OBSERVE, settle_s=4.0, clock=clock,
    )  # fmt: skip
    again.process_batch(logs(("node-0", 9.0, GLOO)))
    clock.now = T0 + 25
    again.tick()
    assert again.snapshot().handled == ()
    assert len(again.journal.incidents()) == 1


def test_restart_budget_counts_relaunches_from_before_a_daemon_restart(
    tmp_path: Path, policy: PolicySet
) -> None:
    clock = Clock()
    journal = Journal(tmp_path / "journal.db")
    for n in range(1, 4):  # three relaunches in the last hour, journaled by a previous daemon
        journal.add_attempt("job", n, ("node-0", "node-1"), T0 - 600 + n, cause_incident=f"inc-old-{n}")
    journal.close()
    engine, _actuator = make_engine(tmp_path, policy, clock)
    assert engine.restart_budget_left() == 0
    clock.now = T0 + 10
    engine.process_batch(logs(("node-0", 9.0, GLOO)))
    clock.now = T0 + 15
    engine.tick()
    (handled,) = engine.snapshot().handled
    assert handled.decision.verdict is Verdict.HALT
    assert "restart budget exhausted" in handled.decision.reason


def test_without_a_metrics_source_absence_rules_never_fire(tmp_path: Path, policy: PolicySet) -> None:
    """A supervisor configured without metrics is blind to heartbeats; silence is not a dead node."""
    clock = Clock()
    engine, actuator = make_engine(tmp_path, policy, clock)
    engine.process_batch(logs(("node-0", 1.0, "healthy line")))
    for _ in range(20):
        clock.now += 60
        engine.tick()
    assert engine.snapshot().handled == ()
    assert actuator.applied == []


def test_a_relaunch_done_outside_ftsup_is_followed_not_counted(tmp_path: Path, policy: PolicySet) -> None:
    """Slurm requeues a job by itself when a node goes down: ftsup follows the new attempt (nodes,
    launch time) so its lines are current, and its restart budget is untouched."""
    clock = Clock()
    engine, actuator = make_engine(tmp_path, policy, clock)
    budget = engine.restart_budget_left()
    clock.now = T0 + 30
    actuator.attempt = 1  # the scheduler relaunched the job on other nodes
    actuator.nodes = ["node-2", "node-3"]
    actuator.launched_at = T0 + 25
    engine.tick()
    snap = engine.snapshot()
    assert (snap.attempt, snap.nodes, snap.launched_at) == (1, ("node-2", "node-3"), T0 + 25)
    assert engine.restart_budget_left() == budget
    attempts = engine.journal.attempts("job")
    assert [(a.attempt, a.end_reason) for a in attempts] == [(0, "relaunched outside ftsup"), (1, None)]
    # a line of the old attempt is stale; a line of the new one opens an incident on the new nodes
    clock.now = T0 + 40
    engine.process_batch(logs(("node-0", 20.0, GLOO), ("node-2", 39.0, GLOO)))
    clock.now = T0 + 45
    engine.tick()
    run_action(engine, actuator)
    (handled,) = engine.snapshot().handled
    assert handled.incident.root_cause.node == "node-2" and handled.incident.attempt == 1
