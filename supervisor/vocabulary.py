"""The words every stage of the pipeline speaks.

sources -> classify -> incidents -> decide -> act -> journal / alert / report

This module holds data only: frozen dataclasses and enums, no I/O and no imports of
other ftsup modules, so every stage (and every test) can depend on it without pulling
in boto3, sqlite or subprocesses. Times are float seconds since the Unix epoch (UTC)
everywhere; CloudWatch's millisecond integers are converted at the source edge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Verdict(StrEnum):
    """What a rule says should happen to the job when it is the root cause."""

    RESTART = "restart"  # recoverable: relaunch every node from the last checkpoint
    CORDON_AND_RESTART = "cordon_and_restart"  # bad node: retire it, bring a spare, relaunch
    HALT = "halt"  # non-recoverable without a human: stop, keep state, page
    IGNORE = "ignore"  # not a failure (or teardown noise): journal only


class FailureClass(StrEnum):
    RECOVERABLE = "recoverable"
    NON_RECOVERABLE = "non_recoverable"


class Scope(StrEnum):
    """Where the fault lives; decides what an action must change."""

    NODE = "node"  # the hardware / host of one node
    JOB = "job"  # the job as a whole (collectives, rendezvous, transient)
    CODE = "code"  # the user's program: restarting repeats it
    NONE = "none"  # no fault (noise, informational)


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class Role(StrEnum):
    """How a matched line relates to a failure, for root-cause selection.

    cause:   the line reports a failure at its origin (an Xid, a traceback's exception).
    symptom: the line is usually a consequence of a failure elsewhere (collective
             timeouts, connection resets); it is the root cause only when nothing
             better is present.
    noise:   teardown chatter (torchrun's SIGTERM to siblings, ChildFailedError
             summaries); never a root cause.
    """

    CAUSE = "cause"
    SYMPTOM = "symptom"
    NOISE = "noise"


class Mode(StrEnum):
    OBSERVE = "observe"  # journal decisions, never act
    ACT = "act"


# ----------------------------------------------------------------------------- input


@dataclass(frozen=True, slots=True)
class LogEvent:
    """One log line as CloudWatch Logs returned it.

    `node` is the log stream name (one stream per node). `event_id` is CloudWatch's
    eventId, unique within the log group, used for de-duplication of overlapping reads.
    """

    event_id: str
    node: str
    timestamp: float
    text: str
    ingested: float | None = None


@dataclass(frozen=True, slots=True)
class MetricSample:
    """One datapoint of one node's metric (e.g. step, loss, heartbeat)."""

    node: str
    metric: str
    timestamp: float
    value: float


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a source resumes. `position` is opaque to everyone but its source."""

    source: str
    position: str


@dataclass(frozen=True, slots=True)
class SourceHealth:
    """Whether a source can currently see. Blindness is never health."""

    source: str
    up: bool
    checked_at: float
    error: str | None = None
    lag_s: float | None = None  # now - newest data time the source has read up to


@dataclass(frozen=True, slots=True)
class SourceBatch:
    """What one poll of one source produced.

    The engine journals the batch's consequences first and only then persists `cursor`,
    so a crash between the two re-reads the batch instead of skipping it.
    """

    source: str
    logs: tuple[LogEvent, ...]
    metrics: tuple[MetricSample, ...]
    cursor: Cursor | None
    health: SourceHealth


# ----------------------------------------------------------------------------- classify


@dataclass(frozen=True, slots=True)
class Signal:
    """A rule's finding: one matched line or one metric condition on one node."""

    rule: str
    signal: str  # dotted kind, e.g. "gpu.xid.79"
    node: str
    timestamp: float
    failure_class: FailureClass
    scope: Scope
    verdict: Verdict
    severity: Severity
    role: Role
    evidence: str  # the matched line (truncated) or a description of the metric condition
    event_id: str | None = None
    line_index: int | None = None  # position within an offline window (ftsup classify)
    runbook: str | None = None


# ----------------------------------------------------------------------------- incidents


@dataclass(frozen=True, slots=True)
class Incident:
    """Signals close in time on one job, folded into one failure with one root cause."""

    incident_id: str
    job: str
    attempt: int  # the job attempt (launch number) the signals belong to
    opened_at: float  # event time of the earliest signal
    root_cause: Signal
    signals: tuple[Signal, ...]

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(sorted({s.node for s in self.signals}))


# ----------------------------------------------------------------------------- decide / act


@dataclass(frozen=True, slots=True)
class Decision:
    """What the pure decision function chose for one incident, and why."""

    incident_id: str
    verdict: Verdict  # after budgets: a restart over budget becomes HALT
    reason: str
    decided_at: float
    node: str | None = None  # the node to cordon, for CORDON_AND_RESTART
    delay_s: float = 0.0  # backoff before relaunching
    page: bool = False  # wake a human
    rule_verdict: Verdict | None = None  # what the root cause's rule asked for


@dataclass(frozen=True, slots=True)
class Action:
    """One change to the outside world. `idempotency_key` is unique per intent."""

    kind: Verdict  # RESTART, CORDON_AND_RESTART or HALT; never IGNORE
    job: str
    incident_id: str
    idempotency_key: str
    node: str | None = None
    delay_s: float = 0.0
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ActionResult:
    idempotency_key: str
    ok: bool
    detail: str
    started_at: float
    finished_at: float
    attempt: int | None = None  # the job attempt running after the action (None: not running)
    nodes: tuple[str, ...] = field(default_factory=tuple)  # membership after the action


@dataclass(frozen=True, slots=True)
class JobObservation:
    """What an actuator can see of the job right now."""

    job: str
    attempt: int
    nodes: tuple[str, ...]  # current members
    spares: tuple[str, ...]  # nodes available to replace a cordoned one
    cordoned: tuple[str, ...]
    running: bool
    launched_at: float | None
    exit_codes: tuple[tuple[str, int | None], ...] = ()  # (node, exit code or None if alive)


@dataclass(frozen=True, slots=True)
class Alert:
    """One notification about one incident (or its resolution)."""

    incident_id: str
    job: str
    status: str  # "firing" | "resolved"
    summary: str
    severity: Severity
    page: bool
    labels: tuple[tuple[str, str], ...]
    details: tuple[tuple[str, str], ...]
    evidence: tuple[str, ...]
    created_at: float
