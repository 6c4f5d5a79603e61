"""Node remediation: what a cloud or cluster does to one bad node, behind one small Protocol.

ftsup's actuators restart the *job* (Slurm, Kubernetes, local processes). The node a fault lives
on is a separate matter, owned by whatever manages the machines: an EC2 Auto Scaling group
replaces an instance marked unhealthy, SageMaker HyperPod reboots or replaces a cluster node,
Kubernetes cordons and taints a node. Each of those is a `NodeRemediator`:

    plan(request)      -> the exact steps remediate() would take, as text (observe mode prints it)
    remediate(request) -> carries one NodeOp out on one node; idempotent; never raises for an
                          outside failure (the result says FAILED and why); bounded in time
    observe(node)      -> the node's health as the backend reports it now

Shared here, so every backend behaves the same way:
- `RemediationRequest` / `RemediationResult` / `NodeHealth`: frozen data.
- `choose_op`: reboot or replace, from the root cause's rule, class and severity.
- `RateLimiter`: at most N operations per window, persisted to a JSON file so a daemon restart
  (or a crash loop) cannot reset it; an idempotency key is counted once.
- `ApprovalGate`: destructive operations (a replacement wipes the instance) can wait for a human.
- `GuardedRemediator`: the approval-then-rate-limit step every REBOOT / REPLACE backend takes.
- `RemediatingActuator`: an `Actuator` that lets an inner actuator restart the job without the
  node (cordon_and_restart) and then asks a `NodeRemediator` to reboot or replace that node.
- `SettingsReader`: typed reads of a backend's config mapping that collect every problem at once.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol, TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential
from tenacity.stop import stop_base

from supervisor.act.base import Actuator
from supervisor.vocabulary import Action, ActionResult, FailureClass, JobObservation, Severity, Verdict

__all__ = [
    "Approval",
    "ApprovalGate",
    "AutoApprove",
    "BudgetStop",
    "FileApprovalGate",
    "GuardedRemediator",
    "NodeFault",
    "NodeHealth",
    "NodeOp",
    "NodeRemediator",
    "OpPolicy",
    "Outcome",
    "RateLimiter",
    "RemediatingActuator",
    "RemediationRequest",
    "RemediationResult",
    "RetryPolicy",
    "SettingsError",
    "SettingsReader",
    "choose_op",
    "node_op_limits_from",
    "rate_limiter_from",
    "retry_call",
]

T = TypeVar("T")


class NodeOp(StrEnum):
    """What can be done to one node."""

    CORDON = "cordon"  # keep new work off it (Kubernetes: unschedulable + taint)
    UNCORDON = "uncordon"  # undo a cordon ftsup made (never an operator's)
    REBOOT = "reboot"  # soft recovery: the instance and its disks stay
    REPLACE = "replace"  # new hardware: the instance and its local disks are gone


class Outcome(StrEnum):
    """How a remediation ended. Only FAILED is an error; the others are deliberate."""

    DONE = "done"  # the backend accepted the operation
    NOOP = "noop"  # nothing to do: already in that state, already being replaced, gone
    PENDING_APPROVAL = "pending_approval"  # waits for a human (ApprovalGate)
    RATE_LIMITED = "rate_limited"  # the window's budget is spent; nothing was done
    REFUSED = "refused"  # unsafe or unsupported: not a member of the group, unknown node, ...
    FAILED = "failed"  # the backend said no, or could not be reached within the retry budget


@dataclass(frozen=True, slots=True)
class NodeFault:
    """What is known about why a node is remediated (the incident's root cause), all optional."""

    rule: str | None = None
    failure_class: FailureClass | None = None
    severity: Severity | None = None


@dataclass(frozen=True, slots=True)
class RemediationRequest:
    """One operation on one node. `idempotency_key` is unique per intent (derive it from the action's)."""

    node: str
    op: NodeOp
    idempotency_key: str
    reason: str = ""
    incident_id: str | None = None
    fault: NodeFault = field(default_factory=NodeFault)


@dataclass(frozen=True, slots=True)
class RemediationResult:
    """What remediate() did. `target` is the backend's id for the node (instance id, node name)."""

    node: str
    op: NodeOp
    outcome: Outcome
    detail: str
    started_at: float
    finished_at: float
    target: str | None = None

    @property
    def ok(self) -> bool:
        """False only for FAILED: a no-op, a pending approval, a rate limit or a refusal were chosen."""
        return self.outcome is not Outcome.FAILED


@dataclass(frozen=True, slots=True)
class NodeHealth:
    """A node as its backend reports it now.

    exists:  the backend knows the node (False: gone, terminated, never a member).
    healthy: the backend's own verdict (None: it has none, e.g. a node being rebooted).
    state:   the backend's word for it (ASG lifecycle state, HyperPod instance status, Ready/NotReady).
    cordoned_by_ftsup: ftsup put its mark on the node (Kubernetes annotation); others' cordons are not ours.
    """

    node: str
    exists: bool
    healthy: bool | None
    state: str
    target: str | None = None
    cordoned_by_ftsup: bool = False
    detail: str = ""


class NodeRemediator(Protocol):
    """One backend's node operations. See the module docstring for the contract."""

    @property
    def name(self) -> str: ...

    @property
    def supported_ops(self) -> frozenset[NodeOp]: ...

    def plan(self, request: RemediationRequest) -> list[str]: ...

    def remediate(self, request: RemediationRequest) -> RemediationResult: ...

    def observe(self, node: str) -> NodeHealth: ...


# ----------------------------------------------------------------------------- reboot or replace


@dataclass(frozen=True, slots=True)
class OpPolicy:
    """How to pick reboot or replace for a node fault.

    `by_rule` wins (a site knows Xid 48 needs a reboot); then a non-recoverable class or a
    critical severity asks for REPLACE; anything else (recoverable, warning) for REBOOT; with
    nothing known, `default`.
    """

    default: NodeOp = NodeOp.REPLACE
    by_rule: Mapping[str, NodeOp] = field(default_factory=dict)


def choose_op(fault: NodeFault, policy: OpPolicy = OpPolicy()) -> NodeOp:
    """REBOOT or REPLACE for `fault` (see OpPolicy)."""
    if fault.rule is not None and fault.rule in policy.by_rule:
        return policy.by_rule[fault.rule]
    if fault.failure_class is FailureClass.NON_RECOVERABLE or fault.severity is Severity.CRITICAL:
        return NodeOp.REPLACE
    if fault.failure_class is FailureClass.RECOVERABLE or fault.severity in (Severity.WARNING, Severity.INFO):
        return NodeOp.REBOOT
    return policy.default


# ----------------------------------------------------------------------------- rate limit


_LOCKS: dict[Path, threading.Lock] = {}
_LOCKS_LOCK = threading.Lock()


def _lock_for(path: Path | None) -> threading.Lock:
    """One lock per state file, shared by every limiter (scope) that writes it."""
    if path is None:
        return threading.Lock()
    with _LOCKS_LOCK:
        return _LOCKS.setdefault(path.resolve(), threading.Lock())


def _at(entry: Mapping[str, object]) -> float:
    """An entry's time; a malformed one counts as long ago (it never blocks)."""
    at = entry.get("at")
    return float(at) if isinstance(at, int | float) else float("-inf")


class RateLimiter:
    """At most `max_ops` operations within `window_s` seconds, kept in a JSON file.

    The file is rewritten atomically (write to a temp file, `os.replace`) on every change, so a
    daemon restart sees every slot taken before it. Entries are keyed by idempotency key: acquiring
    a key that already holds a slot succeeds without taking a second one (a retried intent is not
    a second replacement). `scope` separates counters sharing one file ("replace", "reboot").
    Thread-safe within one process (limiters sharing a file share a lock); one daemon owns the file.
    """

    def __init__(
        self,
        path: Path | None,
        *,
        max_ops: int,
        window_s: float,
        scope: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_ops < 0:
            raise ValueError(f"max_ops must be >= 0, got {max_ops}")
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.path = path
        self.max_ops = max_ops
        self.window_s = window_s
        self.scope = scope
        self.clock = clock
        self._lock = _lock_for(path)
        self._memory: dict[str, list[dict[str, object]]] = {}

    def _load(self) -> dict[str, list[dict[str, object]]]:
        if self.path is None or not self.path.exists():
            return self._memory
        try:
            raw = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"{self.path}: unreadable rate-limit state ({exc!r}); move it aside") from exc
        if not isinstance(raw, dict):
            raise RuntimeError(f"{self.path}: rate-limit state is not a JSON object")
        return {
            str(k): [dict(e) for e in v if isinstance(e, dict)] for k, v in raw.items() if isinstance(v, list)
        }

    def _save(self, state: dict[str, list[dict[str, object]]]) -> None:
        if self.path is None:
            self._memory = state
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as f:
            f.write(json.dumps(state, indent=1, sort_keys=True))
            f.flush()
            os.fsync(f.fileno())  # a crash leaves the old file or the new one, never an empty one
        os.replace(tmp, self.path)

    def _recent(self, entries: list[dict[str, object]], now: float) -> list[dict[str, object]]:
        return [e for e in entries if now - _at(e) < self.window_s]

    def used(self) -> int:
        """Slots taken within the current window."""
        with self._lock:
            return len(self._recent(self._load().get(self.scope, []), self.clock()))

    def acquire(self, key: str, target: str) -> tuple[bool, str]:
        """Take a slot for `key` (or find the one it holds). Returns (allowed, why)."""
        with self._lock:
            now = self.clock()
            state = self._load()
            entries = self._recent(state.get(self.scope, []), now)
            if any(e.get("key") == key for e in entries):
                return True, f"{self.scope} slot already held by {key}"
            if self.max_ops == 0:
                return False, f"{self.scope} is off (at most 0 within {self.window_s:g}s)"
            if len(entries) >= self.max_ops:
                oldest = min(_at(e) for e in entries)
                return False, (
                    f"{self.scope} rate limit: {len(entries)} of {self.max_ops} within "
                    f"{self.window_s:g}s already used; next slot in {oldest + self.window_s - now:.0f}s"
                )
            entries.append({"key": key, "target": target, "at": now})
            state[self.scope] = entries
            self._save(state)
            return True, f"{self.scope} {len(entries)} of {self.max_ops} within {self.window_s:g}s"

    def release(self, key: str) -> None:
        """Give back `key`'s slot: the operation is known to have had no effect (the backend refused it)."""
        with self._lock:
            state = self._load()
            entries = [e for e in state.get(self.scope, []) if e.get("key") != key]
            state[self.scope] = entries
            self._save(state)


# ----------------------------------------------------------------------------- approval


@dataclass(frozen=True, slots=True)
class Approval:
    approved: bool
    detail: str


class ApprovalGate(Protocol):
    """Whether a destructive operation may go ahead now. Must not block: pending is an answer."""

    def check(self, request: RemediationRequest, target: str) -> Approval: ...


class AutoApprove:
    """Approves everything (for operations a site has decided need no human)."""

    def check(self, request: RemediationRequest, target: str) -> Approval:
        return Approval(True, "approved: no approval required")


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class FileApprovalGate:
    """A human approves by creating a file.

    For a request with key K the gate writes `DIR/K.pending.json` (what, where, why, when) and
    answers pending until `DIR/K.approved` exists. K is the idempotency key with every character
    outside [A-Za-z0-9._-] replaced by '_'. Approval is per intent, never blanket.
    """

    def __init__(self, directory: Path, clock: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self.clock = clock

    def _stem(self, request: RemediationRequest) -> str:
        return _UNSAFE.sub("_", request.idempotency_key)

    def approved_path(self, request: RemediationRequest) -> Path:
        return self.directory / f"{self._stem(request)}.approved"

    def pending_path(self, request: RemediationRequest) -> Path:
        return self.directory / f"{self._stem(request)}.pending.json"

    def check(self, request: RemediationRequest, target: str) -> Approval:
        approved = self.approved_path(request)
        if approved.exists():
            return Approval(True, f"approved by {approved}")
        pending = self.pending_path(request)
        if not pending.exists():
            self.directory.mkdir(parents=True, exist_ok=True)
            record = {
                "node": request.node,
                "target": target,
                "op": request.op.value,
                "reason": request.reason,
                "incident_id": request.incident_id,
                "rule": request.fault.rule,
                "requested_at": self.clock(),
            }
            tmp = pending.with_name(pending.name + ".tmp")
            tmp.write_text(json.dumps(record, indent=1))
            os.replace(tmp, pending)
        return Approval(
            False, f"waiting for approval: create {approved} to allow {request.op.value} of {target}"
        )


class GuardedRemediator:
    """The guards shared by the REBOOT / REPLACE backends: a replacement waits for `gate` (default:
    approve everything), and each operation takes a slot of its own persisted `RateLimiter`."""

    def __init__(
        self,
        *,
        replace_limit: RateLimiter,
        reboot_limit: RateLimiter,
        gate: ApprovalGate | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.replace_limit = replace_limit
        self.reboot_limit = reboot_limit
        self.gate: ApprovalGate = gate if gate is not None else AutoApprove()
        self.clock = clock

    def limiter(self, op: NodeOp) -> RateLimiter:
        """The rate limiter that counts `op`."""
        return self.replace_limit if op is NodeOp.REPLACE else self.reboot_limit

    def admit(self, request: RemediationRequest, target: str) -> tuple[Outcome | None, str]:
        """Approval (REPLACE only), then a rate-limit slot for the request's key. (None, why) when the
        operation may go ahead (the slot is taken; release it if the backend refuses), else
        (PENDING_APPROVAL or RATE_LIMITED, why) and nothing was taken."""
        if request.op is NodeOp.REPLACE:
            approval = self.gate.check(request, target)
            if not approval.approved:
                return Outcome.PENDING_APPROVAL, approval.detail
        allowed, why = self.limiter(request.op).acquire(request.idempotency_key, target)
        if not allowed:
            return Outcome.RATE_LIMITED, why
        return None, why


# ----------------------------------------------------------------------------- retries for non-AWS calls


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Attempts and a wall-clock budget for one logical call (the AWS calls use AwsSettings instead)."""

    max_attempts: int = 4
    budget_s: float = 20.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.budget_s < 0:
            raise ValueError(f"budget_s must be >= 0, got {self.budget_s}")


class BudgetStop(stop_base):
    """A tenacity stop: no attempt starts `budget_s` or later after the first (injectable clock)."""

    def __init__(self, budget_s: float, monotonic: Callable[[], float]) -> None:
        self.budget_s = budget_s
        self.monotonic = monotonic
        self.started = monotonic()

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.monotonic() - self.started + retry_state.upcoming_sleep >= self.budget_s


def retry_call(
    fn: Callable[[], T],
    policy: RetryPolicy,
    *,
    retryable: Callable[[BaseException], bool],
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
    multiplier: float = 0.2,
    before_sleep: Callable[[RetryCallState], None] | None = None,
) -> T:
    """Call `fn()`, retrying while it raises `retryable` errors, with jittered exponential waits
    (`multiplier` s, at most 5 s), at most `policy.max_attempts` attempts and no attempt starting
    after `policy.budget_s`; then the last error is re-raised unchanged. `fn` must bound its own
    time (a request timeout). `before_sleep` sees each failed attempt that will be retried."""
    retrying = Retrying(
        sleep=sleep,
        stop=stop_after_attempt(policy.max_attempts) | BudgetStop(policy.budget_s, monotonic),
        wait=wait_random_exponential(multiplier=multiplier, max=5),
        retry=retry_if_exception(retryable),
        before_sleep=before_sleep,
        reraise=True,
    )
    return retrying(fn)


# ----------------------------------------------------------------------------- composing with a job actuator


class RemediatingActuator:
    """An Actuator: `inner` drives the job, `remediator` deals with the node a cordon retires.

    cordon_and_restart: `inner.apply` first (the scheduler stops using the node and the job
    restarts without it), then `remediator.remediate` reboots or replaces the node (`choose_op`
    on what `fault_of(action)` knows). The job's result decides `ok`: a node operation that
    failed, waits for approval or is rate-limited is reported in `detail` and never turns a
    successful restart into a failure (which would halt the job). Every other action is the
    inner actuator's alone.
    """

    def __init__(
        self,
        inner: Actuator,
        remediator: NodeRemediator,
        *,
        policy: OpPolicy = OpPolicy(),
        fault_of: Callable[[Action], NodeFault] = lambda action: NodeFault(),
    ) -> None:
        self.inner = inner
        self.remediator = remediator
        self.policy = policy
        self.fault_of = fault_of

    def _request(self, action: Action) -> RemediationRequest | None:
        if action.kind is not Verdict.CORDON_AND_RESTART or action.node is None:
            return None
        fault = self.fault_of(action)
        return RemediationRequest(
            node=action.node,
            op=choose_op(fault, self.policy),
            idempotency_key=f"{action.idempotency_key}:node",
            reason=action.reason,
            incident_id=action.incident_id,
            fault=fault,
        )

    def launch(self) -> ActionResult:
        return self.inner.launch()

    def plan(self, action: Action) -> list[str]:
        steps = self.inner.plan(action)
        request = self._request(action)
        if request is not None:
            steps = [*steps, *(f"{self.remediator.name}: {s}" for s in self.remediator.plan(request))]
        return steps

    def apply(self, action: Action) -> ActionResult:
        result = self.inner.apply(action)
        request = self._request(action)
        if request is None or not result.ok:
            return result
        try:
            node = self.remediator.remediate(request)
            note = f"{self.remediator.name} {node.op.value} {node.node}: {node.outcome.value}: {node.detail}"
        except Exception as exc:  # a remediator bug must not lose the job's result
            note = f"{self.remediator.name} {request.op.value} {request.node}: failed: {exc!r}"
        return ActionResult(
            idempotency_key=result.idempotency_key,
            ok=result.ok,
            detail=f"{result.detail}; {note}",
            started_at=result.started_at,
            finished_at=time.time(),
            attempt=result.attempt,
            nodes=result.nodes,
        )

    def observe(self) -> JobObservation:
        return self.inner.observe()

    def stop(self) -> None:
        self.inner.stop()

    def clear_halt(self) -> None:
        self.inner.clear_halt()


# ----------------------------------------------------------------------------- settings


class SettingsError(ValueError):
    """Every problem found in one backend's settings, one per line (`prefix.key: message`).

    `known` holds the keys the block may have (what the reader asked for), so a caller can say
    what an unknown key should have been; empty when the error does not come from a reader.
    """

    def __init__(self, problems: Iterable[str], *, known: Iterable[str] = ()) -> None:
        self.problems = tuple(problems)
        self.known = frozenset(known)
        super().__init__("\n".join(self.problems))


class SettingsReader:
    """Typed reads from a config mapping that record problems instead of raising at the first.

    Call `done()` after the last read: it raises SettingsError naming every problem (and every
    key that was not read, i.e. unknown), or returns normally.
    """

    def __init__(self, settings: Mapping[str, object], prefix: str) -> None:
        self.settings = settings
        self.prefix = prefix
        self.problems: list[str] = []
        self._read: set[str] = set()

    def _get(self, key: str) -> object:
        self._read.add(key)
        return self.settings.get(key)

    def problem(self, key: str, message: str) -> None:
        line = f"{self.prefix}.{key}: {message}"
        if line not in self.problems:  # a key read twice is reported once
            self.problems.append(line)

    def text(self, key: str, default: str | None = None, *, required: bool = False) -> str | None:
        value = self._get(key)
        if value is None:
            if required:
                self.problem(key, "required")
            return default
        if not isinstance(value, str) or not value:
            self.problem(key, f"must be a non-empty string, got {value!r}")
            return default
        return value

    def number(self, key: str, default: float, *, minimum: float = 0.0, positive: bool = False) -> float:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.problem(key, f"must be a number, got {value!r}")
            return default
        if value < minimum or (positive and value <= 0):
            self.problem(key, f"must be {'> 0' if positive else f'>= {minimum:g}'}, got {value!r}")
            return default
        return float(value)

    def integer(self, key: str, default: int, *, minimum: int = 0) -> int:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(key, f"must be an integer, got {value!r}")
            return default
        if value < minimum:
            self.problem(key, f"must be >= {minimum}, got {value!r}")
            return default
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.problem(key, f"must be true or false, got {value!r}")
            return default
        return value

    def choice(self, key: str, default: str, choices: Iterable[str]) -> str:
        options = tuple(choices)
        value = self._get(key)
        if value is None:
            return default
        if value not in options:
            self.problem(key, f"must be one of {', '.join(options)}, got {value!r}")
            return default
        return str(value)

    def str_map(self, key: str) -> dict[str, str]:
        value = self._get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) and k and v for k, v in value.items()
        ):
            self.problem(key, f"must map names to non-empty strings, got {value!r}")
            return {}
        return {str(k): str(v) for k, v in value.items()}

    def op_map(self, key: str) -> dict[str, NodeOp]:
        raw = self.str_map(key)
        out: dict[str, NodeOp] = {}
        for rule, op in raw.items():
            if op not in (NodeOp.REBOOT.value, NodeOp.REPLACE.value):
                self.problem(f"{key}.{rule}", f"must be reboot or replace, got {op!r}")
            else:
                out[rule] = NodeOp(op)
        return out

    def done(self) -> None:
        for key in sorted(str(k) for k in set(self.settings) - self._read):
            self.problem(key, "unknown key")
        if self.problems:
            raise SettingsError(self.problems, known=self._read)


def rate_limiter_from(
    read: SettingsReader,
    *,
    state_dir: Path | None,
    scope: str,
    default_max: int,
    default_window_s: float,
    clock: Callable[[], float] = time.time,
) -> RateLimiter:
    """A RateLimiter for `scope` from `max_<scope>s` / `window_s` keys, persisted in
    `state_dir/<prefix>-ratelimit.json` (in memory when state_dir is None: tests only)."""
    limit = read.integer(f"max_{scope}s", default_max, minimum=0)
    window = read.number("window_s", default_window_s, positive=True)
    path = None if state_dir is None else state_dir / f"{read.prefix.replace('.', '-')}-ratelimit.json"
    return RateLimiter(path, max_ops=limit, window_s=window, scope=scope, clock=clock)


def node_op_limits_from(read: SettingsReader, *, state_dir: Path | None) -> tuple[RateLimiter, RateLimiter]:
    """The (replace, reboot) limiters of a node backend: `max_replaces` (default 2) and `max_reboots`
    (default 4) within `window_s` (default 3600), persisted as rate_limiter_from says."""
    replace_limit = rate_limiter_from(
        read, state_dir=state_dir, scope="replace", default_max=2, default_window_s=3600
    )
    reboot_limit = rate_limiter_from(
        read, state_dir=state_dir, scope="reboot", default_max=4, default_window_s=3600
    )
    return replace_limit, reboot_limit
