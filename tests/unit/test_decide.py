"""decide(): every path from a root cause to a verdict, budgets and stale cases included."""

from __future__ import annotations

from supervisor.decide.decide import JobState, Limits, backoff_delay, cordon_allowance, decide
from supervisor.vocabulary import Verdict
from tests.builders import T0, code_bug, incident, signal, xid79

LIMITS = Limits(
    restart_max=3,
    restart_within_s=3600,
    backoff_s=10,
    backoff_max_s=60,
    restart_jitter=0.0,
    cordon_max_nodes=2,
)


def state(**kw: object) -> JobState:
    base: dict[str, object] = {
        "job": "job",
        "attempt": 0,
        "nodes": ("node-0", "node-1"),
        "spares": ("node-2",),
    }
    base.update(kw)
    return JobState(**base)  # type: ignore[arg-type]


def test_collective_timeout_restarts_without_delay_the_first_time() -> None:
    d = decide(state(), incident(signal()), LIMITS, T0)
    assert d.verdict is Verdict.RESTART
    assert d.delay_s == 0
    assert not d.page


def test_xid_cordons_its_node_when_a_spare_exists() -> None:
    d = decide(state(), incident(signal(node="node-0"), xid79("node-1")), LIMITS, T0)
    assert d.verdict is Verdict.CORDON_AND_RESTART
    assert d.node == "node-1"
    assert "node-2" in d.reason


def test_code_bug_halts_and_pages() -> None:
    d = decide(state(), incident(code_bug()), LIMITS, T0)
    assert d.verdict is Verdict.HALT
    assert d.page


def test_restart_budget_exhausted_halts_and_pages() -> None:
    s = state(restarts=(T0 - 100, T0 - 50, T0 - 10))
    d = decide(s, incident(signal()), LIMITS, T0)
    assert d.verdict is Verdict.HALT
    assert d.page
    assert d.rule_verdict is Verdict.RESTART
    assert "budget" in d.reason


def test_restarts_outside_the_window_do_not_count() -> None:
    s = state(restarts=(T0 - 7200, T0 - 7100, T0 - 7000))
    assert decide(s, incident(signal()), LIMITS, T0).verdict is Verdict.RESTART


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff_delay(n, LIMITS) for n in range(6)] == [0, 10, 20, 40, 60, 60]
    s = state(restarts=(T0 - 20, T0 - 10))
    assert decide(s, incident(signal()), LIMITS, T0).delay_s == 20


def test_no_spare_means_halt_not_a_smaller_job() -> None:
    d = decide(state(spares=()), incident(xid79()), LIMITS, T0)
    assert d.verdict is Verdict.HALT
    assert "spare" in d.reason


def test_cordon_budget_suspects_a_shared_cause() -> None:
    s = state(nodes=tuple(f"node-{i}" for i in range(8)), cordons=(T0 - 30, T0 - 20))
    d = decide(s, incident(xid79("node-3")), LIMITS, T0)
    assert d.verdict is Verdict.HALT
    assert "cordon budget" in d.reason


def test_cordon_allowance_is_at_least_one_and_at_most_the_fraction() -> None:
    assert cordon_allowance(2, LIMITS) == 1
    assert cordon_allowance(8, LIMITS) == 2
    assert cordon_allowance(100, Limits(cordon_max_nodes=50, cordon_max_fraction=0.05)) == 5


def test_signal_about_an_already_cordoned_node_is_stale() -> None:
    d = decide(state(cordoned=("node-1",), nodes=("node-0", "node-2")), incident(xid79("node-1")), LIMITS, T0)
    assert d.verdict is Verdict.IGNORE


def test_unknown_node_is_not_cordoned_blindly() -> None:
    d = decide(state(), incident(xid79("node-99")), LIMITS, T0)
    assert d.verdict is Verdict.HALT
    assert "not a member" in d.reason


def test_halted_job_and_old_attempts_are_ignored() -> None:
    assert decide(state(halted=True), incident(code_bug()), LIMITS, T0).verdict is Verdict.IGNORE
    assert decide(state(attempt=2), incident(signal(), attempt=1), LIMITS, T0).verdict is Verdict.IGNORE


def test_node_faults_on_several_nodes_at_once_suspect_a_shared_cause() -> None:
    s = state(nodes=tuple(f"node-{i}" for i in range(4)))
    d = decide(s, incident(xid79("node-1"), xid79("node-2", at=0.5)), LIMITS, T0)
    assert d.verdict is Verdict.HALT
    assert "shared cause" in d.reason
    assert d.page


def test_one_node_fault_among_symptoms_elsewhere_is_still_cordoned() -> None:
    s = state(nodes=tuple(f"node-{i}" for i in range(4)))
    d = decide(s, incident(signal(node="node-0"), signal(node="node-2"), xid79("node-1")), LIMITS, T0)
    assert d.verdict is Verdict.CORDON_AND_RESTART
    assert d.node == "node-1"


def test_a_backoff_is_stated_in_the_reason_for_the_on_call_engineer() -> None:
    d = decide(state(restarts=(T0 - 60,)), incident(xid79()), LIMITS, T0)
    assert d.verdict is Verdict.CORDON_AND_RESTART
    assert d.delay_s == 10
    assert "10s backoff" in d.reason
