"""``ftsup report --html``: one self-contained HTML file a researcher can open anywhere.

Contract:

- One file: CSS and SVG inline, no script at all, nothing fetched (a Content-Security-Policy meta tag
  forbids every network load, so even a bug could not make the page call out).
- Every figure comes from `supervisor.report.goodput` and `supervisor.report.timeline` over the journal;
  nothing reads the clock, so the same journal and window render the same bytes.
- Everything that comes from logs or the journal (evidence lines, rule names, node names, reasons, job
  names) is HTML-escaped, attributes included, and control characters are replaced: evidence lines are
  untrusted input and never reach the page raw.
- Machine-readable hooks for tools and tests: each goodput figure carries ``data-metric`` and a
  ``data-value`` holding the exact number (``repr`` of the float, seconds); swimlane rectangles carry
  ``data-node``, ``data-state``, ``data-start``, ``data-end``; incident markers ``data-incident``.

Per job: the window and ETTR, a per-node swimlane over time (training, training lost since the
checkpoint, down, restarting / starting, cordoned) with the incidents marked, the goodput breakdown as a
table and as an SVG chart, MTBF / MTTR per failure class, and the incidents in order.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from supervisor.journal import Journal
from supervisor.report.goodput import (
    CATEGORIES,
    DETECTION,
    DOWN,
    LANE_CORDONED,
    LANE_DOWN,
    LANE_LOST,
    LANE_RESTARTING,
    LANE_STARTING,
    LANE_TRAINING,
    LOST,
    OTHER,
    PRODUCTIVE,
    RESTART,
    STARTUP,
    Goodput,
    account,
    jobs_in,
    node_lanes,
)
from supervisor.report.timefmt import iso_utc
from supervisor.report.timeline import TimelineEntry, build_timeline

CATEGORY_LABEL = {
    PRODUCTIVE: "productive training",
    LOST: "work lost since the last checkpoint",
    DETECTION: "detection (failure to decision)",
    RESTART: "restart (decision to first step)",
    STARTUP: "startup (launch to first step)",
    DOWN: "down, not recovered",
    OTHER: "other / no data",
}
CATEGORY_COLOR = {
    PRODUCTIVE: "#2e7d32",
    LOST: "#ef6c00",
    DETECTION: "#c62828",
    RESTART: "#1565c0",
    STARTUP: "#64b5f6",
    DOWN: "#6d4c41",
    OTHER: "#bdbdbd",
}
LANE_COLOR = {
    LANE_TRAINING: "#2e7d32",
    LANE_LOST: "#ef6c00",
    LANE_DOWN: "#c62828",
    LANE_RESTARTING: "#1565c0",
    LANE_STARTING: "#64b5f6",
    LANE_CORDONED: "#455a64",
}
LANE_LABEL = {
    LANE_TRAINING: "training",
    LANE_LOST: "training, lost since the checkpoint",
    LANE_DOWN: "down",
    LANE_RESTARTING: "restarting",
    LANE_STARTING: "starting",
    LANE_CORDONED: "cordoned",
}

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_MAX_EVIDENCE = 2000

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#212121;
background:#fff}
h1{font-size:22px;margin:0 0 4px} h2{font-size:19px;margin:28px 0 6px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:18px 0 6px} .muted{color:#666;font-size:13px}
.ettr{font-size:18px;margin:8px 0} .ettr .big{font-size:28px;font-weight:600}
table{border-collapse:collapse;font-size:13px;margin:4px 0}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.evidence{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;white-space:pre-wrap;
word-break:break-all;max-width:640px}
.legend span{display:inline-block;margin-right:14px;font-size:12px}
.legend i{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:-2px}
svg text{font-family:system-ui,sans-serif;font-size:11px;fill:#333}
"""


@dataclass(frozen=True, slots=True)
class JobReport:
    """One job's section: its accounting over the window and its incidents opened in the window."""

    goodput: Goodput
    entries: tuple[TimelineEntry, ...]


def _esc(value: object) -> str:
    """HTML-escape (quotes too, so it is safe in attributes) after replacing control characters."""
    return html.escape(_CONTROL.sub("\ufffd", str(value)), quote=True)


def _secs(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 3600:
        return f"{value / 3600:.2f} h"
    if value >= 120:
        return f"{value / 60:.1f} min"
    return f"{value:.1f} s"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _num(value: float | None) -> str:
    """The exact value for a data-value attribute ("" when unknown)."""
    return "" if value is None else repr(float(value))


def _hms(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%H:%M:%S")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "job"


# ----------------------------------------------------------------------------- swimlane


def _swimlane(r: JobReport, width: int = 1200) -> str:
    g = r.goodput
    lanes = node_lanes(g)
    left, right, top, lane_h, gap = 110, 20, 34, 26, 8
    plot_w = width - left - right
    height = top + len(lanes) * (lane_h + gap) + 30
    span = g.end - g.start

    def x(t: float) -> float:
        return left + (0.0 if span <= 0 else (t - g.start) / span * plot_w)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="swimlane" id="swimlane-{_esc(_slug(g.job))}" '
        f'data-job="{_esc(g.job)}" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="per-node swimlane of job {_esc(g.job)}">',
        f'<rect x="{left}" y="{top - 4}" width="{plot_w}" height="{height - top - 26}" fill="#fafafa"/>',
    ]
    ticks = 6
    for i in range(ticks + 1):
        t = g.start + span * i / ticks
        tx = x(t)
        out.append(
            f'<line class="tick" x1="{tx:.1f}" y1="{top - 4}" x2="{tx:.1f}" y2="{height - 26}" '
            'stroke="#e0e0e0"/>'
        )
        anchor = "start" if i == 0 else "end" if i == ticks else "middle"
        out.append(
            f'<text class="tick-label" x="{tx:.1f}" y="{height - 10}" text-anchor="{anchor}">'
            f"{_esc(_hms(t))}</text>"
        )
    for row, (node, intervals) in enumerate(lanes.items()):
        y = top + row * (lane_h + gap)
        out.append(f'<g class="lane" data-node="{_esc(node)}">')
        out.append(f'<text class="lane-label" x="{left - 8}" y="{y + lane_h / 2 + 4:.1f}" text-anchor="end">'
                   f"{_esc(node)}</text>")  # fmt: skip
        for iv in intervals:
            x0, x1 = x(iv.start), x(iv.end)
            tip = (
                f"{node}: {LANE_LABEL[iv.state]} {iso_utc(iv.start)} - {iso_utc(iv.end)} "
                f"({_secs(iv.end - iv.start)})"
            )
            if iv.incident_id:
                tip += f", incident {iv.incident_id}"
            out.append(
                f'<rect class="seg state-{_esc(iv.state)}" data-node="{_esc(node)}" '
                f'data-state="{_esc(iv.state)}" '
                f'data-start="{_num(iv.start)}" data-end="{_num(iv.end)}" x="{x0:.2f}" y="{y}" '
                f'width="{max(x1 - x0, 0.5):.2f}" height="{lane_h}" fill="{LANE_COLOR[iv.state]}">'
                f"<title>{_esc(tip)}</title></rect>"
            )
        out.append("</g>")
    bottom = top + len(lanes) * (lane_h + gap) - gap
    failed_at = {f.incident_id: f.failed_at for f in g.failures}
    for n, e in enumerate(r.entries, start=1):
        ex = x(failed_at.get(e.incident_id, e.opened_at))  # a failure: at its failure time
        tip = (
            f"#{n} {e.incident_id} {iso_utc(e.opened_at)}: {e.rule} on {e.node}: {e.verdict or 'not decided'}"
        )
        out.append(
            f'<g class="incident-marker" data-incident="{_esc(e.incident_id)}">'
            f'<line x1="{ex:.2f}" y1="{top - 8}" x2="{ex:.2f}" y2="{bottom + 2}" stroke="#000" '
            'stroke-width="1.5" stroke-dasharray="3,2"/>'
            f'<circle cx="{ex:.2f}" cy="{top - 14}" r="8" fill="#000"/>'
            f'<text x="{ex:.2f}" y="{top - 10}" text-anchor="middle" '
            f'style="fill:#fff;font-weight:600">{n}</text>'
            f"<title>{_esc(tip)}</title></g>"
        )
    out.append("</svg>")
    legend = "".join(
        f'<span><i style="background:{LANE_COLOR[s]}"></i>{_esc(LANE_LABEL[s])}</span>' for s in LANE_COLOR
    )
    return (
        "\n".join(out)
        + f'\n<div class="legend">{legend}<span>&#9679; incident (number as below)</span></div>'
    )


# ----------------------------------------------------------------------------- goodput


def _goodput_chart(g: Goodput, width: int = 760) -> str:
    """A 100% stacked bar of the wall time, then one bar per category (its share of the wall time)."""
    label_w, bar_w, row_h = 290, width - 290 - 130, 20
    rows = len(CATEGORIES)
    height = 40 + rows * (row_h + 6) + 8
    wall = g.wall_s
    out = [
        '<svg xmlns="http://www.w3.org/2000/svg" class="goodput-chart" '
        f'id="goodput-chart-{_esc(_slug(g.job))}" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="goodput breakdown of job {_esc(g.job)}">',
        '<g class="stacked">',
    ]
    cursor = 0.0
    for cat in CATEGORIES:
        v = g.of(cat)
        w = (v / wall * (width - 2)) if wall > 0 else 0.0
        out.append(
            f'<rect class="stack cat-{cat}" data-category="{cat}" data-value="{_num(v)}" '
            f'x="{1 + cursor:.2f}" '
            f'y="4" width="{w:.2f}" height="24" fill="{CATEGORY_COLOR[cat]}">'
            f"<title>{_esc(CATEGORY_LABEL[cat])}: {_esc(_secs(v))}</title></rect>"
        )
        cursor += w
    out.append("</g>")
    for i, cat in enumerate(CATEGORIES):
        v = g.of(cat)
        y = 40 + i * (row_h + 6)
        w = (v / wall * bar_w) if wall > 0 else 0.0
        share = v / wall if wall > 0 else None
        out.append(
            f'<g class="bar" data-category="{cat}">'
            f'<text x="{label_w - 8}" y="{y + 14}" text-anchor="end">{_esc(CATEGORY_LABEL[cat])}</text>'
            f'<rect class="bar-fill cat-{cat}" data-category="{cat}" data-value="{_num(v)}" x="{label_w}" '
            f'y="{y}" width="{w:.2f}" height="{row_h}" fill="{CATEGORY_COLOR[cat]}"/>'
            f'<text x="{label_w + w + 6:.2f}" y="{y + 14}">{_esc(_secs(v))} ({_esc(_pct(share))})</text></g>'
        )
    out.append("</svg>")
    return "\n".join(out)


def _goodput_table(g: Goodput) -> str:
    rows = []
    for cat in CATEGORIES:
        v = g.of(cat)
        share = v / g.wall_s if g.wall_s > 0 else None
        rows.append(
            f'<tr data-category="{cat}"><td><i style="display:inline-block;width:10px;height:10px;'
            f'background:{CATEGORY_COLOR[cat]}"></i> {_esc(CATEGORY_LABEL[cat])}</td>'
            f'<td class="num" data-metric="{cat}_s" data-value="{_num(v)}">{_esc(_secs(v))}</td>'
            f'<td class="num">{_esc(_pct(share))}</td></tr>'
        )
    rows.append(
        f'<tr class="total"><th>wall time of the window</th><td class="num" data-metric="wall_s" '
        f'data-value="{_num(g.wall_s)}">{_esc(_secs(g.wall_s))}</td><td class="num">100.0%</td></tr>'
    )
    ckpt = (
        f"{g.checkpoints} checkpoint(s) committed in the window; save time the trainer reported: "
        f'<span data-metric="checkpoint_save_s" data-value="{_num(g.checkpoint_save_s)}">'
        f"{_esc(_secs(g.checkpoint_save_s))}</span>. "
    )
    if g.checkpoint_save_s is None:
        ckpt += "Checkpoint overhead is not measurable from this journal (no save durations were journaled). "
    else:
        ckpt += (
            "That is the upper bound of the checkpoint overhead: asynchronous saves overlap training, so "
            "the stall itself is not measured; it is counted inside productive time, not subtracted. "
        )
    if g.unknown_lost:
        ckpt += (
            f"{g.unknown_lost} failure(s) had no checkpoint information: their lost work is counted as "
            "productive, so ETTR is an upper bound."
        )
    return (
        '<table class="goodput-table"><tr><th>category</th><th>time</th><th>share</th></tr>'
        + "".join(rows)
        + f'</table>\n<p class="muted checkpoint-overhead">{ckpt}</p>'
    )


def _classes_table(g: Goodput) -> str:
    if not g.classes:
        return '<p class="muted">No failure ended an attempt in this window.</p>'
    rows = "".join(
        f'<tr data-class="{_esc(c.failure_class)}"><td>{_esc(c.failure_class)}</td>'
        f'<td class="num">{c.failures}</td><td class="num">{c.recovered}</td>'
        f'<td class="num" data-metric="mtbf_s" data-value="{_num(c.mtbf_s)}">{_esc(_secs(c.mtbf_s))}</td>'
        f'<td class="num" data-metric="mttr_s" data-value="{_num(c.mttr_s)}">{_esc(_secs(c.mttr_s))}</td>'
        "</tr>"
        for c in g.classes
    )
    return (
        '<table class="classes"><tr><th>failure class (class/scope)</th><th>failures</th><th>recovered</th>'
        "<th>MTBF (training time / failures)</th><th>MTTR (first line to first step)</th></tr>"
        + rows
        + "</table>"
    )


def _incidents_table(r: JobReport) -> str:
    if not r.entries:
        return '<p class="muted">No incident in this window.</p>'
    rows = []
    for n, e in enumerate(r.entries, start=1):
        evidence = e.evidence if len(e.evidence) <= _MAX_EVIDENCE else e.evidence[:_MAX_EVIDENCE] + "…"
        if e.steps_lost is not None or e.work_lost_s is not None:
            lost = f"{'-' if e.steps_lost is None else e.steps_lost} step(s), {_secs(e.work_lost_s)}"
        else:
            lost = "-"
        action = e.action or "-"
        steps = "" if e.steps_lost is None else str(e.steps_lost)
        rows.append(
            f'<tr class="incident" id="incident-{_esc(e.incident_id)}" data-incident="{_esc(e.incident_id)}">'
            f'<td class="num">{n}</td><td>{_esc(iso_utc(e.opened_at))}</td><td>{_esc(e.incident_id)}</td>'
            f'<td>{_esc(e.node)}</td><td>{_esc(e.rule)}<br><span class="muted">{_esc(e.failure_class)}, '
            f"scope {_esc(e.scope)}</span></td>"
            f'<td class="evidence">{_esc(evidence)}</td>'
            f"<td>{_esc(e.verdict or 'not decided')} ({_esc(e.mode or '-')})<br>"
            f'<span class="muted">{_esc(e.reason or "")}</span></td>'
            f"<td>{_esc(action)}: {_esc(e.result_status)}</td>"
            f'<td class="num" data-metric="incident_detection_s" data-value="{_num(e.detection_s)}">'
            f"{_esc(_secs(e.detection_s))}</td>"
            f'<td class="num" data-metric="incident_recover_s" data-value="{_num(e.time_lost_s)}">'
            f"{_esc(_secs(e.time_lost_s))}</td>"
            f'<td class="num" data-metric="incident_steps_lost" data-value="{steps}">'
            f"{_esc(lost)}</td></tr>"
        )
    return (
        '<table class="incidents"><tr><th>#</th><th>first line</th><th>incident</th><th>node</th>'
        "<th>rule</th>"
        "<th>root cause line</th><th>decision</th><th>action</th><th>detection</th><th>time to recover</th>"
        "<th>lost since checkpoint</th></tr>" + "".join(rows) + "</table>"
    )


def _section(r: JobReport) -> str:
    g = r.goodput
    window = f"{iso_utc(g.start)} to {iso_utc(g.end)}" if g.wall_s > 0 else "no journaled time"
    return (
        f'<section class="job" id="job-{_esc(_slug(g.job))}" data-job="{_esc(g.job)}">\n'
        f"<h2>Job {_esc(g.job)}</h2>\n"
        f'<p class="muted window" data-start="{_num(g.start)}" data-end="{_num(g.end)}">'
        f"Window {_esc(window)} "
        f"(all times UTC); {len(g.nodes)} node(s), {len(g.failures)} failure(s), "
        f"{len(r.entries)} incident(s).</p>\n"
        f'<div class="ettr">Effective training time ratio (ETTR = productive / wall): <span class="big" '
        f'data-metric="ettr" data-value="{_num(g.ettr)}">{_esc(_pct(g.ettr))}</span></div>\n'
        "<h3>Nodes over time</h3>\n" + _swimlane(r) + "\n"
        "<h3>Goodput</h3>\n" + _goodput_table(g) + "\n" + _goodput_chart(g) + "\n"
        "<h3>MTBF and MTTR per failure class</h3>\n" + _classes_table(g) + "\n"
        "<h3>Incidents</h3>\n" + _incidents_table(r) + "\n</section>"
    )


def render_html(reports: Sequence[JobReport], source: str) -> str:
    """The whole page for `reports` (one section per job); `source` names the journal it was built from."""
    body = (
        "\n".join(_section(r) for r in reports) if reports else '<p class="muted">No job in this journal.</p>'
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; style-src 'unsafe-inline'\">\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        "<title>ftsup report</title>\n"
        f"<style>{_CSS}</style>\n</head>\n<body>\n"
        "<h1>ftsup: failures and goodput</h1>\n"
        f'<p class="muted">Built from the journal {_esc(source)}. Every figure is computed from it; '
        "definitions: supervisor/report/goodput.py.</p>\n"
        f"{body}\n</body>\n</html>\n"
    )


# ----------------------------------------------------------------------------- building


def build_reports(
    journal: Journal, job: str | None = None, start: float | None = None, end: float | None = None
) -> list[JobReport]:
    """One `JobReport` per job (only `job` when given), over ``[start, end]`` (None: the job's span).

    The incidents listed are those of the job whose first line falls in the report's (clipped) window.
    """
    names = [job] if job is not None else jobs_in(journal)
    entries = build_timeline(journal, job)
    reports = []
    for name in names:
        g = account(journal, name, start, end)
        mine = tuple(e for e in entries if e.job == name and g.start <= e.opened_at <= g.end)
        reports.append(JobReport(g, mine))
    return reports


def parse_instant(text: str) -> float:
    """Seconds since the epoch from ``1714564800`` / ``1714564800.5`` or ISO 8601 (``2024-05-01T12:00:00Z``,
    an offset, or none: UTC). Raises ValueError naming the text otherwise."""
    value = text.strip()
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"not a time: {text!r} (ISO 8601 such as 2024-05-01T12:00:00Z, or epoch seconds)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()
