"""``ftsup replay``: what ftsup would have done over a past window of a job's CloudWatch data.

For post-mortems ("why did last Tuesday's run die, and what would ftsup have said?") and for trying
a policy change on last week's failures before deploying it (``--policies`` overrides the config's).

How it works, and what it promises:

- **The real source, page by page.** The window's log events are read through the daemon's own
  `CloudWatchLogsSource` (FilterLogEvents over the whole log group, one page per poll, following
  nextToken) from the endpoint the config names, and spooled to a SQLite file in a temporary
  directory, so a long window never has to fit in memory and events are replayed in event-time
  order whatever order the pages came in. With ``sources.metrics.enabled`` the job's metrics are
  read through the daemon's `CloudWatchMetricsSource` in chunks of `METRIC_CHUNK_S` as the replay
  clock advances. Only FilterLogEvents and GetMetricData are called (the observe-only IAM policy).
- **The same engine, in observe mode.** `supervisor.engine.Engine` in `Mode.OBSERVE` (classifier,
  traceback folding, metric rules, correlator, root-cause order, budgets, ``decide()``) with a
  journal in that temporary directory: production state (the config's journal) is never opened.
  The job is a `ReplayJob`, an in-memory stand-in that is never asked to act.
- **A clock that follows the events.** The engine's clock is set to the events' own timestamps
  (never wall time) and ticks every `TICK_S` while anything is in flight (an incident settling, a
  traceback being folded); across quiet gaps it jumps (every `METRIC_EVAL_S` when metric rules need
  evaluating). Settle windows and the observe-mode hold therefore behave as they did live, except
  that ingestion delay is not replayed (an event is seen at the moment it was written).
- **Nodes and spares.** The job's nodes are the config's (``actuator.local.nodes`` /
  ``actuator.none.nodes``) when it lists them, else the log streams seen in the window (one stream
  per node). Spares: ``actuator.local.spares`` for ``local``, none for ``none`` (as live); for the
  scheduler kinds (slurm, kubernetes, aws-asg, hyperpod) the spare pool of a past moment is
  unknown, so one spare is assumed (`ASSUMED_SPARE`) and the report says so.
- The replay launches the job at the window start (attempt 0), like ``actuator.kind: none``
  adopting a running job: every line in the window is current.

Failures: a malformed time or an empty window is `ValueError`; a source that stays blind after its
retries is `ReplayError` (nothing partial is reported as complete).
"""

from __future__ import annotations

import heapq
import json
import math
import re
import sqlite3
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from supervisor.classify.policy import PolicySet, load_policies
from supervisor.config import Config
from supervisor.report.timefmt import iso_utc
from supervisor.sources.aws import ApiCallCounter, AwsSettings, make_client
from supervisor.sources.cloudwatch_logs import CloudWatchLogsSource, FilterLogEventsClient
from supervisor.sources.cloudwatch_metrics import CloudWatchMetricsSource, GetMetricDataClient
from supervisor.vocabulary import (
    Action,
    ActionResult,
    Decision,
    Incident,
    JobObservation,
    LogEvent,
    MetricSample,
    Mode,
    SourceBatch,
    SourceHealth,
    Verdict,
)

if TYPE_CHECKING:
    from supervisor.engine import Engine

TICK_S = 0.25
"""The engine's tick while something is in flight (as the daemon's engine loop)."""
METRIC_EVAL_S = 1.0
"""The longest quiet-gap jump while metric rules (absence, stalls) need evaluating."""
METRIC_CHUNK_S = 600.0
"""How much metric data one GetMetricData read covers during a replay."""
DRAIN_EXTRA_S = 5.0
"""After the window end, the replay keeps ticking (while something is in flight) for settle + this."""
ASSUMED_SPARE = "(assumed spare)"
MAX_LOG_POLLS = 1_000_000

_RELATIVE = re.compile(r"^(?:now)?\s*(?P<sign>[-+])\s*(?P<n>\d+(?:\.\d+)?)\s*(?P<unit>ms|s|m|h|d|w)$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


class ReplayError(RuntimeError):
    """The window could not be read (a source stayed blind after its retries)."""


def parse_when(text: str, now: float) -> float:
    """Seconds since the epoch for `text`, relative to `now` (seconds since the epoch).

    Accepted: ``now``; relative ``-2h``, ``-30m``, ``-90s``, ``-7d``, ``-1w``, ``now-2h``, ``+5m``;
    ISO 8601 (``2026-11-28T04:44:42Z``, ``...+02:00``, ``2026-11-28 04:44``, ``2026-11-28``; a time
    without an offset is UTC); plain epoch seconds (``1795840949.5``). Raises ValueError otherwise.
    """
    s = text.strip()
    if s.lower() == "now":
        return now
    m = _RELATIVE.match(s.lower())
    if m is not None:
        delta = float(m.group("n")) * _UNIT_S[m.group("unit")]
        return now - delta if m.group("sign") == "-" else now + delta
    if re.fullmatch(r"\d{9,}(?:\.\d+)?", s):
        return float(s)
    iso = s[:-1] + "+00:00" if s.endswith(("Z", "z")) else s
    try:
        dt = datetime.fromisoformat(iso)
    except ValueError:
        raise ValueError(
            f"cannot read time {text!r}: use ISO 8601 UTC (2026-11-28T04:44:42Z), "
            "a relative time (-2h, -30m, -7d) or now"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


# ----------------------------------------------------------------------------- the simulated job


class ReplayJob:
    """The Actuator protocol for a replay: a job on `nodes` launched at the replay clock's start.

    The engine runs in observe mode, so `apply` is never called; should it be, it refuses (nothing
    is ever touched). `observe` reports the job alive with no exit codes (a past window's exit codes
    are not known), so no exit signal is invented.
    """

    def __init__(
        self, job: str, nodes: Sequence[str], spares: Sequence[str], clock: Callable[[], float]
    ) -> None:
        self.job = job
        self.nodes = tuple(nodes)
        self.spares = tuple(spares)
        self.clock = clock
        self.launched_at: float | None = None

    def launch(self) -> ActionResult:
        now = self.clock()
        self.launched_at = now
        return ActionResult(f"{self.job}:replay", True, "replay", now, now, attempt=0, nodes=self.nodes)

    def plan(self, action: Action) -> list[str]:
        return [f"(replay: would {action.kind.value} {action.node or self.job})"]

    def apply(self, action: Action) -> ActionResult:
        now = self.clock()
        return ActionResult(action.idempotency_key, False, "replay: observe only", now, now)

    def observe(self) -> JobObservation:
        return JobObservation(
            job=self.job,
            attempt=0,
            nodes=self.nodes,
            spares=self.spares,
            cordoned=(),
            running=True,
            launched_at=self.launched_at,
        )

    def stop(self) -> None:
        """Nothing to stop."""

    def clear_halt(self) -> None:
        """Nothing to clear."""


@dataclass
class _Clock:
    now: float

    def __call__(self) -> float:
        return self.now


# ----------------------------------------------------------------------------- report model


@dataclass(frozen=True, slots=True)
class ReplayIncident:
    """One incident the replay decided, in decision order."""

    incident_id: str
    opened_at: float  # event time of its first signal
    decided_at: float  # replay-clock time of the decision
    rule: str  # the root cause's rule
    failure_class: str
    scope: str
    severity: str
    node: str  # the root cause's node
    evidence: str  # the root-cause line (or metric condition)
    verdict: Verdict  # the decision, after budgets
    reason: str
    cordon: str | None  # the node the decision retires (cordon_and_restart)
    page: bool
    signals: int
    nodes: tuple[str, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "incident_id": self.incident_id,
            "opened_at": iso_utc(self.opened_at),
            "decided_at": iso_utc(self.decided_at),
            "detection_s": round(self.decided_at - self.opened_at, 3),
            "rule": self.rule,
            "class": self.failure_class,
            "scope": self.scope,
            "severity": self.severity,
            "node": self.node,
            "evidence": self.evidence,
            "decision": self.verdict.value,
            "reason": self.reason,
            "cordon": self.cordon,
            "page": self.page,
            "signals": self.signals,
            "nodes": list(self.nodes),
        }


@dataclass(frozen=True, slots=True)
class ReplayReport:
    """What a replay read and what ftsup would have decided over it."""

    job: str
    start: float
    end: float
    policies: tuple[str, ...]
    settle_s: float
    log_events: int
    log_calls: int  # FilterLogEvents calls (one page each)
    streams: tuple[str, ...]
    nodes: tuple[str, ...]
    metrics_enabled: bool
    metric_samples: int
    metric_calls: int
    incidents: tuple[ReplayIncident, ...]
    notes: tuple[str, ...] = ()

    def counts(self) -> dict[str, dict[str, int]]:
        """The summary: incidents per decision, per rule and per failure class."""
        return {
            "decision": dict(Counter(i.verdict.value for i in self.incidents)),
            "rule": dict(Counter(i.rule for i in self.incidents)),
            "class": dict(Counter(i.failure_class for i in self.incidents)),
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "from": iso_utc(self.start),
            "to": iso_utc(self.end),
            "mode": Mode.OBSERVE.value,
            "policies": list(self.policies),
            "settle_s": self.settle_s,
            "read": {
                "log_events": self.log_events,
                "filter_log_events_calls": self.log_calls,
                "streams": list(self.streams),
                "metrics": self.metrics_enabled,
                "metric_samples": self.metric_samples,
                "get_metric_data_calls": self.metric_calls,
            },
            "nodes": list(self.nodes),
            "incidents": [i.as_json() for i in self.incidents],
            "summary": {"incidents": len(self.incidents), **self.counts()},
            "notes": list(self.notes),
        }


def render_text(report: ReplayReport) -> str:
    """The report for a terminal: header, incidents in order, summary."""
    r = report
    lines = [
        f"ftsup replay: job {r.job}, {iso_utc(r.start)} -> {iso_utc(r.end)} "
        f"(observe mode, settle {r.settle_s:g}s)",
        f"policies: {', '.join(r.policies)}",
        f"read {r.log_events} log events from {len(r.streams)} streams "
        f"({', '.join(r.streams) or 'none'}) in {r.log_calls} FilterLogEvents calls; "
        + (
            f"{r.metric_samples} metric samples in {r.metric_calls} GetMetricData calls"
            if r.metrics_enabled
            else "metrics off"
        ),
    ]
    lines += [f"note: {n}" for n in r.notes]
    lines.append("")
    for k, i in enumerate(r.incidents, 1):
        target = f" {i.cordon}" if i.cordon else ""
        lines.append(f"{k}. {iso_utc(i.opened_at)}  {i.rule} on {i.node}  -> {i.verdict.value}{target}")
        lines.append(
            f"   class {i.failure_class}, scope {i.scope}, severity {i.severity}; {i.signals} signals on "
            f"{', '.join(i.nodes)}; decided {i.decided_at - i.opened_at:.1f}s after the first line"
            + ("; pages a human" if i.page else "")
        )
        lines.append(f"   evidence: {i.evidence[:300]}")
        lines.append(f"   decision: {i.reason}")
    if not r.incidents:
        lines.append("no incidents: ftsup would have done nothing in this window")
    else:
        c = r.counts()
        n = len(r.incidents)
        lines.append(
            f"summary: {n} incident{'s' if n != 1 else ''}; "
            + ", ".join(f"{v} {k}" for k, v in c["decision"].items())
            + "; rules: "
            + ", ".join(f"{k} x{v}" for k, v in c["rule"].items())
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- reading the window


class _Spool:
    """Log events on disk, read back in (timestamp, event id) order."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path)
        self._db.execute(
            "CREATE TABLE ev (ts REAL NOT NULL, id TEXT PRIMARY KEY, node TEXT NOT NULL, "
            "text TEXT NOT NULL, ingested REAL)"
        )
        self._db.execute("CREATE INDEX ev_ts ON ev (ts, id)")

    def add(self, events: Sequence[LogEvent]) -> None:
        self._db.executemany(
            "INSERT OR IGNORE INTO ev VALUES (?, ?, ?, ?, ?)",
            [(e.timestamp, e.event_id, e.node, e.text, e.ingested) for e in events],
        )

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM ev").fetchone()[0])

    def streams(self) -> tuple[str, ...]:
        return tuple(r[0] for r in self._db.execute("SELECT DISTINCT node FROM ev ORDER BY node"))

    def events(self) -> Iterator[LogEvent]:
        for ts, event_id, node, text, ingested in self._db.execute(
            "SELECT ts, id, node, text, ingested FROM ev ORDER BY ts, id"
        ):
            yield LogEvent(event_id, node, ts, text, ingested)

    def close(self) -> None:
        self._db.close()


def _read_logs(source: CloudWatchLogsSource, spool: _Spool, notes: list[str]) -> None:
    """Poll the source (one page per poll) until it has read through the window's end."""
    for _ in range(MAX_LOG_POLLS):
        batch = source.poll()
        h = batch.health
        if not h.up:
            raise ReplayError(f"cannot read log group {source.log_group!r}: {h.error}")
        spool.add(batch.logs)
        if h.error and not batch.logs:  # e.g. the log group does not exist: nothing to read
            notes.append(h.error)
            return
        if h.lag_s is not None and h.lag_s <= 0.002:  # read through the end of the window
            return
    raise ReplayError(f"log group {source.log_group!r}: still paginating after {MAX_LOG_POLLS} pages")


def _metric_samples(
    source: CloudWatchMetricsSource, clock: _Clock, start: float, end: float, chunk_s: float
) -> Iterator[MetricSample]:
    """The window's samples in time order, read chunk by chunk (the source's lookback is a chunk)."""
    t = start
    while t < end + source.period_s:
        t = min(t + chunk_s, end + source.period_s)
        clock.now = t
        batch = source.poll()
        if not batch.health.up:
            raise ReplayError(f"cannot read metrics namespace {source.namespace!r}: {batch.health.error}")
        yield from (s for s in batch.metrics if start <= s.timestamp <= end)


# ----------------------------------------------------------------------------- the replay


def _nodes_and_spares(
    config: Config, streams: tuple[str, ...], notes: list[str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The replayed job's nodes and spares (see the module docstring)."""
    act = config.actuator
    if act.job_kind == "local":
        return tuple(act.local.nodes), tuple(act.local.spares)
    if act.kind == "none":
        return (tuple(act.none.nodes) or streams), ()
    notes.append(
        f"actuator kind {act.kind}: the spare pool of a past window is unknown; one spare is assumed"
    )
    return streams, (ASSUMED_SPARE,)


def replay(
    config: Config,
    start: float,
    end: float,
    *,
    policies: Sequence[Path] | None = None,
    endpoint_override: str | None = None,
    page_limit: int | None = None,
    metric_chunk_s: float = METRIC_CHUNK_S,
    logs_client: FilterLogEventsClient | None = None,
    metrics_client: GetMetricDataClient | None = None,
) -> ReplayReport:
    """Replay [start, end] (seconds since the epoch) of `config`'s job; see the module docstring.

    policies: replace the config's policy paths (later paths override earlier ones, as in a config).
    page_limit: events per FilterLogEvents page (None: the service's default).
    Raises ValueError for an empty window, ConfigError for policies that do not load, ReplayError
    when a source stays blind.
    """
    from supervisor.daemon import aws_settings
    from supervisor.engine import METRICS_SOURCE, Engine
    from supervisor.journal import Journal

    if not end > start:
        raise ValueError(f"empty window: --to ({iso_utc(end)}) must be after --from ({iso_utc(start)})")
    paths = tuple(Path(p) for p in (policies or config.policies))
    policy: PolicySet = load_policies(paths)
    aws: AwsSettings = aws_settings(config, endpoint_override)
    calls = ApiCallCounter()
    notes: list[str] = []
    window_end = math.floor(end * 1000) / 1000
    with tempfile.TemporaryDirectory(prefix="ftsup-replay-") as tmp:
        spool = _Spool(Path(tmp) / "spool.db")
        journal = Journal(Path(tmp) / "journal.db")
        try:
            logs_source = CloudWatchLogsSource(
                logs_client if logs_client is not None else make_client("logs", aws),
                config.job.log_group,
                aws,
                overlap_s=0.0,
                max_pages_per_poll=1,
                start_time=start,
                clock=lambda: window_end,
                counter=calls,
                page_limit=page_limit,
            )
            if config.sources.logs.enabled:
                _read_logs(logs_source, spool, notes)
            else:
                notes.append("sources.logs.enabled is false: no log events replayed")
            streams = spool.streams()
            nodes, spares = _nodes_and_spares(config, streams, notes)
            clock = _Clock(start)
            job = ReplayJob(config.job.name, nodes, spares, clock)
            engine = Engine(
                job=config.job.name,
                policy=policy,
                journal=journal,
                actuator=job,
                mode=Mode.OBSERVE,
                settle_s=config.incidents.settle_s,
                progress=config.job.progress,
                clock=clock,
            )
            engine.launch()
            metrics_on = config.sources.metrics.enabled
            metric_iter: Iterator[MetricSample] = iter(())
            if metrics_on:
                m = config.sources.metrics
                metric_clock = _Clock(start)
                metric_source = CloudWatchMetricsSource(
                    metrics_client if metrics_client is not None else make_client("cloudwatch", aws),
                    config.job.metrics_namespace,
                    config.job.name,
                    lambda: nodes,
                    aws,
                    stats=dict(m.stats),
                    period_s=m.period_s,
                    lookback_s=max(metric_chunk_s, float(m.period_s)) + m.period_s,
                    clock=metric_clock,
                    counter=calls,
                )
                metric_iter = _metric_samples(metric_source, metric_clock, start, end, metric_chunk_s)
            samples = _drive(
                engine,
                clock,
                spool.events(),
                metric_iter,
                (start, end),
                config.incidents.settle_s,
                METRICS_SOURCE if metrics_on else None,
            )
            if metrics_on and samples == 0:
                notes.append(
                    "metrics are enabled but the window holds no metric datapoints for these nodes: "
                    "absence and stall rules fire as they would have live (disable sources.metrics "
                    "to replay the logs alone)"
                )
            incidents = tuple(_incident(h.incident, h.decision) for h in engine.snapshot().handled)
            return ReplayReport(
                job=config.job.name,
                start=start,
                end=end,
                policies=tuple(str(p) for p in paths),
                settle_s=config.incidents.settle_s,
                log_events=spool.count(),
                log_calls=calls.get("FilterLogEvents"),
                streams=streams,
                nodes=nodes,
                metrics_enabled=metrics_on,
                metric_samples=samples,
                metric_calls=calls.get("GetMetricData"),
                incidents=incidents,
                notes=tuple(notes),
            )
        finally:
            journal.close()
            spool.close()


@dataclass
class _Pending:
    logs: list[LogEvent] = field(default_factory=list)
    metrics: list[MetricSample] = field(default_factory=list)


def _drive(
    engine: Engine,
    clock: _Clock,
    logs: Iterator[LogEvent],
    metrics: Iterator[MetricSample],
    window: tuple[float, float],
    settle_s: float,
    metrics_source: str | None,
) -> int:
    """Feed events in time order on the replay clock; returns the number of metric samples fed.

    `metrics_source` is the metrics source's name when metrics are replayed (its health is reported
    up at every tick, as a polling source would), else None.
    """
    start, end = window
    metrics_on = metrics_source is not None
    pending = _Pending()
    n_samples = 0

    def deliver(t: float) -> None:
        clock.now = t
        health = SourceHealth("logs", True, t, lag_s=0.0)
        if pending.logs:
            engine.process_batch(SourceBatch("logs", tuple(pending.logs), (), None, health))
        if metrics_source is not None:
            mhealth = SourceHealth(metrics_source, True, t)
            engine.process_batch(SourceBatch(metrics_source, (), tuple(pending.metrics), None, mhealth))
        pending.logs.clear()
        pending.metrics.clear()
        engine.tick()

    def busy() -> bool:
        return bool(engine.correlator.pending() or engine.stream.open_units())

    def advance(next_tick: float, until: float) -> float:
        """Tick at every due boundary before `until`; returns the first boundary not yet ticked."""
        while next_tick < until:
            deliver(next_tick)
            if busy():
                next_tick += TICK_S
            else:  # quiet: jump to the boundary just before `until` (bounded for metric rules)
                k = max(1, math.floor((until - next_tick) / TICK_S))
                jump = k * TICK_S
                if metrics_on:
                    jump = min(jump, METRIC_EVAL_S)
                next_tick += jump
        return next_tick

    log_items: Iterator[tuple[float, int, LogEvent | MetricSample]] = ((e.timestamp, 0, e) for e in logs)
    metric_items: Iterator[tuple[float, int, LogEvent | MetricSample]] = (
        (s.timestamp, 1, s) for s in metrics
    )
    merged = heapq.merge(log_items, metric_items, key=lambda x: (x[0], x[1]))
    next_tick = start + TICK_S
    for ts, _, item in merged:
        next_tick = advance(next_tick, ts)
        if isinstance(item, LogEvent):
            pending.logs.append(item)
        else:
            pending.metrics.append(item)
            n_samples += 1
    next_tick = advance(next_tick, end)
    deliver(max(next_tick, end))
    limit = end + settle_s + DRAIN_EXTRA_S  # an incident opened just before the end is still decided
    t = clock.now
    while busy() and t < limit:
        t += TICK_S
        deliver(t)
    return n_samples


def _incident(incident: Incident, decision: Decision) -> ReplayIncident:
    root = incident.root_cause
    return ReplayIncident(
        incident_id=incident.incident_id,
        opened_at=incident.opened_at,
        decided_at=decision.decided_at,
        rule=root.rule,
        failure_class=root.failure_class.value,
        scope=root.scope.value,
        severity=root.severity.value,
        node=root.node,
        evidence=root.evidence,
        verdict=decision.verdict,
        reason=decision.reason,
        cordon=decision.node if decision.verdict is Verdict.CORDON_AND_RESTART else None,
        page=decision.page,
        signals=len(incident.signals),
        nodes=incident.nodes,
    )


def report_json(report: ReplayReport) -> str:
    """The report as JSON (``--json``)."""
    return json.dumps(report.as_json(), indent=2)
