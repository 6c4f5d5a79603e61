"""supervisor.chaos: plans parse strictly, every crash point in the code is a known stage, and an armed
process dies by SIGKILL at the chosen hit (a journal killed before COMMIT reopens without that write)."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor import chaos
from supervisor.journal import Journal
from supervisor.vocabulary import Cursor

ROOT = Path(__file__).resolve().parents[2]


def test_plans_parse_and_bad_ones_are_refused() -> None:
    assert chaos.parse("stage=journal.commit,hit=3,log=/tmp/k") == chaos.Plan(
        "journal.commit", 3, log="/tmp/k"
    )
    plan = chaos.parse("stage=action.*,p=0.5,seed=7")
    assert plan.matches("action.apply") and plan.matches("action.applied") and not plan.matches("alert.sent")
    assert chaos.parse("stage=*").matches("poll.batch")
    for bad in ("stage=journal.comit", "stage=nothing.*", "stage=poll.batch,hit=0", "stage=poll.batch,p=2",
                "stage=poll.batch,when=3", "poll.batch"):  # fmt: skip
        with pytest.raises(ValueError):
            chaos.parse(bad)


def test_disarmed_crash_points_do_nothing() -> None:
    assert chaos.armed() is None  # FTSUP_CHAOS is not set for the test run
    for stage in chaos.STAGES:
        chaos.crash_point(stage)


def test_every_crash_point_in_the_code_is_a_known_stage_and_every_stage_is_placed() -> None:
    used: set[str] = set()
    for path in (ROOT / "supervisor").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "crash_point":
                (arg,) = node.args
                assert isinstance(arg, ast.Constant) and isinstance(arg.value, str), ast.dump(node)
                used.add(arg.value)
    assert used == set(chaos.STAGES)


CHILD = """
import sys
from supervisor.journal import Journal
from supervisor.vocabulary import Cursor
j = Journal(sys.argv[1])
for i in range(5):
    j.save_cursor(Cursor("logs", str(i)))
print("survived", flush=True)
"""


@pytest.mark.chaos
def test_an_armed_process_is_sigkilled_before_commit_and_its_journal_reopens(tmp_path: Path) -> None:
    log = tmp_path / "kills.log"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "j.db")],
        env={**os.environ, "PYTHONPATH": str(ROOT), chaos.ENV: f"stage=journal.commit,hit=3,log={log}"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert "survived" not in proc.stdout
    ((stage, pid),) = (line.split() for line in log.read_text().splitlines())
    assert stage == "journal.commit" and int(pid) > 0
    with Journal(tmp_path / "j.db") as journal:  # WAL recovery drops the uncommitted third write
        assert journal.load_cursor("logs") == Cursor("logs", "1")
        journal.save_cursor(Cursor("logs", "after"))
        assert journal.load_cursor("logs") == Cursor("logs", "after")
