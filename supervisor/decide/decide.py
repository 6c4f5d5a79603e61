"""The decision function: (job state, incident, now) -> Decision. Pure, total, no I/O.

Everything that can turn an automatic action into a page lives here, so it can be tested
exhaustively without processes or clocks (all history comes in `JobState`):
- the root cause's rule says what it wants (restart, cordon_and_restart, halt, ignore);
- the restart budget (N relaunches within a window, then halt) and exponential backoff with
  jitter, seeded by the incident id so a replay decides the same delay;
- the cordon budget (at most K nodes within a window and at most a fraction of the job),
  and the need for a spare to take the cordoned node's place;
- shared cause: node faults on several distinct nodes within a short window, in one incident or
  across incidents, halt and page instead of cordoning the fleet;
- lemon nodes: a node implicated in N incidents within a window is cordoned even when each was
  recoverable; a node returned to service is watched with a lower threshold for a while;
- flapping: actions for the same (rule, node) are spaced by a minimum interval, and after M
  repeats within a window the next one halts and pages;
- signals about a node that is already cordoned, or a job already halted, are stale.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from supervisor.vocabulary import Decision, Incident, Role, Scope, Verdict


@dataclass(frozen=True, slots=True)
class Limits:
    """Budgets the decisions must respect (from the policy's `budgets` block)."""

    restart_max: int = 3
    restart_within_s: float = 3600.0
    backoff_s: float = 10.0
    backoff_max_s: float = 300.0
    restart_jitter: float = 0.2  # +/- this fraction of the backoff (seeded by the incident id)
    cordon_max_nodes: int = 2
    cordon_within_s: float = 3600.0
    cordon_max_fraction: float = 0.25
    shared_cause_nodes: int = 3  # distinct nodes with node faults within shared_cause_within_s
    shared_cause_within_s: float = 120.0
    lemon_incidents: int = 3  # incidents implicating one node within lemon_within_s
    lemon_within_s: float = 86400.0
    lemon_watch_s: float = 86400.0  # how long a node returned to service is watched
    lemon_watch_incidents: int = 2  # the lower threshold while it is watched
    flap_min_interval_s: float = 300.0  # between actions for the same (rule, node)
    flap_max: int = 3  # repeats of one (rule, node) within flap_within_s before a halt
    flap_within_s: float = 3600.0


@dataclass(frozen=True, slots=True)
class PastIncident:
    """What decide() remembers of one decided incident (the engine rebuilds these from the journal)."""

    incident_id: str
    at: float  # when it was decided
    rule: str  # the root cause's rule
    node: str  # the root cause's node
    verdict: Verdict  # what was decided (IGNORE: stale or noise, counted by no rail)
    implicated: tuple[str, ...] = ()  # nodes whose own cause signals it holds (lemon rail)
    node_faults: tuple[str, ...] = ()  # nodes with node-scope faults (shared-cause rail)
    cordoned: str | None = None  # the node a cordon_and_restart decision retired


@dataclass(frozen=True, slots=True)
class JobState:
    """What decide() needs to know about the job; the engine rebuilds it after every action."""

    job: str
    attempt: int
    nodes: tuple[str, ...]  # current members
    spares: tuple[str, ...]
    cordoned: tuple[str, ...] = ()
    restarts: tuple[float, ...] = ()  # times of past relaunches (restart and cordon_and_restart)
    cordons: tuple[float, ...] = ()  # times of past cordons
    halted: bool = False
    history: tuple[PastIncident, ...] = ()  # decided incidents, oldest first
    returned: tuple[tuple[str, float], ...] = ()  # (node, when it rejoined the job after a cordon)


def _recent(times: tuple[float, ...], now: float, within_s: float) -> int:
    return sum(1 for t in times if now - t < within_s)


def backoff_delay(recent_restarts: int, limits: Limits) -> float:
    """No wait for the first relaunch in the window; then backoff, doubling, capped (no jitter)."""
    if recent_restarts <= 0:
        return 0.0
    return float(min(limits.backoff_s * (2 ** (recent_restarts - 1)), limits.backoff_max_s))


def jitter_unit(seed: str) -> float:
    """A number in [-1, 1) derived from `seed` alone: the same incident id, the same jitter."""
    digest = hashlib.sha256(seed.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**63 - 1.0


def jittered(delay: float, limits: Limits, seed: str) -> float:
    """`delay` spread by +/- `restart_jitter` (deterministic in `seed`), never above backoff_max."""
    if delay <= 0 or limits.restart_jitter <= 0:
        return delay
    spread = delay * (1.0 + limits.restart_jitter * jitter_unit(seed))
    return round(max(0.0, min(spread, max(delay, limits.backoff_max_s))), 3)


def cordon_allowance(job_nodes: int, limits: Limits) -> int:
    """Nodes that may be cordoned within the window: the smaller of max_nodes and the fraction
    of the job, but at least one, so a small job can still lose its one bad node."""
    by_fraction = max(1, math.floor(limits.cordon_max_fraction * job_nodes))
    return min(limits.cordon_max_nodes, by_fraction)


NODE_ATTRIBUTED_SIGNALS = ("host.",)
"""Job-scope signal kinds that are the node's own failure: the host pack's OOM kill, SIGKILL,
segfault, bus error. Other job-scope causes (a NaN loss, a hang, a loss spike, a full or failing
shared filesystem, a scheduler's preemption) are job-wide conditions the node merely reported."""


def implicated_nodes(incident: Incident) -> tuple[str, ...]:
    """Nodes an incident counts against (lemon rail): those that logged a *cause* that is their own
    — a node fault, or a host-process fault (`NODE_ATTRIBUTED_SIGNALS`). Symptoms (a peer's
    collective timeout), code bugs, job-wide conditions and noise implicate nobody."""
    return tuple(
        sorted(
            {
                s.node
                for s in incident.signals
                if s.role is Role.CAUSE
                and s.verdict is not Verdict.IGNORE
                and (
                    s.scope is Scope.NODE
                    or (s.scope is Scope.JOB and s.signal.startswith(NODE_ATTRIBUTED_SIGNALS))
                )
            }
        )
    )


def node_fault_nodes(incident: Incident) -> tuple[str, ...]:
    """Nodes that report a node fault (node scope, cordon verdict) in this incident."""
    return tuple(
        sorted(
            {
                s.node
                for s in incident.signals
                if s.scope is Scope.NODE and s.verdict is Verdict.CORDON_AND_RESTART
            }
        )
    )


def remember(incident: Incident, decision: Decision) -> PastIncident:
    """The history entry for one decided incident (what the engine appends to `JobState.history`)."""
    return PastIncident(
        incident_id=incident.incident_id,
        at=decision.decided_at,
        rule=incident.root_cause.rule,
        node=incident.root_cause.node,
        verdict=decision.verdict,
        implicated=implicated_nodes(incident),
        node_faults=node_fault_nodes(incident),
        cordoned=decision.node if decision.verdict is Verdict.CORDON_AND_RESTART else None,
    )


def returns_to_service(
    cordons: Iterable[tuple[str, float]], attempts: Iterable[tuple[float, Sequence[str]]]
) -> tuple[tuple[str, float], ...]:
    """(node, time) for each node that rejoined the job after a cordon: the launch time of the first
    attempt after the cordon with the node among its members. `cordons` are (node, when cordoned),
    `attempts` (launched_at, members)."""
    cordoned = sorted(cordons, key=lambda c: c[1])
    out: list[tuple[str, float]] = []
    back_at: dict[str, float] = {}
    for launched, members in sorted(attempts, key=lambda a: a[0]):
        for node in members:
            last_cordon = max((t for n, t in cordoned if n == node and t <= launched), default=None)
            if last_cordon is not None and back_at.get(node, -math.inf) < last_cordon:
                back_at[node] = launched
                out.append((node, launched))
    return tuple(out)


def _counted(state: JobState, incident: Incident) -> list[PastIncident]:
    """History entries the rails count: acted-on or paged incidents, not this one again."""
    return [
        e for e in state.history if e.verdict is not Verdict.IGNORE and e.incident_id != incident.incident_id
    ]


def shared_cause_nodes(
    state: JobState, incident: Incident, limits: Limits, now: float, extra: Iterable[str] = ()
) -> tuple[str, ...]:
    """Distinct nodes with node faults within the shared-cause window, this incident included."""
    nodes = set(node_fault_nodes(incident)) | set(extra)
    for e in _counted(state, incident):
        if now - e.at < limits.shared_cause_within_s:
            nodes.update(e.node_faults)
    return tuple(sorted(nodes))


@dataclass(frozen=True, slots=True)
class LemonCount:
    node: str
    incidents: int  # this incident included
    threshold: int
    watched: bool  # returned to service recently: the lower threshold applies

    @property
    def lemon(self) -> bool:
        return self.incidents >= self.threshold


def lemon_count(state: JobState, incident: Incident, node: str, limits: Limits, now: float) -> LemonCount:
    """How many incidents implicate `node` (this one included) and the threshold that applies to it.
    Incidents before the node's latest return to service are not held against it again."""
    back = max((t for n, t in state.returned if n == node and t <= now), default=None)
    watched = back is not None and now - back < limits.lemon_watch_s

    def held(e: PastIncident) -> bool:
        if node not in e.implicated or (back is not None and e.at < back):
            return False
        return watched or now - e.at < limits.lemon_within_s

    count = 1 + sum(1 for e in _counted(state, incident) if held(e))
    threshold = (
        min(limits.lemon_incidents, limits.lemon_watch_incidents) if watched else limits.lemon_incidents
    )
    return LemonCount(node, count, threshold, watched)


def flaps(state: JobState, incident: Incident, limits: Limits, now: float) -> tuple[int, float | None]:
    """Earlier actions for this incident's (rule, node) within the flapping window, and when the
    latest one was decided (None: none)."""
    root = incident.root_cause
    times = [
        e.at
        for e in _counted(state, incident)
        if e.rule == root.rule and e.node == root.node and now - e.at < limits.flap_within_s
    ]
    return len(times), (max(times) if times else None)


def decide(state: JobState, incident: Incident, limits: Limits, now: float) -> Decision:
    """Choose what to do about one incident. Never raises for any combination of inputs."""
    root = incident.root_cause
    wanted = root.verdict

    def made(verdict: Verdict, reason: str, *, node: str | None = None, delay: float = 0.0) -> Decision:
        return Decision(
            incident_id=incident.incident_id,
            verdict=verdict,
            reason=reason,
            decided_at=now,
            node=node,
            delay_s=delay,
            page=verdict is Verdict.HALT,
            rule_verdict=wanted,
        )

    if state.halted:
        return made(Verdict.IGNORE, "the job is already halted; nothing to do until a human acts")
    if incident.attempt < state.attempt:
        return made(
            Verdict.IGNORE, f"stale: attempt {incident.attempt} was already replaced by {state.attempt}"
        )
    if wanted is Verdict.IGNORE:
        return made(Verdict.IGNORE, f"rule {root.rule} says ignore")
    if wanted is Verdict.HALT:
        return made(
            Verdict.HALT, f"{root.rule}: {root.failure_class.value} ({root.scope.value}); a human must act"
        )
    if wanted is Verdict.CORDON_AND_RESTART and root.node in state.cordoned:
        return made(Verdict.IGNORE, f"stale: {root.node} is already cordoned")

    recent = _recent(state.restarts, now, limits.restart_within_s)
    if recent >= limits.restart_max:
        window = f"{limits.restart_within_s:g}s"
        return made(Verdict.HALT, f"restart budget exhausted: {recent} relaunches within {window}")

    # Flapping: the same rule on the same node again and again is a storm, not a series of fixes.
    flapped, last_flap = flaps(state, incident, limits, now)
    if flapped >= limits.flap_max:
        return made(
            Verdict.HALT,
            f"flapping: {root.rule} on {root.node} acted on {flapped} time(s) within "
            f"{limits.flap_within_s:g}s; a human must look before another action",
        )
    delay = jittered(backoff_delay(recent, limits), limits, incident.incident_id)
    waiting = f" after a {delay:g}s backoff ({recent} relaunch(es) within the window)" if delay else ""
    if last_flap is not None and now - last_flap < limits.flap_min_interval_s:
        hold = round(limits.flap_min_interval_s - (now - last_flap), 3)
        if hold > delay:
            delay = hold
            waiting = (
                f" after {delay:g}s: {root.rule} on {root.node} was acted on {now - last_flap:g}s ago "
                f"(flapping: at least {limits.flap_min_interval_s:g}s between actions)"
            )

    node = root.node
    lemon: LemonCount | None = None
    if wanted is Verdict.RESTART:
        counts = [lemon_count(state, incident, n, limits, now) for n in implicated_nodes(incident)]
        lemons = sorted(
            (c for c in counts if c.lemon and c.node in state.nodes and c.node not in state.cordoned),
            key=lambda c: (-c.incidents, c.node),
        )
        if len(lemons) > 1:
            names = ", ".join(c.node for c in lemons)
            return made(
                Verdict.HALT,
                f"{root.rule}: {len(lemons)} nodes ({names}) each reached their repeated-incident "
                "threshold at once; suspect a shared cause rather than cordon them all",
            )
        if not lemons:
            return made(
                Verdict.RESTART,
                f"{root.rule}: recoverable, restart from the last checkpoint{waiting}",
                delay=delay,
            )
        lemon = lemons[0]
        node = lemon.node

    # CORDON_AND_RESTART (the rule's, or a lemon's)
    # Reasons start "<rule> on <node>": actuators read the rule from there (taints, remediation).
    what = f"{root.rule} on {node}"
    if lemon is not None:
        what += (
            f": a lemon, implicated in {lemon.incidents} incidents since it returned to service "
            f"(watched: threshold {lemon.threshold} for {limits.lemon_watch_s:g}s after its return)"
            if lemon.watched
            else f": a lemon, implicated in {lemon.incidents} incidents within "
            f"{limits.lemon_within_s:g}s (threshold {lemon.threshold})"
        )
    if node not in state.nodes:
        return made(Verdict.HALT, f"{root.rule} names {node!r}, which is not a member of the job")
    # Node faults on many nodes within a short window, across incidents, point at something they share.
    faulted = shared_cause_nodes(state, incident, limits, now, extra=() if lemon is not None else (node,))
    if lemon is None and len(faulted) >= limits.shared_cause_nodes:
        return made(
            Verdict.HALT,
            f"{len(faulted)} nodes reported node faults within {limits.shared_cause_within_s:g}s "
            f"({', '.join(faulted)}); suspect a shared cause (network, filesystem, a bad release) "
            "rather than cordon them all",
        )
    cordoned_recently = _recent(state.cordons, now, limits.cordon_within_s)
    allowed = cordon_allowance(len(state.nodes), limits)
    if cordoned_recently >= allowed:
        return made(
            Verdict.HALT,
            f"{what}; cordon budget exhausted: {cordoned_recently} of {allowed} allowed within "
            f"{limits.cordon_within_s:g}s; many bad nodes suggest a shared cause",
        )
    # Several nodes reporting hardware faults in one incident points at something they share
    # (network, filesystem, a bad driver roll-out, a dead metrics pipeline): page, don't cordon them all.
    implicated = node_fault_nodes(incident)
    if len(implicated) > allowed - cordoned_recently:
        return made(
            Verdict.HALT,
            f"{len(implicated)} nodes report node faults at once ({', '.join(implicated)}); "
            "suspect a shared cause rather than cordon them all",
        )
    if not state.spares:
        return made(Verdict.HALT, f"{what}, but no spare node can take its place")
    return made(
        Verdict.CORDON_AND_RESTART,
        f"{what}: cordon it, restart on spare {state.spares[0]}{waiting}",
        node=node,
        delay=delay,
    )
