"""The incident timeline: what failed, when, what was done about it, and what it cost.

Built only from the journal (so it works on a copy of a crashed daemon's journal, and while the daemon
runs). One entry per incident, in event-time order. Recovery is measured to the first training step of
the attempt the incident's action launched:

- the recovering attempt is the one journaled with ``cause_incident`` = this incident, else the attempt
  number in the action's result; an incident whose action launched nothing (ignored, observed, halted)
  has no recovery and no time lost
- ``time_lost_s``  = time to recover: recovered_at - opened_at (None while not recovered)
- ``detection_s``  = the incident's first decision - its first line (opened_at; for a failure, goodput's
  failure time, which skips lines of the attempt before)
- ``restart_s``    = recovered_at - that first decision
- for an incident that ended an attempt (a *failure*, as `supervisor.report.goodput` defines it):
  ``checkpoint_step`` the checkpoint the work was kept at (the one the next attempt resumed from, else the
  last one journaled before the failure), ``steps_lost`` = the failed attempt's last_step - checkpoint_step,
  ``work_lost_s`` = time from that checkpoint to the failure and ``lost_basis`` how that time was known
  (``checkpoint`` | ``resume-step`` | ``step-timing`` | ``unknown`` | ``no-steps``). Every one is None
  when unknown, and for incidents that ended nothing.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from supervisor.journal import ActionRow, AttemptRow, DecisionRow, Journal
from supervisor.report.goodput import BASIS_NO_STEPS, BASIS_UNKNOWN, Failure, all_failures, load_history
from supervisor.report.timefmt import iso_utc, iso_utc_or
from supervisor.vocabulary import Mode, Verdict

TIMELINE_VERSION = "1"

# Values of TimelineEntry.result_status.
STATUS_OK = "ok"
STATUS_FAILED = "failed"
STATUS_OBSERVED = "not acted (observe mode)"
STATUS_PENDING = "pending"
STATUS_IGNORED = "no action (ignore)"
STATUS_UNDECIDED = "not decided"


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """One incident as the timeline shows it. Times are epoch seconds (UTC); None means unknown."""

    incident_id: str
    job: str
    attempt: int
    opened_at: float  # event time of the first signal
    decided_at: float | None  # the latest decision's time
    node: str  # root cause's node
    rule: str
    signal: str
    failure_class: str
    scope: str
    evidence: str  # root cause's evidence line
    signal_count: int
    verdict: str | None  # after budgets; None when not decided
    rule_verdict: str | None  # the rule's verdict, only when budgets changed it
    reason: str | None
    mode: str | None
    action: str | None  # the action kind intended, if any
    result_status: str  # ok | failed | not acted (observe mode) | pending | no action (ignore) | not decided
    result_detail: str | None
    result_finished_at: float | None
    recovered_at: float | None
    time_lost_s: float | None
    steps_lost: int | None  # steps since the last checkpoint, lost to this failure
    nodes_after: tuple[str, ...]
    detection_s: float | None = None  # first signal's line -> first decision
    restart_s: float | None = None  # first decision -> first step of the recovering attempt
    checkpoint_step: int | None = None  # the checkpoint the work was kept at
    work_lost_s: float | None = None  # checkpoint -> failure, the training time lost
    lost_basis: str | None = None  # how work_lost_s was known (see the module docstring)


def _recovering_attempt(
    incident_id: str,
    action: ActionRow | None,
    attempts: dict[int, AttemptRow],
    by_cause: dict[str, AttemptRow],
) -> AttemptRow | None:
    if incident_id in by_cause:
        return by_cause[incident_id]
    if (
        action is not None
        and action.result is not None
        and action.result.ok
        and action.result.attempt is not None
    ):
        return attempts.get(action.result.attempt)
    return None


def build_timeline(journal: Journal, job: str | None = None) -> list[TimelineEntry]:
    """One entry per journaled incident (of `job`, or of every job), ordered by opened_at, then id."""
    incidents = [row.incident for row in journal.incidents(job)]
    decisions: dict[str, DecisionRow] = {}
    for d in journal.decisions(job):  # journal order: the last decision of an incident wins
        decisions[d.decision.incident_id] = d
    actions: dict[str, ActionRow] = {}
    for a in journal.actions(job):  # the last intent of an incident is the one that counts
        actions[a.action.incident_id] = a
    attempts: dict[str, dict[int, AttemptRow]] = {}
    by_cause: dict[str, dict[str, AttemptRow]] = {}
    for row in journal.attempts(job):
        attempts.setdefault(row.job, {})[row.attempt] = row
        if row.cause_incident is not None:
            by_cause.setdefault(row.job, {})[row.cause_incident] = row

    first_decided: dict[str, float] = {}
    for d in journal.decisions(job):
        first_decided.setdefault(d.decision.incident_id, d.decision.decided_at)
    failures: dict[str, Failure] = {}
    for name in sorted({inc.job for inc in incidents}):
        failures.update(all_failures(load_history(journal, name)))

    entries: list[TimelineEntry] = []
    for inc in sorted(incidents, key=lambda i: (i.opened_at, i.incident_id)):
        root = inc.root_cause
        drow = decisions.get(inc.incident_id)
        arow = actions.get(inc.incident_id)
        decision = drow.decision if drow is not None else None
        result = arow.result if arow is not None else None

        if decision is None:
            status = STATUS_UNDECIDED
        elif arow is not None and result is not None:
            status = STATUS_OK if result.ok else STATUS_FAILED
        elif drow is not None and drow.mode is Mode.OBSERVE:
            status = STATUS_OBSERVED
        elif decision.verdict is Verdict.IGNORE:
            status = STATUS_IGNORED
        else:
            status = STATUS_PENDING

        job_attempts = attempts.get(inc.job, {})
        recovering = _recovering_attempt(inc.incident_id, arow, job_attempts, by_cause.get(inc.job, {}))
        failed = job_attempts.get(inc.attempt)
        recovered_at = recovering.first_step_at if recovering is not None else None
        failure = failures.get(inc.incident_id)
        steps_lost = failure.steps_lost if failure is not None else None
        if (
            steps_lost is None
            and recovering is not None
            and failed is not None
            and failed.last_step is not None
            and recovering.resume_step is not None
        ):
            steps_lost = failed.last_step - recovering.resume_step
        decided_first = first_decided.get(inc.incident_id)
        if result is not None and result.nodes:
            nodes_after = result.nodes
        elif recovering is not None:
            nodes_after = recovering.nodes
        else:
            nodes_after = ()

        rule_verdict = None
        if (
            decision is not None
            and decision.rule_verdict is not None
            and decision.rule_verdict != decision.verdict
        ):
            rule_verdict = decision.rule_verdict.value

        entries.append(
            TimelineEntry(
                incident_id=inc.incident_id,
                job=inc.job,
                attempt=inc.attempt,
                opened_at=inc.opened_at,
                decided_at=decision.decided_at if decision is not None else None,
                node=root.node,
                rule=root.rule,
                signal=root.signal,
                failure_class=root.failure_class.value,
                scope=root.scope.value,
                evidence=root.evidence,
                signal_count=len(inc.signals),
                verdict=decision.verdict.value if decision is not None else None,
                rule_verdict=rule_verdict,
                reason=decision.reason if decision is not None else None,
                mode=drow.mode.value if drow is not None else None,
                action=arow.action.kind.value if arow is not None else None,
                result_status=status,
                result_detail=result.detail if result is not None else None,
                result_finished_at=result.finished_at if result is not None else None,
                recovered_at=recovered_at,
                time_lost_s=(recovered_at - inc.opened_at) if recovered_at is not None else None,
                steps_lost=steps_lost,
                nodes_after=nodes_after,
                detection_s=(
                    decided_first - (failure.failed_at if failure is not None else inc.opened_at)
                    if decided_first is not None
                    else None
                ),
                restart_s=(
                    recovered_at - decided_first
                    if recovered_at is not None and decided_first is not None
                    else None
                ),
                checkpoint_step=failure.checkpoint_step if failure is not None else None,
                work_lost_s=(
                    failure.lost_s if failure is not None and failure.lost_basis != BASIS_UNKNOWN else None
                ),
                lost_basis=failure.lost_basis if failure is not None else None,
            )
        )
    return entries


# ----------------------------------------------------------------------------- rendering


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _result_line(e: TimelineEntry) -> str:
    if e.result_status in (STATUS_OK, STATUS_FAILED):
        finished = f" (finished {iso_utc_or(e.result_finished_at)})"
        return f"{e.result_status}: {e.result_detail}{finished}"
    return e.result_status


def _awaits_recovery(e: TimelineEntry) -> bool:
    """A relaunch was intended (and has not failed) but no first step after it is journaled yet."""
    relaunching = e.action in (Verdict.RESTART.value, Verdict.CORDON_AND_RESTART.value)
    return relaunching and e.result_status in (STATUS_OK, STATUS_PENDING) and e.recovered_at is None


def _recovery_line(e: TimelineEntry) -> str:
    if e.recovered_at is not None:
        restart = f" (restart {_seconds(e.restart_s)})" if e.restart_s is not None else ""
        return f"{iso_utc(e.recovered_at)}, time to recover {_seconds(e.time_lost_s)}{restart}"
    # Unknown is not zero: a relaunch without a first step yet says so instead of "0 s lost".
    return "not yet" if _awaits_recovery(e) else "-"


def _lost_line(e: TimelineEntry) -> str:
    """Steps and training time lost since the last checkpoint, saying how the time was known."""
    if e.lost_basis == BASIS_NO_STEPS:
        return "nothing: no training step was journaled in this attempt"
    steps = f"{e.steps_lost} step(s)" if e.steps_lost is not None else "steps unknown"
    ckpt = f" since the checkpoint of step {e.checkpoint_step}" if e.checkpoint_step is not None else ""
    if e.work_lost_s is not None:
        return f"{steps}{ckpt}, {_seconds(e.work_lost_s)} of training ({e.lost_basis})"
    return f"{steps}{ckpt}, training time unknown (no checkpoint information)"


def render_text(entries: list[TimelineEntry]) -> str:
    """A terminal-readable report: one block per incident, then a total. Deterministic for given entries."""
    if not entries:
        return "no incidents\n"
    lines: list[str] = []
    for e in entries:
        lines.append(f"{iso_utc(e.opened_at)}  {e.incident_id}  job={e.job} attempt={e.attempt}")
        lines.append(f"  node       {e.node}")
        lines.append(f"  rule       {e.rule} ({e.signal}, {e.failure_class}, scope {e.scope})")
        lines.append(f"  root cause {e.evidence}")
        if e.signal_count > 1:
            lines.append(f"  signals    {e.signal_count}")
        if e.verdict is None:
            lines.append("  decision   -")
        else:
            changed = f" (rule asked {e.rule_verdict})" if e.rule_verdict else ""
            lines.append(
                f"  decision   {e.verdict}{changed}, mode {e.mode}, at {iso_utc_or(e.decided_at)}"
                + (f": {e.reason}" if e.reason else "")
            )
        if e.detection_s is not None:
            lines.append(f"  detected   in {_seconds(e.detection_s)} (first line -> decision)")
        lines.append(f"  action     {e.action or '-'}")
        lines.append(f"  result     {_result_line(e)}")
        lines.append(f"  recovered  {_recovery_line(e)}")
        if e.steps_lost is not None or e.lost_basis is not None:
            lines.append(f"  lost       {_lost_line(e)}")
        if e.nodes_after:
            lines.append(f"  nodes      {', '.join(e.nodes_after)}")
        lines.append("")
    lost = [e.time_lost_s for e in entries if e.time_lost_s is not None]
    steps_total = [e.steps_lost for e in entries if e.steps_lost is not None]
    awaiting = sum(1 for e in entries if _awaits_recovery(e))
    work = [e.work_lost_s for e in entries if e.work_lost_s is not None]
    lines.append(
        f"{len(entries)} incident(s), time to recover {_seconds(sum(lost) if lost else None)}, "
        f"work lost {_seconds(sum(work) if work else None)}, "
        f"steps lost {sum(steps_total) if steps_total else '-'}, awaiting recovery {awaiting}"
    )
    return "\n".join(lines) + "\n"


def entry_dict(e: TimelineEntry) -> dict[str, Any]:
    """One entry as a JSON-ready dict: every field, plus ISO renderings of the times (``*_iso``)."""
    d = asdict(e)
    d["nodes_after"] = list(e.nodes_after)
    for key in ("opened_at", "decided_at", "result_finished_at", "recovered_at"):
        value = d[key]
        d[f"{key}_iso"] = iso_utc(value) if value is not None else None
    return d


def render_json(entries: list[TimelineEntry]) -> str:
    """``{"version": "1", "incidents": [entry, ...]}`` with sorted keys, 2-space indent, trailing newline."""
    doc = {"version": TIMELINE_VERSION, "incidents": [entry_dict(e) for e in entries]}
    return json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
