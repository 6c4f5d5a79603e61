"""Kill the leader mid-incident; the follower takes over and finishes the incident without
repeating done actions. Two replica processes (tests/ha/replica.py: the real Daemon HA path)
share one SQLite journal and a FileLease on this host; the job's state lives in files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from supervisor.journal import Journal
from tests.ha.replica import LEASE_S

pytestmark = pytest.mark.chaos

ROOT = Path(__file__).resolve().parents[2]
GLOO = (
    "[rank0]: RuntimeError: [/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:129] "
    "Timed out waiting 15000ms for send operation to complete"
)


def _replica(workdir: Path, hang: str, run_s: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.ha.replica", str(workdir), hang, str(run_s)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=(workdir / f"replica-{hang}.log").open("w"),
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def _wait_for(predicate: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("hang", ["before", "after"])
def test_follower_finishes_the_incident_of_a_killed_leader_exactly_once(tmp_path: Path, hang: str) -> None:
    leader = _replica(tmp_path, hang, 60)
    follower: subprocess.Popen[str] | None = None
    try:
        assert leader.stdout is not None
        assert leader.stdout.readline().split() == ["LEADER", "1"]
        _wait_for(lambda: (tmp_path / "target.json").exists(), 20, "the job's launch")
        follower = _replica(tmp_path, "none", 30)
        time.sleep(1.0)  # the follower is up and waiting for the lease
        # The incident: a collective timeout on node-0 -> restart.
        (tmp_path / "logs.jsonl").write_text(json.dumps(["node-0", time.time(), GLOO]) + "\n")
        marker = tmp_path / ("entered" if hang == "before" else "applied")
        _wait_for(marker.exists, 20, f"the leader to block {hang} apply")
        with Journal(tmp_path / "journal.db") as journal:
            (row,) = journal.actions("job")
            assert row.result is None  # intent journaled, no result: the leader dies mid-incident
        killed_at = time.monotonic()
        leader.send_signal(signal.SIGKILL)
        leader.wait()
        assert follower.stdout is not None
        assert follower.stdout.readline().split() == ["LEADER", "2"]
        assert time.monotonic() - killed_at <= LEASE_S + 2.0

        def settled() -> bool:
            with Journal(tmp_path / "journal.db") as j:
                return all(r.result is not None for r in j.actions("job"))

        _wait_for(settled, 10, "the incident's result")
        time.sleep(1.5)  # let the new leader's engine run over the same lines again
        follower.send_signal(signal.SIGTERM)
        follower.wait(timeout=30)
    finally:
        for p in (leader, follower):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()

    applied = (tmp_path / "applied.log").read_text().splitlines()
    assert len(applied) == 1, applied  # the restart happened exactly once
    key, pid = applied[0].split()
    with Journal(tmp_path / "journal.db") as journal:
        (row,) = journal.actions("job")  # one incident, one action: nothing re-decided
        assert row.action.idempotency_key == key
        assert row.result is not None and row.result.ok
        assert len(journal.incidents("job")) == 1
        if hang == "after":
            assert int(pid) == leader.pid
            assert "done by the previous leader" in row.result.detail
        else:
            assert follower is not None and int(pid) == follower.pid
            assert "[lease token 2]" in row.result.detail
        attempts = [a.attempt for a in journal.attempts("job")]
        assert attempts == [0, 1]
    assert json.loads((tmp_path / "target.json").read_text())["attempt"] == 1
