"""Failure policies: the rule model and its strict, layered loader.

A policy file is YAML with up to three top-level keys::

    rules:              # log rules (match.log, an RE2 pattern) and metric rules (match.metric + condition)
      - name: gpu-fallen-off-bus
        match: {log: 'NVRM: Xid \\(PCI:[0-9a-fA-F:.]+\\): 79,'}
        signal: gpu.xid.79
        class: non_recoverable
        scope: node
        action: cordon_and_restart
        severity: critical
        examples: {match: [...], no_match: [...]}
    budgets: {restart: {...}, cordon: {...}, shared_cause: {...}, lemon: {...}, flapping: {...}}
                                                 # at most one file may define it
    disable: [rule-name, ...]                    # removes rules loaded from earlier files

`load_policies(paths)` loads the paths in order (a directory contributes its ``*.yaml`` / ``*.yml``
files sorted by name) and layers them:

* a rule whose name was already loaded is an error unless it says ``override: true``; then only
  the fields it names replace the earlier rule's (``match`` and ``examples`` merge key by key; a
  new metric condition replaces the old one, a ``log`` / ``metric`` switch replaces the whole match);
  the rule keeps its original place in declaration order;
* ``disable`` removes rules loaded from earlier files (an unknown name is an error);
* every problem of every file is collected into one `ConfigError` whose problems name the
  file, line, column and field path: ``policies/gpu.yaml:12:14 rules[3].match.log: missing ')'``.

Load-time checks: unknown keys, wrong types, missing required fields, invalid enum values, rule
names (``[a-z0-9][a-z0-9._-]*``, unique), RE2 pattern syntax (backreferences and lookaround are
rejected), patterns that match the empty string, metric rules with exactly one condition, and
every log rule's examples (``examples.match`` lines must match, ``examples.no_match`` must not; at
least one ``match`` example is required).

Log patterns are applied in RE2 multi-line mode (``^`` / ``$`` also match at line breaks inside a
multi-line log event), and ``^`` also matches after the per-rank prefixes launchers put in front of
a program's lines (torchrun's ``[rank3]:`` / ``[default3]:``, ``srun --label``'s ``3:``, mpirun's
``[1,3]<stderr>:``, also stacked), so ``^KeyError: `` matches ``15: [rank15]: KeyError: 'x'``. One
function, `effective_pattern`, does both for the loader, the examples and the matcher.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import re2

from supervisor.errors import ConfigError, Problem
from supervisor.vocabulary import FailureClass, Role, Scope, Severity, Signal, Verdict
from supervisor.yamlpos import Checker, DataPath, Document, load_yaml_file

NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]*")
SIGNAL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
METRIC_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/-]*")

RULE_KEYS = (
    "name",
    "description",
    "match",
    "signal",
    "class",
    "scope",
    "action",
    "severity",
    "role",
    "priority",
    "runbook",
    "examples",
    "override",
)
REQUIRED_RULE_KEYS = ("name", "match", "signal", "class", "scope", "action", "severity")
CONDITIONS = (
    "above",
    "below",
    "absent_for",
    "stalled_for",
    "above_baseline",
    "below_baseline",
    "above_job_median",
)
THRESHOLDS = ("above", "below", "above_baseline", "below_baseline", "above_job_median")
"""Conditions judged per sample, which may be held for a while (`for`)."""
RELATIVE = ("above_baseline", "below_baseline", "above_job_median")
"""Conditions judged against a reference over a `baseline` window."""
MATCH_KEYS = ("log", "metric", *CONDITIONS, "for", "baseline", "stalled_steps")
EXAMPLE_KEYS = ("match", "no_match")
TOP_KEYS = ("rules", "budgets", "disable")


# ----------------------------------------------------------------------------- patterns


class PatternError(ValueError):
    """An RE2 pattern that does not compile; the message is user-facing."""


def _re2_options() -> Any:
    opts = re2.Options()
    if hasattr(opts, "log_errors"):
        opts.log_errors = False  # keep absl from writing parse errors to stderr
    return opts


_OPTIONS = _re2_options()


def re2_options() -> Any:
    """The RE2 options every ftsup pattern is compiled with (quiet on errors)."""
    return _OPTIONS


def explain_re2_error(message: str) -> str:
    """Turn RE2's parser message into a user-facing one (lookaround / backreferences named)."""
    if message.startswith(
        ("invalid perl operator: (?=", "invalid perl operator: (?!", "invalid perl operator: (?<")
    ):
        return f"lookaround is not supported (RE2 syntax): {message.split(': ', 1)[1]}"
    if message.startswith("invalid perl operator: (?P"):
        return "named backreferences (?P=name) are not supported (RE2 syntax)"
    m = re.match(r"invalid escape sequence: (\\[1-9k])", message)
    if m:
        return f"backreferences are not supported (RE2 syntax): {m.group(1)}"
    for what, char in (("missing )", ")"), ("missing ]", "]"), ("unexpected )", ")")):
        if message.startswith(what + ":"):
            return f"{what.split()[0]} '{char}' in {message.split(': ', 1)[1]}"
    return f"invalid RE2 pattern: {message}"


LAUNCHER_PREFIX = r"(?:\[(?:rank|default)\d+\]: ?|\d{1,5}: ?|\[\d+,\d+\]<std(?:out|err)>: ?)"
"""RE2: one per-rank prefix a launcher writes before a program's line (see the module docstring)."""


def _anchor_after_prefixes(pattern: str) -> str:
    """Rewrite every ``^`` anchor of `pattern` (outside classes, escapes, \\Q..\\E) to also match
    after launcher prefixes."""
    out: list[str] = []
    i, n, in_class = 0, len(pattern), False
    while i < n:
        c = pattern[i]
        if c == "\\":
            if pattern.startswith("\\Q", i):
                j = pattern.find("\\E", i + 2)
                j = n if j < 0 else j + 2
            else:
                j = i + 2
            out.append(pattern[i:j])
            i = j
        elif in_class:
            if pattern.startswith("[:", i):  # a POSIX class such as [:alpha:] inside [...]
                j = pattern.find(":]", i + 2)
                j = n if j < 0 else j + 2
                out.append(pattern[i:j])
                i = j
                continue
            in_class = c != "]"
            out.append(c)
            i += 1
        elif c == "[":
            in_class = True
            out.append(c)
            i += 1
            if i < n and pattern[i] == "^":  # negation, not an anchor
                out.append("^")
                i += 1
            if i < n and pattern[i] == "]":  # a literal ] first in the class
                out.append("]")
                i += 1
        elif c == "^":
            out.append(f"(?:^{LAUNCHER_PREFIX}*)")
            i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def effective_pattern(pattern: str) -> str:
    """The RE2 pattern a log rule's `pattern` is applied as: multi-line, ``^`` after launcher prefixes."""
    return "(?m)" + _anchor_after_prefixes(pattern)


def compile_pattern(pattern: str) -> Any:
    """Compile a log rule's pattern the way the matcher applies it (RE2, multi-line mode).

    Raises `PatternError` with a user-facing message for syntax RE2 rejects (lookaround,
    backreferences, unbalanced groups ...) and for patterns that match the empty string, which
    would turn every log line into a signal.
    """
    try:
        re2.compile(pattern, _OPTIONS)  # errors quote the pattern as written
        regex = re2.compile(effective_pattern(pattern), _OPTIONS)
    except re2.error as exc:
        raw = exc.args[0] if exc.args else ""
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        raise PatternError(explain_re2_error(text)) from None
    except Exception as exc:  # the binding may raise TypeError / ValueError on odd input
        raise PatternError(f"invalid RE2 pattern: {exc}") from None
    if regex.search("") is not None:
        raise PatternError("pattern matches the empty string, so it would match every line")
    if re.search(r"(?<!\\)(?:\\\\)*\\[Az]", pattern):
        raise PatternError(
            "\\A and \\z are not supported: patterns apply to each line in multi-line mode; use ^ and $"
        )
    return regex


# ----------------------------------------------------------------------------- model


@dataclass(frozen=True, slots=True)
class LogMatch:
    """Match log lines with an RE2 `pattern` (searched, multi-line mode; see `compile_pattern`)."""

    pattern: str


@dataclass(frozen=True, slots=True)
class MetricMatch:
    """A condition on one metric of one node; exactly one of the four conditions is set.

    above / below:     the value is > above (< below), held for `for_s` seconds (0 = at once).
    absent_for:        no datapoint for that many seconds.
    stalled_for:       the value has not increased for that many seconds; with `stalled_steps` N,
                       for max(stalled_for, N x the node's p99 time per unit of increase), so a
                       job with slow steps (e.g. a 60 s step) is not called hung after one step.
    above_baseline F:  the value is > F x the median of this node's own values over the previous
                       `baseline_s` (a loss spike); needs `MIN_BASELINE_SAMPLES` earlier values.
    below_baseline F:  the value is < F x that median (a throughput drop).
    above_job_median F: the value is > F x the median of the other job nodes' latest values (at
                       most `baseline_s` old): a straggler. Needs one such peer.
    The three relative conditions may be held with `for_s` like above / below.
    """

    metric: str
    above: float | None = None
    below: float | None = None
    absent_for: float | None = None
    stalled_for: float | None = None
    above_baseline: float | None = None
    below_baseline: float | None = None
    above_job_median: float | None = None
    for_s: float = 0.0
    baseline_s: float = 600.0
    stalled_steps: float | None = None

    @property
    def condition(self) -> str:
        """Which condition is set: one of `CONDITIONS`."""
        for name in CONDITIONS:
            if getattr(self, name) is not None:
                return name
        raise ValueError("MetricMatch without a condition")


@dataclass(frozen=True, slots=True)
class Rule:
    """One classification rule, as loaded (after layering).

    `order` is its declaration position across all files (earlier = lower), the tie-break after
    `priority` (higher wins). `source` is "file:line" where the rule was first defined;
    `overridden_at` lists the "file:line" of each override applied to it.
    """

    name: str
    match: LogMatch | MetricMatch
    signal: str
    failure_class: FailureClass
    scope: Scope
    action: Verdict
    severity: Severity
    role: Role = Role.CAUSE
    priority: int = 0
    description: str = ""
    runbook: str | None = None
    examples_match: tuple[str, ...] = ()
    examples_no_match: tuple[str, ...] = ()
    source: str = "<code>"
    order: int = 0
    overridden_at: tuple[str, ...] = ()

    @property
    def is_log(self) -> bool:
        return isinstance(self.match, LogMatch)

    @property
    def recoverable(self) -> bool:
        return self.failure_class is FailureClass.RECOVERABLE


@dataclass(frozen=True, slots=True)
class RestartBudget:
    """At most `max` automatic restarts within `within_s`; relaunch delay doubles from `backoff_s`
    up to `backoff_max_s`, spread by +/- `jitter` (a fraction, seeded by the incident id so a
    replay decides the same delay). Past the budget the decision escalates (to halt)."""

    max: int = 3
    within_s: float = 3600.0
    backoff_s: float = 10.0
    backoff_max_s: float = 300.0
    jitter: float = 0.2


@dataclass(frozen=True, slots=True)
class CordonBudget:
    """At most `max_nodes` cordoned within `within_s`, and never more than `max_fraction` of the job."""

    max_nodes: int = 2
    within_s: float = 3600.0
    max_fraction: float = 0.25


@dataclass(frozen=True, slots=True)
class SharedCauseBudget:
    """`nodes` distinct nodes with node faults within `within_s` (across incidents) suggest a shared
    cause (network, filesystem, a bad release): halt and page instead of cordoning them."""

    nodes: int = 3
    within_s: float = 120.0


@dataclass(frozen=True, slots=True)
class LemonBudget:
    """A node implicated in `incidents` incidents within `within_s` is cordoned even when each one was
    recoverable; for `watch_after_return_s` after it is returned to service, `watch_incidents` do."""

    incidents: int = 3
    within_s: float = 86400.0
    watch_after_return_s: float = 86400.0
    watch_incidents: int = 2


@dataclass(frozen=True, slots=True)
class FlappingBudget:
    """Actions for the same (rule, node) are at least `min_interval_s` apart; after `max_flaps`
    repeats within `within_s` the next one halts and pages."""

    min_interval_s: float = 300.0
    max_flaps: int = 3
    within_s: float = 3600.0


@dataclass(frozen=True, slots=True)
class Budgets:
    restart: RestartBudget = field(default_factory=RestartBudget)
    cordon: CordonBudget = field(default_factory=CordonBudget)
    shared_cause: SharedCauseBudget = field(default_factory=SharedCauseBudget)
    lemon: LemonBudget = field(default_factory=LemonBudget)
    flapping: FlappingBudget = field(default_factory=FlappingBudget)


@dataclass(frozen=True, slots=True)
class PolicySet:
    """The loaded rules (declaration order), budgets, and the rules split by kind."""

    rules: tuple[Rule, ...]
    budgets: Budgets
    log_rules: tuple[Rule, ...]
    metric_rules: tuple[Rule, ...]
    files: tuple[str, ...] = ()

    @classmethod
    def from_rules(
        cls, rules: Iterable[Rule], budgets: Budgets | None = None, files: Sequence[str] = ()
    ) -> PolicySet:
        """Build a set from rules given in declaration order (handy for tests and tools)."""
        rs = tuple(rules)
        return cls(
            rules=rs,
            budgets=budgets or Budgets(),
            log_rules=tuple(r for r in rs if r.is_log),
            metric_rules=tuple(r for r in rs if not r.is_log),
            files=tuple(files),
        )

    def rule(self, name: str) -> Rule:
        """The rule called `name`; KeyError if none."""
        for r in self.rules:
            if r.name == name:
                return r
        raise KeyError(name)


def make_signal(
    rule: Rule,
    node: str,
    timestamp: float,
    evidence: str,
    *,
    event_id: str | None = None,
    line_index: int | None = None,
) -> Signal:
    """The `Signal` that `rule` raises on `node` at `timestamp` with the given evidence."""
    return Signal(
        rule=rule.name,
        signal=rule.signal,
        node=node,
        timestamp=timestamp,
        failure_class=rule.failure_class,
        scope=rule.scope,
        verdict=rule.action,
        severity=rule.severity,
        role=rule.role,
        evidence=evidence,
        event_id=event_id,
        line_index=line_index,
        runbook=rule.runbook,
    )


# ----------------------------------------------------------------------------- loading


@dataclass
class _Field:
    value: Any
    doc: Document
    path: DataPath


@dataclass
class _RawRule:
    name: str | None
    doc: Document
    path: DataPath
    fields: dict[str, _Field]
    override: bool
    ok: bool
    present: frozenset[str] = frozenset()  # top-level keys written (valid or not)


@dataclass
class _RawFile:
    doc: Document
    index: int
    rules: list[_RawRule]
    disable: list[tuple[str, DataPath]]
    budgets: Budgets | None
    budgets_path: DataPath | None


@dataclass
class _Effective:
    name: str
    first: _RawRule
    last: _RawRule
    fields: dict[str, _Field]
    ok: bool
    order: int
    overrides: list[_RawRule]
    present: set[str] = field(default_factory=set)


def _loc(doc: Document, path: DataPath, *, key: bool = False) -> str:
    line, col = doc.position(path, key=key)
    return f"{doc.file}:{line}:{col}"


def _expand(paths: Sequence[Path | str], problems: list[Problem]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(
                (c for c in p.iterdir() if c.suffix in (".yaml", ".yml") and c.is_file()),
                key=lambda c: c.name,
            )
            if not found:
                problems.append(Problem(str(p), 0, 0, "", "no *.yaml or *.yml files in this directory"))
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            problems.append(Problem(str(p), 0, 0, "", "no such file or directory"))
    return files


def _parse_rule(ck: Checker, doc: Document, path: DataPath, entry: object) -> _RawRule | None:
    before = len(ck.problems)
    m = ck.mapping(path, entry, allowed=RULE_KEYS)
    if m is None:
        return None
    fields: dict[str, _Field] = {}

    def put(key: str, value: Any, p: DataPath) -> None:
        if value is not None:
            fields[key] = _Field(value, doc, p)

    name: str | None = None
    if "name" in m:
        name = ck.string((*path, "name"), m["name"], pattern=NAME_RE, what="rule name")
    else:
        ck.problem(path, "missing required key 'name'")
    override = False
    if "override" in m:
        override = bool(ck.boolean((*path, "override"), m["override"]))
    for key, enum in (
        ("class", FailureClass),
        ("scope", Scope),
        ("action", Verdict),
        ("severity", Severity),
        ("role", Role),
    ):
        if key in m:
            put(key, ck.choice((*path, key), m[key], [e.value for e in enum]), (*path, key))
    for key in ("description", "runbook"):
        if key in m:
            put(key, ck.string((*path, key), m[key]), (*path, key))
    if "signal" in m:
        put(
            "signal",
            ck.string((*path, "signal"), m["signal"], pattern=SIGNAL_RE, what="signal"),
            (*path, "signal"),
        )
    if "priority" in m:
        p = (*path, "priority")
        put("priority", ck.integer(p, m["priority"], minimum=-1_000_000, maximum=1_000_000), p)
    if "match" in m:
        mp = (*path, "match")
        mm = ck.mapping(mp, m["match"], allowed=MATCH_KEYS)
        if mm is not None:
            if not mm:
                ck.problem(mp, "match needs 'log' (a pattern) or 'metric' (a metric name and a condition)")
            if "log" in mm:
                pattern = ck.string((*mp, "log"), mm["log"])
                if pattern is not None:
                    try:
                        compile_pattern(pattern)
                    except PatternError as exc:
                        ck.problem((*mp, "log"), str(exc))
                        pattern = None
                put("match.log", pattern, (*mp, "log"))
            if "metric" in mm:
                put(
                    "match.metric",
                    ck.string((*mp, "metric"), mm["metric"], pattern=METRIC_RE, what="metric"),
                    (*mp, "metric"),
                )
            for key in ("above", "below"):
                if key in mm:
                    put(f"match.{key}", ck.number((*mp, key), mm[key]), (*mp, key))
            for key in RELATIVE:
                if key in mm:
                    put(f"match.{key}", ck.number((*mp, key), mm[key], positive=True), (*mp, key))
            if "baseline" in mm:
                bp = (*mp, "baseline")
                put("match.baseline", ck.duration(bp, mm["baseline"], positive=True), bp)
            for key in ("absent_for", "stalled_for"):
                if key in mm:
                    put(f"match.{key}", ck.duration((*mp, key), mm[key], positive=True), (*mp, key))
            if "for" in mm:
                put("match.for", ck.duration((*mp, "for"), mm["for"]), (*mp, "for"))
            if "stalled_steps" in mm:
                sp = (*mp, "stalled_steps")
                put("match.stalled_steps", ck.number(sp, mm["stalled_steps"], positive=True), sp)
    if "examples" in m:
        ep = (*path, "examples")
        em = ck.mapping(ep, m["examples"], allowed=EXAMPLE_KEYS)
        if em is not None:
            for key in EXAMPLE_KEYS:
                if key in em:
                    lines = ck.string_list((*ep, key), em[key])
                    put(f"examples.{key}", None if lines is None else tuple(lines), (*ep, key))
    present = frozenset(k for k in m if isinstance(k, str))
    return _RawRule(name, doc, path, fields, override, ok=len(ck.problems) == before, present=present)


BUDGET_KEYS = ("restart", "cordon", "shared_cause", "lemon", "flapping")


def _parse_budgets(ck: Checker, path: DataPath, value: object) -> Budgets | None:
    before = len(ck.problems)
    m = ck.mapping(path, value, allowed=BUDGET_KEYS)
    if m is None:
        return None
    restart = RestartBudget()
    cordon = CordonBudget()
    shared = SharedCauseBudget()
    lemon = LemonBudget()
    flapping = FlappingBudget()

    def section(key: str, allowed: tuple[str, ...]) -> tuple[DataPath, dict[str, Any]] | None:
        if key not in m:
            return None
        sp = (*path, key)
        sm = ck.mapping(sp, m[key], allowed=allowed)
        return None if sm is None else (sp, sm)

    def integer(sp: DataPath, sm: dict[str, Any], key: str, default: int, minimum: int) -> int | None:
        return ck.integer((*sp, key), sm[key], minimum=minimum) if key in sm else default

    def duration(
        sp: DataPath, sm: dict[str, Any], key: str, default: float, *, positive: bool
    ) -> float | None:
        return ck.duration((*sp, key), sm[key], positive=positive) if key in sm else default

    got = section("restart", ("max", "within", "backoff", "backoff_max", "jitter"))
    if got is not None:
        rp, rm = got
        mx = integer(rp, rm, "max", restart.max, 0)
        within = duration(rp, rm, "within", restart.within_s, positive=True)
        backoff = duration(rp, rm, "backoff", restart.backoff_s, positive=False)
        bmax = ck.duration((*rp, "backoff_max"), rm["backoff_max"]) if "backoff_max" in rm else None
        if bmax is None and "backoff_max" not in rm:
            bmax = max(restart.backoff_max_s, backoff or 0.0)
        if bmax is not None and backoff is not None and bmax < backoff:
            ck.problem((*rp, "backoff_max"), f"must be >= backoff ({backoff:g}s), got {bmax:g}s")
        jitter = (
            ck.number((*rp, "jitter"), rm["jitter"], minimum=0.0, maximum=1.0)
            if "jitter" in rm
            else restart.jitter
        )
        if None not in (mx, within, backoff, bmax, jitter):
            assert mx is not None and within is not None and backoff is not None
            assert bmax is not None and jitter is not None
            restart = RestartBudget(mx, within, backoff, bmax, jitter)
    got = section("cordon", ("max_nodes", "within", "max_fraction"))
    if got is not None:
        cp, cm = got
        mn = integer(cp, cm, "max_nodes", cordon.max_nodes, 0)
        within = duration(cp, cm, "within", cordon.within_s, positive=True)
        frac = (
            ck.number((*cp, "max_fraction"), cm["max_fraction"], positive=True, maximum=1.0)
            if "max_fraction" in cm
            else cordon.max_fraction
        )
        if mn is not None and within is not None and frac is not None:
            cordon = CordonBudget(mn, within, frac)
    got = section("shared_cause", ("nodes", "within"))
    if got is not None:
        sp, sm = got
        nodes = integer(sp, sm, "nodes", shared.nodes, 2)
        within = duration(sp, sm, "within", shared.within_s, positive=True)
        if nodes is not None and within is not None:
            shared = SharedCauseBudget(nodes, within)
    got = section("lemon", ("incidents", "within", "watch_after_return", "watch_incidents"))
    if got is not None:
        lp, lm = got
        incidents = integer(lp, lm, "incidents", lemon.incidents, 2)
        within = duration(lp, lm, "within", lemon.within_s, positive=True)
        watch = duration(lp, lm, "watch_after_return", lemon.watch_after_return_s, positive=False)
        watch_n = integer(lp, lm, "watch_incidents", min(lemon.watch_incidents, incidents or 2), 1)
        if watch_n is not None and incidents is not None and watch_n > incidents:
            ck.problem(
                (*lp, "watch_incidents"),
                f"must be <= incidents ({incidents}): a returned node is watched more closely",
            )
        elif None not in (incidents, within, watch, watch_n):
            assert incidents is not None and within is not None and watch is not None and watch_n is not None
            lemon = LemonBudget(incidents, within, watch, watch_n)
    got = section("flapping", ("min_interval", "max_flaps", "within"))
    if got is not None:
        fp, fm = got
        interval = duration(fp, fm, "min_interval", flapping.min_interval_s, positive=False)
        flaps = integer(fp, fm, "max_flaps", flapping.max_flaps, 1)
        within = duration(fp, fm, "within", flapping.within_s, positive=True)
        if interval is not None and flaps is not None and within is not None:
            flapping = FlappingBudget(interval, flaps, within)
    if len(ck.problems) != before:
        return None
    return Budgets(restart, cordon, shared, lemon, flapping)


def _parse_file(doc: Document, index: int, problems: list[Problem]) -> _RawFile:
    ck = Checker(doc, problems)
    out = _RawFile(doc, index, [], [], None, None)
    if doc.data is None:
        return out
    top = ck.mapping((), doc.data, allowed=TOP_KEYS)
    if top is None:
        return out
    if "rules" in top:
        rules = top["rules"]
        if rules is None:
            pass
        elif not isinstance(rules, list):
            ck.problem(("rules",), "expected a list of rules")
        else:
            for i, entry in enumerate(rules):
                raw = _parse_rule(ck, doc, ("rules", i), entry)
                if raw is not None:
                    out.rules.append(raw)
    if "budgets" in top:
        out.budgets_path = ("budgets",)
        out.budgets = _parse_budgets(ck, ("budgets",), top["budgets"])
    if "disable" in top:
        names = ck.string_list(("disable",), top["disable"])
        if names is not None:
            out.disable = [(n, ("disable", i)) for i, n in enumerate(names)]
    return out


def _merge_fields(base: dict[str, _Field], over: dict[str, _Field]) -> dict[str, _Field]:
    out = dict(base)
    switched = ("match.log" in over and "match.metric" in base) or (
        "match.metric" in over and "match.log" in base
    )
    if switched:
        out = {k: v for k, v in out.items() if not k.startswith("match.")}
    elif any(f"match.{c}" in over for c in CONDITIONS):
        out = {
            k: v
            for k, v in out.items()
            if k.removeprefix("match.") not in (*CONDITIONS, "for", "baseline", "stalled_steps")
        }
    out.update(over)
    return out


def _build_rule(eff: _Effective, problems: list[Problem]) -> Rule | None:
    f = eff.fields
    last = eff.last
    before = len(problems)

    def report(at: _Field | None, message: str, path: DataPath | None = None) -> None:
        if at is not None:
            problems.append(at.doc.problem(path if path is not None else at.path, message))
        else:
            problems.append(last.doc.problem(last.path, message))

    has_match = any(k.startswith("match.") for k in f)
    for key in REQUIRED_RULE_KEYS:
        if key != "name" and key not in eff.present:
            report(None, f"missing required key {key!r}")
    if not eff.ok:
        return None  # the rule's own field problems are already reported
    is_log = "match.log" in f
    is_metric = "match.metric" in f
    cond_keys = [c for c in CONDITIONS if f"match.{c}" in f]
    anchor = (
        f.get("match.log") or f.get("match.metric") or next((f[k] for k in f if k.startswith("match.")), None)
    )
    match_path = anchor.path[:-1] if anchor is not None else None
    if is_log and is_metric:
        report(anchor, "match needs exactly one of 'log' or 'metric', not both", match_path)
    elif has_match and not is_log and not is_metric:
        report(anchor, "match needs 'log' (a pattern) or 'metric' (a metric name)", match_path)
    match: LogMatch | MetricMatch | None = None
    if is_log and not is_metric:
        for c in (*cond_keys, "for", "baseline", "stalled_steps"):
            if f"match.{c}" in f:
                report(f[f"match.{c}"], f"'{c}' applies only to metric rules", f[f"match.{c}"].path)
        pattern_field = f["match.log"]
        regex = compile_pattern(pattern_field.value)  # validated in _parse_rule
        positives = f.get("examples.match")
        if positives is None or not positives.value:
            report(positives, "log rules need at least one example line in examples.match")
        else:
            for i, line in enumerate(positives.value):
                if regex.search(line) is None:
                    report(positives, "example does not match the rule's pattern", (*positives.path, i))
        negatives = f.get("examples.no_match")
        if negatives is not None:
            for i, line in enumerate(negatives.value):
                if regex.search(line) is not None:
                    report(negatives, "no_match example matches the rule's pattern", (*negatives.path, i))
        match = LogMatch(pattern_field.value)
    elif is_metric and not is_log:
        for key in ("examples.match", "examples.no_match"):
            if key in f:
                report(f[key], "examples apply only to log rules")
        if len(cond_keys) != 1:
            report(
                f["match.metric"],
                "metric rules need exactly one of " + ", ".join(CONDITIONS),
                match_path,
            )
        elif "match.for" in f and cond_keys[0] not in THRESHOLDS:
            report(f["match.for"], "'for' applies only to " + ", ".join(THRESHOLDS))
        elif "match.baseline" in f and cond_keys[0] not in RELATIVE:
            report(f["match.baseline"], "'baseline' applies only to " + ", ".join(RELATIVE))
        elif "match.stalled_steps" in f and cond_keys[0] != "stalled_for":
            report(f["match.stalled_steps"], "'stalled_steps' applies only to stalled_for")
        else:
            c = cond_keys[0]
            match = MetricMatch(
                metric=f["match.metric"].value,
                for_s=f["match.for"].value if "match.for" in f else 0.0,
                baseline_s=f["match.baseline"].value if "match.baseline" in f else 600.0,
                stalled_steps=f["match.stalled_steps"].value if "match.stalled_steps" in f else None,
                **{c: f[f"match.{c}"].value},
            )
    if len(problems) != before or match is None:
        return None
    first = eff.first
    return Rule(
        name=eff.name,
        match=match,
        signal=f["signal"].value,
        failure_class=FailureClass(f["class"].value),
        scope=Scope(f["scope"].value),
        action=Verdict(f["action"].value),
        severity=Severity(f["severity"].value),
        role=Role(f["role"].value) if "role" in f else Role.CAUSE,
        priority=f["priority"].value if "priority" in f else 0,
        description=f["description"].value if "description" in f else "",
        runbook=f["runbook"].value if "runbook" in f else None,
        examples_match=f["examples.match"].value if "examples.match" in f else (),
        examples_no_match=f["examples.no_match"].value if "examples.no_match" in f else (),
        source=f"{first.doc.file}:{first.doc.position(first.path)[0]}",
        order=eff.order,
        overridden_at=tuple(f"{o.doc.file}:{o.doc.position(o.path)[0]}" for o in eff.overrides),
    )


def load_policies(paths: Sequence[Path | str]) -> PolicySet:
    """Load and layer the policy files under `paths` (in order); raise `ConfigError` with every problem.

    Each path is a file or a directory (its ``*.yaml`` / ``*.yml`` files, sorted by name). See the
    module docstring for layering (override / disable) and the checks performed.
    """
    problems: list[Problem] = []
    files = _expand(paths, problems)
    raws: list[_RawFile] = []
    for i, path in enumerate(files):
        try:
            doc = load_yaml_file(path)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        raws.append(_parse_file(doc, i, problems))

    effective: dict[str, _Effective] = {}
    budgets: Budgets | None = None
    budgets_at: str | None = None
    order = 0
    for rf in raws:
        doc = rf.doc
        for name, dpath in rf.disable:
            if name in effective:
                del effective[name]
            else:
                problems.append(
                    doc.problem(dpath, f"cannot disable {name!r}: no rule by that name was loaded before")
                )
        seen_here: dict[str, _RawRule] = {}
        for raw in rf.rules:
            if raw.name is None:
                continue
            if raw.name in seen_here:
                prev = seen_here[raw.name]
                problems.append(
                    doc.problem(
                        (*raw.path, "name"),
                        f"duplicate rule name {raw.name!r} (first defined at {_loc(prev.doc, prev.path)})",
                    )
                )
                continue
            seen_here[raw.name] = raw
            eff = effective.get(raw.name)
            if eff is not None:
                if not raw.override:
                    problems.append(
                        doc.problem(
                            (*raw.path, "name"),
                            f"rule {raw.name!r} is already defined at {_loc(eff.first.doc, eff.first.path)}"
                            " (add 'override: true' to change it)",
                        )
                    )
                    continue
                eff.fields = _merge_fields(eff.fields, raw.fields)
                eff.ok = eff.ok and raw.ok
                eff.present |= raw.present
                eff.last = raw
                eff.overrides.append(raw)
            elif raw.override:
                problems.append(
                    doc.problem(
                        (*raw.path, "override"),
                        f"override: true but no rule named {raw.name!r} was loaded before",
                    )
                )
            else:
                effective[raw.name] = _Effective(
                    raw.name, raw, raw, dict(raw.fields), raw.ok, order, [], set(raw.present)
                )
                order += 1
        if rf.budgets_path is not None:
            here = _loc(doc, rf.budgets_path, key=True)
            if budgets_at is not None:
                problems.append(
                    doc.problem(
                        rf.budgets_path,
                        f"budgets are already defined in {budgets_at}; define them in one file only",
                        key=True,
                    )
                )
            else:
                budgets_at = here
                budgets = rf.budgets

    rules: list[Rule] = []
    for eff in sorted(effective.values(), key=lambda e: e.order):
        rule = _build_rule(eff, problems)
        if rule is not None:
            rules.append(rule)
    if problems:
        file_rank = {str(p): i for i, p in enumerate(files)}
        problems.sort(key=lambda p: (file_rank.get(p.file, -1), p.line, p.col))
        raise ConfigError(problems)
    return PolicySet.from_rules(rules, budgets or Budgets(), [str(p) for p in files])
