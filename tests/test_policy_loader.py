"""The policy loader: every problem with exact file:line:col, layering by override / disable."""

from __future__ import annotations

import contextlib
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.classify.policy import (
    Budgets,
    CordonBudget,
    LogMatch,
    MetricMatch,
    RestartBudget,
    Rule,
    compile_pattern,
    load_policies,
    make_signal,
)
from supervisor.errors import ConfigError
from supervisor.vocabulary import FailureClass, Role, Scope, Severity, Verdict

GOOD = """\
rules:
  - name: xid-79
    description: GPU fell off the bus
    match: {log: 'Xid \\(PCI:[0-9a-f:]+\\): 79,'}
    signal: gpu.xid.79
    class: non_recoverable
    scope: node
    action: cordon_and_restart
    severity: critical
    runbook: https://docs.nvidia.com/deploy/xid-errors/
    examples:
      match: ['NVRM: Xid (PCI:0000:3b:00): 79, pid=1']
      no_match: ['NVRM: Xid (PCI:0000:3b:00): 13, pid=1']
  - name: no-progress
    match: {metric: step, stalled_for: 2m}
    signal: training.hang
    class: recoverable
    scope: job
    action: restart
    severity: warning
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def problems(paths: list[Path], tmp_path: Path) -> list[str]:
    with pytest.raises(ConfigError) as ei:
        load_policies(paths)
    return [str(p).replace(str(tmp_path) + "/", "") for p in ei.value.problems]


RULE_HEAD = """\
rules:
  - name: r1
    signal: s
    class: recoverable
    scope: job
    action: restart
    severity: info
"""


def test_good_file_loads(tmp_path: Path) -> None:
    ps = load_policies([write(tmp_path, "p.yaml", GOOD)])
    assert [r.name for r in ps.rules] == ["xid-79", "no-progress"]
    xid, stall = ps.rules
    assert xid.match == LogMatch("Xid \\(PCI:[0-9a-f:]+\\): 79,")
    assert xid.failure_class is FailureClass.NON_RECOVERABLE and xid.scope is Scope.NODE
    assert xid.action is Verdict.CORDON_AND_RESTART and xid.severity is Severity.CRITICAL
    assert xid.role is Role.CAUSE and xid.priority == 0
    assert xid.source == f"{tmp_path}/p.yaml:2"
    assert stall.match == MetricMatch("step", stalled_for=120.0)
    assert ps.log_rules == (xid,) and ps.metric_rules == (stall,)
    assert ps.budgets == Budgets(RestartBudget(3, 3600, 10, 300), CordonBudget(2, 3600, 0.25))
    assert ps.rule("no-progress") is stall


def test_directory_loads_sorted_yaml_and_yml(tmp_path: Path) -> None:
    d = tmp_path / "pol"
    d.mkdir()
    write(d, "b.yml", RULE_HEAD.replace("r1", "from-b") + "    match: {metric: hb, absent_for: 60}\n")
    write(d, "a.yaml", RULE_HEAD.replace("r1", "from-a") + "    match: {metric: hb, absent_for: 30s}\n")
    write(d, "notes.txt", "not a policy")
    ps = load_policies([d])
    assert [r.name for r in ps.rules] == ["from-a", "from-b"]
    assert [r.order for r in ps.rules] == [0, 1]
    assert len(ps.files) == 2


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "    match: {log: 'x(', examples: 1}\n",
            [
                "p.yaml:8:18 rules[0].match.log: missing ')' in x(",
                "p.yaml:8:24 rules[0].match.examples: unknown key 'examples' "
                "(expected one of: above, above_baseline, above_job_median, absent_for, baseline, below,"
                " below_baseline, for, log, metric, stalled_for, stalled_steps)",
            ],
        ),
        (
            "    match: {log: '(?=foo)bar'}\n",
            ["p.yaml:8:18 rules[0].match.log: lookaround is not supported (RE2 syntax): (?="],
        ),
        (
            "    match: {log: '(?<!foo)bar'}\n",
            ["p.yaml:8:18 rules[0].match.log: lookaround is not supported (RE2 syntax): (?<!"],
        ),
        (
            "    match: {log: '(a)\\1'}\n",
            ["p.yaml:8:18 rules[0].match.log: backreferences are not supported (RE2 syntax): \\1"],
        ),
        (
            "    match: {log: '\\Afoo'}\n",
            [
                "p.yaml:8:18 rules[0].match.log: \\A and \\z are not supported: patterns apply to each"
                " line in multi-line mode; use ^ and $"
            ],
        ),
        (
            "    match: {log: 'a*'}\n",
            [
                "p.yaml:8:18 rules[0].match.log: "
                "pattern matches the empty string, so it would match every line"
            ],
        ),
        (
            "    match: {log: 'boom'}\n",
            ["p.yaml:2:5 rules[0]: log rules need at least one example line in examples.match"],
        ),
        (
            "    match: {log: 'boom'}\n    examples: {match: ['bang'], no_match: ['boom!']}\n",
            [
                "p.yaml:9:24 rules[0].examples.match[0]: example does not match the rule's pattern",
                "p.yaml:9:44 rules[0].examples.no_match[0]: no_match example matches the rule's pattern",
            ],
        ),
        (
            "    match: {metric: step}\n",
            [
                "p.yaml:8:12 rules[0].match: "
                "metric rules need exactly one of above, below, absent_for, stalled_for, above_baseline,"
                " below_baseline, above_job_median"
            ],
        ),
        (
            "    match: {metric: step, above: 1, below: 0}\n",
            [
                "p.yaml:8:12 rules[0].match: "
                "metric rules need exactly one of above, below, absent_for, stalled_for, above_baseline,"
                " below_baseline, above_job_median"
            ],
        ),
        (
            "    match: {metric: step, above: 1, baseline: 5m}\n",
            [
                "p.yaml:8:47 rules[0].match.baseline: 'baseline' applies only to above_baseline,"
                " below_baseline, above_job_median"
            ],
        ),
        (
            "    match: {metric: step, above_baseline: -2}\n",
            ["p.yaml:8:43 rules[0].match.above_baseline: must be > 0, got -2"],
        ),
        (
            "    match: {metric: step, absent_for: 1m, for: 5s}\n",
            [
                "p.yaml:8:48 rules[0].match.for: 'for' applies only to above, below, above_baseline,"
                " below_baseline, above_job_median"
            ],
        ),
        (
            "    match: {metric: step, stalled_for: soon}\n",
            [
                "p.yaml:8:40 rules[0].match.stalled_for: "
                "invalid duration 'soon' (expected e.g. 30s, 5m, 1h30m)"
            ],
        ),
        (
            "    match: {log: 'x', metric: step}\n    examples: {match: [x]}\n",
            ["p.yaml:8:12 rules[0].match: match needs exactly one of 'log' or 'metric', not both"],
        ),
        (
            "    match: {metric: step, above: yes}\n",
            ["p.yaml:8:34 rules[0].match.above: expected a number, got a boolean (true)"],
        ),
    ],
)
def test_match_problems(tmp_path: Path, body: str, expected: list[str]) -> None:
    p = write(tmp_path, "p.yaml", RULE_HEAD + body)
    assert problems([p], tmp_path) == expected


def test_field_problems_are_all_reported_together(tmp_path: Path) -> None:
    text = """\
    rules:
      - name: Bad_Name
        match: {metric: step, above: 1}
        signal: s
        class: maybe
        scope: rack
        action: reboot
        severity: loud
        role: villain
        priority: high
        colour: red
      - description: no name, no fields
        match: {metric: step, above: 1}
      - name: ok-name
        match: {metric: step, above: 1}
    """
    p = write(tmp_path, "p.yaml", text)
    assert problems([p], tmp_path) == [
        "p.yaml:2:11 rules[0].name: invalid rule name 'Bad_Name' (must match [a-z0-9][a-z0-9._-]*)",
        "p.yaml:5:12 rules[0].class: invalid value 'maybe' (expected one of: recoverable | non_recoverable)",
        "p.yaml:6:12 rules[0].scope: invalid value 'rack' (expected one of: node | job | code | none)",
        "p.yaml:7:13 rules[0].action: invalid value 'reboot' "
        "(expected one of: restart | cordon_and_restart | halt | ignore)",
        "p.yaml:8:15 rules[0].severity: invalid value 'loud' (expected one of: info | warning | critical)",
        "p.yaml:9:11 rules[0].role: invalid value 'villain' (expected one of: cause | symptom | noise)",
        "p.yaml:10:15 rules[0].priority: expected an integer, got a string ('high')",
        "p.yaml:11:5 rules[0].colour: unknown key 'colour' (expected one of: action, class, description, "
        "examples, match, name, override, priority, role, runbook, scope, severity, signal)",
        "p.yaml:12:5 rules[1]: missing required key 'name'",
        "p.yaml:14:5 rules[2]: missing required key 'signal'",
        "p.yaml:14:5 rules[2]: missing required key 'class'",
        "p.yaml:14:5 rules[2]: missing required key 'scope'",
        "p.yaml:14:5 rules[2]: missing required key 'action'",
        "p.yaml:14:5 rules[2]: missing required key 'severity'",
    ]


def test_top_level_problems(tmp_path: Path) -> None:
    a = write(tmp_path, "a.yaml", "rules: {}\nbudget: {}\n")
    b = write(tmp_path, "b.yaml", "- just a list\n")
    assert problems([a, b, tmp_path / "missing.yaml"], tmp_path) == [
        "missing.yaml: no such file or directory",
        "a.yaml:1:8 rules: expected a list of rules",
        "a.yaml:2:1 budget: unknown key 'budget' (expected one of: budgets, disable, rules)",
        "b.yaml:1:1: expected a mapping, got a list",
    ]


def test_duplicate_names_in_one_file_and_across_files(tmp_path: Path) -> None:
    rule = RULE_HEAD.split("\n", 1)[1] + "    match: {metric: step, above: 1}\n"
    a = write(tmp_path, "a.yaml", "rules:\n" + rule + rule)
    b = write(tmp_path, "b.yaml", "rules:\n" + rule)
    assert problems([a, b], tmp_path) == [
        "a.yaml:9:11 rules[1].name: duplicate rule name 'r1' (first defined at a.yaml:2:5)",
        "b.yaml:2:11 rules[0].name: rule 'r1' is already defined at a.yaml:2:5 "
        "(add 'override: true' to change it)",
    ]


def test_partial_override_replaces_only_named_fields(tmp_path: Path) -> None:
    base = write(tmp_path, "base.yaml", GOOD)
    site = write(
        tmp_path,
        "site.yaml",
        """\
        rules:
          - name: no-progress
            override: true
            match: {stalled_for: 10m}
          - name: xid-79
            override: true
            action: halt
            priority: 3
        """,
    )
    ps = load_policies([base, site])
    assert [r.name for r in ps.rules] == ["xid-79", "no-progress"]  # original order kept
    stall = ps.rule("no-progress")
    assert stall.match == MetricMatch("step", stalled_for=600.0)
    assert stall.action is Verdict.RESTART and stall.signal == "training.hang"
    xid = ps.rule("xid-79")
    assert xid.action is Verdict.HALT and xid.priority == 3
    assert xid.match == LogMatch("Xid \\(PCI:[0-9a-f:]+\\): 79,") and xid.runbook is not None
    assert xid.source.endswith("base.yaml:2") and xid.overridden_at == (f"{site}:5",)


def test_override_condition_switch_and_examples_are_rechecked(tmp_path: Path) -> None:
    base = write(tmp_path, "base.yaml", GOOD)
    site = write(
        tmp_path,
        "site.yaml",
        """\
        rules:
          - name: no-progress
            override: true
            match: {below: 1, for: 30s}
          - name: xid-79
            override: true
            match: {log: 'Xid 48'}
        """,
    )
    assert problems([base, site], tmp_path) == [
        # the earlier examples are checked against the new pattern
        "base.yaml:12:15 rules[0].examples.match[0]: example does not match the rule's pattern",
    ]
    fixed = write(
        tmp_path,
        "site.yaml",
        (tmp_path / "site.yaml").read_text().replace("Xid 48", r"Xid \(PCI:[0-9a-f:]+\): 79"),
    )
    ps = load_policies([base, fixed])
    assert ps.rule("no-progress").match == MetricMatch("step", below=1.0, for_s=30.0)


def test_override_without_earlier_rule_is_an_error(tmp_path: Path) -> None:
    p = write(tmp_path, "p.yaml", "rules:\n  - name: ghost\n    override: true\n    priority: 1\n")
    assert problems([p], tmp_path) == [
        "p.yaml:3:15 rules[0].override: override: true but no rule named 'ghost' was loaded before"
    ]


def test_disable_removes_earlier_rules_and_rejects_unknown(tmp_path: Path) -> None:
    base = write(tmp_path, "base.yaml", GOOD)
    site = write(tmp_path, "site.yaml", "disable: [xid-79]\n")
    assert [r.name for r in load_policies([base, site]).rules] == ["no-progress"]
    bad = write(tmp_path, "bad.yaml", "disable: [xid-79, nope]\n")
    assert problems([base, bad], tmp_path) == [
        "bad.yaml:1:19 disable[1]: cannot disable 'nope': no rule by that name was loaded before"
    ]
    # a disabled rule's name may be defined afresh later
    again = write(tmp_path, "again.yaml", GOOD.replace("no-progress", "other"))
    assert [r.name for r in load_policies([base, site, again]).rules] == ["no-progress", "xid-79", "other"]


def test_budgets_defaults_partial_and_one_file_only(tmp_path: Path) -> None:
    a = write(tmp_path, "a.yaml", "budgets:\n  restart: {max: 5, backoff: 30s}\n")
    ps = load_policies([a])
    assert ps.budgets.restart == RestartBudget(5, 3600, 30, 300)
    assert ps.budgets.cordon == CordonBudget()
    b = write(tmp_path, "b.yaml", "budgets:\n  cordon: {max_fraction: 2, within: 0}\n")
    assert problems([a, b], tmp_path) == [
        "b.yaml:1:1 budgets: budgets are already defined in a.yaml:1:1; define them in one file only",
        "b.yaml:2:26 budgets.cordon.max_fraction: must be <= 1, got 2",
        "b.yaml:2:37 budgets.cordon.within: must be a positive duration, got 0",
    ]
    c = write(tmp_path, "c.yaml", "budgets:\n  restart: {backoff: 1m, backoff_max: 30s, then: halt}\n")
    assert problems([c], tmp_path) == [
        "c.yaml:2:39 budgets.restart.backoff_max: must be >= backoff (60s), got 30s",
        "c.yaml:2:44 budgets.restart.then: unknown key 'then' "
        "(expected one of: backoff, backoff_max, jitter, max, within)",
    ]


def test_yaml_errors_surface_with_position(tmp_path: Path) -> None:
    p = write(tmp_path, "p.yaml", "rules:\n  - name: a\n    name: b\n")
    assert problems([p], tmp_path) == [
        "p.yaml:3:5 rules[0].name: duplicate key 'name' (first at line 2, col 5)"
    ]


def test_compile_pattern_is_multiline() -> None:
    rx = compile_pattern(r"^\s*ValueError: ")
    assert rx.search("Traceback\n  ValueError: x") is not None


@pytest.mark.parametrize(
    ("line", "hit"),
    [
        ("KeyError: 'x'", True),
        ("[rank3]:KeyError: 'x'", True),
        ("[rank3]: KeyError: 'x'", True),
        ("15: [rank15]: KeyError: 'x'", True),
        ("[1,0]<stderr>:KeyError: 'x'", True),
        ("[default0]:KeyError: 'x'", True),
        ("worker-3 KeyError: 'x'", False),
        ("    raise KeyError: 'x'", False),
    ],
)
def test_caret_also_matches_after_launcher_prefixes(line: str, hit: bool) -> None:
    rx = compile_pattern(r"^KeyError: ")
    assert (rx.search(line) is not None) is hit


@pytest.mark.parametrize(
    ("pattern", "literal_hit"),
    [(r"[^a]x", "bx"), (r"\^x", "^x"), (r"[]^]x", "^x"), (r"[[:alpha:]^]x", "^x"), (r"\Q^\Ex", "^x")],
)
def test_caret_rewrite_leaves_classes_escapes_and_quotes_alone(pattern: str, literal_hit: str) -> None:
    assert compile_pattern(pattern).search(literal_hit) is not None


def test_make_signal_copies_the_rule() -> None:
    rule = Rule(
        name="r",
        match=LogMatch("x"),
        signal="a.b",
        failure_class=FailureClass.RECOVERABLE,
        scope=Scope.JOB,
        action=Verdict.RESTART,
        severity=Severity.WARNING,
        role=Role.SYMPTOM,
        runbook="https://x",
    )
    s = make_signal(rule, "node-1", 12.5, "line", event_id="e1", line_index=3)
    assert (s.rule, s.signal, s.node, s.timestamp, s.evidence, s.event_id, s.line_index) == (
        "r",
        "a.b",
        "node-1",
        12.5,
        "line",
        "e1",
        3,
    )
    assert (s.failure_class, s.scope, s.verdict, s.severity, s.role, s.runbook) == (
        FailureClass.RECOVERABLE,
        Scope.JOB,
        Verdict.RESTART,
        Severity.WARNING,
        Role.SYMPTOM,
        "https://x",
    )


yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20), st.floats())
yaml_values = st.recursive(
    yaml_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.sampled_from(["rules", "name", "match", "log", "metric", "above", "examples", "budgets", "x"]),
            children,
            max_size=5,
        ),
    ),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=yaml_values)
def test_loader_never_raises_anything_but_config_error(tmp_path: Path, doc: object) -> None:
    import yaml

    p = tmp_path / "fuzz.yaml"
    p.write_text(yaml.safe_dump(doc))
    with contextlib.suppress(ConfigError):
        load_policies([p])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_loader_survives_arbitrary_text(tmp_path: Path, text: str) -> None:
    p = tmp_path / "fuzz.yaml"
    p.write_text(text, encoding="utf-8", errors="surrogatepass")
    with contextlib.suppress(ConfigError):
        load_policies([p])


def test_safety_rail_budgets_parse_with_defaults_and_strict_errors(tmp_path: Path) -> None:
    from supervisor.classify.policy import FlappingBudget, LemonBudget, SharedCauseBudget

    a = write(
        tmp_path,
        "a.yaml",
        "budgets:\n"
        "  restart: {jitter: 0.5}\n"
        "  shared_cause: {nodes: 4, within: 5m}\n"
        "  lemon: {incidents: 5, within: 12h}\n"
        "  flapping: {min_interval: 1m, max_flaps: 2, within: 30m}\n",
    )
    b = load_policies([a]).budgets
    assert b.restart == RestartBudget(3, 3600, 10, 300, 0.5)
    assert b.shared_cause == SharedCauseBudget(4, 300)
    assert b.lemon == LemonBudget(5, 43200, 86400, 2)
    assert b.flapping == FlappingBudget(60, 2, 1800)
    shipped = load_policies([Path(__file__).resolve().parent.parent / "policies" / "budgets.yaml"]).budgets
    assert shipped == Budgets()  # the shipped file states the defaults
    bad = write(
        tmp_path,
        "bad.yaml",
        "budgets:\n"
        "  restart: {jitter: 1.5}\n"
        "  shared_cause: {nodes: 1, within: 0}\n"
        "  lemon: {incidents: 2, watch_incidents: 3, watch_after_return: soon}\n"
        "  flapping: {max_flaps: 0, storm: yes}\n",
    )
    assert problems([bad], tmp_path) == [
        "bad.yaml:2:21 budgets.restart.jitter: must be <= 1, got 1.5",
        "bad.yaml:3:25 budgets.shared_cause.nodes: must be >= 2, got 1",
        "bad.yaml:3:36 budgets.shared_cause.within: must be a positive duration, got 0",
        "bad.yaml:4:42 budgets.lemon.watch_incidents: must be <= incidents (2): a returned node is watched "
        "more closely",
        "bad.yaml:4:65 budgets.lemon.watch_after_return: invalid duration 'soon' "
        "(expected e.g. 30s, 5m, 1h30m)",
        "bad.yaml:5:25 budgets.flapping.max_flaps: must be >= 1, got 0",
        "bad.yaml:5:28 budgets.flapping.storm: unknown key 'storm' "
        "(expected one of: max_flaps, min_interval, within)",
    ]
