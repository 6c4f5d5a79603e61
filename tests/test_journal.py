"""The journal: crash-safe, append-only, de-duplicating, idempotent intents."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.journal import SCHEMA_VERSION, Journal, JournalError
from supervisor.vocabulary import (
    Action,
    ActionResult,
    Cursor,
    Decision,
    FailureClass,
    Incident,
    Mode,
    Role,
    Scope,
    Severity,
    Signal,
    Verdict,
)

T0 = 1_714_564_800.0  # 2024-05-01T12:00:00Z, a fixed clock


def sig(
    rule: str = "gpu-fallen-off-bus",
    node: str = "node-1",
    t: float = T0,
    event_id: str | None = "ev-1",
    **kw: object,
) -> Signal:
    base = Signal(
        rule=rule,
        signal="gpu.xid.79",
        node=node,
        timestamp=t,
        failure_class=FailureClass.NON_RECOVERABLE,
        scope=Scope.NODE,
        verdict=Verdict.CORDON_AND_RESTART,
        severity=Severity.CRITICAL,
        role=Role.CAUSE,
        evidence="NVRM: Xid (PCI:0000:3b:00): 79, pid=812, GPU has fallen off the bus.",
        event_id=event_id,
        runbook="https://docs.nvidia.com/deploy/xid-errors/",
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def action(key: str = "inc-1/cordon_and_restart/0", kind: Verdict = Verdict.CORDON_AND_RESTART) -> Action:
    return Action(
        kind=kind, job="llama", incident_id="inc-1", idempotency_key=key, node="node-1", reason="xid 79"
    )


@pytest.fixture
def jpath(tmp_path: Path) -> Path:
    return tmp_path / "state" / "sub" / "journal.db"  # parent dirs do not exist yet


@pytest.fixture
def journal(jpath: Path) -> Iterator[Journal]:
    j = Journal(jpath)
    yield j
    j.close()


def test_opens_with_wal_full_sync_and_schema_version(jpath: Path) -> None:
    j = Journal(jpath)
    assert jpath.exists()
    assert j._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert j._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert j.schema_version == SCHEMA_VERSION
    j.close()
    j.close()  # idempotent


def test_reopen_after_close_keeps_everything(jpath: Path) -> None:
    j = Journal(jpath)
    s1, s2 = sig(), sig(node="node-2", event_id="ev-2", t=T0 + 1)
    assert j.add_signals("llama", 0, [s1, s2]) == [s1, s2]
    j.save_cursor(Cursor("logs", "tok-42"))
    inc = Incident("inc-1", "llama", 0, T0, s1, (s1, s2))
    j.add_incident(inc)
    dec = Decision("inc-1", Verdict.CORDON_AND_RESTART, "xid 79", T0 + 5, node="node-1", page=True)
    j.add_decision(dec, Mode.ACT)
    a = action()
    assert j.add_intent(a, ["cordon node-1", "relaunch on node-2,node-3"])
    res = ActionResult(
        a.idempotency_key, True, "relaunched", T0 + 6, T0 + 9, attempt=1, nodes=("node-2", "node-3")
    )
    j.add_result(res)
    j.add_intent(action("k2", Verdict.HALT), ["halt"])
    j.add_attempt("llama", 0, ["node-1", "node-2"], T0 - 100, None)
    j.update_attempt("llama", 0, last_step=120, last_step_at=T0 - 1)
    j.count_events("logs", 10)
    j.count_events("logs", 5)
    j.set_state("budget/llama", '{"restarts": [1]}')
    j.close()

    j2 = Journal(jpath)
    assert j2.add_signals("llama", 0, [s1, s2]) == []
    assert [r.signal for r in j2.signals("llama")] == [s1, s2]
    assert j2.load_cursor("logs") == Cursor("logs", "tok-42")
    assert j2.load_cursor("metrics") is None
    assert [r.incident for r in j2.incidents("llama")] == [inc]
    assert j2.incident("inc-1") == inc
    assert [(r.decision, r.mode, r.job) for r in j2.decisions("llama")] == [(dec, Mode.ACT, "llama")]
    assert j2.result_for(a.idempotency_key) == res
    assert j2.pending_intents() == [action("k2", Verdict.HALT)]
    rows = j2.actions("llama")
    assert (rows[0].action, rows[0].plan, rows[0].result) == (
        a,
        ("cordon node-1", "relaunch on node-2,node-3"),
        res,
    )
    assert rows[1].pending
    (att,) = j2.attempts("llama")
    assert (att.nodes, att.launched_at, att.last_step, att.last_step_at, att.first_step_at) == (
        ("node-1", "node-2"),
        T0 - 100,
        120,
        T0 - 1,
        None,
    )
    assert j2.events_seen("logs") == 15
    assert j2.events_seen("never") == 0
    assert j2.get_state("budget/llama") == '{"restarts": [1]}'
    assert j2.get_state("missing") is None
    j2.close()


def test_uncommitted_transaction_is_lost_but_committed_data_survives_a_crash(jpath: Path) -> None:
    """A process killed mid-transaction: simulated by abandoning the connection without commit."""
    j = Journal(jpath)
    j.add_signals("llama", 0, [sig()])
    j._conn.execute("BEGIN IMMEDIATE")
    j._conn.execute(
        "INSERT INTO state (key, value) VALUES ('half', 'written')"
    )  # never committed: the "crash" comes next
    j._conn.close()  # no COMMIT: sqlite rolls the open transaction back
    j2 = Journal(jpath)
    assert len(j2.signals()) == 1
    assert j2.get_state("half") is None
    j2.close()


def test_signals_deduped_by_event_id_else_by_node_and_time(journal: Journal) -> None:
    a = sig(event_id="ev-1")
    same_event_other_text = sig(event_id="ev-1", evidence="different text, same eventId")
    other_rule_same_event = sig(rule="nccl-timeout", event_id="ev-1")
    m1 = sig(rule="no-progress", event_id=None, t=T0 + 300)
    m1_again = sig(rule="no-progress", event_id=None, t=T0 + 300, evidence="re-evaluated")
    m2 = sig(rule="no-progress", event_id=None, t=T0 + 300, node="node-2")
    assert journal.add_signals("llama", 0, [a, a, m1]) == [a, m1]  # in-batch duplicate returned once
    assert journal.add_signals("llama", 0, [same_event_other_text, other_rule_same_event, m1_again, m2]) == [
        other_rule_same_event,
        m2,
    ]
    # another job is another stream of signals
    assert journal.add_signals("gpt", 0, [a]) == [a]
    assert len(journal.signals("llama")) == 4
    assert len(journal.signals("llama", attempt=1)) == 0


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(min_value=0, max_value=30), min_size=1, max_size=40),
    st.integers(min_value=0, max_value=40),
    st.integers(min_value=0, max_value=40),
)
def test_overlapping_rereads_never_duplicate(
    tmp_path_factory: pytest.TempPathFactory, ids: list[int], a: int, b: int
) -> None:
    """Reading a stream in two overlapping windows yields each distinct signal exactly once."""
    j = Journal(tmp_path_factory.mktemp("j") / "j.db")
    stream = [sig(event_id=f"ev-{i}", t=T0 + i) for i in ids]
    lo, hi = min(a, b), max(a, b)
    first = j.add_signals("llama", 0, stream[:hi])
    second = j.add_signals("llama", 0, stream[lo:])
    distinct = list(dict.fromkeys(s.event_id for s in stream))
    assert [s.event_id for s in first + second] == distinct
    j.close()


def test_intent_without_result_is_pending_and_add_intent_is_idempotent(journal: Journal) -> None:
    a = action()
    assert journal.add_intent(a, ["step 1"]) is True
    assert journal.add_intent(replace(a, reason="changed"), ["step 2"]) is False  # nothing written
    assert journal.pending_intents() == [a]
    assert journal.actions()[0].plan == ("step 1",)
    assert journal.result_for(a.idempotency_key) is None
    res = ActionResult(a.idempotency_key, False, "scheduler refused", T0, T0 + 1)
    journal.add_result(res)
    journal.add_result(replace(res, ok=True, detail="second result ignored"))
    assert journal.pending_intents() == []
    assert journal.result_for(a.idempotency_key) == res
    assert journal.add_intent(a, ["again"]) is False


def test_transaction_that_raises_leaves_nothing(journal: Journal) -> None:
    s = sig()
    with pytest.raises(RuntimeError, match="boom"), journal.transaction():
        assert journal.add_signals("llama", 0, [s]) == [s]
        journal.add_intent(action(), ["x"])
        journal.save_cursor(Cursor("logs", "after-batch"))
        journal.count_events("logs", 3)
        raise RuntimeError("boom")
    assert journal.signals() == []
    assert journal.pending_intents() == []
    assert journal.load_cursor("logs") is None
    assert journal.events_seen("logs") == 0
    # and the journal still works afterwards
    with journal.transaction():
        assert journal.add_signals("llama", 0, [s]) == [s]
        journal.save_cursor(Cursor("logs", "after-batch"))
    assert journal.load_cursor("logs") == Cursor("logs", "after-batch")


def test_transaction_is_visible_to_another_connection_only_after_commit(
    journal: Journal, jpath: Path
) -> None:
    reader = Journal(jpath)
    with journal.transaction():
        journal.set_state("k", "v")
        assert reader.get_state("k") is None  # WAL: the reader sees the last committed state
    assert reader.get_state("k") == "v"
    reader.close()


def test_incident_roundtrip_with_root_not_first_and_readd_replaces(journal: Journal) -> None:
    symptom = sig(rule="nccl-timeout", node="node-2", event_id="e2", t=T0 - 5, role=Role.SYMPTOM)
    cause = sig(event_id="e1", t=T0)
    inc = Incident("inc-1", "llama", 3, T0 - 5, cause, (symptom, cause))
    journal.add_incident(inc)
    assert journal.incident("inc-1") == inc
    grown = replace(inc, signals=(symptom, cause, sig(event_id="e3", node="node-3", t=T0 + 1)))
    journal.add_incident(grown)
    assert [r.incident for r in journal.incidents()] == [grown]
    assert journal.incidents("other-job") == []


def test_decisions_filter_by_job_and_incident(journal: Journal) -> None:
    s = sig()
    journal.add_incident(Incident("inc-1", "llama", 0, T0, s, (s,)))
    journal.add_incident(Incident("inc-2", "gpt", 0, T0, s, (s,)))
    d1 = Decision("inc-1", Verdict.HALT, "restart budget spent", T0 + 1, rule_verdict=Verdict.RESTART)
    d2 = Decision("inc-2", Verdict.IGNORE, "noise", T0 + 2)
    journal.add_decision(d1, Mode.OBSERVE)
    journal.add_decision(d2, Mode.ACT)
    assert [r.decision for r in journal.decisions()] == [d1, d2]
    assert [r.decision for r in journal.decisions("gpt")] == [d2]
    assert [r.decision for r in journal.decisions(incident_id="inc-1")] == [d1]


def test_update_attempt_changes_only_given_fields_and_first_step_once(journal: Journal) -> None:
    journal.add_attempt("llama", 1, ["node-2"], T0, "inc-1")
    journal.add_attempt("llama", 1, ["node-9"], T0 + 99, None)  # replay: first record kept
    journal.update_attempt("llama", 1, resume_step=100)
    journal.update_attempt("llama", 1, first_step_at=T0 + 60, last_step=101, last_step_at=T0 + 60)
    journal.update_attempt("llama", 1, first_step_at=T0 + 70, last_step=102, last_step_at=T0 + 70)
    journal.update_attempt("llama", 1, ended_at=T0 + 80, end_reason="halted")
    journal.update_attempt("llama", 1)  # nothing given, nothing changes
    (row,) = journal.attempts("llama")
    assert row.nodes == ("node-2",)
    assert row.cause_incident == "inc-1"
    assert (row.resume_step, row.first_step_at, row.last_step, row.last_step_at) == (
        100,
        T0 + 60,
        102,
        T0 + 70,
    )
    assert (row.ended_at, row.end_reason) == (T0 + 80, "halted")


def test_update_of_an_unknown_attempt_creates_it_and_add_fills_the_launch(journal: Journal) -> None:
    """An adopted / observed job: progress arrives before (or without) any launch record."""
    journal.update_attempt("llama", 0, first_step_at=T0 + 5, last_step=7)
    (row,) = journal.attempts("llama")
    assert (row.nodes, row.launched_at, row.first_step_at, row.last_step) == ((), None, T0 + 5, 7)
    journal.add_attempt("llama", 0, ["node-1"], T0, None)
    journal.add_attempt("llama", 0, ["node-9"], T0 + 1, "x")  # the launch is known now: kept
    (row,) = journal.attempts("llama")
    assert (row.nodes, row.launched_at, row.cause_incident, row.last_step) == (("node-1",), T0, None, 7)


def test_count_events_rejects_negative(journal: Journal) -> None:
    with pytest.raises(ValueError):
        journal.count_events("logs", -1)


def test_newer_schema_is_refused(jpath: Path) -> None:
    Journal(jpath).close()
    conn = sqlite3.connect(jpath)
    conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(JournalError, match="newer"):
        Journal(jpath)


def test_concurrent_threads_share_one_journal(journal: Journal) -> None:
    """The engine writes while a reporting thread reads through the same object."""
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for i in range(200):
                journal.add_signals("llama", 0, [sig(event_id=f"w-{i}")])
        except BaseException as e:
            errors.append(e)

    def reader() -> None:
        try:
            for _ in range(200):
                journal.signals("llama")
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(journal.signals("llama")) == 200


def test_signal_seen_and_has_incident(journal: Journal) -> None:
    a, m = sig(event_id="ev-1"), sig(rule="no-progress", event_id=None, t=T0 + 300)
    assert not journal.signal_seen(a)
    journal.add_signals("llama", 0, [a, m])
    assert journal.signal_seen(a) and journal.signal_seen(m)
    assert journal.signal_seen(replace(a, evidence="other text"))  # same eventId: same signal
    assert journal.signal_seen(a, job="llama")
    assert not journal.signal_seen(a, job="gpt")
    assert not journal.signal_seen(replace(m, node="node-2"))
    assert not journal.has_incident("inc-1")
    journal.add_incident(Incident("inc-1", "llama", 0, T0, a, (a,)))
    assert journal.has_incident("inc-1")
