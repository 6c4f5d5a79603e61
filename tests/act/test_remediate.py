"""The pieces every node backend shares: reboot-or-replace, the persisted rate limit, the approval
gate, and the actuator that restarts the job first and remediates the node after."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from supervisor.act.remediate import (
    FileApprovalGate,
    NodeFault,
    NodeHealth,
    NodeOp,
    OpPolicy,
    Outcome,
    RateLimiter,
    RemediatingActuator,
    RemediationRequest,
    RemediationResult,
    SettingsError,
    SettingsReader,
    choose_op,
)
from supervisor.vocabulary import Action, ActionResult, FailureClass, JobObservation, Severity, Verdict


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


# ----------------------------------------------------------------------------- choose_op


@pytest.mark.parametrize(
    ("fault", "op"),
    [
        (NodeFault(failure_class=FailureClass.NON_RECOVERABLE), NodeOp.REPLACE),
        (NodeFault(severity=Severity.CRITICAL), NodeOp.REPLACE),
        (NodeFault(failure_class=FailureClass.RECOVERABLE, severity=Severity.WARNING), NodeOp.REBOOT),
        (NodeFault(severity=Severity.WARNING), NodeOp.REBOOT),
        (NodeFault(), NodeOp.REPLACE),  # nothing known: the policy's default
        (
            NodeFault(rule="gpu-xid-48", failure_class=FailureClass.NON_RECOVERABLE),
            NodeOp.REBOOT,
        ),  # by_rule wins
    ],
)
def test_choose_op(fault: NodeFault, op: NodeOp) -> None:
    assert choose_op(fault, OpPolicy(by_rule={"gpu-xid-48": NodeOp.REBOOT})) is op


# ----------------------------------------------------------------------------- rate limit


def test_rate_limit_is_persisted_counts_a_key_once_and_slides(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "state" / "rl.json"
    limiter = RateLimiter(path, max_ops=2, window_s=600, scope="replace", clock=clock)
    assert limiter.acquire("a", "i-1")[0]
    assert limiter.acquire("a", "i-1") == (True, "replace slot already held by a")
    assert limiter.acquire("b", "i-2")[0]
    allowed, why = limiter.acquire("c", "i-3")
    assert not allowed
    assert why == "replace rate limit: 2 of 2 within 600s already used; next slot in 600s"

    reborn = RateLimiter(path, max_ops=2, window_s=600, scope="replace", clock=clock)  # a daemon restart
    assert not reborn.acquire("c", "i-3")[0]
    other_scope = RateLimiter(path, max_ops=1, window_s=600, scope="reboot", clock=clock)
    assert other_scope.acquire("r", "i-9")[0]
    assert reborn.used() == 2

    clock.now += 601
    assert reborn.acquire("c", "i-3")[0]
    saved = json.loads(path.read_text())
    assert sorted(saved) == ["reboot", "replace"]


def test_a_released_slot_is_free_again_and_zero_means_never(tmp_path: Path) -> None:
    limiter = RateLimiter(tmp_path / "rl.json", max_ops=1, window_s=60, scope="replace")
    assert limiter.acquire("a", "i-1")[0]
    limiter.release("a")
    assert limiter.acquire("b", "i-2")[0]
    never = RateLimiter(None, max_ops=0, window_s=60, scope="replace")
    assert not never.acquire("a", "i-1")[0]


def test_an_unreadable_rate_limit_file_stops_rather_than_resets(tmp_path: Path) -> None:
    path = tmp_path / "rl.json"
    path.write_text("{not json")
    with pytest.raises(RuntimeError, match="unreadable rate-limit state"):
        RateLimiter(path, max_ops=1, window_s=60, scope="replace").acquire("a", "i-1")


# ----------------------------------------------------------------------------- approval


def test_file_approval_is_per_intent(tmp_path: Path) -> None:
    gate = FileApprovalGate(tmp_path / "approvals", clock=lambda: 1.0)
    first = RemediationRequest("node-1", NodeOp.REPLACE, "inc-1:cordon_and_restart:node", reason="xid 79")
    second = RemediationRequest("node-1", NodeOp.REPLACE, "inc-2:cordon_and_restart:node")

    pending = gate.check(first, "i-0123456789abcdef0")
    assert not pending.approved
    record = json.loads(gate.pending_path(first).read_text())
    assert record == {
        "node": "node-1",
        "target": "i-0123456789abcdef0",
        "op": "replace",
        "reason": "xid 79",
        "incident_id": None,
        "rule": None,
        "requested_at": 1.0,
    }
    gate.approved_path(first).touch()
    assert gate.check(first, "i-0123456789abcdef0").approved
    assert not gate.check(second, "i-0123456789abcdef0").approved
    assert gate.approved_path(first).name == "inc-1_cordon_and_restart_node.approved"


# ----------------------------------------------------------------------------- the composed actuator


class RecordingJob:
    """An Actuator fake: records what it was asked, succeeds (or not) as told."""

    def __init__(self, ok: bool = True) -> None:
        self.ok = ok
        self.applied: list[Action] = []

    def launch(self) -> ActionResult:
        return ActionResult("launch", True, "launched", 0.0, 0.0, attempt=0)

    def plan(self, action: Action) -> list[str]:
        return [f"job: {action.kind.value}"]

    def apply(self, action: Action) -> ActionResult:
        self.applied.append(action)
        return ActionResult(
            action.idempotency_key, self.ok, "relaunched", 1.0, 2.0, attempt=1, nodes=("n0", "n2")
        )

    def observe(self) -> JobObservation:
        return JobObservation("job", 1, ("n0", "n2"), (), ("n1",), True, 1.0)

    def stop(self) -> None:
        pass

    def clear_halt(self) -> None:
        pass


class RecordingNodes:
    """A NodeRemediator fake answering with a fixed outcome."""

    name = "fake"
    supported_ops = frozenset({NodeOp.REBOOT, NodeOp.REPLACE})

    def __init__(self, outcome: Outcome = Outcome.DONE) -> None:
        self.outcome = outcome
        self.requests: list[RemediationRequest] = []

    def plan(self, request: RemediationRequest) -> list[str]:
        return [f"{request.op.value} {request.node}"]

    def remediate(self, request: RemediationRequest) -> RemediationResult:
        self.requests.append(request)
        now = time.time()
        return RemediationResult(request.node, request.op, self.outcome, "as told", now, now, "i-1")

    def observe(self, node: str) -> NodeHealth:
        return NodeHealth(node, True, True, "fine")


def cordon_action() -> Action:
    return Action(
        Verdict.CORDON_AND_RESTART, "job", "inc-3", "inc-3:cordon_and_restart", node="n1", reason="r"
    )


def test_cordon_restarts_the_job_first_then_remediates_the_node_with_the_chosen_op() -> None:
    job, nodes = RecordingJob(), RecordingNodes()
    actuator = RemediatingActuator(
        job, nodes, fault_of=lambda a: NodeFault(rule="gpu-xid-48", failure_class=FailureClass.RECOVERABLE)
    )
    assert actuator.plan(cordon_action()) == ["job: cordon_and_restart", "fake: reboot n1"]

    result = actuator.apply(cordon_action())

    assert result.ok
    assert result.detail == "relaunched; fake reboot n1: done: as told"
    assert (result.attempt, result.nodes) == (1, ("n0", "n2"))
    [request] = nodes.requests
    assert (request.node, request.op, request.idempotency_key) == (
        "n1",
        NodeOp.REBOOT,
        "inc-3:cordon_and_restart:node",
    )


@pytest.mark.parametrize("outcome", [Outcome.FAILED, Outcome.PENDING_APPROVAL, Outcome.RATE_LIMITED])
def test_a_node_operation_that_did_not_happen_never_fails_a_good_restart(outcome: Outcome) -> None:
    result = RemediatingActuator(RecordingJob(), RecordingNodes(outcome)).apply(cordon_action())
    assert result.ok
    assert f"fake replace n1: {outcome.value}" in result.detail


def test_no_node_operation_after_a_failed_restart_or_for_other_actions() -> None:
    nodes = RecordingNodes()
    assert not RemediatingActuator(RecordingJob(ok=False), nodes).apply(cordon_action()).ok
    restart = Action(Verdict.RESTART, "job", "inc-4", "inc-4:restart")
    RemediatingActuator(RecordingJob(), nodes).apply(restart)
    assert nodes.requests == []


# ----------------------------------------------------------------------------- settings


def test_settings_reader_collects_every_problem_once() -> None:
    read = SettingsReader({"a": "x", "n": True, "m": {"rule": "explode"}, "extra": 1}, "actuator.test")
    read.integer("a", 1)
    read.integer("a", 1)
    read.number("n", 1.0)
    read.op_map("m")
    read.text("required_one", required=True)
    with pytest.raises(SettingsError) as err:
        read.done()
    assert err.value.problems == (
        "actuator.test.a: must be an integer, got 'x'",
        "actuator.test.n: must be a number, got True",
        "actuator.test.m.rule: must be reboot or replace, got 'explode'",
        "actuator.test.required_one: required",
        "actuator.test.extra: unknown key",
    )
