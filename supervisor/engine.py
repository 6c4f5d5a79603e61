"""The engine: one thread that owns the job state and the journal.

    source threads --SourceBatch--> queue --> engine thread --Action--> action thread
                                               ^                             |
                                               +-------- ActionResult -------+

Per batch: classify log lines and metric samples into signals, read training progress, fold
signals into incidents; per tick: evaluate time-based metric rules, decide ready incidents,
journal, alert, and hand actions to the action thread. The engine never blocks on I/O other
than its own journal; sources and actions run on their own threads with their own timeouts.

Seam rules (see README, "Architecture"):
- a source's cursor is persisted only when no incident is still gathering signals (and no
  traceback is half read), and after
  the decisions of everything read before it are journaled: a crash re-reads, never skips;
- an action's intent is journaled before the actuator is called, its result after;
- lines of a replaced attempt (event time before the current launch) are never a new incident;
- while a source is blind, rules that need it (absence, stalls) do not fire.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import re2
import structlog

from supervisor.act.base import Actuator, observed_done
from supervisor.alert.base import AlertSink
from supervisor.alert.build import AlertContext, build_alert, resolve_alert
from supervisor.chaos import crash_point
from supervisor.classify.exits import exit_signal
from supervisor.classify.matcher import LogClassifier, clean_text
from supervisor.classify.metric_rules import MetricWatch
from supervisor.classify.policy import PolicySet
from supervisor.classify.units import StreamClassifier
from supervisor.config import ProgressPatterns
from supervisor.decide.decide import JobState, Limits, decide, remember, returns_to_service
from supervisor.incidents.correlate import Correlator
from supervisor.journal import Journal
from supervisor.report.metrics import SupervisorMetrics, ettr_from_attempts
from supervisor.sources.base import Source
from supervisor.vocabulary import (
    Action,
    ActionResult,
    Alert,
    Cursor,
    Decision,
    Incident,
    JobObservation,
    LogEvent,
    Mode,
    Signal,
    SourceBatch,
    SourceHealth,
    Verdict,
)

log = structlog.get_logger("ftsup.engine")


class ActionFence(Protocol):
    """Admits an action right before it is applied: the fencing token it runs under, or None to drop
    it (this replica no longer holds the lease), or the result a shared ledger recorded for its key
    (another replica did it: use that, do not act). `record` gets the result of an admitted action
    after apply and never raises. `supervisor.ha.Leadership` implements it."""

    def admit(self, action: Action) -> int | ActionResult | None: ...

    def record(self, action: Action, result: ActionResult) -> None: ...


def _safe_event(event: LogEvent) -> LogEvent:
    """The event with a node (stream) name that SQLite and RE2 accept: CloudWatch's JSON may decode
    to a lone surrogate, which no UTF-8 encoder takes. The text is cleaned by the classifier."""
    node = event.node
    if node.isascii():
        return event
    return replace(event, node=node.encode("utf-8", "replace").decode("utf-8"))


METRICS_SOURCE = "metrics"  # the name of the source whose health gates the metric rules
UNIT_IDLE_S = 0.5  # a traceback unit closes this long (wall time) after its last line
GAUGES_EVERY_S = 5.0  # how often tick() refreshes the restart budget and ETTR gauges (clock time)


@dataclass(frozen=True)
class Handled:
    """One incident and what became of it (for snapshots, the demo and tests)."""

    incident: Incident
    decision: Decision
    result: ActionResult | None = None


@dataclass(frozen=True)
class Snapshot:
    job: str
    attempt: int
    nodes: tuple[str, ...]
    launched_at: float | None
    resume_step: int | None
    first_step_at: float | None
    last_step: int | None
    halted: bool
    acting: bool
    degraded: tuple[str, ...]  # sources currently blind
    handled: tuple[Handled, ...]


@dataclass
class _Progress:
    resume_step: int | None = None
    first_step_at: float | None = None
    last_step: int | None = None
    last_step_at: float | None = None


@dataclass
class _State:
    job: JobState
    launched_at: float | None = None
    acting: bool = False
    hold_until: float = 0.0  # observe mode: fold follow-up lines into the last incident until then
    progress: _Progress = field(default_factory=_Progress)
    handled: dict[str, Handled] = field(default_factory=dict)
    open_alerts: dict[str, Alert] = field(default_factory=dict)
    source_up: dict[str, bool] = field(default_factory=dict)  # each source's last reported health
    exit_reported: int = -1  # the attempt whose failed exit was already turned into a signal
    exit_checked_at: float = 0.0


def limits_from(policy: PolicySet) -> Limits:
    b = policy.budgets
    return Limits(
        restart_max=b.restart.max,
        restart_within_s=b.restart.within_s,
        backoff_s=b.restart.backoff_s,
        backoff_max_s=b.restart.backoff_max_s,
        cordon_max_nodes=b.cordon.max_nodes,
        cordon_within_s=b.cordon.within_s,
        cordon_max_fraction=b.cordon.max_fraction,
        restart_jitter=b.restart.jitter,
        shared_cause_nodes=b.shared_cause.nodes,
        shared_cause_within_s=b.shared_cause.within_s,
        lemon_incidents=b.lemon.incidents,
        lemon_within_s=b.lemon.within_s,
        lemon_watch_s=b.lemon.watch_after_return_s,
        lemon_watch_incidents=b.lemon.watch_incidents,
        flap_min_interval_s=b.flapping.min_interval_s,
        flap_max=b.flapping.max_flaps,
        flap_within_s=b.flapping.within_s,
    )


class Engine:
    """Owns the state of one supervised job. See the module docstring for the flow."""

    # Region, log group and instance ids the alerts link to (set by the daemon from the config).
    alert_context: AlertContext | None = None
    # High availability: set by the daemon to its Leadership; None acts without a lease.
    fence: ActionFence | None = None
    # The metric whose samples also count as training progress (a step number), set by the daemon
    # when the logs source's server-side filter drops per-step lines (supervisor.classify.prefilter).
    progress_metric: str | None = None

    def __init__(
        self,
        *,
        job: str,
        policy: PolicySet,
        journal: Journal,
        actuator: Actuator | None,
        mode: Mode,
        settle_s: float = 5.0,
        progress: ProgressPatterns | None = None,
        sinks: Sequence[AlertSink] = (),
        metrics: SupervisorMetrics | None = None,
        clock: Callable[[], float] = time.time,
        observe_hold_s: float = 60.0,
        tick_s: float = 0.25,
    ) -> None:
        self.job = job
        self.policy = policy
        self.journal = journal
        self.actuator = actuator
        self.mode = mode
        self.sinks = list(sinks)
        self.metrics = metrics
        self.clock = clock
        self.limits = limits_from(policy)
        self.classifier = LogClassifier(policy.log_rules)
        self.stream = StreamClassifier(self.classifier)
        self.watch = MetricWatch(policy.metric_rules)
        self.correlator = Correlator(job, settle_s)
        patterns = progress or ProgressPatterns()
        self._step_re = re2.compile(patterns.step) if patterns.step else None
        self._resume_re = re2.compile(patterns.resume) if patterns.resume else None
        self._checkpoint_re = re2.compile(patterns.checkpoint) if patterns.checkpoint else None
        self._observe_hold_s = observe_hold_s
        self._tick_s = tick_s
        self._inbox: queue.Queue[SourceBatch | tuple[Action, ActionResult]] = queue.Queue(maxsize=1000)
        self._actions: queue.Queue[Action | None] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sources: list[tuple[Source, float]] = []
        self._held_cursors: dict[str, Cursor] = {}
        self._lock = threading.Lock()  # guards _state for snapshot() readers
        self._gauges_at = -math.inf  # when the budget and ETTR gauges were last refreshed (clock time)
        observed = actuator.observe() if actuator is not None else None
        # Budgets count what happened before a daemon restart too: a crash loop must not reset them.
        restarts = tuple(
            a.launched_at for a in journal.attempts(job) if a.cause_incident is not None and a.launched_at
        )
        cordon_rows = [
            row
            for row in journal.actions(job)
            if row.action.kind is Verdict.CORDON_AND_RESTART and row.result is not None and row.result.ok
        ]
        cordons = tuple(row.result.finished_at for row in cordon_rows if row.result is not None)
        # The safety rails (lemon nodes, flapping, shared cause) need each decided incident and which
        # cordoned nodes came back: rebuilt from the journal, so a daemon restart forgets nothing.
        last_decision = {row.decision.incident_id: row.decision for row in journal.decisions(job)}
        decided = [
            remember(row.incident, last_decision[row.incident.incident_id])
            for row in journal.incidents(job)
            if row.incident.incident_id in last_decision
        ]
        history = tuple(sorted(decided, key=lambda e: e.at))
        returned = returns_to_service(
            (
                (row.action.node, row.result.finished_at)
                for row in cordon_rows
                if row.action.node and row.result
            ),
            ((a.launched_at, a.nodes) for a in journal.attempts(job) if a.launched_at is not None),
        )
        self._state = _State(
            job=JobState(
                job=job,
                attempt=max(observed.attempt, 0) if observed else 0,
                nodes=observed.nodes if observed else (),
                spares=observed.spares if observed else (),
                cordoned=observed.cordoned if observed else (),
                restarts=restarts,
                cordons=cordons,
                history=history,
                returned=returned,
            ),
            # Lines written before the running attempt's launch are of a replaced attempt, also for a
            # job adopted after a restart (which launch() or a relaunch would otherwise set).
            launched_at=observed.launched_at if observed else None,
        )

    # ------------------------------------------------------------------ lifecycle

    def add_source(self, source: Source, poll_interval_s: float) -> None:
        """Register a source; its saved cursor (if any) is restored before the first poll."""
        saved = self.journal.load_cursor(source.name)
        if saved is not None:
            source.restore(saved)
        self._sources.append((source, poll_interval_s))

    def clear_halt(self) -> None:
        with self._lock:
            self._state.job = replace(self._state.job, halted=False)

    def current_nodes(self) -> tuple[str, ...]:
        """The job's current members (read by the metrics source from its own thread)."""
        return self._state.job.nodes

    def follow(self, seen: JobObservation) -> None:
        """HA takeover without a shared journal: make the observed attempt the current one (journaled
        when new), so lines from before its launch, which a previous leader handled, are not decided
        again."""
        self._adopt(seen, seen.launched_at or self.clock(), restarted_at=None)

    def launch(self) -> ActionResult:
        """Start the job through the actuator (attempt 0) and record the attempt."""
        if self.actuator is None:
            raise RuntimeError("no actuator configured: nothing to launch")
        result = self.actuator.launch()
        self._after_relaunch(result, cause=None)
        return result

    def start(self) -> None:
        """Start source threads, the action thread and the engine thread."""
        self.reconcile()
        for source, interval in self._sources:
            self._spawn(f"source-{source.name}", self._poll_loop, source, interval)
        self._spawn("actions", self._action_loop)
        self._spawn("engine", self._engine_loop)

    def stop(self, timeout_s: float = 15.0) -> None:
        self._stop.set()
        self._actions.put(None)
        for t in self._threads:
            t.join(timeout=timeout_s)
        for sink in self.sinks:
            sink.close()

    def _spawn(self, name: str, target: Callable[..., None], *args: Any) -> None:
        t = threading.Thread(target=target, args=args, name=f"ftsup-{name}", daemon=True)
        t.start()
        self._threads.append(t)

    def reconcile(self) -> None:
        """Settle each intent journaled without a result (the daemon died mid-action) by observing
        the target before any retry (`observed_done`): an action visibly done is journaled as done and
        never repeated; one visibly not done is carried out now, under the same idempotency key (with
        a fence: queued for the action thread, which admits it). Either way it completes like any
        action: result, relaunched attempt and alert (the outbox drops an alert recorded before).
        An intent whose incident is not in the journal cannot be judged: failed, not retried (the
        job is then halted for a human). Idempotent; call before the engine's threads run."""
        for action in self.journal.pending_intents():
            if action.job != self.job:
                continue
            incident = self.journal.incident(action.incident_id)
            decisions = self.journal.decisions(incident_id=action.incident_id)
            seen = self.actuator.observe() if self.actuator is not None else None
            now = self.clock()
            if incident is None or not decisions or seen is None:
                detail = "daemon restarted before the result was journaled; cannot judge it; not retried"
                log.error("intent reconciled as failed", key=action.idempotency_key, detail=detail)
                self.complete_action(action, ActionResult(action.idempotency_key, False, detail, now, now))
                continue
            with self._lock:
                self._state.handled[incident.incident_id] = Handled(incident, decisions[-1].decision)
                # Completion ends the attempt the intent was made in and adopts the observed one.
                self._state.job = replace(self._state.job, attempt=incident.attempt)
            if observed_done(action.kind.value, action.node, incident.attempt, seen):
                detail = (
                    f"done before the daemon restarted: observed attempt {seen.attempt} "
                    f"running={seen.running} on {', '.join(seen.nodes)}; not repeated"
                )
                log.warning("intent reconciled as done", key=action.idempotency_key, detail=detail)
                result = ActionResult(
                    action.idempotency_key, True, detail, now, now,
                    attempt=seen.attempt if seen.running else None, nodes=seen.nodes,
                )  # fmt: skip
                self.complete_action(action, result)
                continue
            log.warning("intent not done before the daemon restarted: doing it", key=action.idempotency_key)
            self._state.acting = True
            if self.fence is not None:
                self._actions.put(action)
                continue
            self.complete_action(action, self._apply(action))

    # ------------------------------------------------------------------ threads

    def _poll_loop(self, source: Source, interval: float) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                batch = source.poll()
            except Exception as exc:  # a source must not raise; if it does, it is blind, not dead
                log.exception("source raised", source=source.name)
                health = SourceHealth(source.name, False, self.clock(), repr(exc))
                batch = SourceBatch(source.name, (), (), None, health)
            crash_point("poll.batch")
            self._inbox.put(batch)
            self._stop.wait(max(0.0, interval - (time.monotonic() - started)))

    def _apply(self, action: Action) -> ActionResult:
        """`actuator.apply`, never raising (the actuator contract says it does not; be safe anyway)."""
        assert self.actuator is not None
        crash_point("action.apply")
        try:
            result = self.actuator.apply(action)
        except Exception as exc:
            now = self.clock()
            result = ActionResult(action.idempotency_key, False, f"actuator raised: {exc!r}", now, now)
        crash_point("action.applied")
        return result

    def _action_loop(self) -> None:
        while True:
            action = self._actions.get()
            if action is None:
                return
            assert self.actuator is not None
            # High availability (supervisor/ha): with a fence set, the lease must still be held with
            # the same token right before apply; a deposed leader drops the action and journals
            # nothing (the new leader settles the intent). The token goes into the result's detail.
            token: int | None = None
            if self.fence is not None:
                admitted = self.fence.admit(action)
                if admitted is None:
                    log.error("action dropped: lease not held", key=action.idempotency_key)
                    continue
                if isinstance(admitted, ActionResult):  # done before (shared ledger): never repeated
                    self._inbox.put((action, admitted))
                    continue
                token = admitted
            result = self._apply(action)
            if token is not None and self.fence is not None:
                result = replace(result, detail=f"{result.detail} [lease token {token}]")
                self.fence.record(action, result)
            self._inbox.put((action, result))

    def _engine_loop(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._inbox.get(timeout=self._tick_s)
            except queue.Empty:
                item = None
            try:
                if isinstance(item, SourceBatch):
                    self.process_batch(item)
                elif item is not None:
                    self.complete_action(*item)
                self.tick()
            except Exception:
                log.exception("engine iteration failed")

    # ------------------------------------------------------------- the pipeline (tests drive it directly)

    def process_batch(self, batch: SourceBatch) -> None:
        now = self.clock()
        self._note_health(batch)
        if self.metrics is not None:
            self.metrics.event_seen(batch.source, len(batch.logs) + len(batch.metrics))
        if batch.logs or batch.metrics:
            self.journal.count_events(batch.source, len(batch.logs) + len(batch.metrics))
        signals: list[Signal] = []
        step_before = self._state.progress.last_step
        current = [_safe_event(e) for e in batch.logs if self._current(e.timestamp)]
        for event in current:
            self._read_progress(event)
        signals.extend(
            self.stream.feed_many([(e.node, e.text, e.timestamp, e.event_id, None) for e in current], now)
        )
        members = set(self._state.job.nodes)
        for sample in batch.metrics:
            if sample.node in members and self._current(sample.timestamp):
                signals.extend(self.watch.observe(sample))
                if sample.metric == self.progress_metric and math.isfinite(sample.value):
                    self._note_step(int(sample.value), sample.timestamp)
        if self._state.progress.last_step != step_before:
            self._update_last_progress()  # one write per batch, so the journal knows how far training got
        self._accept(signals, now)
        if batch.cursor is not None:
            self._held_cursors[batch.source] = batch.cursor
            self._save_cursors_if_settled()

    def tick(self) -> None:
        now = self.clock()
        # Metric rules need the metrics source to be seeing now; a source that is absent, has not
        # answered yet, or is down leaves absence and stall rules suspended (blindness is not health).
        metrics_up = self._state.source_up.get(METRICS_SOURCE, False)
        # A traceback whose last line came a moment ago is complete: Python writes it in one go.
        closed = self.stream.flush(now, UNIT_IDLE_S)
        self._accept([sig for sig in closed if self._current(sig.timestamp)], now)
        if not self._state.acting and not self._state.job.halted:
            self._accept(self.watch.evaluate(now, self._state.job.nodes, metrics_up), now)
            self._check_exits(now)
        for incident in self.correlator.ready(now):
            self._decide(incident, now)
        self._save_cursors_if_settled()
        self._update_gauges(now)

    def _check_exits(self, now: float, every_s: float = 1.0) -> None:
        """Observe the job once a second: adopt a relaunch done outside ftsup (a scheduler's own
        requeue, an operator), and turn a failed exit of the current attempt's processes into a
        signal, once per attempt."""
        st = self._state
        if self.actuator is None or now - st.exit_checked_at < every_s:
            return
        st.exit_checked_at = now
        seen = self.actuator.observe()
        if seen.attempt > st.job.attempt:
            self._adopt_relaunch(seen, now)
            return
        if seen.attempt != st.job.attempt or st.exit_reported == st.job.attempt:
            return
        found = exit_signal(self.job, seen.attempt, seen.exit_codes, now)
        if found is not None:
            st.exit_reported = seen.attempt
            self._accept([found], now)

    def _adopt_relaunch(self, seen: JobObservation, now: float) -> None:
        """The job runs a newer attempt than ftsup launched: Slurm requeued it after a node went
        down, or an operator restarted it. Follow it (nodes, launch time, metric clocks) without
        counting it against ftsup's restart budget: ftsup did not decide it."""
        old = self._state.job
        log.warning(
            "job relaunched outside ftsup; following it",
            attempt=seen.attempt,
            previous=old.attempt,
            nodes=list(seen.nodes),
        )
        started = seen.launched_at or now
        self.journal.update_attempt(
            self.job, old.attempt, ended_at=started, end_reason="relaunched outside ftsup"
        )
        self._adopt(seen, started, restarted_at=None)

    def _current(self, timestamp: float) -> bool:
        """Lines from before the current launch belong to a replaced attempt."""
        launched = self._state.launched_at
        return launched is None or timestamp >= launched

    def _accept(self, signals: Sequence[Signal], now: float) -> None:
        fresh = [s for s in signals if not self.journal.signal_seen(s)]
        if not fresh:
            return
        if self.metrics is not None:
            for s in fresh:
                self.metrics.signal(s.rule)
        st = self._state
        if st.job.halted or st.acting or now < st.hold_until:
            log.info("signals folded into the incident being handled", count=len(fresh), rule=fresh[0].rule)
            return
        for incident in self.correlator.add(fresh, st.job.attempt, now):
            self._decide(incident, now)

    def _note_step(self, step: int, at: float) -> None:
        """Training reached `step` at `at` (a step line, or a sample of `progress_metric`)."""
        p = self._state.progress
        if p.first_step_at is None:
            p.first_step_at = at
            self.journal.update_attempt(self.job, self._state.job.attempt, first_step_at=at)
            self._resolve_alerts(at)
        if p.last_step is None or step > p.last_step:
            p.last_step, p.last_step_at = step, at

    def _read_progress(self, event: LogEvent) -> None:
        text = event.text
        if '"event"' not in text:  # cheap prefilter: most lines are not progress lines
            return
        text = clean_text(text)  # RE2 takes valid UTF-8 only (a line may hold a lone surrogate)
        p = self._state.progress
        m = self._step_re.search(text) if self._step_re is not None else None
        if m is not None:
            self._note_step(int(m.group("step")), event.timestamp)
            return
        m = self._resume_re.search(text) if self._resume_re is not None else None
        if m is not None:
            if p.resume_step is None:
                p.resume_step = int(m.group("step"))
                self.journal.update_attempt(self.job, self._state.job.attempt, resume_step=p.resume_step)
            return
        ckpt_re = self._checkpoint_re
        m = ckpt_re.search(text) if ckpt_re is not None else None
        if ckpt_re is not None and m is not None:
            # Goodput accounting measures work lost from the last committed checkpoint (idempotent
            # per attempt and step, so a re-read overlap window records it once).
            seconds = m.group("seconds") if "seconds" in ckpt_re.groupindex else None
            self.journal.add_checkpoint(
                self.job,
                self._state.job.attempt,
                int(m.group("step")),
                event.timestamp,
                float(seconds) if seconds else None,
            )

    # ------------------------------------------------------------------ decide and act

    def _decide(self, incident: Incident, now: float) -> None:
        if self.journal.has_incident(incident.incident_id):
            log.info("incident already decided before a restart of the daemon", incident=incident.incident_id)
            return
        decision = decide(self._state.job, incident, self.limits, now)
        acting = (
            self.mode is Mode.ACT and self.actuator is not None and decision.verdict is not Verdict.IGNORE
        )
        action = None
        plan: list[str] = []
        if acting:
            action = Action(
                kind=decision.verdict,
                job=self.job,
                incident_id=incident.incident_id,
                idempotency_key=f"{incident.incident_id}:{decision.verdict.value}",
                node=decision.node,
                delay_s=decision.delay_s,
                reason=decision.reason,
            )
            assert self.actuator is not None
            plan = self.actuator.plan(action)
        with self.journal.transaction():
            self.journal.add_signals(self.job, incident.attempt, incident.signals)
            self.journal.add_incident(incident)
            crash_point("decide.incident")
            self.journal.add_decision(decision, self.mode)
            crash_point("decide.decision")
            self._update_last_progress()
            if action is not None:
                self.journal.add_intent(action, plan)
        root = incident.root_cause
        log.info(
            "incident decided",
            incident=incident.incident_id,
            rule=root.rule,
            node=root.node,
            verdict=decision.verdict.value,
            mode=self.mode.value,
            reason=decision.reason,
            evidence=root.evidence[:300],
            plan=plan,
        )
        if self.metrics is not None:
            self.metrics.incident(decision.verdict.value, root.failure_class)
            self.metrics.decision(decision.verdict.value, self.mode.value)
            # From the incident's first line written (event time) to this decision.
            self.metrics.detection_latency(max(0.0, now - incident.opened_at))
        with self._lock:
            self._state.handled[incident.incident_id] = Handled(incident, decision)
            job = self._state.job
            self._state.job = replace(job, history=(*job.history, remember(incident, decision)))
        if action is not None:
            self._state.acting = True
            self._actions.put(action)
        else:
            if decision.verdict is not Verdict.IGNORE:
                self._state.hold_until = now + self._observe_hold_s
            self._alert(incident, decision, None, now)

    def complete_action(self, action: Action, result: ActionResult) -> None:
        """An action finished: journal its result, adopt the job's new shape, alert. One transaction:
        a crash never leaves a journaled result whose relaunch or alert was not recorded (reconcile
        would not look at that action again, and its page would be lost). The job is observed before
        the transaction: a scheduler query (squeue, the Kubernetes API) must not hold the journal's
        write lock."""
        seen = None
        if (
            self.actuator is not None
            and action.kind is not Verdict.HALT
            and result.ok
            and result.attempt is not None
        ):
            seen = self.actuator.observe()
        with self.journal.transaction():
            self._complete_action(action, result, seen)

    def _complete_action(self, action: Action, result: ActionResult, seen: JobObservation | None) -> None:
        now = self.clock()
        self.journal.add_result(result)
        crash_point("action.result")
        if self.metrics is not None:
            self.metrics.action(action.kind.value, result.ok)
        handled = self._state.handled.get(action.incident_id)
        log.info("action finished", key=action.idempotency_key, ok=result.ok, detail=result.detail)
        with self._lock:
            if handled is not None:
                self._state.handled[action.incident_id] = replace(handled, result=result)
            self._state.acting = False
            job = self._state.job
            if action.kind is Verdict.HALT and result.ok:
                self._state.job = replace(job, halted=True)
            elif action.kind is Verdict.CORDON_AND_RESTART and result.ok and action.node:
                self._state.job = replace(job, cordons=(*job.cordons, now))
        if action.kind is not Verdict.HALT and result.ok and result.attempt is not None:
            self._after_relaunch(result, cause=action.incident_id, seen=seen)
        elif self.actuator is not None and action.kind is not Verdict.HALT and not result.ok:
            # The job may be down and nothing more will come from it: a human must look.
            self._state.job = replace(self._state.job, halted=True)
        if handled is not None:
            self._alert(handled.incident, handled.decision, result, now)

    def _after_relaunch(
        self, result: ActionResult, cause: str | None, seen: JobObservation | None = None
    ) -> None:
        assert self.actuator is not None
        if seen is None:
            seen = self.actuator.observe()
        if cause is not None:
            self.journal.update_attempt(
                self.job, self._state.job.attempt, ended_at=result.started_at, end_reason=cause
            )
        self._adopt(
            seen,
            seen.launched_at or result.finished_at,
            restarted_at=result.finished_at if cause is not None else None,
            cause=cause,
        )

    def _adopt(
        self, seen: JobObservation, launched_at: float, restarted_at: float | None, cause: str | None = None
    ) -> None:
        """Make the observed attempt the current one: membership, launch time, fresh progress."""
        old = self._state.job
        # A node cordoned earlier that is a member again (uncordoned, reused) is watched more closely.
        was_cordoned = set(old.cordoned) | {e.cordoned for e in old.history if e.cordoned}
        back = tuple((n, launched_at) for n in seen.nodes if n not in old.nodes and n in was_cordoned)
        with self._lock:
            self._state.job = replace(
                old,
                attempt=seen.attempt,
                nodes=seen.nodes,
                spares=seen.spares,
                cordoned=seen.cordoned,
                restarts=(*old.restarts, restarted_at) if restarted_at is not None else old.restarts,
                returned=(*old.returned, *back),
            )
            self._state.launched_at = seen.launched_at
            self._state.progress = _Progress()
        self.journal.add_attempt(self.job, seen.attempt, seen.nodes, launched_at, cause)
        self.watch.reset(self.clock(), seen.nodes)
        self.stream.reset()
        if self.metrics is not None:
            self.metrics.attempt(self.job, seen.attempt)
        self._update_gauges(self.clock(), force=True)

    def _update_last_progress(self) -> None:
        p = self._state.progress
        if p.last_step is not None:
            self.journal.update_attempt(
                self.job, self._state.job.attempt, last_step=p.last_step, last_step_at=p.last_step_at
            )

    def restart_budget_left(self) -> int:
        now = self.clock()
        used = sum(1 for t in self._state.job.restarts if now - t < self.limits.restart_within_s)
        return max(0, self.limits.restart_max - used)

    def _update_gauges(self, now: float, *, force: bool = False) -> None:
        """Refresh the restart-budget and ETTR gauges (restarts age out of the budget window, and
        ETTR falls while the job is down), at most every GAUGES_EVERY_S unless `force`d."""
        if self.metrics is None or (not force and now - self._gauges_at < GAUGES_EVERY_S):
            return
        self._gauges_at = now
        self.metrics.budget_left(self.job, self.restart_budget_left())
        self.metrics.ettr(self.job, ettr_from_attempts(self.journal.attempts(self.job), now))

    # ------------------------------------------------------------------ alerts, health, cursors

    def _alert(self, incident: Incident, decision: Decision, result: ActionResult | None, now: float) -> None:
        """One alert per incident (its symptoms on other nodes folded in, see build_alert), sent once
        the action finished (or at once when nothing is acted on). Sinks only queue: never blocks."""
        if decision.verdict is Verdict.IGNORE:
            return
        alert = build_alert(
            incident,
            decision,
            result,
            budget_left=self.restart_budget_left(),
            now=now,
            context=self.alert_context,
        )
        if decision.verdict is not Verdict.HALT and (result is None or result.ok):
            self._state.open_alerts[incident.incident_id] = alert
        for sink in self.sinks:
            sink.send(alert)

    def _resolve_alerts(self, when: float) -> None:
        """Training is stepping again in a new attempt: the incidents that led here are resolved."""
        for incident_id, alert in list(self._state.open_alerts.items()):
            for sink in self.sinks:
                sink.send(resolve_alert(alert, when))
            del self._state.open_alerts[incident_id]

    def _note_health(self, batch: SourceBatch) -> None:
        h = batch.health
        was_up = self._state.source_up.get(h.source)
        self._state.source_up[h.source] = h.up
        if h.up and was_up is False:
            log.info("source recovered", source=h.source)
        elif not h.up and was_up is not False:
            log.warning("source blind: absence rules suspended", source=h.source, error=h.error)
        if self.metrics is not None:
            self.metrics.source_health(h.source, h.up, h.lag_s)

    def _save_cursors_if_settled(self) -> None:
        # A traceback still being folded holds its lines too: re-reading must see it whole.
        if self.correlator.pending() or self.stream.open_units() or not self._held_cursors:
            return
        crash_point("cursor.save")
        with self.journal.transaction():
            for cursor in self._held_cursors.values():
                self.journal.save_cursor(cursor)
        self._held_cursors.clear()

    # ------------------------------------------------------------------ read side

    def snapshot(self) -> Snapshot:
        with self._lock:
            st = self._state
            return Snapshot(
                job=self.job,
                attempt=st.job.attempt,
                nodes=st.job.nodes,
                launched_at=st.launched_at,
                resume_step=st.progress.resume_step,
                first_step_at=st.progress.first_step_at,
                last_step=st.progress.last_step,
                halted=st.job.halted,
                acting=st.acting,
                degraded=tuple(sorted(name for name, up in st.source_up.items() if not up)),
                handled=tuple(st.handled.values()),
            )
