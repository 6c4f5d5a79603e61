"""The server-side filter pattern derived from the policies (supervisor.classify.prefilter).

The property that matters: filtering with the derived pattern (CloudWatch's semantics, implemented by
`cloudwatch_matches`) never changes what ftsup decides. Proven on the labelled corpus (every case's
verdict, rule and root-cause line unchanged), on every rule's own examples, and by hypothesis on
lines generated from each rule's regex.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import re2
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from supervisor.classify.matcher import LogClassifier, clean_text, is_quiet
from supervisor.classify.policy import LogMatch, PolicySet, Rule, load_policies
from supervisor.classify.prefilter import (
    HEALTHY_SAMPLE,
    MAX_PATTERN_CHARS,
    STRUCTURE_KEYS,
    Derivation,
    Unkeyable,
    cloudwatch_matches,
    derive_filter_pattern,
    literal_regex,
    necessary_literals,
)
from supervisor.classify.units import StreamClassifier
from supervisor.config import ConfigError, ProgressPatterns, default_policy_dir, load_config
from supervisor.daemon import logs_filter_pattern
from supervisor.incidents.rootcause import choose_root_cause
from tests.test_corpus import load_corpus

POLICY = load_policies([default_policy_dir()])
KEYED = [r for r in POLICY.log_rules if not is_quiet(r)]


@pytest.fixture(scope="module")
def derived() -> Derivation:
    d = derive_filter_pattern(POLICY, include_step=False)
    assert d.pattern is not None, d.unkeyable
    return d


def verdict(classifier: LogClassifier, items: list[tuple[int, str]]) -> tuple[str, str, int | None] | None:
    """What `ftsup classify` decides for these (original index, line) pairs."""
    stream = StreamClassifier(classifier)
    signals = stream.feed_many([("node", line, float(i), None, i) for i, line in items])
    signals += stream.flush()
    root = choose_root_cause(signals)
    return None if root is None else (root.verdict.value, root.rule, root.line_index)


# ----------------------------------------------------------------------------- the superset property


@pytest.mark.parametrize("include_step", [False, True])
def test_filtering_the_corpus_changes_no_decision_and_no_root_cause_line(include_step: bool) -> None:
    d = derive_filter_pattern(POLICY, include_step=include_step)
    assert d.pattern is not None
    classifier = LogClassifier(POLICY)
    corpus = load_corpus()
    changed, kept, total = [], 0, 0
    for case in corpus:
        items = list(enumerate(case.lines))
        passed = [(i, line) for i, line in items if cloudwatch_matches(d.pattern, line)]
        kept += len(passed)
        total += len(items)
        before, after = verdict(classifier, items), verdict(classifier, passed)
        if before != after:
            changed.append((case.id, before, after))
    assert len(corpus) >= 150
    assert not changed, changed
    assert kept < total  # the corpus is failure windows: most lines pass, not all


def test_every_rule_example_passes(derived: Derivation) -> None:
    assert derived.pattern is not None
    missed = [
        (r.name, ex)
        for r in KEYED
        for ex in r.examples_match
        if not cloudwatch_matches(derived.pattern, ex) and not _only_non_ascii_fold(ex)
    ]
    assert not missed


def _only_non_ascii_fold(line: str) -> bool:
    """Lines whose keyword relies on RE2's non-ASCII case folding (documented limit)."""
    return not line.isascii()


_RULE_STRATEGIES = [(r.name, r.match.pattern) for r in KEYED if isinstance(r.match, LogMatch)]


@settings(
    max_examples=1500,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(st.data())
def test_lines_any_rule_matches_always_pass(derived: Derivation, data: st.DataObject) -> None:
    # A rule is drawn, then a line its regex matches (ASCII, already clean: CloudWatch sees the raw
    # line, the rules the cleaned one, see the module docstring's limits).
    assert derived.pattern is not None
    name, pattern = data.draw(st.sampled_from(_RULE_STRATEGIES), label="rule")
    line = data.draw(st.from_regex(re.compile(pattern, re.MULTILINE)), label="line")
    assume(line.isascii() and clean_text(line) == line and re2.search(pattern, line) is not None)
    assert cloudwatch_matches(derived.pattern, line), (name, line)


def test_structure_and_progress_lines_pass_and_step_lines_only_when_asked(derived: Derivation) -> None:
    assert derived.pattern is not None
    needed = [
        "Traceback (most recent call last):",
        '  File "/opt/train.py", line 9, in <module>',
        "The above exception was the direct cause of the following exception:",
        "During handling of the above exception, another exception occurred:",
        "Exception ignored in: <function Pool.__del__ at 0x7f>",
        "terminate called after throwing an instance of 'c10::Error'",
        '{"ts": 1.0, "event": "resume", "step": 1000, "checkpoint": "/fsx/ckpt/step_1000"}',
        '{"ts": 1.0, "event": "checkpoint_saved", "step": 1000, "seconds": 41.2}',
    ]
    assert [line for line in needed if not cloudwatch_matches(derived.pattern, line)] == []
    step = '{"ts": 1.0, "event": "step", "step": 1041, "loss": 2.3141, "step_time_s": 1.042}'
    assert not cloudwatch_matches(derived.pattern, step)
    assert not derived.includes_step
    with_steps = derive_filter_pattern(POLICY, include_step=True)
    assert with_steps.pattern is not None and with_steps.includes_step
    assert cloudwatch_matches(with_steps.pattern, step)
    assert {name for name, _ in STRUCTURE_KEYS} <= {k.name for k in derived.keys}


def test_healthy_bulk_does_not_pass(derived: Derivation) -> None:
    assert derived.pattern is not None
    bulk = [line for line in HEALTHY_SAMPLE if '"event": "step"' in line or "NCCL INFO" in line]
    assert len(bulk) >= 5
    assert [line for line in bulk if cloudwatch_matches(derived.pattern, line)] == []
    failing = '{"ts": 1.0, "event": "step", "step": 1041, "loss": "nan", "step_time_s": 1.0}'
    assert cloudwatch_matches(derived.pattern, failing)  # loss-not-finite-log keys on it


def test_pattern_is_one_cloudwatch_regex_within_the_limit(derived: Derivation) -> None:
    p = derived.pattern
    assert p is not None and len(p) <= MAX_PATTERN_CHARS
    assert p.startswith("%") and p.endswith("%") and "%" not in p[1:-1]
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_#=@/;,-.[]|\\*")
    assert not set(p[1:-1]) - allowed
    assert all(p[i - 1] == "." for i, c in enumerate(p) if c == "*")  # only as .* (a gap)
    assert "(" not in p and " " not in p and '"' not in p and p.isascii()
    assert set(derived.literals) == set(p[1:-1].split("|"))
    assert "quiet rule" in dict(derived.skipped)["rule:nccl-info-chatter"]
    assert "literals" in derived.describe()


# ----------------------------------------------------------------------------- keying one pattern


def rule(pattern: str, name: str = "custom") -> Rule:
    base = next(r for r in POLICY.log_rules if r.name == "gpu-fallen-off-bus")
    return replace(base, name=name, match=LogMatch(pattern))


def lits(pattern: str) -> set[str]:
    return {literal_regex(s) for s in necessary_literals(pattern)}


def test_necessary_literals_follow_the_regex() -> None:
    assert lits(r"\bXid \((?:PCI:)?[0-9a-f]{2,8}:[0-9a-f:.]+\): 79\b") == {"Xid"}
    assert lits(r"No space left on device|\[Errno 28\]") <= {"No.space.left.on.device", "Errno.28"}
    assert lits(r"(?i)spot interruption") == {
        "[Ss][Pp][Oo][Tt].[Ii][Nn][Tt][Ee][Rr][Rr][Uu][Pp][Tt][Ii][Oo][Nn]"
    }
    assert lits(r"loss: (?:nan|-?inf)\b") == {"loss..nan", "loss..inf", "loss..-inf"}
    # Pieces around a part that cannot hold a line break are keyed together (A.*B), never around one
    # that can (\s, [^x]): CloudWatch's "." does not match a line break inside a multi-line event.
    assert lits(r"\[E[\d :.]*socket\.cpp:\d+\] \[c10d\]") == {"E.*socket\\.cpp"}
    assert not any(".*" in lit for lit in lits(r"[Nn]o gpu\s+xyzzy found") | lits(r"abcd[^x]+wxyz"))
    # One literal of the set occurs in every line the pattern matches.
    for pattern, line in [
        (r"CUDA error: (?:an )?unknown error", "RuntimeError: CUDA error: unknown error"),
        (r"[EF]rror in step \d+", "Frror in step 3"),
        (r"mat1 and mat2 shapes cannot be multiplied", "x mat1 and mat2 shapes cannot be multiplied"),
    ]:
        assert any(re.search(lit, line) for lit in lits(pattern)), pattern


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        (r"^\d{3,}$", "no literal"),
        (r"ab|cdef", "no literal"),
        (r"\p{Greek}+ failure", "syntax"),
        (r"[[:alpha:]]+ failure", "POSIX"),
    ],
)
def test_unkeyable_patterns_are_named_and_turn_the_filter_off(pattern: str, why: str) -> None:
    with pytest.raises(Unkeyable, match=why):
        necessary_literals(pattern)
    policy = PolicySet.from_rules([*POLICY.rules, rule(pattern)])
    d = derive_filter_pattern(policy)
    assert d.pattern is None
    assert [name for name, _ in d.unkeyable] == ["rule:custom"]
    assert "no server-side filter" in d.describe()


def test_custom_progress_patterns_are_keyed() -> None:
    progress = ProgressPatterns(step=None, resume=r"RESUMED at step (?P<step>\d+)", checkpoint=None)
    d = derive_filter_pattern(POLICY, progress, include_step=False)
    assert d.pattern is not None
    assert cloudwatch_matches(d.pattern, "RESUMED at step 1000")


# ----------------------------------------------------------------------------- CloudWatch semantics


def test_cloudwatch_semantics() -> None:
    assert cloudwatch_matches("", "anything")
    assert cloudwatch_matches("%AUTHORIZED%", "[ERROR 401] UNAUTHORIZED REQUEST")  # the docs' example
    assert not cloudwatch_matches("%Xid|CUDA%", "cuda")  # case-sensitive
    assert cloudwatch_matches("ERROR ARGUMENTS", "[ERROR 419] MISSING ARGUMENTS")
    assert not cloudwatch_matches("ERROR ARGUMENTS", "[ERROR 400] BAD REQUEST")
    assert cloudwatch_matches("?ERROR ?WARN", "[WARN] x")
    assert not cloudwatch_matches("ERROR -ARGUMENTS", "[ERROR 419] MISSING ARGUMENTS")
    assert cloudwatch_matches('"INTERNAL SERVER ERROR"', "[ERROR 500] INTERNAL SERVER ERROR")
    assert cloudwatch_matches("?ERROR ?ARGUMENTS REQUEST", "[INFO 200] SUCCESSFUL REQUEST")  # ? ignored
    with pytest.raises(ValueError):
        cloudwatch_matches("%a(b)%", "ab")  # parentheses are not supported in CloudWatch regex
    with pytest.raises(ValueError):
        cloudwatch_matches('{ $.level = "ERROR" }', "{}")


# ----------------------------------------------------------------------------- config and daemon


def config(tmp_path: Path, logs: str, metrics: str = "") -> Path:
    p = tmp_path / "ftsup.yaml"
    p.write_text(
        textwrap.dedent(
            f"""\
            job: {{name: demo, log_group: /ftsup/jobs/demo}}
            sources:
              logs: {logs}
            """
        )
        + (f"  metrics: {metrics}\n" if metrics else "")
    )
    return p


def test_config_filter_pattern_modes_and_errors(tmp_path: Path) -> None:
    auto = load_config(config(tmp_path, "{}"))
    assert auto.sources.logs.filter_pattern == "auto"
    assert (auto.sources.logs.tail_overlap_s, auto.sources.logs.sweep_interval_s) == (5.0, 15.0)
    pattern, progress_metric = logs_filter_pattern(auto, POLICY)
    assert pattern is not None and pattern.startswith("%") and progress_metric == "step"

    no_metrics = load_config(config(tmp_path, "{}", "{enabled: false}"))
    pattern, progress_metric = logs_filter_pattern(no_metrics, POLICY)
    assert pattern is not None and progress_metric is None  # step lines must pass then
    assert cloudwatch_matches(pattern, '{"event": "step", "step": 3, "loss": 2.0}')

    assert logs_filter_pattern(load_config(config(tmp_path, "{filter_pattern: none}")), POLICY) == (
        None,
        None,
    )
    literal = load_config(config(tmp_path, "{filter_pattern: '\"Xid\"'}"))
    assert logs_filter_pattern(literal, POLICY) == ('"Xid"', None)

    with pytest.raises(ConfigError) as ei:
        load_config(config(tmp_path, f"{{filter_pattern: '{'x' * 1025}', tail_overlap_s: 40}}"))
    got = [str(p) for p in ei.value.problems]
    assert any("ftsup.yaml:3:" in g and "filter_pattern" in g and "1024" in g for g in got), got
    assert any("tail_overlap_s" in g and "overlap_s" in g for g in got), got


def test_engine_reads_progress_from_the_step_metric_when_step_lines_are_filtered(tmp_path: Path) -> None:
    from supervisor.act.external import ExternalJob
    from supervisor.engine import Engine
    from supervisor.journal import Journal
    from supervisor.vocabulary import MetricSample, Mode, SourceBatch, SourceHealth

    def run(progress_metric: str | None) -> tuple[int | None, float | None]:
        journal = Journal(tmp_path / f"{progress_metric}.db")
        engine = Engine(
            job="demo",
            policy=POLICY,
            journal=journal,
            actuator=ExternalJob("demo", ["node-0"]),
            mode=Mode.OBSERVE,
        )
        engine.progress_metric = progress_metric
        t0 = engine.snapshot().launched_at or 0.0
        samples = tuple(MetricSample("node-0", "step", t0 + 1 + i, float(1000 + i)) for i in range(3))
        engine.process_batch(SourceBatch("metrics", (), samples, None, SourceHealth("metrics", True, t0 + 4)))
        snap = engine.snapshot()
        journal.close()
        return snap.last_step, None if snap.first_step_at is None else snap.first_step_at - t0

    assert run("step") == (1002, 1.0)
    assert run(None) == (None, None)  # step lines are the only progress then
