"""Goodput accounting over hand-built journals (every number below is worked out by hand)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from supervisor.journal import Journal
from supervisor.report.goodput import (
    BASIS_CHECKPOINT,
    BASIS_STEP_TIMING,
    BASIS_UNKNOWN,
    CATEGORIES,
    DETECTION,
    DOWN,
    LANE_CORDONED,
    LOST,
    OTHER,
    PRODUCTIVE,
    RESTART,
    STARTUP,
    account,
    node_lanes,
)
from supervisor.vocabulary import (
    Action,
    ActionResult,
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
from tests.report.realjournal import build_real_journal

T0 = 1_714_564_800.0


def _sig(rule: str, node: str, t: float, cls: FailureClass, scope: Scope) -> Signal:
    return Signal(
        rule, rule, node, t, cls, scope, Verdict.RESTART, Severity.CRITICAL, Role.CAUSE, f"{rule} line"
    )


def _fail(
    j: Journal, inc_id: str, attempt: int, at: float, decided: float, verdict: Verdict, *,
    cls: FailureClass = FailureClass.RECOVERABLE, scope: Scope = Scope.JOB, node: str = "n1",
    result: tuple[float, float, int | None] | None = None,
) -> None:  # fmt: skip
    s = _sig(f"rule-{inc_id}", node, at, cls, scope)
    j.add_incident(Incident(inc_id, "job", attempt, at, s, (s,)))
    j.add_decision(Decision(inc_id, verdict, "why", decided, node=node), Mode.ACT)
    if result is not None:
        key = f"{inc_id}:{verdict.value}"
        j.add_intent(Action(verdict, "job", inc_id, key, node=node), ["plan"])
        started, finished, attempt_after = result
        j.add_result(ActionResult(key, True, "done", started, finished, attempt_after, ("n1", "n2")))


def restart_then_halt(j: Journal) -> None:
    """Attempt 0 checkpoints at steps 100 and 200, fails at +260 and is restarted from step 200;
    attempt 1 trains to step 400 without checkpointing and halts on a code bug at +505."""
    j.add_attempt("job", 0, ["n1", "n2"], T0, None)
    j.update_attempt("job", 0, first_step_at=T0 + 10, last_step=250, last_step_at=T0 + 250)
    j.add_checkpoint("job", 0, 100, T0 + 100, 2.0)
    j.add_checkpoint("job", 0, 200, T0 + 200, 3.0)
    _fail(j, "i1", 0, T0 + 260, T0 + 270, Verdict.RESTART, result=(T0 + 271, T0 + 280, 1))
    j.update_attempt("job", 0, ended_at=T0 + 271, end_reason="i1")
    j.add_attempt("job", 1, ["n1", "n2"], T0 + 280, "i1")
    j.update_attempt("job", 1, resume_step=200, first_step_at=T0 + 300, last_step=400, last_step_at=T0 + 500)
    _fail(
        j, "i2", 1, T0 + 505, T0 + 510, Verdict.HALT, cls=FailureClass.NON_RECOVERABLE, scope=Scope.CODE,
        result=(T0 + 511, T0 + 512, None),
    )  # fmt: skip


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(tmp_path / "j.db")


def test_every_second_is_in_one_category_and_the_numbers_are_the_hand_worked_ones(journal: Journal) -> None:
    restart_then_halt(journal)
    g = account(journal, "job")
    assert (g.start, g.end) == (T0, T0 + 512)
    expected = {
        STARTUP: 10.0,  # launch -> first step
        PRODUCTIVE: 190.0,  # first step -> checkpoint 200 (attempt 1 kept nothing: no checkpoint of its own)
        LOST: 60.0 + 205.0,  # checkpoint 200 -> failure; attempt 1's first step -> its failure
        DETECTION: 10.0 + 5.0,
        RESTART: 30.0,  # decision -> first step of attempt 1
        DOWN: 2.0,  # halted: decision -> end of the journaled span
        OTHER: 0.0,
    }
    assert {c: pytest.approx(v) for c, v in expected.items()} == dict(g.seconds)
    assert sum(v for _, v in g.seconds) == pytest.approx(g.wall_s)
    assert g.ettr == pytest.approx(190 / 512)
    assert (g.checkpoints, g.checkpoint_save_s) == (2, pytest.approx(5.0))
    first, second = g.failures
    assert (first.checkpoint_step, first.steps_lost, first.lost_basis) == (200, 50, BASIS_CHECKPOINT)
    assert first.detection_s == pytest.approx(10) and first.restart_s == pytest.approx(30)
    assert first.recover_s == pytest.approx(40) and first.outcome == "recovered"
    assert (second.checkpoint_step, second.steps_lost, second.outcome) == (200, 200, "halted")
    classes = {c.failure_class: c for c in g.classes}
    assert classes["recoverable/job"].mtbf_s == pytest.approx(455)  # training 190 + 265 over 1 failure
    assert classes["recoverable/job"].mttr_s == pytest.approx(40)
    assert classes["non_recoverable/code"].mttr_s is None  # never recovered: unknown, not zero
    assert g.unknown_lost == 0


def test_a_window_clips_every_category(journal: Journal) -> None:
    restart_then_halt(journal)
    g = account(journal, "job", T0 + 100, T0 + 300)
    assert g.wall_s == pytest.approx(200)
    assert g.of(PRODUCTIVE) == pytest.approx(100) and g.of(LOST) == pytest.approx(60)
    assert g.of(DETECTION) == pytest.approx(10) and g.of(RESTART) == pytest.approx(30)
    assert [f.incident_id for f in g.failures] == ["i1"]
    assert g.checkpoints == 2  # committed at +100 and +200, both in the window
    outside = account(journal, "job", T0 - 1000, T0 + 10_000)  # clipped to the journaled span
    assert (outside.start, outside.end) == (T0, T0 + 512)


def test_without_checkpoint_records_the_resumed_step_is_placed_by_step_timing(journal: Journal) -> None:
    journal.add_attempt("job", 0, ["n1"], T0, None)
    journal.update_attempt(
        "job", 0, resume_step=0, first_step_at=T0 + 10, last_step=101, last_step_at=T0 + 110
    )
    _fail(journal, "i1", 0, T0 + 115, T0 + 120, Verdict.RESTART, result=(T0 + 121, T0 + 125, 1))
    journal.add_attempt("job", 1, ["n1"], T0 + 125, "i1")
    journal.update_attempt(
        "job", 1, resume_step=50, first_step_at=T0 + 140, last_step=60, last_step_at=T0 + 150
    )
    (f,) = account(journal, "job").failures
    assert f.lost_basis == BASIS_STEP_TIMING
    assert f.kept_at == pytest.approx(T0 + 59)  # step 1 at +10, 1 s a step: step 50 at +59
    assert f.lost_s == pytest.approx(56) and f.steps_lost == 51


def test_no_checkpoint_information_counts_no_lost_work_and_says_so(journal: Journal) -> None:
    journal.add_attempt("job", 0, ["n1"], T0, None)
    journal.update_attempt("job", 0, first_step_at=T0 + 10, last_step=100, last_step_at=T0 + 110)
    _fail(journal, "i1", 0, T0 + 115, T0 + 120, Verdict.HALT, result=(T0 + 121, T0 + 122, None))
    g = account(journal, "job")
    (f,) = g.failures
    assert (f.lost_basis, f.steps_lost, f.lost_s) == (BASIS_UNKNOWN, None, 0.0)
    assert g.unknown_lost == 1 and g.of(PRODUCTIVE) == pytest.approx(105)


def test_ignored_incidents_cost_nothing_and_an_empty_journal_is_empty(journal: Journal) -> None:
    journal.add_attempt("job", 0, ["n1"], T0, None)
    journal.update_attempt("job", 0, first_step_at=T0 + 10, last_step=100, last_step_at=T0 + 110)
    noise = _sig("noise", "n1", T0 + 50, FailureClass.RECOVERABLE, Scope.NONE)
    journal.add_incident(Incident("i0", "job", 0, T0 + 50, noise, (noise,)))
    journal.add_decision(Decision("i0", Verdict.IGNORE, "noise", T0 + 51), Mode.ACT)
    g = account(journal, "job")
    assert g.failures == () and g.classes == ()
    assert g.of(PRODUCTIVE) == pytest.approx(100) and g.ettr == pytest.approx(100 / 110)
    empty = account(journal, "nobody")
    assert empty.wall_s == 0 and empty.ettr is None and empty.segments == ()


def test_a_cordoned_node_shows_cordoned_from_its_cordon_on(journal: Journal) -> None:
    journal.add_attempt("job", 0, ["n1", "n2"], T0, None)
    journal.update_attempt("job", 0, first_step_at=T0 + 10, last_step=100, last_step_at=T0 + 100)
    _fail(
        journal, "i1", 0, T0 + 100, T0 + 101, Verdict.CORDON_AND_RESTART, node="n2",
        cls=FailureClass.NON_RECOVERABLE, scope=Scope.NODE, result=(T0 + 102, T0 + 110, 1),
    )  # fmt: skip
    journal.add_attempt("job", 1, ["n1", "n3"], T0 + 110, "i1")
    journal.update_attempt("job", 1, first_step_at=T0 + 120, last_step=130, last_step_at=T0 + 200)
    lanes = node_lanes(account(journal, "job"))
    assert list(lanes) == ["n1", "n2", "n3"]
    assert lanes["n2"][-1].state == LANE_CORDONED and lanes["n2"][-1].start == T0 + 102
    assert all(iv.end <= T0 + 102 for iv in lanes["n2"][:-1])
    assert lanes["n3"][0].start == T0 + 101  # restarting on the spare from the decision on


def test_checkpoints_are_recorded_once_and_old_journals_gain_the_table(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    Journal(path).close()
    with sqlite3.connect(path) as conn:  # a journal written before the checkpoints table existed
        conn.execute("DROP TABLE checkpoints")
    j = Journal(path)
    j.add_checkpoint("job", 0, 5, T0, 0.5)
    j.add_checkpoint("job", 0, 5, T0 + 9, None)  # a re-read overlap window: the first record stays
    assert [(c.step, c.saved_at, c.seconds) for c in j.checkpoints("job")] == [(5, T0, 0.5)]
    j.close()
    assert len(Journal(path).checkpoints()) == 1


def test_the_engine_journals_real_checkpoint_lines_and_the_accounting_adds_up(tmp_path: Path) -> None:
    j = Journal(build_real_journal(tmp_path / "real.db"))
    ckpts = j.checkpoints("job")
    assert [(c.attempt, c.step) for c in ckpts] == [(0, 5), (1, 5), (2, 5)]
    assert all(c.seconds is not None and c.seconds > 0 for c in ckpts)
    g = account(j, "job")
    assert sum(v for _, v in g.seconds) == pytest.approx(g.wall_s)
    assert set(dict(g.seconds)) == set(CATEGORIES)
    assert [f.outcome for f in g.failures] == ["recovered", "recovered", "halted"]
    assert all(f.lost_basis == BASIS_CHECKPOINT and f.checkpoint_step == 5 for f in g.failures)
    assert g.cordons and g.cordons[0][0] == "node-1"
    j.close()
