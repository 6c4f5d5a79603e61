"""Goodput accounting: where a job's wall-clock time went, computed only from the journal.

`load_history` reads one job's records from a `Journal`; `compute_goodput` is pure over them (no I/O, no
wall clock), so the same journal always gives the same numbers, and tests build histories by hand.

Definitions (all times are event times journaled by ftsup, in seconds since the epoch):

- **attempt**: one launch of the job (journal ``attempts``). ``F`` is its first training step seen
  (``first_step_at``).
- **failure**: an incident that ended an attempt. For attempt *k*, in order of precedence: the incident
  the next attempt was launched for (its ``cause_incident``); the incident named by attempt *k*'s
  ``end_reason``; an incident of attempt *k* whose halt action succeeded; when the next attempt was
  launched outside ftsup, the first incident of attempt *k* decided as anything but ``ignore``; for the
  last attempt, the first such incident after whose (first) decision no training step was journaled.
  Incidents that ended nothing (ignored noise, observe-mode verdicts while training went on) cost no time.
- **failure time** ``t_fail``: the failure incident's first signal line at or after attempt *k*'s launch
  (its ``opened_at`` unless it folded in a line of the attempt before, which belongs to that attempt).
- **decision time** ``t_dec``: the incident's first journaled decision.
- **checkpoint kept** ``t_keep``: when the work that survived the failure was done. The checkpoint the next
  attempt resumed from (its ``resume_step``) or, without a next attempt, the last checkpoint committed
  before ``t_fail`` (journal ``checkpoints``, read from the trainer's ``checkpoint_saved`` lines):
  its commit time when attempt *k* committed it; ``F`` when it predates attempt *k* (all of attempt *k*'s
  work is lost). Without a checkpoint record for the resumed step, the time attempt *k* reached that step
  is estimated from its step timing (``F`` at step resume+1, ``last_step_at`` at ``last_step``,
  linear in between): basis ``step-timing``. With no checkpoint information at all (basis ``unknown``)
  ``t_keep = t_fail``: no lost work is counted, so productive time and ETTR are upper bounds, and
  `Goodput.unknown_lost` counts such failures. ``t_keep`` is clamped to ``[F, t_fail]``. An attempt
  that never stepped before failing lost no training (basis ``no-steps``).

Every instant of the job's journaled span falls in exactly one category (they add up to the wall time):

- ``productive``  training whose work was kept: ``F .. t_keep`` of a failed attempt, ``F .. last_step_at``
  of one that did not fail.
- ``lost``        work lost since the last checkpoint: ``t_keep .. t_fail`` (includes a hang before the
  first error line: no steps were made then, and the time is lost all the same).
- ``detection``   ``t_fail .. t_dec``: failure's first line to ftsup's decision.
- ``restart``     ``t_dec .. F`` of the next attempt: acting, relaunching, loading the checkpoint.
- ``startup``     the first launch (or a launch with no journaled failure before it) to its first step.
- ``down``        after a failure that no attempt recovered from (halted, action failed or pending,
  observe mode): ``t_dec`` (or ``t_fail`` when never decided) to the end of the span.
- ``other``       journaled span not covered above (after the last step seen; between attempts that
  ended without a journaled failure).

Derived figures, for a window ``[start, end]`` clipped to the job's journaled span (first launch or
first step, to the latest time the journal holds for the job; the report never reads the clock):

- **wall** = ``end - start``; **ETTR** = productive / wall (None when wall is 0).
- **checkpoint overhead**: the journal holds only the save durations the trainer reports
  (``seconds``, start of the save to its commit). Asynchronous saves overlap training, so their sum is
  an upper bound of the stall, not a measured stall; it is reported beside the breakdown and not
  subtracted from productive time (None when no checkpoint reported a duration).
- **failure class**: ``<failure_class>/<scope>`` of the root cause (e.g. ``non_recoverable/node``).
- **MTBF** per class = training time (productive + lost) in the window / failures of that class whose
  ``t_fail`` is in the window (None with no failure). **MTTR** per class = mean of ``F(next) - t_fail``
  (failure's first line to the first step of the attempt that recovered) over the recovered ones
  (None when none recovered).
- **steps lost** per failure = attempt *k*'s ``last_step`` - the step of the checkpoint kept (None when
  either is unknown).
"""

from __future__ import annotations

from dataclasses import dataclass

from supervisor.journal import (
    ActionRow,
    AttemptRow,
    CheckpointRow,
    DecisionRow,
    Journal,
)
from supervisor.vocabulary import Incident, Verdict

PRODUCTIVE = "productive"
LOST = "lost"
DETECTION = "detection"
RESTART = "restart"
STARTUP = "startup"
DOWN = "down"
OTHER = "other"
CATEGORIES = (PRODUCTIVE, LOST, DETECTION, RESTART, STARTUP, DOWN, OTHER)

BASIS_CHECKPOINT = "checkpoint"
BASIS_RESUME = "resume-step"
BASIS_STEP_TIMING = "step-timing"
BASIS_UNKNOWN = "unknown"
BASIS_NO_STEPS = "no-steps"  # the attempt never stepped before failing: no training to lose

OUTCOME_RECOVERED = "recovered"
OUTCOME_HALTED = "halted"
OUTCOME_DOWN = "down"


@dataclass(frozen=True, slots=True)
class JobHistory:
    """Everything the journal holds about one job that goodput needs (read by `load_history`)."""

    job: str
    attempts: tuple[AttemptRow, ...]
    incidents: tuple[Incident, ...]
    decisions: tuple[DecisionRow, ...]
    actions: tuple[ActionRow, ...]
    checkpoints: tuple[CheckpointRow, ...]


@dataclass(frozen=True, slots=True)
class Segment:
    """``[start, end)`` of the job spent in `kind` (one of CATEGORIES); `nodes` are the nodes it concerns
    (the attempt's members; for a restart, the old and new members less any node cordoned)."""

    start: float
    end: float
    kind: str
    attempt: int | None
    incident_id: str | None
    nodes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Failure:
    """One failure as goodput sees it (see the module docstring for every definition)."""

    incident_id: str
    attempt: int
    failure_class: str
    rule: str
    node: str
    failed_at: float
    decided_at: float | None
    kept_at: float | None  # t_keep; None when the attempt never stepped
    checkpoint_step: int | None
    lost_basis: str
    last_step: int | None
    steps_lost: int | None
    recovered_at: float | None
    outcome: str  # recovered | halted | down
    cordoned: str | None  # the node cordoned by the failure's action, if any

    @property
    def detection_s(self) -> float | None:
        return None if self.decided_at is None else max(0.0, self.decided_at - self.failed_at)

    @property
    def lost_s(self) -> float:
        return 0.0 if self.kept_at is None else max(0.0, self.failed_at - self.kept_at)

    @property
    def restart_s(self) -> float | None:
        if self.recovered_at is None or self.decided_at is None:
            return None
        return max(0.0, self.recovered_at - self.decided_at)

    @property
    def recover_s(self) -> float | None:
        """Time to recover: failure's first line to the first step of the recovering attempt."""
        return None if self.recovered_at is None else max(0.0, self.recovered_at - self.failed_at)


@dataclass(frozen=True, slots=True)
class ClassStats:
    failure_class: str
    failures: int
    recovered: int
    mtbf_s: float | None
    mttr_s: float | None


@dataclass(frozen=True, slots=True)
class Goodput:
    """The accounting of one job over a window. ``seconds`` maps every category to its time in the
    window (they add up to ``wall_s``); ``segments`` are clipped to the window."""

    job: str
    start: float
    end: float
    seconds: tuple[tuple[str, float], ...]
    checkpoints: int
    checkpoint_save_s: float | None
    failures: tuple[Failure, ...]  # those whose failure time is in the window
    classes: tuple[ClassStats, ...]
    segments: tuple[Segment, ...]
    cordons: tuple[tuple[str, float], ...]  # (node, cordoned at), in the window or before it
    nodes: tuple[str, ...]  # every node the job ran on, in order of first use
    unknown_lost: int

    @property
    def wall_s(self) -> float:
        return max(0.0, self.end - self.start)

    def of(self, category: str) -> float:
        return dict(self.seconds)[category]

    @property
    def productive_s(self) -> float:
        return self.of(PRODUCTIVE)

    @property
    def training_s(self) -> float:
        return self.of(PRODUCTIVE) + self.of(LOST)

    @property
    def ettr(self) -> float | None:
        return self.productive_s / self.wall_s if self.wall_s > 0 else None


# ----------------------------------------------------------------------------- reading


def load_history(journal: Journal, job: str) -> JobHistory:
    """One job's attempts, incidents, decisions, actions and checkpoints, in journal order."""
    return JobHistory(
        job=job,
        attempts=tuple(journal.attempts(job)),
        incidents=tuple(row.incident for row in journal.incidents(job)),
        decisions=tuple(journal.decisions(job)),
        actions=tuple(journal.actions(job)),
        checkpoints=tuple(journal.checkpoints(job)),
    )


def jobs_in(journal: Journal) -> list[str]:
    """Every job the journal knows (from attempts and incidents), sorted."""
    names = {a.job for a in journal.attempts()} | {row.incident.job for row in journal.incidents()}
    return sorted(names)


def account(journal: Journal, job: str, start: float | None = None, end: float | None = None) -> Goodput:
    """`compute_goodput` over the journal's records of `job`."""
    return compute_goodput(load_history(journal, job), start, end)


# ----------------------------------------------------------------------------- computing


def failure_class_of(incident: Incident) -> str:
    root = incident.root_cause
    return f"{root.failure_class.value}/{root.scope.value}"


def _span_end(h: JobHistory) -> float | None:
    times: list[float] = []
    for a in h.attempts:
        times += [t for t in (a.launched_at, a.first_step_at, a.last_step_at, a.ended_at) if t is not None]
    times += [i.opened_at for i in h.incidents]
    times += [d.decision.decided_at for d in h.decisions]
    for row in h.actions:
        if row.result is not None:
            times += [row.result.started_at, row.result.finished_at]
    times += [c.saved_at for c in h.checkpoints]
    return max(times) if times else None


@dataclass(frozen=True, slots=True)
class _Context:
    incidents: dict[str, Incident]
    first_decision: dict[str, float]
    last_action: dict[str, ActionRow]


def _context(h: JobHistory) -> _Context:
    first_decision: dict[str, float] = {}
    for d in h.decisions:  # journal order: the first decision ends detection
        first_decision.setdefault(d.decision.incident_id, d.decision.decided_at)
    last_action = {row.action.incident_id: row for row in h.actions}  # the last intent counts
    return _Context({i.incident_id: i for i in h.incidents}, first_decision, last_action)


def _nonignored(h: JobHistory) -> set[str]:
    return {d.decision.incident_id for d in h.decisions if d.decision.verdict is not Verdict.IGNORE}


def _find_failure(
    h: JobHistory, ctx: _Context, a: AttemptRow, nxt: AttemptRow | None, nonignored: set[str]
) -> tuple[Incident | None, bool]:
    """The incident that ended attempt `a` and whether a halt action stopped it."""
    if nxt is not None and nxt.cause_incident in ctx.incidents:
        return ctx.incidents[nxt.cause_incident], False
    if a.end_reason is not None and a.end_reason in ctx.incidents:
        return ctx.incidents[a.end_reason], False
    own = sorted(
        (i for i in h.incidents if i.attempt == a.attempt), key=lambda i: (i.opened_at, i.incident_id)
    )
    for inc in own:
        row = ctx.last_action.get(inc.incident_id)
        if row is not None and row.action.kind is Verdict.HALT and row.result is not None and row.result.ok:
            return inc, True
    candidates = [i for i in own if i.incident_id in nonignored]
    if nxt is not None:
        return (candidates[0] if candidates else None), False
    for inc in candidates:
        decided = ctx.first_decision[inc.incident_id]
        if a.last_step_at is None or a.last_step_at <= decided:
            return inc, False
    return None, False


def _keep(
    h: JobHistory, a: AttemptRow, nxt: AttemptRow | None, failed_at: float
) -> tuple[float | None, int | None, str]:
    """(t_keep, checkpoint step kept, basis) for attempt `a` failing at `failed_at`."""
    first = a.first_step_at
    if first is None or first > failed_at:
        return None, (nxt.resume_step if nxt is not None else a.resume_step), BASIS_NO_STEPS
    resumed = nxt.resume_step if nxt is not None else None
    if resumed is not None:
        same = [c for c in h.checkpoints if c.step == resumed and c.attempt <= a.attempt]
        if same:
            ckpt = max(same, key=lambda c: (c.attempt, c.saved_at))
            kept = ckpt.saved_at if ckpt.attempt == a.attempt else first
            return min(max(kept, first), failed_at), resumed, BASIS_CHECKPOINT
        if resumed <= (a.resume_step or 0):
            return first, resumed, BASIS_RESUME
        n0 = (a.resume_step or 0) + 1
        if a.last_step is not None and a.last_step_at is not None and a.last_step > n0:
            per_step = (a.last_step_at - first) / (a.last_step - n0)
            kept = first + (resumed - n0) * per_step
            return min(max(kept, first), failed_at), resumed, BASIS_STEP_TIMING
        return failed_at, resumed, BASIS_UNKNOWN
    if h.checkpoints:
        before = [c for c in h.checkpoints if c.saved_at <= failed_at and c.attempt <= a.attempt]
        if before:
            ckpt = max(before, key=lambda c: (c.saved_at, c.step))
            kept = ckpt.saved_at if ckpt.attempt == a.attempt else first
            return min(max(kept, first), failed_at), ckpt.step, BASIS_CHECKPOINT
        return first, a.resume_step, BASIS_CHECKPOINT
    return failed_at, None, BASIS_UNKNOWN


def _cordoned_by(ctx: _Context, incident_id: str) -> tuple[str, float] | None:
    row = ctx.last_action.get(incident_id)
    if (
        row is not None
        and row.action.kind is Verdict.CORDON_AND_RESTART
        and row.action.node
        and row.result is not None
        and row.result.ok
    ):
        return row.action.node, row.result.started_at
    return None


def compute_goodput(h: JobHistory, start: float | None = None, end: float | None = None) -> Goodput:
    """The accounting of `h` over ``[start, end]`` (each None: the job's journaled span's own bound).

    Pure. The window is clipped to the journaled span; an empty journal gives a zero-length window.
    """
    ctx = _context(h)
    nonignored = _nonignored(h)
    attempts = sorted(h.attempts, key=lambda a: a.attempt)
    span_end = _span_end(h)

    marks: list[tuple[float, str, int | None, str | None, tuple[str, ...]]] = []
    failures: list[Failure] = []
    cordons: list[tuple[str, float]] = []
    nodes_seen: list[str] = []
    carried: bool = False  # a failure's restart is running into this attempt
    for k, a in enumerate(attempts):
        nxt = attempts[k + 1] if k + 1 < len(attempts) else None
        for n in a.nodes:
            if n not in nodes_seen:
                nodes_seen.append(n)
        begin = a.launched_at if a.launched_at is not None else a.first_step_at
        if begin is None:
            continue
        if not carried:
            marks.append((begin, STARTUP, a.attempt, None, a.nodes))
        carried = False
        inc, halted = _find_failure(h, ctx, a, nxt, nonignored)
        first = a.first_step_at
        if inc is None:
            if first is not None:
                marks.append((first, PRODUCTIVE, a.attempt, None, a.nodes))
                after = a.last_step_at if a.last_step_at is not None else first
                marks.append((after, OTHER, a.attempt, None, a.nodes))
            else:
                marks.append((begin, OTHER, a.attempt, None, a.nodes))
            continue
        own_lines = [x.timestamp for x in (inc.root_cause, *inc.signals) if x.timestamp >= begin]
        failed_at = min(own_lines) if own_lines else inc.opened_at
        kept, ckpt_step, basis = _keep(h, a, nxt, failed_at)
        if kept is not None and first is not None:
            marks.append((first, PRODUCTIVE, a.attempt, inc.incident_id, a.nodes))
            marks.append((kept, LOST, a.attempt, inc.incident_id, a.nodes))
        marks.append((failed_at, DETECTION, a.attempt, inc.incident_id, a.nodes))
        decided = ctx.first_decision.get(inc.incident_id)
        cordon = _cordoned_by(ctx, inc.incident_id)
        if cordon is not None:
            cordons.append(cordon)
        recovered_at = None
        if nxt is not None and nxt.first_step_at is not None and not halted:
            recovered_at = nxt.first_step_at
        if decided is not None:
            if nxt is not None and not halted:
                members = tuple(dict.fromkeys((*a.nodes, *nxt.nodes)))
                if cordon is not None:
                    members = tuple(n for n in members if n != cordon[0])
                marks.append((decided, RESTART, a.attempt, inc.incident_id, members))
                carried = True
            else:
                marks.append((decided, DOWN, a.attempt, inc.incident_id, a.nodes))
        steps_lost = None
        if a.last_step is not None and ckpt_step is not None:
            steps_lost = max(0, a.last_step - ckpt_step)
        outcome = (
            OUTCOME_RECOVERED if recovered_at is not None else OUTCOME_HALTED if halted else OUTCOME_DOWN
        )
        failures.append(
            Failure(
                incident_id=inc.incident_id,
                attempt=a.attempt,
                failure_class=failure_class_of(inc),
                rule=inc.root_cause.rule,
                node=inc.root_cause.node,
                failed_at=failed_at,
                decided_at=decided,
                kept_at=kept,
                checkpoint_step=ckpt_step,
                lost_basis=basis,
                last_step=a.last_step,
                steps_lost=steps_lost,
                recovered_at=recovered_at,
                outcome=outcome,
                cordoned=cordon[0] if cordon is not None else None,
            )
        )
        if halted or nxt is None:
            break  # nothing after a halt (or the last attempt's failure) is attributed to an attempt

    # Marks in emission order, made monotonic: each segment runs to the next mark.
    segments: list[Segment] = []
    if marks and span_end is not None:
        times: list[float] = []
        last = marks[0][0]
        for m in marks:
            last = max(last, m[0])
            times.append(last)
        final = max(span_end, times[-1])
        for i, (_, kind, attempt, incident_id, nodes) in enumerate(marks):
            t0 = times[i]
            t1 = times[i + 1] if i + 1 < len(marks) else final
            if t1 > t0:
                segments.append(Segment(t0, t1, kind, attempt, incident_id, nodes))

    span_start = segments[0].start if segments else (span_end or 0.0)
    span_stop = segments[-1].end if segments else span_start
    w_start = span_start if start is None else min(max(start, span_start), span_stop)
    w_end = span_stop if end is None else min(max(end, w_start), span_stop)

    clipped = [
        Segment(max(s.start, w_start), min(s.end, w_end), s.kind, s.attempt, s.incident_id, s.nodes)
        for s in segments
        if s.end > w_start and s.start < w_end
    ]
    totals = {c: 0.0 for c in CATEGORIES}
    for s in clipped:
        totals[s.kind] += s.end - s.start

    in_window = [f for f in failures if w_start <= f.failed_at <= w_end]
    training = totals[PRODUCTIVE] + totals[LOST]
    classes: list[ClassStats] = []
    for cls in sorted({f.failure_class for f in in_window}):
        group = [f for f in in_window if f.failure_class == cls]
        recovers = [f.recover_s for f in group if f.recover_s is not None]
        classes.append(
            ClassStats(
                failure_class=cls,
                failures=len(group),
                recovered=len(recovers),
                mtbf_s=training / len(group),
                mttr_s=sum(recovers) / len(recovers) if recovers else None,
            )
        )
    ckpts = [c for c in h.checkpoints if w_start <= c.saved_at <= w_end]
    durations = [c.seconds for c in ckpts if c.seconds is not None]
    return Goodput(
        job=h.job,
        start=w_start,
        end=w_end,
        seconds=tuple((c, totals[c]) for c in CATEGORIES),
        checkpoints=len(ckpts),
        checkpoint_save_s=sum(durations) if durations else None,
        failures=tuple(in_window),
        classes=tuple(classes),
        segments=tuple(clipped),
        cordons=tuple((n, t) for n, t in cordons if t <= w_end),
        nodes=tuple(nodes_seen),
        unknown_lost=sum(1 for f in in_window if f.lost_basis == BASIS_UNKNOWN),
    )


def all_failures(h: JobHistory) -> dict[str, Failure]:
    """Every failure of the job over its whole journaled span, by incident id."""
    return {f.incident_id: f for f in compute_goodput(h).failures}


# ----------------------------------------------------------------------------- node lanes

LANE_TRAINING = "training"
LANE_LOST = "training-lost"
LANE_DOWN = "down"
LANE_RESTARTING = "restarting"
LANE_STARTING = "starting"
LANE_CORDONED = "cordoned"

_LANE_OF = {
    PRODUCTIVE: LANE_TRAINING,
    LOST: LANE_LOST,
    DETECTION: LANE_DOWN,
    DOWN: LANE_DOWN,
    RESTART: LANE_RESTARTING,
    STARTUP: LANE_STARTING,
}


@dataclass(frozen=True, slots=True)
class LaneInterval:
    node: str
    start: float
    end: float
    state: str  # training | training-lost | down | restarting | starting | cordoned
    incident_id: str | None


def node_lanes(g: Goodput) -> dict[str, list[LaneInterval]]:
    """Per node (every node in `g.nodes` plus any cordoned), its states over the window, in time order.

    A node is ``cordoned`` from its cordon action's start to the end of the window (the journal records no
    uncordon); before that it takes the state of each job segment it is part of (``other`` shows nothing).
    """
    nodes = list(g.nodes)
    for n, _ in g.cordons:
        if n not in nodes:
            nodes.append(n)
    cordoned_at = {n: t for n, t in g.cordons}
    lanes: dict[str, list[LaneInterval]] = {n: [] for n in nodes}
    for s in g.segments:
        state = _LANE_OF.get(s.kind)
        if state is None:
            continue
        for n in s.nodes:
            stop = min(s.end, cordoned_at.get(n, s.end))
            if stop > s.start:
                lanes[n].append(LaneInterval(n, s.start, stop, state, s.incident_id))
    for n, t in g.cordons:
        begin = max(t, g.start)
        if g.end > begin:
            lanes[n].append(LaneInterval(n, begin, g.end, LANE_CORDONED, None))
    return lanes
