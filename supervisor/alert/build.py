"""Turns an incident, its decision and the action's result into one Alert.

Pure: no I/O, no clock (the caller passes `now`). Everything in the alert is derived from the data, never
from a table of known failures, so a new rule in a policy file produces a sensible alert without code.

Summary shape: ``<signal> on <node>: <what happened>``, e.g.
``gpu.xid.79 on node-1: cordoned node-1, restarted on node-2, node-3 (attempt 1)``.
"""

from __future__ import annotations

import dataclasses

from supervisor.report.timefmt import iso_utc
from supervisor.vocabulary import ActionResult, Alert, Decision, Incident, Severity, Signal, Verdict

MAX_EVIDENCE = 5
MAX_SUMMARY = 240
# More nodes than this are summarised as a count: a 64-node list is not a one-line summary.
_MAX_NODES_LISTED = 3


def _nodes_phrase(nodes: tuple[str, ...]) -> str:
    if not nodes:
        return ""
    if len(nodes) <= _MAX_NODES_LISTED:
        return " on " + ", ".join(nodes)
    return f" on {len(nodes)} nodes"


def _intended(verdict: Verdict, node: str) -> str:
    """The action as an infinitive, for "decided to ..." and "... FAILED"."""
    if verdict is Verdict.CORDON_AND_RESTART:
        return f"cordon {node} and restart"
    if verdict is Verdict.HALT:
        return "halt the job"
    return str(verdict.value)


def _done(verdict: Verdict, node: str, result: ActionResult) -> str:
    """The action as carried out successfully, in the past tense."""
    attempt = f" (attempt {result.attempt})" if result.attempt is not None else ""
    where = _nodes_phrase(result.nodes)
    if verdict is Verdict.CORDON_AND_RESTART:
        return f"cordoned {node}, restarted{where}{attempt}"
    if verdict is Verdict.RESTART:
        return f"restarted{where}{attempt}"
    if verdict is Verdict.HALT:
        return "halted the job"
    return f"{verdict.value} done"


def outcome_phrase(decision: Decision, result: ActionResult | None, node: str) -> str:
    """What happened about the incident, in a few words (the part of the summary after the colon)."""
    verdict = decision.verdict
    if verdict is Verdict.IGNORE:
        text = "ignored" + (f" ({decision.reason})" if decision.reason else "")
    elif result is None:
        text = f"decided to {_intended(verdict, node)}, not acted"
    elif result.ok:
        text = _done(verdict, node, result)
    else:
        text = f"{_intended(verdict, node)} FAILED: {result.detail}"
    if decision.rule_verdict is not None and decision.rule_verdict is not verdict:
        # Budgets or blast-radius limits overrode the rule: say so, that is what a human must act on.
        text += f" (rule asked to {_intended(decision.rule_verdict, node)}: {decision.reason})"
    return text


def _severity(incident: Incident, decision: Decision, result: ActionResult | None) -> Severity:
    """The root cause's severity, raised to critical when a human is needed: the decision pages,
    the job is halted, or the action failed."""
    if decision.page or decision.verdict is Verdict.HALT or (result is not None and not result.ok):
        return Severity.CRITICAL
    return incident.root_cause.severity


def evidence_line(s: Signal) -> str:
    """One signal as a line of evidence: ``<UTC time> <node> [<rule>] <matched text>``."""
    return f"{iso_utc(s.timestamp)} {s.node} [{s.rule}] {s.evidence}"


def _evidence(incident: Incident) -> tuple[str, ...]:
    root = incident.root_cause
    others = sorted((s for s in incident.signals if s != root), key=lambda s: (s.timestamp, s.node, s.rule))
    return tuple(evidence_line(s) for s in [root, *others][:MAX_EVIDENCE])


def _result_text(result: ActionResult | None) -> str:
    if result is None:
        return "none"
    return f"{'ok' if result.ok else 'failed'}: {result.detail} (finished {iso_utc(result.finished_at)})"


def build_alert(
    incident: Incident,
    decision: Decision,
    result: ActionResult | None,
    *,
    budget_left: int | None,
    now: float,
) -> Alert:
    """One firing alert for one incident.

    labels   job, node (root cause's), rule, signal, class, scope, severity, verdict (after budgets),
             plus rule_verdict when budgets changed the rule's verdict. Sorted by key.
    details  root_cause (its evidence), first_seen / last_seen (UTC, over all signals), attempt, nodes,
             signals (count), reason, decided_at, action_result ("ok: ..." / "failed: ..." / "none"),
             budget_left ("unknown" when None), runbook (when the rule has one). Sorted by key.
    evidence up to MAX_EVIDENCE signal lines, the root cause first, the rest in time order.
    page     decision.page, unchanged.
    """
    root = incident.root_cause
    node = decision.node or root.node
    severity = _severity(incident, decision, result)
    summary = f"{root.signal} on {root.node}: {outcome_phrase(decision, result, node)}"
    if len(summary) > MAX_SUMMARY:
        summary = summary[: MAX_SUMMARY - 1] + "…"

    labels = {
        "job": incident.job,
        "node": root.node,
        "rule": root.rule,
        "signal": root.signal,
        "class": root.failure_class.value,
        "scope": root.scope.value,
        "severity": severity.value,
        "verdict": decision.verdict.value,
    }
    if decision.rule_verdict is not None and decision.rule_verdict is not decision.verdict:
        labels["rule_verdict"] = decision.rule_verdict.value

    times = [s.timestamp for s in incident.signals] or [root.timestamp]
    details = {
        "root_cause": root.evidence,
        "first_seen": iso_utc(min([*times, root.timestamp])),
        "last_seen": iso_utc(max([*times, root.timestamp])),
        "attempt": str(incident.attempt),
        "nodes": ", ".join(incident.nodes),
        "signals": str(len(incident.signals)),
        "reason": decision.reason,
        "decided_at": iso_utc(decision.decided_at),
        "action_result": _result_text(result),
        "budget_left": "unknown" if budget_left is None else str(budget_left),
    }
    if root.runbook:
        details["runbook"] = root.runbook

    return Alert(
        incident_id=incident.incident_id,
        job=incident.job,
        status="firing",
        summary=summary,
        severity=severity,
        page=decision.page,
        labels=tuple(sorted(labels.items())),
        details=tuple(sorted(details.items())),
        evidence=_evidence(incident),
        created_at=now,
    )


def resolve_alert(alert: Alert, now: float) -> Alert:
    """The same alert marked resolved at `now`. `page` is kept, so a pager integration that opened an
    incident for the firing alert receives the resolution too."""
    return dataclasses.replace(alert, status="resolved", summary=f"resolved: {alert.summary}", created_at=now)
