"""Kill the leader mid-incident with replicas that do NOT share a journal: two replica processes
(tests/ha/replica_dynamodb.py: the real Daemon HA path with the DynamoDB lease and the shared action
ledger on the moto server), each with its own SQLite journal, supervise one file-state job. The
follower learns what its predecessor did only from the ledger and the target: it finishes the
incident and every action happens exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from supervisor.ha import DynamoDbLease, DynamoDbLedger, Entry
from supervisor.journal import Journal
from supervisor.sources.aws import AwsSettings
from tests.ha.replica import LEASE_S
from tests.ha.test_ha_failover import GLOO

pytestmark = pytest.mark.chaos

ROOT = Path(__file__).resolve().parents[2]


def _replica(
    workdir: Path, name: str, hang: str, run_s: float, endpoint: str, tables: tuple[str, str]
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.ha.replica_dynamodb", str(workdir), name, hang, str(run_s),
         endpoint, *tables],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=(workdir / f"replica-{name}.log").open("w"),
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip


def _wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _ledger(settings: AwsSettings, tables: tuple[str, str]) -> list[Entry]:
    """The job's ledger items, read as an operator would (a reader that holds no lease)."""
    lease = DynamoDbLease(tables[0], "job", settings, lease_s=LEASE_S, holder="reader")
    return DynamoDbLedger(tables[1], lease).entries()


@pytest.mark.parametrize("hang", ["before", "after"])
def test_follower_with_its_own_journal_finishes_the_incident_exactly_once(
    tmp_path: Path, hang: str, moto_endpoint: str, settings: AwsSettings, tables: tuple[str, str]
) -> None:
    leader = _replica(tmp_path, "a", hang, 60, moto_endpoint, tables)
    follower: subprocess.Popen[str] | None = None
    try:
        assert leader.stdout is not None
        assert leader.stdout.readline().split() == ["LEADER", "1"]
        _wait_for(lambda: (tmp_path / "target.json").exists(), 20, "the job's launch")
        follower = _replica(tmp_path, "b", "none", 30, moto_endpoint, tables)
        time.sleep(1.0)  # the follower is up and waiting for the lease
        # The incident: a collective timeout on node-0 -> restart.
        (tmp_path / "logs.jsonl").write_text(json.dumps(["node-0", time.time(), GLOO]) + "\n")
        marker = tmp_path / ("entered" if hang == "before" else "applied")
        _wait_for(marker.exists, 20, f"the leader to block {hang} apply")
        # Killed mid-incident: the intent is in the ledger (and the leader's journal), no result.
        launch, restart = _ledger(settings, tables)
        assert (launch.intent.key, launch.token) == ("launch", 1) and launch.result is not None
        assert restart.intent.kind == "restart" and restart.intent.attempt == 0
        assert (restart.token, restart.result) == (1, None)
        killed_at = time.monotonic()
        leader.send_signal(signal.SIGKILL)
        leader.wait()
        assert follower.stdout is not None
        assert follower.stdout.readline().split() == ["LEADER", "2"]
        assert time.monotonic() - killed_at <= LEASE_S + 2.0

        _wait_for(lambda: all(e.result is not None for e in _ledger(settings, tables)), 10, "the result")
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
    assert follower is not None
    assert int(pid) == (leader.pid if hang == "after" else follower.pid)
    launch, restart = _ledger(settings, tables)
    assert restart.intent.key == key and restart.result is not None and restart.result.ok
    assert (restart.token, restart.result_token) == (2, 2)  # taken over, then settled by the follower
    assert launch.result is not None and launch.result_token == 1  # launched once, by the first leader
    with Journal(tmp_path / "journal-a.db") as journal:
        (row,) = journal.actions("job")
        assert row.action.idempotency_key == key and row.result is None  # died before its result
    with Journal(tmp_path / "journal-b.db") as journal:
        (row,) = journal.actions("job")  # learnt from the ledger, not from a shared journal
        assert row.action.idempotency_key == key
        assert row.result is not None and row.result.ok and row.result.detail == restart.result.detail
        if hang == "after":
            assert "done by the previous leader" in row.result.detail
        else:
            assert row.result.detail.endswith("[lease token 2]")
        assert journal.incidents("job") == []  # the old lines were not decided again
        first, second = journal.attempts("job")  # the launch (from the ledger) and the restart
        assert (first.attempt, first.end_reason) == (0, restart.intent.incident_id)
        assert (second.attempt, second.cause_incident) == (1, restart.intent.incident_id)
    assert json.loads((tmp_path / "target.json").read_text())["attempt"] == 1
