"""One-pass log classification with an RE2 set: best rule per line, robust to odd input."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.classify.matcher import MAX_EVIDENCE_CHARS, LogClassifier, clean_text
from supervisor.classify.policy import LogMatch, MetricMatch, PolicySet, Rule, load_policies
from supervisor.config import default_policy_dir
from supervisor.vocabulary import FailureClass, Role, Scope, Severity, Verdict


def rule(
    name: str, pattern: str, *, priority: int = 0, order: int = 0, action: Verdict = Verdict.RESTART
) -> Rule:
    return Rule(
        name=name,
        match=LogMatch(pattern),
        signal=f"sig.{name}",
        failure_class=FailureClass.RECOVERABLE,
        scope=Scope.JOB,
        action=action,
        severity=Severity.WARNING,
        role=Role.CAUSE,
        priority=priority,
        order=order,
    )


GENERIC = rule(
    "generic", r"^\s*[A-Za-z_][\w.]*(?:Error|Exception): ", priority=-10, order=0, action=Verdict.HALT
)
GLOO = rule("gloo", r"Timed out waiting \d+ms for (?:recv|send) operation", priority=5, order=1)
FIRST = rule("first", r"boom", order=2)
SECOND = rule("second", r"boom", order=3)


def test_highest_priority_wins_then_declaration_order() -> None:
    c = LogClassifier([SECOND, GENERIC, GLOO, FIRST])
    line = (
        "RuntimeError: [gloo/unbound_buffer.cc:81] Timed out waiting 20000ms for recv operation to complete"
    )
    s = c.classify("node-0", line, 12.0, event_id="e-1")
    assert (
        s is not None
        and s.rule == "gloo"
        and s.node == "node-0"
        and s.timestamp == 12.0
        and s.event_id == "e-1"
    )
    assert [r.name for r in c.explain(line)] == ["gloo", "generic"]
    s2 = c.classify("node-0", "boom", 1.0, line_index=4)
    assert s2 is not None and s2.rule == "first" and s2.line_index == 4
    assert [r.name for r in c.explain("ValueError: boom")] == ["first", "second", "generic"]


def test_no_match_and_metric_rules_ignored() -> None:
    metric = Rule(
        "m",
        MetricMatch("step", stalled_for=60),
        "s",
        FailureClass.RECOVERABLE,
        Scope.JOB,
        Verdict.RESTART,
        Severity.INFO,
    )
    c = LogClassifier(PolicySet.from_rules([metric, GLOO]))
    assert [r.name for r in c.rules] == ["gloo"]
    assert c.classify("n", "all good", 0.0) is None
    assert c.explain("all good") == []
    assert LogClassifier([]).classify("n", "boom", 0.0) is None


def test_ansi_escapes_and_nul_are_stripped_before_matching() -> None:
    c = LogClassifier([GENERIC])
    s = c.classify("n", "\x1b[31mValueError:\x1b[0m \x00bad", 0.0)
    assert s is not None and s.evidence == "ValueError: bad"
    assert clean_text("a\rb\r\nc") == "a\nb\nc"
    assert clean_text(b"x\xffy") == "x\ufffdy"


def test_multiline_event_matches_at_line_starts_and_evidence_is_the_matched_line() -> None:
    c = LogClassifier([GENERIC])
    text = "Traceback (most recent call last):\n  File \"x.py\", line 1\nKeyError: 'labels'\nafter"
    s = c.classify("n", text, 0.0)
    assert s is not None and s.evidence == "KeyError: 'labels'"


def test_evidence_is_truncated_around_the_match() -> None:
    c = LogClassifier([FIRST])
    line = "x" * 100_000 + "boom" + "y" * 100_000
    s = c.classify("n", line, 0.0)
    assert s is not None and len(s.evidence) <= MAX_EVIDENCE_CHARS and "boom" in s.evidence


def test_megabyte_lines_do_not_crash_and_surrogates_are_replaced() -> None:
    c = LogClassifier([FIRST, GENERIC])
    assert c.classify("n", "boom" + "z" * (1 << 20), 0.0) is not None
    assert c.classify("n", "z" * (2 << 20) + "boom", 0.0) is None  # beyond the 1 MiB cap
    s = c.classify("n", "\ud800 boom", 0.0)
    assert s is not None and s.rule == "first"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_classify_never_raises(text: str) -> None:
    c = LogClassifier([GENERIC, GLOO, FIRST])
    c.classify("n", text, 0.0)
    c.explain(text)


class _GivesUp:
    """RE2::Set::Match when its DFA runs out of memory: no result at all (not even the canary)."""

    def Match(self, text: str) -> None:
        return None


def test_a_set_matcher_that_gives_up_is_never_read_as_a_healthy_line() -> None:
    classifier = LogClassifier(load_policies([default_policy_dir()]))
    xid = "[ 812.004] NVRM: Xid (PCI:0000:3b:00): 79, pid=812, name=python, GPU has fallen off the bus."
    classifier._set = _GivesUp()
    found = classifier.classify("node-1", xid, 0.0)
    assert found is not None and found.rule == "gpu-fallen-off-bus"
    assert classifier.dfa_failures == 1
    assert classifier.any_match("healthy line\nanother healthy line")  # unsure means look closer
    assert classifier.classify("node-1", "healthy line", 0.0) is None
