"""Root cause: noise never, cause over symptom, node over code over job, then earliest."""

from __future__ import annotations

from supervisor.incidents.rootcause import can_be_root_cause, choose_root_cause
from supervisor.vocabulary import FailureClass, Role, Scope, Severity, Signal, Verdict


def sig(
    rule: str,
    *,
    role: Role = Role.CAUSE,
    scope: Scope = Scope.JOB,
    ts: float = 0.0,
    line: int | None = None,
    verdict: Verdict = Verdict.RESTART,
    node: str = "node-0",
) -> Signal:
    return Signal(
        rule,
        rule,
        node,
        ts,
        FailureClass.RECOVERABLE,
        scope,
        verdict,
        Severity.WARNING,
        role,
        rule,
        line_index=line,
    )


def test_xid_on_node1_beats_the_collective_timeouts_it_causes_on_node0() -> None:
    timeout = sig("gloo-timeout", role=Role.SYMPTOM, scope=Scope.JOB, ts=1.0, node="node-0")
    xid = sig(
        "gpu-fallen-off-bus",
        role=Role.CAUSE,
        scope=Scope.NODE,
        ts=5.0,
        node="node-1",
        verdict=Verdict.CORDON_AND_RESTART,
    )
    assert choose_root_cause([timeout, xid]) is xid


def test_teardown_noise_is_never_a_cause() -> None:
    noise = sig("torchrun-sigterm", role=Role.NOISE, scope=Scope.NONE, verdict=Verdict.IGNORE)
    ignored_cause = sig("info", role=Role.CAUSE, verdict=Verdict.IGNORE)
    assert not can_be_root_cause(noise) and not can_be_root_cause(ignored_cause)
    assert choose_root_cause([noise, ignored_cause]) is None
    assert choose_root_cause([]) is None
    symptom = sig("peer-lost", role=Role.SYMPTOM, ts=9.0)
    assert choose_root_cause([noise, symptom]) is symptom


def test_scope_order_node_code_job_none() -> None:
    job = sig("job", scope=Scope.JOB, ts=0.0)
    code = sig("code", scope=Scope.CODE, ts=1.0)
    node = sig("node", scope=Scope.NODE, ts=2.0)
    none = sig("none", scope=Scope.NONE, ts=-1.0)
    assert choose_root_cause([none, job, code, node]) is node
    assert choose_root_cause([none, job, code]) is code
    assert choose_root_cause([none, job]) is job


def test_earliest_then_lowest_line_then_input_order() -> None:
    a = sig("a", ts=2.0, line=1)
    b = sig("b", ts=1.0, line=9)
    assert choose_root_cause([a, b]) is b
    c = sig("c", ts=1.0, line=3)
    d = sig("d", ts=1.0, line=2)
    assert choose_root_cause([c, d]) is d
    e = sig("e", ts=1.0)
    f = sig("f", ts=1.0)
    assert choose_root_cause([e, f]) is e
    assert choose_root_cause([sig("g", ts=1.0), d]) is d  # a known line beats an unknown one
