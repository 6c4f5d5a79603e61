"""The correlator: one incident per failure, root cause by hardware > symptom, noise never opens."""

from __future__ import annotations

from supervisor.incidents.correlate import Correlator
from tests.builders import T0, code_bug, signal, teardown, xid79


def test_noise_alone_opens_nothing() -> None:
    c = Correlator("job", settle_s=5)
    c.add([teardown(), teardown("node-1")], attempt=0, now=T0)
    assert not c.pending()
    assert c.ready(T0 + 100) == []


def test_symptom_waits_for_the_settle_window_and_hardware_found_later_wins() -> None:
    c = Correlator("job", settle_s=5)
    c.add([signal(node="node-0", at=1.0)], attempt=0, now=T0 + 2)
    assert c.ready(T0 + 3) == []  # still gathering
    # The Xid line arrives later from CloudWatch but happened earlier on node-1.
    c.add([xid79("node-1", at=0.5), teardown("node-1", at=1.5)], attempt=0, now=T0 + 4)
    (inc,) = c.ready(T0 + 4)
    assert inc.root_cause.rule == "gpu-xid-79"
    assert inc.root_cause.node == "node-1"
    assert len(inc.signals) == 3
    assert inc.opened_at == T0 + 0.5
    assert not c.pending()


def test_symptom_alone_becomes_the_root_cause_after_settling() -> None:
    c = Correlator("job", settle_s=5)
    c.add([signal(node="node-0", at=0), signal(node="node-1", at=0.2)], attempt=0, now=T0)
    assert c.ready(T0 + 4.9) == []
    (inc,) = c.ready(T0 + 5)
    assert inc.root_cause.rule == "collective-timeout"
    assert inc.root_cause.node == "node-0"  # earliest


def test_code_bug_beats_the_connection_errors_it_causes() -> None:
    c = Correlator("job", settle_s=5)
    c.add([signal(node="node-1", at=0.1), code_bug("node-0", at=0.3)], attempt=0, now=T0)
    (inc,) = c.ready(T0 + 6)
    assert inc.root_cause.rule == "python-exception"


def test_incident_ids_are_deterministic_for_the_same_lines() -> None:
    def run() -> str:
        c = Correlator("job", settle_s=1)
        c.add([signal(at=1.0), signal(node="node-1", at=2.0)], attempt=3, now=T0)
        (inc,) = c.ready(T0 + 2)
        return inc.incident_id

    assert run() == run()


def test_a_new_attempt_closes_the_open_incident_of_the_old_one() -> None:
    c = Correlator("job", settle_s=5)
    c.add([signal(at=0)], attempt=0, now=T0)
    flushed = c.add([signal(at=10)], attempt=1, now=T0 + 1)
    assert [i.attempt for i in flushed] == [0]
    (inc,) = c.ready(T0 + 7)
    assert inc.attempt == 1


def test_the_window_counts_from_when_the_first_line_was_written_not_received() -> None:
    # Written at T0, received 1.5 s later (shipping + ingestion + poll): 0.5 s of a 2 s window remain.
    c = Correlator("job", settle_s=2)
    c.add([signal(node="node-0", at=0.0)], attempt=0, now=T0 + 1.5)
    assert c.ready(T0 + 1.99) == []
    (inc,) = c.ready(T0 + 2.0)
    assert inc.root_cause.node == "node-0"


def test_a_line_received_after_its_deadline_is_decided_at_once() -> None:
    c = Correlator("job", settle_s=2)
    c.add([signal(node="node-0", at=0.0)], attempt=0, now=T0 + 30)  # e.g. a source catching up
    assert len(c.ready(T0 + 30)) == 1


def test_a_node_clock_ahead_never_stretches_the_window_beyond_settle_after_receipt() -> None:
    c = Correlator("job", settle_s=2)
    c.add([signal(node="node-0", at=600.0)], attempt=0, now=T0)  # node clock 10 min ahead
    assert c.ready(T0 + 1.9) == []
    assert len(c.ready(T0 + 2.0)) == 1
