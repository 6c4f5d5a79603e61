"""The incident timeline, checked against golden files.

Regenerate the golden files after an intended change with:
    FTSUP_REGEN_GOLDEN=1 .venv/bin/pytest tests/test_timeline.py
and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from supervisor.journal import Journal
from supervisor.report.timeline import (
    STATUS_IGNORED,
    STATUS_OBSERVED,
    STATUS_OK,
    STATUS_PENDING,
    STATUS_UNDECIDED,
    build_timeline,
    render_json,
    render_text,
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

GOLDEN = Path(__file__).parent / "golden"
REGEN = os.environ.get("FTSUP_REGEN_GOLDEN") == "1"
T0 = 1_714_564_800.0  # 2024-05-01T12:00:00Z


def _sig(
    rule: str,
    signal: str,
    node: str,
    t: float,
    evidence: str,
    *,
    cls: FailureClass = FailureClass.RECOVERABLE,
    scope: Scope = Scope.JOB,
    verdict: Verdict = Verdict.RESTART,
    severity: Severity = Severity.WARNING,
    role: Role = Role.CAUSE,
    event_id: str | None = None,
) -> Signal:
    return Signal(rule, signal, node, t, cls, scope, verdict, severity, role, evidence, event_id)


def populate(j: Journal) -> None:
    """A fixed history on a fixed clock: every kind of timeline entry once."""
    # llama attempt 0 on three nodes; a GPU falls off the bus on node-1.
    j.add_attempt("llama", 0, ["node-1", "node-2", "node-3"], T0, None)
    j.update_attempt("llama", 0, resume_step=0, first_step_at=T0 + 90, last_step=1040, last_step_at=T0 + 3590)
    xid = _sig(
        "gpu-fallen-off-bus",
        "gpu.xid.79",
        "node-1",
        T0 + 3600.25,
        "NVRM: Xid (PCI:0000:3b:00): 79, pid=812, GPU has fallen off the bus.",
        cls=FailureClass.NON_RECOVERABLE,
        scope=Scope.NODE,
        verdict=Verdict.CORDON_AND_RESTART,
        severity=Severity.CRITICAL,
        event_id="e-100",
    )
    nccl = _sig(
        "nccl-watchdog-timeout",
        "nccl.timeout",
        "node-2",
        T0 + 3601.0,
        "[Rank 3] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=8812, OpType=ALLREDUCE)",
        role=Role.SYMPTOM,
        event_id="e-101",
    )
    inc1 = Incident("inc-0001", "llama", 0, xid.timestamp, xid, (xid, nccl))
    j.add_signals("llama", 0, [xid, nccl])
    j.add_incident(inc1)
    j.add_decision(
        Decision("inc-0001", Verdict.CORDON_AND_RESTART, "gpu.xid.79 on node-1", T0 + 3612.0, node="node-1"),
        Mode.ACT,
    )
    a1 = Action(Verdict.CORDON_AND_RESTART, "llama", "inc-0001", "inc-0001/1", node="node-1")
    j.add_intent(a1, ["cordon node-1", "relaunch llama on node-2,node-3,node-4 from latest checkpoint"])
    j.add_result(
        ActionResult(
            "inc-0001/1",
            True,
            "cordoned node-1; relaunched on node-2, node-3, node-4",
            T0 + 3612.5,
            T0 + 3640.0,
            attempt=1,
            nodes=("node-2", "node-3", "node-4"),
        )
    )
    j.add_attempt("llama", 1, ["node-2", "node-3", "node-4"], T0 + 3640.0, "inc-0001")
    j.update_attempt(
        "llama", 1, resume_step=1000, first_step_at=T0 + 3755.5, last_step=1500, last_step_at=T0 + 7000
    )

    # llama attempt 1: a NCCL timeout; the restart budget is spent, so the rule's restart becomes a halt.
    nccl2 = _sig(
        "nccl-watchdog-timeout",
        "nccl.timeout",
        "node-3",
        T0 + 7010.0,
        "[Rank 5] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=99, OpType=BROADCAST)",
        event_id="e-200",
    )
    j.add_incident(Incident("inc-0002", "llama", 1, nccl2.timestamp, nccl2, (nccl2,)))
    j.add_decision(
        Decision(
            "inc-0002",
            Verdict.HALT,
            "restart budget spent (3 in 1h)",
            T0 + 7015.0,
            page=True,
            rule_verdict=Verdict.RESTART,
        ),
        Mode.ACT,
    )
    j.add_intent(Action(Verdict.HALT, "llama", "inc-0002", "inc-0002/1"), ["stop llama, keep checkpoints"])
    j.add_result(ActionResult("inc-0002/1", True, "stopped 3 nodes", T0 + 7015.5, T0 + 7020.0))
    j.update_attempt("llama", 1, ended_at=T0 + 7020.0, end_reason="halted")

    # gpt, watched in observe mode: decided, never acted.
    oom = _sig(
        "cuda-oom",
        "cuda.oom",
        "gpu-a",
        T0 + 100.0,
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
        cls=FailureClass.NON_RECOVERABLE,
        scope=Scope.CODE,
        verdict=Verdict.HALT,
        severity=Severity.CRITICAL,
    )
    j.add_attempt("gpt", 0, ["gpu-a", "gpu-b"], T0, None)
    j.add_incident(Incident("inc-0003", "gpt", 0, oom.timestamp, oom, (oom,)))
    j.add_decision(
        Decision("inc-0003", Verdict.HALT, "code error: restarting repeats it", T0 + 104.0), Mode.OBSERVE
    )

    # gpt: a restart intended, the daemon crashed before the result (pending).
    reset = _sig("conn-reset", "net.reset", "gpu-b", T0 + 200.0, "Connection reset by peer")
    j.add_incident(Incident("inc-0004", "gpt", 0, reset.timestamp, reset, (reset,)))
    j.add_decision(Decision("inc-0004", Verdict.RESTART, "transient network error", T0 + 201.0), Mode.ACT)
    j.add_intent(Action(Verdict.RESTART, "gpt", "inc-0004", "inc-0004/1"), ["relaunch gpt on gpu-a,gpu-b"])

    # gpt: teardown noise alone, ignored.
    noise = _sig(
        "torchrun-sigterm",
        "torchrun.sigterm",
        "gpu-a",
        T0 + 300.0,
        "Sending process 4242 closing signal SIGTERM",
        cls=FailureClass.RECOVERABLE,
        scope=Scope.NONE,
        verdict=Verdict.IGNORE,
        severity=Severity.INFO,
        role=Role.NOISE,
    )
    j.add_incident(Incident("inc-0005", "gpt", 0, noise.timestamp, noise, (noise,)))
    j.add_decision(Decision("inc-0005", Verdict.IGNORE, "teardown noise", T0 + 301.0), Mode.ACT)

    # gpt: journaled, not yet decided.
    slow = _sig("no-progress", "train.stalled", "gpu-b", T0 + 400.0, "train.step unchanged for 300s")
    j.add_incident(Incident("inc-0006", "gpt", 0, slow.timestamp, slow, (slow,)))


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    j = Journal(tmp_path / "journal.db")
    populate(j)
    return j


def _check_golden(name: str, actual: str) -> None:
    path = GOLDEN / name
    if REGEN:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual, encoding="utf-8")
    expected = path.read_text(encoding="utf-8")
    assert actual == expected, f"{path} differs; regenerate with FTSUP_REGEN_GOLDEN=1 and review the diff"


def test_timeline_text_matches_golden(journal: Journal) -> None:
    _check_golden("timeline.txt", render_text(build_timeline(journal)))


def test_timeline_json_matches_golden(journal: Journal) -> None:
    _check_golden("timeline.json", render_json(build_timeline(journal)))


def test_timeline_entries(journal: Journal) -> None:
    entries = build_timeline(journal)
    assert [e.incident_id for e in entries] == [
        "inc-0003",
        "inc-0004",
        "inc-0005",
        "inc-0006",
        "inc-0001",
        "inc-0002",
    ]
    by_id = {e.incident_id: e for e in entries}

    xid = by_id["inc-0001"]
    assert xid.result_status == STATUS_OK
    assert xid.recovered_at == T0 + 3755.5
    assert xid.time_lost_s == pytest.approx(3755.5 - 3600.25)
    assert xid.steps_lost == 40
    assert xid.nodes_after == ("node-2", "node-3", "node-4")
    assert xid.signal_count == 2

    halt = by_id["inc-0002"]
    assert (halt.verdict, halt.rule_verdict) == ("halt", "restart")
    assert halt.recovered_at is None and halt.time_lost_s is None and halt.steps_lost is None

    assert by_id["inc-0003"].result_status == STATUS_OBSERVED
    assert by_id["inc-0004"].result_status == STATUS_PENDING
    assert by_id["inc-0005"].result_status == STATUS_IGNORED
    assert by_id["inc-0006"].result_status == STATUS_UNDECIDED
    assert by_id["inc-0001"].rule_verdict is None  # unchanged by budgets: not repeated


def test_timeline_filters_by_job(journal: Journal) -> None:
    assert {e.job for e in build_timeline(journal, "llama")} == {"llama"}
    assert len(build_timeline(journal, "gpt")) == 4
    assert build_timeline(journal, "nobody") == []
    assert render_text([]) == "no incidents\n"


def test_timeline_json_is_stable_and_parseable(journal: Journal) -> None:
    text = render_json(build_timeline(journal))
    doc = json.loads(text)
    assert doc["version"] == "1"
    first = doc["incidents"][0]
    assert list(first) == sorted(first)
    assert first["opened_at_iso"] == "2024-05-01T12:01:40.000Z"


def test_timeline_reads_a_journal_the_daemon_has_open(tmp_path: Path) -> None:
    """The CLI opens its own Journal on the daemon's file while the daemon holds it."""
    daemon = Journal(tmp_path / "j.db")
    populate(daemon)
    cli = Journal(tmp_path / "j.db")
    assert len(build_timeline(cli)) == 6
    cli.close()
    daemon.close()
