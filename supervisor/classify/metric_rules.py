"""Metric rules: thresholds, absence and stalls over per-node metric samples.

`MetricWatch` is stateful but pure: no I/O, no clock reads; the caller passes samples and the
current time. Two entry points:

* `observe(sample)`: feed one datapoint; returns the Signals of threshold rules it makes true
  (``above`` / ``below`` and the relative ``above_baseline`` / ``below_baseline`` (against the
  node's own trailing median: a loss spike, a throughput drop) and ``above_job_median`` (against
  the other nodes' latest values: a straggler); those with ``for`` > 0 fire once the breach has
  lasted that long, judged by the samples' own timestamps). A NaN value breaches every threshold
  (non-finite never reads as healthy). A relative condition without enough reference (fewer
  than `MIN_BASELINE_SAMPLES` earlier values of the node, no peer) is not breached.
* `evaluate(now, nodes, source_up)`: time-based conditions for the given job nodes:
  ``absent_for`` (no datapoint for T), ``stalled_for`` (value not increasing for T) and thresholds
  held for their ``for`` T.

Hazards this module is built around:

* **Blindness is not health, and not sickness either.** While `source_up` is False nothing
  time-based fires: no datapoints while blind is not evidence of absence. When the source comes
  back, every absence / stall clock restarts at that moment.
* **Startup grace.** `reset(now, nodes)` marks a job (re)launch: clocks of those nodes restart at
  `now`, and samples stamped before `now` (late datapoints of the previous attempt) are ignored for
  them, so a NaN of the old attempt cannot trigger a second restart. State of nodes no longer in
  the job is dropped and their samples ignored from then on.
* **One signal per episode.** A condition fires once, then stays quiet until it clears: a new
  datapoint (absence), a value increase (stall), a sample no longer breaching (threshold).

Signal timestamps are the moment the condition became true (e.g. the absence clock start + T),
not the time `evaluate` happened to run, so replays give identical signals.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from supervisor.classify.policy import RELATIVE, THRESHOLDS, MetricMatch, PolicySet, Rule, make_signal
from supervisor.vocabulary import MetricSample, Signal

MIN_BASELINE_SAMPLES = 5
"""Earlier values a node needs before its own baseline means anything."""
MAX_HISTORY = 2048
"""Values kept per node and metric for baselines (a bound on memory at any sample rate)."""


@dataclass
class _RuleState:
    # thresholds
    since: float | None = None  # timestamp of the first sample of the current breach
    last_value: float = math.nan
    reference: float | None = None  # the baseline / peer median the last sample was judged against
    # absence
    last_seen: float | None = None
    # stall
    max_value: float | None = None
    progress_at: float | None = None
    # all
    fired: bool = False
    fired_clock: float | None = None  # the clock start of the episode that fired


@dataclass
class _NodeState:
    epoch: float  # when this node's clocks (re)started: reset time or first sight
    ignore_before: float | None = None  # samples stamped earlier belong to a previous attempt
    rules: dict[str, _RuleState] = field(default_factory=dict)
    # per metric: recent finite (timestamp, value) for baselines, and the latest one for peers
    history: dict[str, deque[tuple[float, float]]] = field(default_factory=dict)

    def rule(self, name: str) -> _RuleState:
        st = self.rules.get(name)
        if st is None:
            st = self.rules[name] = _RuleState()
        return st


def _breaches(m: MetricMatch, value: float, reference: float | None) -> bool:
    """Whether `value` breaches threshold `m`; `reference` is the baseline / peer median (if any)."""
    if math.isnan(value):
        return True
    if m.above is not None:
        return value > m.above
    if m.below is not None:
        return value < m.below
    if reference is None:
        return False
    if m.above_baseline is not None:
        return value > m.above_baseline * reference
    if m.below_baseline is not None:
        return value < m.below_baseline * reference
    if m.above_job_median is not None:
        return value > m.above_job_median * reference
    return False


UNIT_TIMES_KEPT = 512  # progress intervals a stalled_steps rule keeps for its p99


class MetricWatch:
    """Evaluates metric rules per node. Not thread-safe: one owner (the engine thread) calls it."""

    def __init__(self, rules: Iterable[Rule] | PolicySet) -> None:
        source = rules.rules if isinstance(rules, PolicySet) else tuple(rules)
        self._rules: tuple[tuple[Rule, MetricMatch], ...] = tuple(
            (r, r.match) for r in sorted(source, key=lambda r: r.order) if isinstance(r.match, MetricMatch)
        )
        self._by_metric: dict[str, list[tuple[Rule, MetricMatch]]] = {}
        for r, m in self._rules:
            self._by_metric.setdefault(m.metric, []).append((r, m))
        # how far back baselines look, per metric (history older than that is dropped)
        self._keep_s: dict[str, float] = {}
        for _, m in self._rules:
            if m.condition in RELATIVE:
                self._keep_s[m.metric] = max(self._keep_s.get(m.metric, 0.0), m.baseline_s)
        self._nodes: dict[str, _NodeState] = {}
        self._members: frozenset[str] | None = None
        self._blind = False
        self._back_at: float | None = None
        # stalled_steps rules: recent seconds per unit of progress, job-wide (synchronous training
        # steps take the same time on every node) and kept across relaunches (the job is the same).
        self._unit_times: dict[str, deque[float]] = {}

    @property
    def rules(self) -> tuple[Rule, ...]:
        return tuple(r for r, _ in self._rules)

    @property
    def blind(self) -> bool:
        """Whether the last `evaluate` was told the source is down."""
        return self._blind

    def _node(self, node: str, first_sight: float) -> _NodeState:
        st = self._nodes.get(node)
        if st is None:
            st = self._nodes[node] = _NodeState(epoch=first_sight)
        return st

    def _clock(self, node: _NodeState, anchor: float | None) -> float:
        start = node.epoch
        if anchor is not None and anchor > start:
            start = anchor
        if self._back_at is not None and self._back_at > start:
            start = self._back_at
        return start

    # ------------------------------------------------------------------------- API

    def reset(self, now: float, nodes: Iterable[str]) -> None:
        """A job (re)launch at `now` with members `nodes`: fresh clocks, old attempt's state dropped."""
        members = frozenset(nodes)
        self._members = members
        self._nodes = {n: _NodeState(epoch=now, ignore_before=now) for n in members}

    def observe(self, sample: MetricSample) -> list[Signal]:
        """Feed one datapoint; returns threshold signals that fire because of it (usually none)."""
        rules = self._by_metric.get(sample.metric)
        if not rules:
            return []
        if self._members is not None and sample.node not in self._members:
            return []  # not (or no longer) part of the job
        ts, value = float(sample.timestamp), float(sample.value)
        if math.isnan(ts):
            return []
        node = self._node(sample.node, ts)
        if node.ignore_before is not None and ts < node.ignore_before:
            return []  # a late datapoint from before the (re)launch
        out: list[Signal] = []
        for rule, m in rules:
            st = node.rule(rule.name)
            cond = m.condition
            if cond in THRESHOLDS:
                st.last_value = value
                reference = self._reference(sample.node, node, m, ts) if cond in RELATIVE else None
                st.reference = reference
                if _breaches(m, value, reference):
                    if st.since is None:
                        st.since = ts
                    if not st.fired and ts - st.since >= m.for_s:
                        st.fired = True
                        st.fired_clock = st.since
                        at = st.since + m.for_s if m.for_s > 0 else ts
                        ev = self._threshold_evidence(m, value, reference)
                        out.append(make_signal(rule, sample.node, at, ev))
                else:
                    st.since = None
                    st.fired = False
            elif cond == "absent_for":
                if st.last_seen is None or ts > st.last_seen:
                    st.last_seen = ts
                if st.fired and st.fired_clock is not None and ts >= st.fired_clock:
                    st.fired = False
            else:  # stalled_for
                if math.isnan(value):
                    continue
                if st.max_value is None or value > st.max_value:
                    prev_value, prev_at = st.max_value, st.progress_at
                    if m.stalled_steps is not None and prev_value is not None and prev_at is not None:
                        times = self._unit_times.setdefault(rule.name, deque(maxlen=UNIT_TIMES_KEPT))
                        times.append(max(0.0, ts - prev_at) / (value - prev_value))
                    st.max_value = value
                    if st.progress_at is None or ts > st.progress_at:
                        st.progress_at = ts
                    st.fired = False
        if math.isfinite(value) and sample.metric in self._keep_s:
            hist = node.history.get(sample.metric)
            if hist is None:
                hist = node.history[sample.metric] = deque(maxlen=MAX_HISTORY)
            if not hist or ts >= hist[-1][0]:
                hist.append((ts, value))
        return out

    def _reference(self, name: str, node: _NodeState, m: MetricMatch, ts: float) -> float | None:
        """The baseline (own trailing median) or peer median a relative condition compares with."""
        since = ts - m.baseline_s
        if m.above_job_median is not None:
            peers = []
            for other, st in self._nodes.items():
                if other == name or (self._members is not None and other not in self._members):
                    continue
                hist = st.history.get(m.metric)
                if hist and hist[-1][0] >= since:
                    peers.append(hist[-1][1])
            return statistics.median(peers) if peers else None
        hist = node.history.get(m.metric)
        if not hist:
            return None
        keep_from = ts - self._keep_s.get(m.metric, m.baseline_s)
        while hist and hist[0][0] < keep_from:  # older than the longest window of this metric
            hist.popleft()
        window = [v for t, v in hist if since <= t < ts]
        if len(window) < MIN_BASELINE_SAMPLES:
            return None
        return statistics.median(window)

    def evaluate(self, now: float, nodes: Iterable[str], source_up: bool) -> list[Signal]:
        """Time-based conditions on `nodes` at `now`; nothing fires while the source is blind.

        Returns the newly fired signals ordered by (timestamp, rule declaration order, node).
        """
        if not source_up:
            self._blind = True
            return []
        if self._blind:
            self._blind = False
            self._back_at = now  # every absence / stall clock restarts now
        out: list[Signal] = []
        for name in sorted(set(nodes)):
            node = self._node(name, now)
            for rule, m in self._rules:
                st = node.rule(rule.name)
                if st.fired:
                    continue
                cond = m.condition
                if cond == "absent_for":
                    assert m.absent_for is not None
                    start = self._clock(node, st.last_seen)
                    if now - start >= m.absent_for:
                        st.fired, st.fired_clock = True, start
                        last = f"last at {st.last_seen:.3f}" if st.last_seen is not None else "none seen"
                        ev = f"no {m.metric} datapoint for {m.absent_for:g}s ({last}; clock from {start:.3f})"
                        out.append(make_signal(rule, name, start + m.absent_for, ev))
                elif cond == "stalled_for":
                    window = self.stall_window(rule.name, m)
                    start = self._clock(node, st.progress_at)
                    if now - start >= window:
                        st.fired, st.fired_clock = True, start
                        last = f"last {st.max_value:g}" if st.max_value is not None else "no value seen"
                        ev = f"{m.metric} not increasing for {window:g}s"
                        ev += f" ({last}; clock from {start:.3f})"
                        out.append(make_signal(rule, name, start + window, ev))
                elif m.for_s > 0 and st.since is not None and now - st.since >= m.for_s:
                    st.fired, st.fired_clock = True, st.since
                    ev = self._threshold_evidence(m, st.last_value, st.reference)
                    out.append(make_signal(rule, name, st.since + m.for_s, ev))
        order = {r.name: r.order for r, _ in self._rules}
        out.sort(key=lambda s: (s.timestamp, order.get(s.rule, 0), s.node))
        return out

    def stall_window(self, rule: str, m: MetricMatch) -> float:
        """How long `m` (a stalled_for condition) waits: `stalled_for`, or with `stalled_steps` N,
        max(stalled_for, N x the p99 of the recent seconds per unit of progress)."""
        assert m.stalled_for is not None
        times = self._unit_times.get(rule)
        if m.stalled_steps is None or not times:
            return m.stalled_for
        ordered = sorted(times)
        p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
        return max(m.stalled_for, m.stalled_steps * p99)

    @staticmethod
    def _threshold_evidence(m: MetricMatch, value: float, reference: float | None = None) -> str:
        ref = f"{reference:g}" if reference is not None else "n/a"
        if m.above is not None:
            text = f"{m.metric}={value:g} above {m.above:g}"
        elif m.below is not None:
            text = f"{m.metric}={value:g} below {m.below:g}"
        elif m.above_baseline is not None:
            text = f"{m.metric}={value:g} above {m.above_baseline:g}x its {m.baseline_s:g}s median ({ref})"
        elif m.below_baseline is not None:
            text = f"{m.metric}={value:g} below {m.below_baseline:g}x its {m.baseline_s:g}s median ({ref})"
        else:
            text = f"{m.metric}={value:g} above {m.above_job_median:g}x the other nodes' median ({ref})"
        return f"{text} for {m.for_s:g}s" if m.for_s > 0 else text
