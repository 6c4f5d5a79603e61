"""Turns an incident, its decision and the action's result into one Alert.

Pure: no I/O, no clock (the caller passes `now`). Everything in the alert is derived from the data, never
from a table of known failures, so a new rule in a policy file produces a sensible alert without code.

Summary shape: ``<signal> on <node>: <what happened>``, e.g.
``gpu.xid.79 on node-1: cordoned node-1, restarted on node-2, node-3 (attempt 1)``.

One alert per incident, never one per rank: the incident's other signals (the collective timeouts
that an Xid on one node causes on every other node) are folded into its alert as ``also_seen``
("also seen on 63 nodes: ..."), and its evidence lines. Every text that comes from a log line or
an action's detail goes through `redact` first: no secret leaves in an alert.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from supervisor.alert.links import incident_query, insights_url, log_stream_url
from supervisor.alert.redact import redact
from supervisor.report.timefmt import iso_utc
from supervisor.vocabulary import ActionResult, Alert, Decision, Incident, Severity, Signal, Verdict

MAX_EVIDENCE = 5
MAX_SUMMARY = 240
# More nodes than this are summarised as a count: a 64-node list is not a one-line summary.
_MAX_NODES_LISTED = 3


# `"rank": 3` (JSON logs), `[Rank 3]` / `[rank3]:` (NCCL, torch), `rank=3`, `rank 3`.
_RANK_RE = re.compile(r'(?i)(?:"rank"\s*:\s*|\[rank\s*|(?<![A-Za-z0-9_])rank[\s=:]+)(\d{1,6})\b')
LINK_PAD_S = 60.0  # the console links show this much before the first and after the last signal


@dataclass(frozen=True, slots=True)
class AlertContext:
    """What the alert needs beyond the incident, from the config (never looked up here).

    region, log_group  where the job's logs are; both set: the alert links to the CloudWatch console
                       (the root cause's log stream) and to a Logs Insights query for the window
    instance_ids       node (log stream name) -> cloud instance id, when an actuator knows it
    """

    region: str | None = None
    log_group: str | None = None
    instance_ids: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


def rank_of(text: str) -> str | None:
    """The rank a log line names (`"rank": 3`, `[Rank 3]`, `[rank3]:`, `rank=3`), or None."""
    m = _RANK_RE.search(text)
    return m.group(1) if m else None


def also_seen(incident: Incident) -> str | None:
    """The incident's signals on nodes other than the root cause's, in one phrase, e.g.
    ``also seen on 7 nodes: node-2, node-3, node-4, ... (nccl-watchdog-timeout x7)``; None if none."""
    root = incident.root_cause
    others = [s for s in incident.signals if s.node != root.node]
    if not others:
        return None
    nodes = sorted({s.node for s in others})
    listed = ", ".join(nodes[:_MAX_NODES_LISTED]) + (", ..." if len(nodes) > _MAX_NODES_LISTED else "")
    rules = Counter(s.rule for s in others)
    what = ", ".join(f"{rule} x{n}" for rule, n in sorted(rules.items(), key=lambda kv: (-kv[1], kv[0])))
    noun = "node" if len(nodes) == 1 else "nodes"
    return f"also seen on {len(nodes)} {noun}: {listed} ({what})"


def _links(incident: Incident, context: AlertContext | None) -> dict[str, str]:
    if context is None or not context.region or not context.log_group:
        return {}
    times = [s.timestamp for s in incident.signals] or [incident.root_cause.timestamp]
    start = min([*times, incident.root_cause.timestamp]) - LINK_PAD_S
    end = max([*times, incident.root_cause.timestamp]) + LINK_PAD_S
    return {
        "logs_console": log_stream_url(
            context.region, context.log_group, incident.root_cause.node, start, end
        ),
        "logs_insights": insights_url(
            context.region, [context.log_group], incident_query(incident.nodes), start, end
        ),
    }


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
    return tuple(redact(evidence_line(s)) for s in [root, *others][:MAX_EVIDENCE])


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
    context: AlertContext | None = None,
) -> Alert:
    """One firing alert for one incident.

    labels   job, node (root cause's), incident, rule, signal, class, scope, role (the root cause's:
             cause | symptom | noise, for inhibition rules), severity, verdict (after budgets), plus
             rule_verdict when budgets changed the rule's verdict and instance_id when known. Sorted.
    details  root_cause (its evidence), first_seen / last_seen (UTC, over all signals), attempt, nodes,
             signals (count), reason, decided_at, action (what ftsup did or decided, in words),
             action_result ("ok: ..." / "failed: ..." / "none"), budget_left ("unknown" when None),
             runbook (when the rule has one), rank (when the root cause's line names one),
             instance_id (when known), also_seen (signals on other nodes, folded in), logs_console and
             logs_insights (when `context` has region and log group). Sorted by key.
    evidence up to MAX_EVIDENCE signal lines, the root cause first, the rest in time order.
    page     decision.page, unchanged.
    Every text from a log line or an action's detail is passed through `redact`.
    """
    root = incident.root_cause
    node = decision.node or root.node
    severity = _severity(incident, decision, result)
    action = redact(outcome_phrase(decision, result, node))
    summary = f"{root.signal} on {root.node}: {action}"
    if len(summary) > MAX_SUMMARY:
        summary = summary[: MAX_SUMMARY - 1] + "…"

    labels = {
        "job": incident.job,
        "node": root.node,
        "incident": incident.incident_id,
        "role": root.role.value,
        "rule": root.rule,
        "signal": root.signal,
        "class": root.failure_class.value,
        "scope": root.scope.value,
        "severity": severity.value,
        "verdict": decision.verdict.value,
    }
    if decision.rule_verdict is not None and decision.rule_verdict is not decision.verdict:
        labels["rule_verdict"] = decision.rule_verdict.value
    instance_id = context.instance_ids.get(root.node) if context is not None else None
    if instance_id:
        labels["instance_id"] = instance_id

    times = [s.timestamp for s in incident.signals] or [root.timestamp]
    details = {
        "root_cause": redact(root.evidence),
        "first_seen": iso_utc(min([*times, root.timestamp])),
        "last_seen": iso_utc(max([*times, root.timestamp])),
        "attempt": str(incident.attempt),
        "nodes": ", ".join(incident.nodes),
        "signals": str(len(incident.signals)),
        "reason": redact(decision.reason),
        "decided_at": iso_utc(decision.decided_at),
        "action": action,
        "action_result": redact(_result_text(result)),
        "budget_left": "unknown" if budget_left is None else str(budget_left),
    }
    if root.runbook:
        details["runbook"] = root.runbook
    rank = rank_of(root.evidence)
    if rank is not None:
        details["rank"] = rank
    if instance_id:
        details["instance_id"] = instance_id
    folded = also_seen(incident)
    if folded is not None:
        details["also_seen"] = folded
    details.update(_links(incident, context))

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
