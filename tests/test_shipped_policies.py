"""Every shipped policy file loads, and every rule's examples classify to that rule's action."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from supervisor.classify.commands import explain, policy_check
from supervisor.classify.matcher import LogClassifier, is_quiet
from supervisor.classify.policy import PolicySet, load_policies
from supervisor.config import default_policy_dir
from supervisor.vocabulary import Role, Scope, Verdict

POLICY_DIR = default_policy_dir()
FILES = sorted(POLICY_DIR.glob("*.y*ml"))


@pytest.fixture(scope="module")
def pack() -> PolicySet:
    return load_policies([POLICY_DIR])


def test_the_policy_dir_exists_and_has_the_themes() -> None:
    names = {f.name for f in FILES}
    assert {
        "gpu.yaml",
        "collectives.yaml",
        "host.yaml",
        "code.yaml",
        "launcher.yaml",
        "training.yaml",
    } <= names
    assert "budgets.yaml" in names


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_each_file_loads_on_its_own(path: Path) -> None:
    load_policies([path])


def test_every_rule_is_documented(pack: PolicySet) -> None:
    for rule in pack.rules:
        assert rule.description, f"{rule.name} has no description"
        if rule.is_log:
            assert rule.examples_match, f"{rule.name} has no match examples"


def _cases(kind: str) -> list[tuple[str, str]]:
    pack = load_policies([POLICY_DIR])
    out: list[tuple[str, str]] = []
    for rule in pack.log_rules:
        for line in rule.examples_match if kind == "match" else rule.examples_no_match:
            out.append((rule.name, line))
    return out


@pytest.mark.parametrize(("name", "line"), _cases("match"))
def test_match_examples_yield_the_rules_action_under_the_whole_pack(
    pack: PolicySet, name: str, line: str
) -> None:
    classifier = LogClassifier(pack)
    signal = classifier.classify("node-0", line, 0.0)
    rule = pack.rule(name)
    if is_quiet(rule):  # a quiet rule yields no signal: it keeps every other rule off its lines
        winner = classifier.explain(line)[0]
        assert signal is None and is_quiet(winner), f"{name}: example classified as {signal}"
        return
    assert signal is not None, f"{name}: example matches nothing in the whole pack"
    assert signal.verdict is rule.action, f"{name}: example classified as {signal.rule} ({signal.verdict})"


@pytest.mark.parametrize(("name", "line"), _cases("no_match"))
def test_no_match_examples_never_yield_the_rule(pack: PolicySet, name: str, line: str) -> None:
    signal = LogClassifier(pack).classify("node-0", line, 0.0)
    assert signal is None or signal.rule != name


def test_key_demo_verdicts(pack: PolicySet) -> None:
    c = LogClassifier(pack)
    gloo = (
        "RuntimeError: [/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:81] "
        "Timed out waiting 20000ms for recv operation to complete"
    )
    s = c.classify("n", gloo, 0.0)
    assert s is not None and s.rule == "gloo-timeout" and s.role is Role.SYMPTOM and s.scope is Scope.JOB
    summary = "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: "
    assert c.classify("n", summary, 0.0) is None  # quiet: teardown keeps the exception rule off it
    assert c.explain(summary)[0].role is Role.NOISE
    s = c.classify("n", "  traceback : Signal 9 (SIGKILL) received by PID 9635", 0.0)
    assert s is not None and s.rule == "rank-sigkilled" and s.scope is Scope.JOB and s.role is Role.CAUSE
    metric_names = {r.name: r for r in pack.metric_rules}
    assert metric_names["no-heartbeat"].action is Verdict.CORDON_AND_RESTART
    assert metric_names["no-step-progress"].action is Verdict.RESTART
    assert metric_names["loss-not-finite"].action is Verdict.RESTART


def test_policy_check_and_explain_commands(tmp_path: Path, pack: PolicySet) -> None:
    out = io.StringIO()
    assert policy_check([], out) == 0
    n_files = len(FILES)
    assert out.getvalue().strip() == (
        f"ok: {len(pack.rules)} rules ({len(pack.log_rules)} log, {len(pack.metric_rules)} metric)"
        f" in {n_files} files"
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - name: x\n    match: {log: '(?=a)'}\n")
    out = io.StringIO()
    assert policy_check([str(bad)], out) == 1
    text = out.getvalue()
    assert f"{bad}:3:18 rules[0].match.log: lookaround is not supported (RE2 syntax): (?=" in text
    assert text.strip().endswith("problems")
    out = io.StringIO()
    assert explain("NVRM: Xid (PCI:0000:3b:00): 79, pid=1, GPU has fallen off the bus.", [], out) == 0
    first = out.getvalue().splitlines()[0]
    assert first.startswith("=> gpu-fallen-off-bus") and "action=cordon_and_restart" in first
    out = io.StringIO()
    nccl = (
        "torch.distributed.DistBackendError: NCCL error in: ProcessGroupNCCL.cpp:1970, unhandled system error"
    )
    assert explain(nccl, [], out) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("=> nccl-system-error")
    assert any(line.startswith("   python-exception ") for line in lines)  # losers are listed too
    assert "wins: highest priority (5) of 3 matching rules (next: dist-backend-error at 3)" in lines
    assert "verdict: restart (signal collective.nccl_system_error, severity warning)" in lines
    out = io.StringIO()
    assert explain("NCCL INFO NCCL_IB_TIMEOUT set by environment to 22.", [], out) == 0
    assert "verdict: none (a quiet rule: ignore at severity info yields no signal)" in out.getvalue()
    out = io.StringIO()
    assert explain("all is well", [], out) == 1
    assert explain("x", [str(bad)], io.StringIO()) == 2
