"""What each receiver gets for one Alert: pure functions (no I/O; the caller passes `now`).

- `alertmanager_alert`  one element of Prometheus Alertmanager's ``POST /api/v2/alerts`` body
- `slack_message`       a Slack-compatible incoming-webhook message (``text`` fallback + ``blocks``)
- `pagerduty_event`     a PagerDuty Events API v2 event (trigger / resolve, ``dedup_key`` = incident id)
- `text_body`           the alert as plain text (SNS email / SMS subscribers, the Slack fallback)

Every shape carries the same facts: the one-line summary; job, node, instance id and rank when known;
rule, class, severity; the action and its result; the evidence (already redacted by build_alert);
first and last seen; restart budget left; the runbook and CloudWatch links.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from supervisor.report.timefmt import iso_utc
from supervisor.vocabulary import Alert, Severity

ALERTNAME_PREFIX = "Ftsup"
# Alertmanager label names: [a-zA-Z_][a-zA-Z0-9_]*
_LABEL_NAME_RE = re.compile(r"[^a-zA-Z0-9_]")

# The facts shown as fields (Slack) / lines (text), in this order, with their captions.
_FACTS = (
    ("job", "Job"),
    ("node", "Node"),
    ("instance_id", "Instance"),
    ("rank", "Rank"),
    ("rule", "Rule"),
    ("class", "Class"),
    ("severity", "Severity"),
    ("action_result", "Result"),
    ("first_seen", "First seen"),
    ("last_seen", "Last seen"),
    ("budget_left", "Restart budget left"),
    ("also_seen", "Also"),
)


def parse_iso(text: str) -> float | None:
    """Epoch seconds from an ISO 8601 UTC time as build_alert writes it; None when unreadable."""
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def alertname(rule: str) -> str:
    """The Alertmanager `alertname` for a rule: ``gpu-fallen-off-bus`` -> ``FtsupGpuFallenOffBus``."""
    words = [w for w in re.split(r"[^A-Za-z0-9]+", rule) if w]
    return ALERTNAME_PREFIX + "".join(w[:1].upper() + w[1:] for w in words)


def _facts(alert: Alert, skip: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    merged = {**dict(alert.details), **dict(alert.labels)}
    return [(caption, merged[key]) for key, caption in _FACTS if merged.get(key) and key not in skip]


def alertmanager_alert(alert: Alert, *, now: float, ttl_s: float) -> dict[str, Any]:
    """One alert in Alertmanager's API v2 shape.

    labels       every Alert label (job, node, incident, rule, signal, class, scope, role, severity,
                 verdict, ...; names made label-safe) plus ``alertname`` (from the rule, see
                 `alertname`) and ``source="ftsup"``. Labels identify the alert: the same incident
                 always has the same label set, so re-sending updates it instead of adding one.
    annotations  summary, description (action, result, evidence), runbook_url, and every detail
                 (first_seen, last_seen, budget_left, evidence, logs_console, logs_insights, ...).
    startsAt     the incident's first signal (details.first_seen), else the alert's time.
    endsAt       firing: ``now + ttl_s`` (Alertmanager resolves it by itself if ftsup stops
                 re-asserting it for that long); resolved: the resolution time, clamped into
                 [startsAt, now] so it is in the past and Alertmanager resolves it at once.
    generatorURL the Logs Insights query for the incident window when known, else the runbook.
    """
    details = dict(alert.details)
    labels = {_LABEL_NAME_RE.sub("_", k): v for k, v in alert.labels}
    labels["alertname"] = alertname(labels.get("rule", "incident"))
    labels["source"] = "ftsup"
    starts = parse_iso(details.get("first_seen", "")) or alert.created_at
    starts = min(starts, alert.created_at, now)
    ends = max(starts, min(alert.created_at, now)) if alert.status == "resolved" else now + ttl_s
    annotations = {_LABEL_NAME_RE.sub("_", k): v for k, v in details.items()}
    annotations["summary"] = alert.summary
    annotations["description"] = text_body(alert, header=False)
    if alert.evidence:
        annotations["evidence"] = "\n".join(alert.evidence)
    if "runbook" in details:
        annotations["runbook_url"] = details["runbook"]
    doc: dict[str, Any] = {
        "labels": dict(sorted(labels.items())),
        "annotations": dict(sorted(annotations.items())),
        "startsAt": iso_utc(starts),
        "endsAt": iso_utc(ends),
    }
    generator = details.get("logs_insights") or details.get("runbook")
    if generator:
        doc["generatorURL"] = generator
    return doc


def text_body(alert: Alert, *, header: bool = True) -> str:
    """The alert as plain text: status and summary, the facts one per line, the evidence, links."""
    details = dict(alert.details)
    lines: list[str] = []
    if header:
        lines += [f"[{alert.status.upper()}] {alert.summary}", ""]
    lines += [f"{caption}: {value}" for caption, value in _facts(alert)]
    lines.append(f"Incident: {alert.incident_id}")
    if alert.evidence:
        lines += ["", "Evidence:", *(f"  {e}" for e in alert.evidence)]
    links = [(k, details[k]) for k in ("runbook", "logs_console", "logs_insights") if details.get(k)]
    if links:
        lines += ["", *(f"{k}: {v}" for k, v in links)]
    return "\n".join(lines)


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


_SLACK_EMOJI = {
    Severity.CRITICAL: ":rotating_light:",
    Severity.WARNING: ":warning:",
    Severity.INFO: ":information_source:",
}


def slack_message(alert: Alert) -> dict[str, Any]:
    """A Slack incoming-webhook message: ``text`` (notification fallback) and Block Kit ``blocks``:
    a header, the summary, up to 10 fact fields, the evidence in a code block, and a context line of
    links (runbook, CloudWatch logs, Logs Insights) and the incident id. Within Slack's limits
    (header 150 chars, section 3000, field 2000); text from logs is escaped (&, <, >)."""
    details = dict(alert.details)
    resolved = alert.status == "resolved"
    emoji = ":white_check_mark:" if resolved else _SLACK_EMOJI.get(alert.severity, ":warning:")
    title = f"{'RESOLVED' if resolved else 'FIRING'}: {alert.summary}"
    lead = f"{emoji} {_slack_escape(alert.summary)}"
    if details.get("also_seen"):
        lead += f"\n_{_slack_escape(details['also_seen'])}_"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _clip(title, 150), "emoji": True}},
        {
            "type": "section",
            "text": {"type": "mrkdwn", "text": _clip(lead, 3000)},
        },
    ]
    fields = [
        {"type": "mrkdwn", "text": _clip(f"*{caption}*\n{_slack_escape(value)}", 2000)}
        for caption, value in _facts(alert, skip=("also_seen",))
    ][:10]
    if fields:
        blocks.append({"type": "section", "fields": fields})
    if alert.evidence:
        evidence = _slack_escape("\n".join(alert.evidence)).replace("```", "'''")
        blocks.append(
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": _clip(f"*Evidence*\n```{evidence}```", 3000)},
            }
        )
    links = [
        f"<{details[key]}|{caption}>"
        for key, caption in (
            ("runbook", "Runbook"),
            ("logs_console", "CloudWatch logs"),
            ("logs_insights", "Logs Insights"),
        )
        if details.get(key)
    ]
    context = " · ".join([*links, f"incident `{alert.incident_id}`"])
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": _clip(context, 3000)}]})
    return {"text": _clip(f"{emoji} {title}", 3000), "blocks": blocks}


_PD_SEVERITY = {Severity.CRITICAL: "critical", Severity.WARNING: "warning", Severity.INFO: "info"}


def pagerduty_event(alert: Alert, *, routing_key: str) -> dict[str, Any]:
    """A PagerDuty Events API v2 event. ``dedup_key`` is the incident id, so the resolve closes the
    incident the trigger opened and a repeated trigger updates it instead of opening another.

    trigger: payload {summary (<= 1024 chars), source (instance id, else node), severity, timestamp
    (first seen), component (node), group (job), class (rule), custom_details (every detail and the
    evidence)}, links (runbook, CloudWatch logs, Logs Insights), client "ftsup".
    resolve: routing_key, event_action "resolve" and dedup_key only (the API ignores the rest)."""
    base: dict[str, Any] = {"routing_key": routing_key, "dedup_key": alert.incident_id}
    if alert.status == "resolved":
        return {**base, "event_action": "resolve"}
    labels = dict(alert.labels)
    details = dict(alert.details)
    node = labels.get("node", "")
    custom: dict[str, Any] = {**details, **labels, "incident": alert.incident_id}
    custom["evidence"] = list(alert.evidence)
    payload: dict[str, Any] = {
        "summary": _clip(alert.summary, 1024),
        "source": labels.get("instance_id") or node or alert.job,
        "severity": _PD_SEVERITY.get(alert.severity, "warning"),
        "timestamp": details.get("first_seen") or iso_utc(alert.created_at),
        "component": node,
        "group": alert.job,
        "class": labels.get("rule", ""),
        "custom_details": dict(sorted(custom.items())),
    }
    links = [
        {"href": details[key], "text": caption}
        for key, caption in (
            ("runbook", "Runbook"),
            ("logs_console", "CloudWatch logs"),
            ("logs_insights", "Logs Insights"),
        )
        if details.get(key)
    ]
    event: dict[str, Any] = {**base, "event_action": "trigger", "payload": payload, "client": "ftsup"}
    if links:
        event["links"] = links
    return event
