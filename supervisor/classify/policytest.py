"""``ftsup policy test FILE...``: unit tests for policies, in the spirit of ``promtool test rules``.

A test file feeds timed log lines and metric series to the daemon's own engine (the same classifier,
traceback folding, metric rules, correlator, root-cause ordering, budgets and ``decide()``) on a
simulated clock, against an in-memory simulated cluster, and compares the incidents it decides with
the expected ones. Teams use it to test their own overrides before deploying them::

    policies: [../policies, site/]      # optional; relative to this file; default: the shipped packs
    settle: 4s                          # optional; the incident settle window (default 4s)
    tests:
      - name: Xid 79 on node-1 beats the collective timeout it causes on node-0
        nodes: [node-0, node-1]         # the job's nodes (default [node-0, node-1])
        spares: [node-2]                # spare nodes for cordon_and_restart (default none)
        logs:                           # `at` is a duration from the start of the test
          - {at: 10s, node: node-0, line: '[rank0]: ... Watchdog caught collective operation timeout ...'}
          - {at: 11s, node: node-1, line: 'NVRM: Xid (PCI:0000:3b:00): 79, pid=812, ...'}
        metrics:
          - {node: node-0, metric: heartbeat, interval: 10s, values: '1x30'}
        until: 5m                       # optional; default: the last input + settle + 5s
        expect:
          incidents:                    # in the order decided; [] expects none
            - rule: gpu-fallen-off-bus  # the root cause's rule
              node: node-1              # optional: the root cause's node
              evidence: 'Xid'           # optional: a substring of the root-cause line
              decision: cordon_and_restart   # the verdict after budgets
              cordon: node-1            # optional: the node the decision retires

Metric ``values`` is a space-separated series, one value per ``interval`` from ``start`` (default
0s): a number, ``nan`` / ``inf``, ``_`` (no datapoint), ``AxN`` (A, N times), ``A+BxN`` (N values
from A in steps of B; ``A-BxN`` counts down) and ``_xN`` (N gaps). Unlike promtool, N is the count
of values produced.

Absence and stall rules (``absent_for`` / ``stalled_for``) watch only the metrics a test gives a
series for, so a test about log lines needs no heartbeat; a series that ends before ``until`` is a
node going silent, as in production. Lines and datapoints are delivered at their own time
(ingestion without lag), the engine ticks every 0.25 s, and every action completes at once on the
simulated cluster (a relaunch makes lines written before it stale, as in the daemon).

Exit codes: 0 all tests pass, 1 a test failed, 2 a file or the policies it names do not load
(every problem printed as ``file:line:col path: message``).
"""

from __future__ import annotations

import math
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from supervisor.classify.policy import MetricMatch, PolicySet, load_policies
from supervisor.errors import ConfigError, Problem
from supervisor.vocabulary import (
    Action,
    ActionResult,
    JobObservation,
    LogEvent,
    MetricSample,
    Mode,
    SourceBatch,
    SourceHealth,
    Verdict,
)
from supervisor.yamlpos import Checker, DataPath, Document, load_yaml_file

T0 = 1_800_000_000.0
"""The simulated epoch (2027-01-15): test times are offsets from it."""

TICK_S = 0.25
MAX_SPAN_S = 7 * 86400.0
MAX_SERIES_VALUES = 100_000

_TOP_KEYS = ("policies", "settle", "tests")
_TEST_KEYS = ("name", "nodes", "spares", "logs", "metrics", "until", "expect")
_LOG_KEYS = ("at", "node", "line")
_METRIC_KEYS = ("node", "metric", "start", "interval", "values")
_EXPECT_KEYS = ("incidents",)
_INCIDENT_KEYS = ("rule", "node", "evidence", "decision", "cordon")
_NODE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")
_TOKEN_RE = re.compile(
    r"^(?:(?P<gap>_)(?:x(?P<gapn>\d+))?"
    r"|(?P<a>[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?nan|[-+]?inf)"
    r"(?:(?P<sign>[-+])(?P<b>\d+(?:\.\d*)?|\.\d+)x(?P<n>\d+)|x(?P<rn>\d+))?)$",
    re.IGNORECASE,
)


def parse_series(text: str) -> list[float | None]:
    """Expand a series (see the module docstring); None is a gap. Raises ValueError with the token."""
    out: list[float | None] = []
    for token in text.split():
        m = _TOKEN_RE.match(token)
        if m is None:
            raise ValueError(f"bad series token {token!r} (expected a number, _, AxN or A+BxN)")
        if m.group("gap"):
            count = int(m.group("gapn") or 1)
            values: list[float | None] = [None] * count
        else:
            a = float(m.group("a"))
            if m.group("n") is not None:
                step = float(m.group("b")) * (-1.0 if m.group("sign") == "-" else 1.0)
                values = [a + step * i for i in range(int(m.group("n")))]
            else:
                values = [a] * int(m.group("rn") or 1)
        out.extend(values)
        if len(out) > MAX_SERIES_VALUES:
            raise ValueError(f"series longer than {MAX_SERIES_VALUES} values")
    return out


# ----------------------------------------------------------------------------- model


@dataclass(frozen=True, slots=True)
class ExpectedIncident:
    rule: str
    decision: Verdict
    node: str | None = None
    evidence: str | None = None
    cordon: str | None = None

    def describe(self) -> str:
        parts = [f"rule={self.rule}", f"decision={self.decision.value}"]
        if self.node is not None:
            parts.append(f"node={self.node}")
        if self.cordon is not None:
            parts.append(f"cordon={self.cordon}")
        if self.evidence is not None:
            parts.append(f"evidence~{self.evidence!r}")
        return " ".join(parts)


@dataclass(frozen=True, slots=True)
class GotIncident:
    rule: str
    decision: Verdict
    node: str
    evidence: str
    cordon: str | None
    reason: str

    def satisfies(self, want: ExpectedIncident) -> bool:
        return (
            self.rule == want.rule
            and self.decision is want.decision
            and (want.node is None or self.node == want.node)
            and (want.cordon is None or self.cordon == want.cordon)
            and (want.evidence is None or want.evidence in self.evidence)
        )

    def describe(self) -> str:
        text = f"rule={self.rule} decision={self.decision.value} node={self.node}"
        if self.cordon is not None:
            text += f" cordon={self.cordon}"
        return f"{text} ({self.reason}) evidence: {self.evidence[:160]}"


@dataclass(frozen=True, slots=True)
class PolicyTestCase:
    name: str
    where: str  # file:line of the test
    nodes: tuple[str, ...]
    spares: tuple[str, ...]
    logs: tuple[LogEvent, ...]
    metrics: tuple[MetricSample, ...]
    until: float
    expected: tuple[ExpectedIncident, ...]


@dataclass(frozen=True, slots=True)
class PolicyTestFile:
    path: Path
    policies: tuple[Path, ...]
    settle_s: float
    tests: tuple[PolicyTestCase, ...]


@dataclass(frozen=True, slots=True)
class CaseResult:
    case: PolicyTestCase
    got: tuple[GotIncident, ...]

    @property
    def passed(self) -> bool:
        exp = self.case.expected
        return len(self.got) == len(exp) and all(g.satisfies(w) for g, w in zip(self.got, exp, strict=True))


# ----------------------------------------------------------------------------- loading


def _parse_test(
    ck: Checker, doc: Document, path: DataPath, entry: object, default_settle: float
) -> PolicyTestCase | None:
    before = len(ck.problems)
    m = ck.mapping(path, entry, allowed=_TEST_KEYS, required=("name", "expect"))
    if m is None:
        return None
    name = ck.string((*path, "name"), m.get("name")) if "name" in m else None

    def node_list(key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        if key not in m:
            return default
        names = ck.string_list((*path, key), m[key])
        if names is None:
            return default
        for i, n in enumerate(names):
            if not _NODE_RE.fullmatch(n):
                ck.problem((*path, key, i), f"invalid node name {n!r}")
        return tuple(names)

    nodes = node_list("nodes", ("node-0", "node-1"))
    spares = node_list("spares", ())
    if not nodes:
        ck.problem((*path, "nodes"), "a job needs at least one node")
    known = set(nodes) | set(spares)
    logs: list[LogEvent] = []
    last = 0.0
    if "logs" in m:
        lp = (*path, "logs")
        items = m["logs"]
        if not isinstance(items, list):
            ck.problem(lp, "expected a list of {at, node, line}")
        else:
            for i, item in enumerate(items):
                ip = (*lp, i)
                lm = ck.mapping(ip, item, allowed=_LOG_KEYS, required=_LOG_KEYS)
                if lm is None or any(k not in lm for k in _LOG_KEYS):
                    continue
                at = ck.duration((*ip, "at"), lm["at"])
                node = ck.string((*ip, "node"), lm["node"])
                line = ck.string((*ip, "line"), lm["line"])
                if node is not None and node not in known:
                    ck.problem((*ip, "node"), f"node {node!r} is not in nodes or spares")
                if at is not None and node is not None and line is not None:
                    logs.append(LogEvent(f"t{len(logs)}", node, T0 + at, line))
                    last = max(last, at)
    metrics: list[MetricSample] = []
    if "metrics" in m:
        mp = (*path, "metrics")
        items = m["metrics"]
        if not isinstance(items, list):
            ck.problem(mp, "expected a list of {node, metric, values[, start, interval]}")
        else:
            for i, item in enumerate(items):
                ip = (*mp, i)
                mm = ck.mapping(ip, item, allowed=_METRIC_KEYS, required=("node", "metric", "values"))
                if mm is None or any(k not in mm for k in ("node", "metric", "values")):
                    continue
                node = ck.string((*ip, "node"), mm["node"])
                metric = ck.string((*ip, "metric"), mm["metric"])
                start = ck.duration((*ip, "start"), mm["start"]) if "start" in mm else 0.0
                interval = (
                    ck.duration((*ip, "interval"), mm["interval"], positive=True)
                    if "interval" in mm
                    else 10.0
                )
                raw = mm["values"]
                raw_text = str(raw) if isinstance(raw, int | float) and not isinstance(raw, bool) else raw
                text = ck.string((*ip, "values"), raw_text)
                if node is not None and node not in known:
                    ck.problem((*ip, "node"), f"node {node!r} is not in nodes or spares")
                series: list[float | None] = []
                if text is not None:
                    try:
                        series = parse_series(text)
                    except ValueError as exc:
                        ck.problem((*ip, "values"), str(exc))
                if None in (node, metric, start, interval):
                    continue
                assert node is not None and metric is not None and start is not None and interval is not None
                for k, v in enumerate(series):
                    if v is not None:
                        metrics.append(MetricSample(node, metric, T0 + start + k * interval, v))
                if series:
                    last = max(last, start + (len(series) - 1) * interval)
    until = last + default_settle + 5.0
    if "until" in m:
        u = ck.duration((*path, "until"), m["until"], positive=True)
        if u is not None:
            until = u
    if until > MAX_SPAN_S:
        ck.problem((*path, "until") if "until" in m else path, f"a test may span at most {MAX_SPAN_S:g}s")
    expected: list[ExpectedIncident] = []
    if "expect" in m:
        ep = (*path, "expect")
        em = ck.mapping(ep, m["expect"], allowed=_EXPECT_KEYS, required=_EXPECT_KEYS)
        if em is not None and "incidents" in em:
            ip0 = (*ep, "incidents")
            items = em["incidents"]
            if items is None:
                items = []
            if not isinstance(items, list):
                ck.problem(ip0, "expected a list of incidents ([] for none)")
            else:
                for i, item in enumerate(items):
                    ip = (*ip0, i)
                    im = ck.mapping(ip, item, allowed=_INCIDENT_KEYS, required=("rule", "decision"))
                    if im is None or "rule" not in im or "decision" not in im:
                        continue
                    rule = ck.string((*ip, "rule"), im["rule"])
                    decision = ck.choice(
                        (*ip, "decision"),
                        im["decision"],
                        [v.value for v in Verdict if v is not Verdict.IGNORE],
                    )
                    opt = {k: ck.string((*ip, k), im[k]) for k in ("node", "evidence", "cordon") if k in im}
                    if rule is not None and decision is not None:
                        expected.append(
                            ExpectedIncident(
                                rule,
                                Verdict(decision),
                                node=opt.get("node"),
                                evidence=opt.get("evidence"),
                                cordon=opt.get("cordon"),
                            )
                        )
    if len(ck.problems) != before or name is None:
        return None
    return PolicyTestCase(
        name=name,
        where=f"{doc.file}:{doc.position(path)[0]}",
        nodes=nodes,
        spares=spares,
        logs=tuple(sorted(logs, key=lambda e: e.timestamp)),
        metrics=tuple(sorted(metrics, key=lambda s: s.timestamp)),
        until=T0 + until,
        expected=tuple(expected),
    )


def load_test_file(path: Path) -> PolicyTestFile:
    """Load one test file; raise `ConfigError` with every problem (file:line:col path: message)."""
    doc = load_yaml_file(path)
    problems: list[Problem] = []
    ck = Checker(doc, problems)
    top = ck.mapping((), doc.data, allowed=_TOP_KEYS, required=("tests",))
    if top is None:
        raise ConfigError(problems)
    policies: tuple[Path, ...] = ()
    if "policies" in top:
        names = ck.string_list(("policies",), top["policies"])
        if names is not None:
            policies = tuple((path.parent / n) for n in names)
    settle = 4.0
    if "settle" in top:
        s = ck.duration(("settle",), top["settle"])
        if s is not None:
            settle = s
    tests: list[PolicyTestCase] = []
    raw = top.get("tests")
    if "tests" in top and not isinstance(raw, list):
        ck.problem(("tests",), "expected a list of tests")
    elif isinstance(raw, list):
        seen: dict[str, int] = {}
        for i, entry in enumerate(raw):
            case = _parse_test(ck, doc, ("tests", i), entry, settle)
            if case is None:
                continue
            if case.name in seen:
                ck.problem(
                    ("tests", i, "name"), f"duplicate test name {case.name!r} (also test {seen[case.name]})"
                )
            seen[case.name] = i
            tests.append(case)
    if problems:
        raise ConfigError(problems)
    return PolicyTestFile(path, policies, settle, tuple(tests))


# ----------------------------------------------------------------------------- running


class SimulatedCluster:
    """An in-memory cluster for policy tests (Actuator protocol): every action completes at once.

    Restart relaunches the same nodes; cordon_and_restart swaps the node for the first spare (or
    fails when none is left, as a real backend would); halt stops the job.
    """

    def __init__(self, job: str, nodes: Sequence[str], spares: Sequence[str], clock: _Clock) -> None:
        self.job = job
        self.nodes = list(nodes)
        self.spares = list(spares)
        self.cordoned: list[str] = []
        self.attempt = 0
        self.running = False
        self.launched_at: float | None = None
        self.clock = clock

    def launch(self) -> ActionResult:
        now = self.clock()
        self.running, self.launched_at = True, now
        return ActionResult("launch", True, "launched", now, now, self.attempt, tuple(self.nodes))

    def plan(self, action: Action) -> list[str]:
        return [f"{action.kind.value} {action.node or ''}".strip()]

    def apply(self, action: Action) -> ActionResult:
        now = self.clock()
        if action.kind is Verdict.HALT:
            self.running = False
            return ActionResult(action.idempotency_key, True, "halted", now, now, None, tuple(self.nodes))
        if action.kind is Verdict.CORDON_AND_RESTART and action.node:
            if action.node not in self.nodes or not self.spares:
                return ActionResult(action.idempotency_key, False, "no spare node", now, now)
            self.nodes[self.nodes.index(action.node)] = self.spares.pop(0)
            self.cordoned.append(action.node)
        self.attempt += 1
        self.launched_at = now
        return ActionResult(
            action.idempotency_key, True, "relaunched", now, now, self.attempt, tuple(self.nodes)
        )

    def observe(self) -> JobObservation:
        return JobObservation(
            job=self.job,
            attempt=self.attempt,
            nodes=tuple(self.nodes),
            spares=tuple(self.spares),
            cordoned=tuple(self.cordoned),
            running=self.running,
            launched_at=self.launched_at,
            exit_codes=tuple((n, None) for n in self.nodes),
        )

    def stop(self) -> None:
        self.running = False

    def clear_halt(self) -> None:
        pass


@dataclass
class _Clock:
    now: float = T0

    def __call__(self) -> float:
        return self.now


@dataclass
class _Feed:
    logs: list[LogEvent] = field(default_factory=list)
    metrics: list[MetricSample] = field(default_factory=list)


def run_case(case: PolicyTestCase, policy: PolicySet, settle_s: float) -> CaseResult:
    """Play one test through the daemon's engine on a simulated clock; return what it decided."""
    from supervisor.engine import METRICS_SOURCE, Engine
    from supervisor.journal import Journal

    clock = _Clock()
    given = {s.metric for s in case.metrics}
    watched = [
        r
        for r in policy.rules
        if not isinstance(r.match, MetricMatch)
        or r.match.condition in ("above", "below")
        or r.match.metric in given
    ]
    policy = PolicySet.from_rules(watched, policy.budgets, policy.files)
    cluster = SimulatedCluster("policy-test", case.nodes, case.spares, clock)
    with tempfile.TemporaryDirectory(prefix="ftsup-policy-test-") as tmp:
        journal = Journal(Path(tmp) / "journal.db")
        try:
            engine = Engine(
                job="policy-test",
                policy=policy,
                journal=journal,
                actuator=cluster,
                mode=Mode.ACT,
                settle_s=settle_s,
                clock=clock,
            )
            engine.launch()
            logs, metrics = list(case.logs), list(case.metrics)
            li = mi = 0
            steps = math.ceil((case.until - T0) / TICK_S)
            for k in range(steps + 1):
                clock.now = T0 + k * TICK_S
                feed = _Feed()
                while li < len(logs) and logs[li].timestamp <= clock.now:
                    feed.logs.append(logs[li])
                    li += 1
                while mi < len(metrics) and metrics[mi].timestamp <= clock.now:
                    feed.metrics.append(metrics[mi])
                    mi += 1
                health = SourceHealth("logs", True, clock.now)
                engine.process_batch(SourceBatch("logs", tuple(feed.logs), (), None, health))
                mhealth = SourceHealth(METRICS_SOURCE, True, clock.now)
                engine.process_batch(SourceBatch(METRICS_SOURCE, (), tuple(feed.metrics), None, mhealth))
                engine.tick()
                while not engine._actions.empty():  # the action thread's work, inline
                    action = engine._actions.get_nowait()
                    if action is not None:
                        engine.complete_action(action, cluster.apply(action))
            got = []
            for h in engine.snapshot().handled:
                root = h.incident.root_cause
                got.append(
                    GotIncident(
                        rule=root.rule,
                        decision=h.decision.verdict,
                        node=root.node,
                        evidence=root.evidence,
                        cordon=h.decision.node,
                        reason=h.decision.reason,
                    )
                )
        finally:
            journal.close()
    return CaseResult(case, tuple(got))


def _print_problems(problems: Sequence[Problem], out: TextIO) -> None:
    for p in problems:
        print(str(p), file=out)


def policy_test(files: Sequence[str | Path], out: TextIO, default_policies: Sequence[Path] = ()) -> int:
    """Run every test of every file; print a report; return 0 (all pass), 1 (a failure), 2 (load error)."""
    from supervisor.config import default_policy_dir
    from supervisor.logs import configure_logging

    configure_logging(level="critical")  # the engine's own log lines would drown the report
    loaded: list[PolicyTestFile] = []
    problems: list[Problem] = []
    for f in files:
        try:
            loaded.append(load_test_file(Path(f)))
        except ConfigError as exc:
            problems.extend(exc.problems)
    policy_sets: dict[tuple[Path, ...], PolicySet] = {}
    for tf in loaded:
        paths = tf.policies or tuple(default_policies) or (default_policy_dir(),)
        if paths in policy_sets:
            continue
        try:
            policy_sets[paths] = load_policies(paths)
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        _print_problems(problems, out)
        n = len(problems)
        print(f"{n} problem{'s' if n != 1 else ''}", file=out)
        return 2
    failed = total = 0
    for tf in loaded:
        policy = policy_sets[tf.policies or tuple(default_policies) or (default_policy_dir(),)]
        for case in tf.tests:
            total += 1
            result = run_case(case, policy, tf.settle_s)
            if result.passed:
                print(f"ok    {case.name}  ({case.where})", file=out)
                continue
            failed += 1
            print(f"FAIL  {case.name}  ({case.where})", file=out)
            print("  expected:", file=out)
            for w in case.expected or ():
                print(f"    - {w.describe()}", file=out)
            if not case.expected:
                print("    (no incident)", file=out)
            print("  got:", file=out)
            for g in result.got:
                print(f"    - {g.describe()}", file=out)
            if not result.got:
                print("    (no incident)", file=out)
    print(f"{total - failed}/{total} tests passed", file=out)
    return 1 if failed else 0
