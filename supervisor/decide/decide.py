"""The decision function: (job state, incident, now) -> Decision. Pure, total, no I/O.

Everything that can turn an automatic action into a page lives here, so it can be tested
exhaustively without processes or clocks:
- the root cause's rule says what it wants (restart, cordon_and_restart, halt, ignore);
- the restart budget (N relaunches within a window, then halt) and exponential backoff;
- the cordon budget (at most K nodes within a window and at most a fraction of the job),
  and the need for a spare to take the cordoned node's place;
- signals about a node that is already cordoned, or a job already halted, are stale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from supervisor.vocabulary import Decision, Incident, Scope, Verdict


@dataclass(frozen=True, slots=True)
class Limits:
    """Budgets the decisions must respect (from the policy's `budgets` block)."""

    restart_max: int = 3
    restart_within_s: float = 3600.0
    backoff_s: float = 10.0
    backoff_max_s: float = 300.0
    cordon_max_nodes: int = 2
    cordon_within_s: float = 3600.0
    cordon_max_fraction: float = 0.25


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


def _recent(times: tuple[float, ...], now: float, within_s: float) -> int:
    return sum(1 for t in times if now - t < within_s)


def backoff_delay(recent_restarts: int, limits: Limits) -> float:
    """No wait for the first relaunch in the window; then backoff, doubling, capped."""
    if recent_restarts <= 0:
        return 0.0
    return float(min(limits.backoff_s * (2 ** (recent_restarts - 1)), limits.backoff_max_s))


def cordon_allowance(job_nodes: int, limits: Limits) -> int:
    """Nodes that may be cordoned within the window: the smaller of max_nodes and the fraction
    of the job, but at least one, so a small job can still lose its one bad node."""
    by_fraction = max(1, math.floor(limits.cordon_max_fraction * job_nodes))
    return min(limits.cordon_max_nodes, by_fraction)


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

    recent = _recent(state.restarts, now, limits.restart_within_s)
    if recent >= limits.restart_max:
        window = f"{limits.restart_within_s:g}s"
        return made(Verdict.HALT, f"restart budget exhausted: {recent} relaunches within {window}")
    delay = backoff_delay(recent, limits)
    waiting = f" after a {delay:g}s backoff ({recent} relaunch(es) within the window)" if delay else ""

    if wanted is Verdict.RESTART:
        return made(
            Verdict.RESTART,
            f"{root.rule}: recoverable, restart from the last checkpoint{waiting}",
            delay=delay,
        )

    # CORDON_AND_RESTART
    node = root.node
    if node in state.cordoned:
        return made(Verdict.IGNORE, f"stale: {node} is already cordoned")
    if node not in state.nodes:
        return made(Verdict.HALT, f"{root.rule} names {node!r}, which is not a member of the job")
    cordoned_recently = _recent(state.cordons, now, limits.cordon_within_s)
    allowed = cordon_allowance(len(state.nodes), limits)
    if cordoned_recently >= allowed:
        return made(
            Verdict.HALT,
            f"cordon budget exhausted: {cordoned_recently} of {allowed} allowed within "
            f"{limits.cordon_within_s:g}s; many bad nodes suggest a shared cause",
        )
    # Several nodes reporting hardware faults in one incident points at something they share
    # (network, filesystem, a bad driver roll-out, a dead metrics pipeline): page, don't cordon them all.
    implicated = sorted(
        {
            s.node
            for s in incident.signals
            if s.scope is Scope.NODE and s.verdict is Verdict.CORDON_AND_RESTART
        }
    )
    if len(implicated) > allowed - cordoned_recently:
        return made(
            Verdict.HALT,
            f"{len(implicated)} nodes report node faults at once ({', '.join(implicated)}); "
            "suspect a shared cause rather than cordon them all",
        )
    if not state.spares:
        return made(Verdict.HALT, f"{root.rule} on {node}, but no spare node can take its place")
    return made(
        Verdict.CORDON_AND_RESTART,
        f"{root.rule} on {node}: cordon it, restart on spare {state.spares[0]}{waiting}",
        node=node,
        delay=delay,
    )
