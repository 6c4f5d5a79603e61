"""Metric rules: thresholds, absence and stalls over per-node metric samples.

`MetricWatch` is stateful but pure: no I/O, no clock reads; the caller passes samples and the
current time. Two entry points:

* `observe(sample)`: feed one datapoint; returns the Signals of threshold rules it makes true
  (``above`` / ``below``; those with ``for`` > 0 fire once the breach has lasted that long, judged
  by the samples' own timestamps). A NaN value breaches every threshold (non-finite never reads
  as healthy).
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
from collections.abc import Iterable
from dataclasses import dataclass, field

from supervisor.classify.policy import MetricMatch, PolicySet, Rule, make_signal
from supervisor.vocabulary import MetricSample, Signal


@dataclass
class _RuleState:
    # thresholds
    since: float | None = None  # timestamp of the first sample of the current breach
    last_value: float = math.nan
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

    def rule(self, name: str) -> _RuleState:
        st = self.rules.get(name)
        if st is None:
            st = self.rules[name] = _RuleState()
        return st


def _breaches(m: MetricMatch, value: float) -> bool:
    if math.isnan(value):
        return True
    if m.above is not None:
        return value > m.above
    if m.below is not None:
        return value < m.below
    return False


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
        self._nodes: dict[str, _NodeState] = {}
        self._members: frozenset[str] | None = None
        self._blind = False
        self._back_at: float | None = None

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
            if cond in ("above", "below"):
                st.last_value = value
                if _breaches(m, value):
                    if st.since is None:
                        st.since = ts
                    if not st.fired and ts - st.since >= m.for_s:
                        st.fired = True
                        st.fired_clock = st.since
                        at = st.since + m.for_s if m.for_s > 0 else ts
                        out.append(make_signal(rule, sample.node, at, self._threshold_evidence(m, value)))
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
                    st.max_value = value
                    if st.progress_at is None or ts > st.progress_at:
                        st.progress_at = ts
                    st.fired = False
        return out

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
                    assert m.stalled_for is not None
                    start = self._clock(node, st.progress_at)
                    if now - start >= m.stalled_for:
                        st.fired, st.fired_clock = True, start
                        last = f"last {st.max_value:g}" if st.max_value is not None else "no value seen"
                        ev = f"{m.metric} not increasing for {m.stalled_for:g}s"
                        ev += f" ({last}; clock from {start:.3f})"
                        out.append(make_signal(rule, name, start + m.stalled_for, ev))
                elif m.for_s > 0 and st.since is not None and now - st.since >= m.for_s:
                    st.fired, st.fired_clock = True, st.since
                    ev = self._threshold_evidence(m, st.last_value)
                    out.append(make_signal(rule, name, st.since + m.for_s, ev))
        order = {r.name: r.order for r, _ in self._rules}
        out.sort(key=lambda s: (s.timestamp, order.get(s.rule, 0), s.node))
        return out

    @staticmethod
    def _threshold_evidence(m: MetricMatch, value: float) -> str:
        if m.above is not None:
            text = f"{m.metric}={value:g} above {m.above:g}"
        else:
            text = f"{m.metric}={value:g} below {m.below:g}"
        return f"{text} for {m.for_s:g}s" if m.for_s > 0 else text
