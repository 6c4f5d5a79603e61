"""Prometheus metrics for the supervisor, on an injected registry (never the global one).

Every label set the supervisor knows at start-up is created at construction, at 0, so a dashboard
can tell "no Xid 79 seen" (0) from "the supervisor never reported" (absent). Values that are *unknown*
rather than zero (a source's lag before its first poll, a budget not yet computed) are NaN: unknown is
never healthy. Sources start down (``ftsup_source_up`` 0, ``ftsup_degraded`` 1) until they report up:
blindness is not health.

Metric                                   labels          kind
ftsup_events_total                       source          counter   events read per source
ftsup_signals_total                      rule            counter   new (de-duplicated) signals per rule
ftsup_incidents_total                    class, verdict  counter   incidents per root cause's failure
                                                                   class and decided verdict
ftsup_decisions_total                    verdict, mode   counter   decisions (observe or act)
ftsup_actions_total                      kind, result    counter   actions carried out, result ok|failed
ftsup_alerts_total                       sink, result    counter   alert deliveries, result ok|failed
ftsup_source_up                          source          gauge     1 up, 0 down / not yet seen
ftsup_source_lag_seconds                 source          gauge     now - newest data read (NaN unknown)
ftsup_restart_budget_left                training_job    gauge     restarts left in the window (NaN unknown)
ftsup_ettr                               training_job    gauge     effective training time ratio (NaN unknown)
ftsup_job_attempt                        training_job    gauge     current attempt number
ftsup_degraded                           -               gauge     1 when any source is down
ftsup_detection_latency_seconds          -               histogram first line of an incident written
                                                                   (event time) -> its decision
ftsup_api_budget_waits_total             -               counter   AWS call attempts that waited for a
                                                                   token of the call budget
ftsup_api_budget_wait_seconds_total      -               counter   seconds waited for those tokens
ftsup_api_budget_denied_total            -               counter   attempts refused: no token within
                                                                   their retry budget (read as throttled)

The supervised job's name is the label `training_job`, not `job`: Prometheus sets `job` on every
scraped series to the scrape job's name (and would rename ours to `exported_job`).

ETTR here is deliberately simple (`ettr_from_attempts`): the time training was seen stepping (per
attempt, first step to last step read from the logs) divided by the wall time since the job's first
launch. Work lost since the last checkpoint is not subtracted; a fuller goodput breakdown is in
`ftsup report`.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from supervisor.vocabulary import FailureClass, Mode, Verdict

if TYPE_CHECKING:
    from supervisor.journal import AttemptRow

RESULTS = ("ok", "failed")
FAILURE_CLASSES = tuple(c.value for c in FailureClass)
ACTION_KINDS = tuple(v.value for v in Verdict if v is not Verdict.IGNORE)
# Detection latency spans seconds (a log line read on the next poll) to tens of minutes (a stall rule).
LATENCY_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)


def _names(values: Iterable[object]) -> tuple[str, ...]:
    """Label values as plain strings (enums by value), de-duplicated, order kept."""
    out: list[str] = []
    for v in values:
        s = str(v.value) if isinstance(v, Verdict | Mode | FailureClass) else str(v)
        if s not in out:
            out.append(s)
    return tuple(out)


class SupervisorMetrics:
    """The supervisor's metrics. Thread-safe (prometheus_client's metrics are); the degraded flag is
    derived from the sources' last reported health under a lock.

    Label values outside those given at construction are accepted and created on first use (a policy
    reload may add a rule); only the ones known up front are guaranteed to exist at 0.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        sources: Iterable[str],
        rules: Iterable[str],
        verdicts: Iterable[str | Verdict] = tuple(Verdict),
        *,
        modes: Iterable[str | Mode] = tuple(Mode),
        sinks: Iterable[str] = (),
        jobs: Iterable[str] = (),
        action_kinds: Iterable[str | Verdict] = ACTION_KINDS,
    ) -> None:
        self.registry = registry
        self._lock = threading.Lock()
        source_names = _names(sources)
        verdict_names = _names(verdicts)
        self._up: dict[str, bool] = dict.fromkeys(source_names, False)

        self.events = Counter("ftsup_events_total", "Events read, per source.", ["source"], registry=registry)
        self.signals = Counter(
            "ftsup_signals_total", "New (de-duplicated) signals, per rule.", ["rule"], registry=registry
        )
        self.incidents = Counter(
            "ftsup_incidents_total",
            "Incidents, per root cause's failure class and decided verdict.",
            ["class", "verdict"],
            registry=registry,
        )
        self.decisions = Counter(
            "ftsup_decisions_total",
            "Decisions, per verdict and mode.",
            ["verdict", "mode"],
            registry=registry,
        )
        self.actions = Counter(
            "ftsup_actions_total",
            "Actions carried out, per kind and result.",
            ["kind", "result"],
            registry=registry,
        )
        self.alerts = Counter(
            "ftsup_alerts_total",
            "Alert deliveries, per sink and result.",
            ["sink", "result"],
            registry=registry,
        )
        self.source_up = Gauge(
            "ftsup_source_up",
            "1 when the source can see, 0 when down or not yet polled.",
            ["source"],
            registry=registry,
        )
        self.source_lag = Gauge(
            "ftsup_source_lag_seconds",
            "Now minus the newest data time read (NaN: unknown).",
            ["source"],
            registry=registry,
        )
        self.restart_budget = Gauge(
            "ftsup_restart_budget_left",
            "Restarts left in the budget window (NaN: unknown).",
            ["training_job"],
            registry=registry,
        )
        self.ettr_gauge = Gauge(
            "ftsup_ettr",
            "Effective training time ratio: seconds training was seen stepping (per attempt, first to "
            "last step read) / wall seconds since the job's first launch; 0..1, NaN: unknown.",
            ["training_job"],
            registry=registry,
        )
        self.job_attempt = Gauge(
            "ftsup_job_attempt",
            "The job's current attempt (launch) number.",
            ["training_job"],
            registry=registry,
        )
        self.degraded = Gauge(
            "ftsup_degraded", "1 when any source is down: absence rules are suspended.", registry=registry
        )
        self.budget_waits = Counter(
            "ftsup_api_budget_waits",
            "AWS call attempts that waited for a token of the call budget (aws.max_calls_per_s).",
            registry=registry,
        )
        self.budget_wait_s = Counter(
            "ftsup_api_budget_wait_seconds",
            "Seconds AWS call attempts waited for a token of the call budget.",
            registry=registry,
        )
        self.budget_denied = Counter(
            "ftsup_api_budget_denied",
            "AWS call attempts refused by the call budget (no token within their retry budget).",
            registry=registry,
        )
        self.latency = Histogram(
            "ftsup_detection_latency_seconds",
            "Seconds from an incident's first line written (event time of its first signal) to its decision.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

        for source in source_names:
            self.events.labels(source=source)
            self.source_up.labels(source=source).set(0)
            self.source_lag.labels(source=source).set(math.nan)
        for rule in _names(rules):
            self.signals.labels(rule=rule)
        for verdict in verdict_names:
            for failure_class in FAILURE_CLASSES:
                self.incidents.labels(**{"class": failure_class, "verdict": verdict})
            for mode in _names(modes):
                self.decisions.labels(verdict=verdict, mode=mode)
        for kind in _names(action_kinds):
            for result in RESULTS:
                self.actions.labels(kind=kind, result=result)
        for sink in _names(sinks):
            self.add_sink(sink)
        for job in _names(jobs):
            self.add_job(job)
        self._update_degraded()

    # ------------------------------------------------------------------ declaring late label values

    def add_sink(self, sink: str) -> None:
        """Creates the sink's ok/failed counters at 0 (sinks are often built after the metrics)."""
        for result in RESULTS:
            self.alerts.labels(sink=sink, result=result)

    def add_job(self, job: str) -> None:
        """Creates the job's gauges: budget and ETTR unknown (NaN), attempt 0."""
        self.restart_budget.labels(training_job=job).set(math.nan)
        self.ettr_gauge.labels(training_job=job).set(math.nan)
        self.job_attempt.labels(training_job=job).set(0)

    def add_source(self, source: str) -> None:
        """Declares a source (down until it reports), as the constructor does."""
        with self._lock:
            self._up.setdefault(source, False)
        self.events.labels(source=source)
        self.source_up.labels(source=source).set(0)
        self.source_lag.labels(source=source).set(math.nan)
        self._update_degraded()

    # ------------------------------------------------------------------ updates

    def event_seen(self, source: str, n: int = 1) -> None:
        if n < 0:
            raise ValueError(f"event count must be >= 0, got {n}")
        self.events.labels(source=source).inc(n)

    def signal(self, rule: str, n: int = 1) -> None:
        self.signals.labels(rule=rule).inc(n)

    def incident(self, verdict: str | Verdict, failure_class: str | FailureClass) -> None:
        """Counts one decided incident: `failure_class` is its root cause's, `verdict` the decision's."""
        labels = {"class": _names([failure_class])[0], "verdict": _names([verdict])[0]}
        self.incidents.labels(**labels).inc()

    def decision(self, verdict: str | Verdict, mode: str | Mode) -> None:
        self.decisions.labels(verdict=_names([verdict])[0], mode=_names([mode])[0]).inc()

    def action(self, kind: str | Verdict, ok: bool) -> None:
        self.actions.labels(kind=_names([kind])[0], result="ok" if ok else "failed").inc()

    def alert(self, sink: str, ok: bool) -> None:
        """Counts one alert delivery outcome. Its signature matches the sinks' `on_delivery` hook."""
        self.alerts.labels(sink=sink, result="ok" if ok else "failed").inc()

    def source_health(self, source: str, up: bool, lag_s: float | None) -> None:
        """Records a source's health; `lag_s` None means unknown (NaN), never 0."""
        self.source_up.labels(source=source).set(1 if up else 0)
        self.source_lag.labels(source=source).set(math.nan if lag_s is None else lag_s)
        with self._lock:
            self._up[source] = up
        self._update_degraded()

    def budget_left(self, job: str, n: int | None) -> None:
        self.restart_budget.labels(training_job=job).set(math.nan if n is None else n)

    def ettr(self, job: str, ratio: float | None) -> None:
        """Sets the job's ETTR (see `ettr_from_attempts`); None means unknown (NaN), never 0."""
        self.ettr_gauge.labels(training_job=job).set(math.nan if ratio is None else ratio)

    def attempt(self, job: str, n: int) -> None:
        self.job_attempt.labels(training_job=job).set(n)

    def api_budget_wait(self, seconds: float) -> None:
        """An AWS call attempt waits `seconds` for a budget token (`BudgetObserver`)."""
        self.budget_waits.inc()
        self.budget_wait_s.inc(max(0.0, seconds))

    def api_budget_denied(self) -> None:
        """An AWS call attempt got no budget token within its retry budget (`BudgetObserver`)."""
        self.budget_denied.inc()

    def detection_latency(self, seconds: float) -> None:
        # Clock skew between a node and the supervisor can make this slightly negative; clamp it
        # into the first bucket rather than dropping the observation.
        self.latency.observe(max(0.0, seconds))

    @property
    def is_degraded(self) -> bool:
        with self._lock:
            return not all(self._up.values()) if self._up else False

    def _update_degraded(self) -> None:
        self.degraded.set(1 if self.is_degraded else 0)


def ettr_from_attempts(attempts: Sequence[AttemptRow], now: float) -> float | None:
    """The simple ETTR of `ftsup_ettr`: productive seconds / wall seconds, in [0, 1].

    productive: the sum over attempts of (last_step_at - first_step_at), the span training was seen
    stepping (an attempt with no step read counts 0). wall: `now` minus the job's first launch (the
    earliest `launched_at`, else the earliest `first_step_at` for a job only watched). None (unknown)
    when no launch or step time is known, or no wall time has passed yet.
    """
    starts = [a.launched_at for a in attempts if a.launched_at is not None]
    if not starts:
        starts = [a.first_step_at for a in attempts if a.first_step_at is not None]
    if not starts:
        return None
    wall = now - min(starts)
    if wall <= 0:
        return None
    productive = sum(
        max(0.0, a.last_step_at - a.first_step_at)
        for a in attempts
        if a.first_step_at is not None and a.last_step_at is not None
    )
    return min(1.0, max(0.0, productive / wall))


def serve(
    registry: CollectorRegistry, address: str = "127.0.0.1", port: int = 0
) -> tuple[WSGIServer, threading.Thread]:
    """Serves `registry` at http://address:port/metrics from a daemon thread.

    `port` 0 binds a free port; the bound one is ``server.server_port``. Stop with
    ``server.shutdown(); server.server_close()``.
    """
    server, thread = start_http_server(port, addr=address, registry=registry)
    return server, thread


def bound_port(server: WSGIServer) -> int:
    """The TCP port `server` listens on (useful after `serve(..., port=0)`)."""
    return int(server.server_port)
