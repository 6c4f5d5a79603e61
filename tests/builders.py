"""Builders for the data types, with a fixed clock, so tests read as scenarios."""

from __future__ import annotations

from supervisor.vocabulary import FailureClass, Incident, Role, Scope, Severity, Signal, Verdict

T0 = 1_800_000_000.0  # a fixed epoch second


def signal(
    rule: str = "collective-timeout",
    *,
    node: str = "node-0",
    at: float = 0.0,
    verdict: Verdict = Verdict.RESTART,
    scope: Scope = Scope.JOB,
    role: Role = Role.SYMPTOM,
    failure_class: FailureClass = FailureClass.RECOVERABLE,
    severity: Severity = Severity.WARNING,
    event_id: str | None = None,
    text: str = "",
) -> Signal:
    return Signal(
        rule=rule,
        signal=rule.replace("-", "."),
        node=node,
        timestamp=T0 + at,
        failure_class=failure_class,
        scope=scope,
        verdict=verdict,
        severity=severity,
        role=role,
        evidence=text or f"{rule} on {node}",
        event_id=event_id or f"ev-{rule}-{node}-{at}",
    )


def xid79(node: str = "node-1", at: float = 0.0) -> Signal:
    return signal(
        "gpu-xid-79",
        node=node,
        at=at,
        verdict=Verdict.CORDON_AND_RESTART,
        scope=Scope.NODE,
        role=Role.CAUSE,
        failure_class=FailureClass.NON_RECOVERABLE,
        severity=Severity.CRITICAL,
        text="NVRM: Xid (PCI:0000:3b:00): 79, pid=812, name=python, GPU has fallen off the bus.",
    )


def code_bug(node: str = "node-0", at: float = 0.0) -> Signal:
    return signal(
        "python-exception",
        node=node,
        at=at,
        verdict=Verdict.HALT,
        scope=Scope.CODE,
        role=Role.CAUSE,
        failure_class=FailureClass.NON_RECOVERABLE,
        severity=Severity.CRITICAL,
        text="KeyError: 'labels'",
    )


def teardown(node: str = "node-0", at: float = 0.0) -> Signal:
    return signal(
        "torchrun-teardown", node=node, at=at, verdict=Verdict.IGNORE, scope=Scope.NONE, role=Role.NOISE
    )


def incident(*signals: Signal, attempt: int = 0, incident_id: str = "inc-1", job: str = "job") -> Incident:
    from supervisor.incidents.rootcause import choose_root_cause

    root = choose_root_cause(signals)
    assert root is not None
    return Incident(
        incident_id=incident_id,
        job=job,
        attempt=attempt,
        opened_at=min(s.timestamp for s in signals),
        root_cause=root,
        signals=tuple(signals),
    )
