"""The safety rails of decide(): jittered backoff, shared cause across incidents, lemon nodes, flapping."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

from supervisor.classify.policytest import policy_test
from supervisor.decide.decide import (
    JobState,
    Limits,
    PastIncident,
    backoff_delay,
    decide,
    implicated_nodes,
    jitter_unit,
    jittered,
    remember,
    returns_to_service,
)
from supervisor.vocabulary import Role, Scope, Verdict
from tests.builders import T0, incident, signal, xid79

LIMITS = Limits(backoff_s=10, backoff_max_s=60, restart_jitter=0.2, restart_max=10, cordon_max_nodes=10)
NODES = tuple(f"node-{i}" for i in range(8))


def state(**kw: object) -> JobState:
    base: dict[str, object] = {"job": "job", "attempt": 0, "nodes": NODES, "spares": ("spare-0", "spare-1")}
    base.update(kw)
    return JobState(**base)  # type: ignore[arg-type]


def oom(node: str = "node-3", at: float = 0.0):  # type: ignore[no-untyped-def]
    """A recoverable fault that node logged itself (host-oom-killer style: cause, job scope, restart)."""
    return signal("host-oom-killer", node=node, at=at, role=Role.CAUSE, scope=Scope.JOB)


def past(
    node: str, ago: float, *, rule: str = "host-oom-killer", iid: str = "", verdict: Verdict = Verdict.RESTART
) -> PastIncident:
    return PastIncident(
        incident_id=iid or f"old-{node}-{ago}-{rule}",
        at=T0 - ago,
        rule=rule,
        node=node,
        verdict=verdict,
        implicated=(node,),
        node_faults=(node,) if verdict is Verdict.CORDON_AND_RESTART else (),
    )


# ----------------------------------------------------------------------------- restart backoff and jitter


def test_jitter_is_deterministic_per_incident_and_bounded() -> None:
    s = state(restarts=(T0 - 20, T0 - 10))
    one = decide(s, incident(signal(), incident_id="inc-a"), LIMITS, T0)
    again = decide(s, incident(signal(), incident_id="inc-a"), LIMITS, T0)
    assert one == again  # replay-stable
    delays = {decide(s, incident(signal(), incident_id=f"inc-{i}"), LIMITS, T0).delay_s for i in range(50)}
    assert len(delays) > 40  # spread: the seed is the incident id
    assert all(16 <= d <= 24 for d in delays)  # 20s +/- 20%
    assert all(-1 <= jitter_unit(f"x{i}") < 1 for i in range(200))


def test_jitter_never_exceeds_backoff_max_and_first_relaunch_waits_nothing() -> None:
    assert all(jittered(60, LIMITS, f"i{i}") <= 60 for i in range(100))
    assert jittered(0, LIMITS, "i") == 0
    assert decide(state(), incident(signal()), LIMITS, T0).delay_s == 0
    assert jittered(20, replace(LIMITS, restart_jitter=0.0), "i") == 20


def test_restart_budget_exhausted_halts_and_pages_at_the_boundary() -> None:
    lim = replace(LIMITS, restart_max=3, restart_within_s=100)
    just_in = state(restarts=(T0 - 99.9, T0 - 50, T0 - 1))
    d = decide(just_in, incident(signal()), lim, T0)
    assert d.verdict is Verdict.HALT and d.page and "restart budget" in d.reason
    just_out = state(restarts=(T0 - 100, T0 - 50, T0 - 1))
    assert decide(just_out, incident(signal()), lim, T0).verdict is Verdict.RESTART
    assert backoff_delay(2, lim) == 20


# ----------------------------------------------------------------------------- blast radius and shared cause


def test_cordon_fraction_caps_the_blast_radius() -> None:
    lim = replace(LIMITS, cordon_max_nodes=10, cordon_max_fraction=0.25)  # 8 nodes: 2
    s = state(cordons=(T0 - 500, T0 - 400))
    d = decide(s, incident(xid79("node-3")), lim, T0)
    assert d.verdict is Verdict.HALT and "cordon budget" in d.reason
    s = state(cordons=(T0 - 500,))
    assert decide(s, incident(xid79("node-3")), lim, T0).verdict is Verdict.CORDON_AND_RESTART


def test_node_faults_across_incidents_within_the_window_suspect_a_shared_cause() -> None:
    lim = replace(LIMITS, cordon_max_fraction=1.0, shared_cause_nodes=3, shared_cause_within_s=120)
    hist = (past("node-1", 60, rule="gpu-xid-79", verdict=Verdict.CORDON_AND_RESTART),)
    s = state(history=hist, cordons=(T0 - 60,))
    assert decide(s, incident(xid79("node-3")), lim, T0).verdict is Verdict.CORDON_AND_RESTART
    hist += (past("node-2", 30, rule="gpu-xid-79", verdict=Verdict.CORDON_AND_RESTART),)
    d = decide(state(history=hist, cordons=(T0 - 60, T0 - 30)), incident(xid79("node-3")), lim, T0)
    assert d.verdict is Verdict.HALT and d.page
    assert "shared cause" in d.reason and "node-1, node-2, node-3" in d.reason


def test_shared_cause_window_boundary_and_ignored_incidents() -> None:
    lim = replace(LIMITS, cordon_max_fraction=1.0, shared_cause_nodes=3, shared_cause_within_s=120)
    old = (
        past(
            "node-1", 120, rule="gpu-xid-79", verdict=Verdict.CORDON_AND_RESTART
        ),  # exactly at the edge: out
        past("node-2", 30, rule="gpu-xid-79", verdict=Verdict.CORDON_AND_RESTART),
    )
    assert (
        decide(state(history=old), incident(xid79("node-3")), lim, T0).verdict is Verdict.CORDON_AND_RESTART
    )
    stale = (
        replace(
            past("node-1", 10, rule="gpu-xid-79", verdict=Verdict.CORDON_AND_RESTART), verdict=Verdict.IGNORE
        ),
        past("node-2", 30, rule="gpu-xid-79", verdict=Verdict.CORDON_AND_RESTART),
    )
    assert (
        decide(state(history=stale), incident(xid79("node-3")), lim, T0).verdict is Verdict.CORDON_AND_RESTART
    )


# ----------------------------------------------------------------------------- lemon nodes


def test_a_node_implicated_in_n_recoverable_incidents_is_cordoned() -> None:
    lim = replace(LIMITS, lemon_incidents=3, lemon_within_s=86400)
    one = (past("node-3", 7200),)
    assert decide(state(history=one), incident(oom()), lim, T0).verdict is Verdict.RESTART
    two = (past("node-3", 7200), past("node-3", 3600))
    d = decide(state(history=two), incident(oom()), lim, T0)
    assert d.verdict is Verdict.CORDON_AND_RESTART and d.node == "node-3"
    assert d.reason.startswith("host-oom-killer on node-3: a lemon, implicated in 3 incidents")
    assert d.rule_verdict is Verdict.RESTART


def test_lemon_window_boundary() -> None:
    lim = replace(LIMITS, lemon_incidents=3, lemon_within_s=86400)
    edge = (past("node-3", 86400), past("node-3", 3600))  # the first is exactly a day old: out
    assert decide(state(history=edge), incident(oom()), lim, T0).verdict is Verdict.RESTART
    inside = (past("node-3", 86399), past("node-3", 3600))
    assert decide(state(history=inside), incident(oom()), lim, T0).verdict is Verdict.CORDON_AND_RESTART


def test_symptoms_do_not_make_a_lemon() -> None:
    """Rank 0 logs every collective timeout: a symptom implicates nobody."""
    lim = replace(LIMITS, lemon_incidents=2)
    hist = (past("node-0", 600, rule="collective-timeout"),)
    assert implicated_nodes(incident(signal(node="node-0"))) == ()
    assert decide(state(history=hist), incident(signal(node="node-0")), lim, T0).verdict is Verdict.RESTART


def test_a_lemon_without_a_spare_or_cordon_budget_halts_and_pages() -> None:
    lim = replace(LIMITS, lemon_incidents=2)
    hist = (past("node-3", 600),)
    d = decide(state(history=hist, spares=()), incident(oom()), lim, T0)
    assert d.verdict is Verdict.HALT and d.page and "lemon" in d.reason and "spare" in d.reason
    tight = replace(lim, cordon_max_nodes=1)
    d = decide(state(history=hist, cordons=(T0 - 10,)), incident(oom()), tight, T0)
    assert d.verdict is Verdict.HALT and "cordon budget" in d.reason


def test_several_lemons_at_once_halt() -> None:
    lim = replace(LIMITS, lemon_incidents=2)
    hist = (past("node-3", 600), past("node-4", 500))
    d = decide(state(history=hist), incident(oom("node-3"), oom("node-4", at=0.5)), lim, T0)
    assert d.verdict is Verdict.HALT and "shared cause" in d.reason


def test_a_node_returned_to_service_is_watched_more_closely() -> None:
    lim = replace(LIMITS, lemon_incidents=3, lemon_watch_s=86400, lemon_watch_incidents=2)
    # node-3 was cordoned as a lemon, repaired, and rejoined the job an hour ago.
    hist = (past("node-3", 9000), past("node-3", 8000), past("node-3", 7000), past("node-3", 600))
    back = (("node-3", T0 - 3600),)
    d = decide(state(history=hist, returned=back), incident(oom()), lim, T0)
    assert d.verdict is Verdict.CORDON_AND_RESTART and "watched" in d.reason
    # Its first incident since the return is not enough; incidents before the return are not held again.
    fresh = hist[:3]
    assert decide(state(history=fresh, returned=back), incident(oom()), lim, T0).verdict is Verdict.RESTART
    # After the watch period the normal threshold applies again: two incidents in a day are not enough.
    long_ago = (("node-3", T0 - 90000),)
    recent = (past("node-3", 600),)
    assert (
        decide(state(history=recent, returned=long_ago), incident(oom()), lim, T0).verdict is Verdict.RESTART
    )
    assert (
        decide(state(history=recent, returned=back), incident(oom()), lim, T0).verdict
        is Verdict.CORDON_AND_RESTART
    )


def test_returns_to_service_from_cordons_and_attempts() -> None:
    cordons = [("node-1", 100.0)]
    attempts = [(0.0, ("node-0", "node-1")), (110.0, ("node-0", "node-2")), (500.0, ("node-0", "node-1"))]
    attempts.append((900.0, ("node-0", "node-1")))
    assert returns_to_service(cordons, attempts) == (("node-1", 500.0),)


# ----------------------------------------------------------------------------- flapping


def test_flapping_spaces_actions_for_the_same_rule_and_node() -> None:
    lim = replace(LIMITS, flap_min_interval_s=300, flap_max=3, restart_jitter=0.0)
    hist = (past("node-0", 60, rule="collective-timeout"),)
    d = decide(state(history=hist, restarts=(T0 - 60,)), incident(signal()), lim, T0)
    assert d.verdict is Verdict.RESTART and d.delay_s == 240 and "flapping" in d.reason
    # Another rule, or the same rule on another node, is not held back.
    other = (past("node-1", 60, rule="collective-timeout"),)
    assert decide(state(history=other, restarts=(T0 - 60,)), incident(signal()), lim, T0).delay_s == 10
    # Past the minimum interval only the backoff applies.
    late = (past("node-0", 300, rule="collective-timeout"),)
    assert decide(state(history=late, restarts=(T0 - 300,)), incident(signal()), lim, T0).delay_s == 10


def test_flapping_escalates_to_halt_after_m_flaps() -> None:
    lim = replace(LIMITS, flap_max=3, flap_within_s=3600)
    hist = tuple(past("node-0", ago, rule="collective-timeout") for ago in (3000, 2000, 1000))
    d = decide(state(history=hist), incident(signal()), lim, T0)
    assert d.verdict is Verdict.HALT and d.page and "flapping" in d.reason
    assert decide(state(history=hist[1:]), incident(signal()), lim, T0).verdict is Verdict.RESTART
    edge = (past("node-0", 3600, rule="collective-timeout"), *hist[1:])  # exactly at the edge: out
    assert decide(state(history=edge), incident(signal()), lim, T0).verdict is Verdict.RESTART


# ----------------------------------------------------------------------------- determinism and history


def test_decisions_are_deterministic_and_pure() -> None:
    lim = replace(LIMITS, lemon_incidents=2)
    s = state(history=(past("node-3", 600),), restarts=(T0 - 100,))
    inc = incident(oom(), signal(node="node-0"))
    first = decide(s, inc, lim, T0)
    assert all(decide(s, inc, lim, T0) == first for _ in range(5))
    assert s.history == (past("node-3", 600),)  # nothing mutated


def test_remember_records_what_the_rails_need() -> None:
    inc = incident(xid79("node-1"), xid79("node-2", at=0.5), signal(node="node-0"), oom("node-4"))
    d = decide(state(), inc, LIMITS, T0)
    e = remember(inc, d)
    assert e.node_faults == ("node-1", "node-2")
    assert e.implicated == ("node-1", "node-2", "node-4")
    assert e.rule == "gpu-xid-79" and e.at == T0 and e.verdict is d.verdict


# ------------------------------------------------------------------------- engine history and policy tests


def test_the_engine_rebuilds_the_history_from_the_journal(tmp_path: Path) -> None:
    from supervisor.classify.policy import PolicySet
    from supervisor.engine import Engine
    from supervisor.journal import Journal
    from supervisor.vocabulary import Mode

    journal = Journal(tmp_path / "j.db")
    try:
        inc = incident(oom(), incident_id="inc-old")
        d = decide(state(), inc, LIMITS, T0)
        journal.add_incident(inc)
        journal.add_decision(d, Mode.OBSERVE)
        engine = Engine(
            job="job", policy=PolicySet.from_rules([]), journal=journal, actuator=None, mode=Mode.OBSERVE
        )
        assert engine._state.job.history == (remember(inc, d),)
    finally:
        journal.close()


def test_the_safety_rails_policy_tests_pass() -> None:
    out = io.StringIO()
    rc = policy_test([Path(__file__).resolve().parents[1] / "policy" / "safety_rails.test.yaml"], out)
    assert rc == 0, out.getvalue()


def test_job_wide_conditions_reported_by_a_node_do_not_make_it_a_lemon() -> None:
    """A NaN loss, a hang or a full shared filesystem is the job's condition: the node that happened to
    report it is not implicated; its own OOM kill is."""
    for rule in ("training-loss-nonfinite", "training-hang", "storage-io-error", "scheduler-preempted"):
        sig = signal(rule, node="node-3", role=Role.CAUSE, scope=Scope.JOB)
        assert implicated_nodes(incident(sig)) == (), rule
    assert implicated_nodes(incident(oom("node-3"))) == ("node-3",)
    hist = (past("node-3", 600, rule="training-hang"), past("node-3", 300, rule="training-hang"))
    hist = tuple(replace(h, implicated=()) for h in hist)
    d = decide(
        state(history=hist), incident(signal("training-hang", node="node-3", role=Role.CAUSE)), LIMITS, T0
    )
    assert d.verdict is Verdict.RESTART, d.reason
