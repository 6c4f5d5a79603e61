"""The shared action ledger (supervisor/ha/ledger.py) on the moto server, with the tables of
deploy/dynamodb/ftsup-ha.cfn.yaml: one fenced transaction admits a key once across replicas, a
deposed token records and acts on nothing, results are written once by the owning token, a
successor takes unsettled intents over, and every failure means "do not act"."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError

from supervisor.ha import (
    DynamoDbLease,
    DynamoDbLedger,
    Intent,
    Leadership,
    Outcome,
    settle_takeover,
)
from supervisor.journal import Journal
from supervisor.sources.aws import ApiCallCounter, AwsSettings, make_client
from supervisor.vocabulary import Action, ActionResult, JobObservation, Verdict

pytestmark = pytest.mark.chaos

RESTART = Action(Verdict.RESTART, "job", "inc-1", "inc-1:restart", node="node-0", reason="nccl timeout")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Replica:
    """One replica's lease and ledger on the shared tables (a fake clock for lease time)."""

    def __init__(
        self, tables: tuple[str, str], settings: AwsSettings, holder: str, clock: Clock, client: Any = None
    ) -> None:
        self.counter = ApiCallCounter()
        self.lease = DynamoDbLease(
            tables[0], "job", settings, lease_s=10, holder=holder, clock=clock, monotonic=clock,
            counter=self.counter, client=client,
        )  # fmt: skip
        self.ledger = DynamoDbLedger(tables[1], self.lease, clock=clock)


def result(key: str, detail: str = "restarted", attempt: int | None = 1) -> ActionResult:
    return ActionResult(key, True, detail, 1001.0, 1002.5, attempt=attempt, nodes=("node-0", "node-1"))


def test_a_key_is_admitted_once_and_its_result_recorded_once(
    tables: tuple[str, str], settings: AwsSettings
) -> None:
    clock = Clock()
    a = Replica(tables, settings, "a", clock)
    assert a.lease.acquire() == 1
    intent = Intent.of(RESTART, attempt=0, plan=("scontrol requeue 42",))
    assert a.ledger.admit(intent, 1).outcome is Outcome.ADMITTED
    (entry,) = a.ledger.entries(pending_only=True)
    assert entry.intent == intent and (entry.token, entry.holder, entry.intended_at) == (1, "a", 1000.0)
    assert entry.result is None and entry.intent.action() == RESTART
    # The same leader admitting the same key again (not a retry of that request): do not act twice.
    again = a.ledger.admit(intent, 1)
    assert again.outcome is Outcome.PENDING and again.entry == entry
    assert a.ledger.record(intent.key, result(intent.key), 1)
    assert not a.ledger.record(intent.key, result(intent.key, "second"), 1)  # the first result wins
    (done,) = a.ledger.entries()
    assert done.result == result(intent.key) and done.result_token == 1
    assert a.ledger.entries(pending_only=True) == []
    recorded = a.ledger.admit(intent, 1)
    assert recorded.outcome is Outcome.RECORDED and recorded.entry == done


def test_a_deposed_leader_can_neither_admit_nor_take_over(
    tables: tuple[str, str], settings: AwsSettings
) -> None:
    clock = Clock()
    a, b = Replica(tables, settings, "a", clock), Replica(tables, settings, "b", clock)
    assert a.lease.acquire() == 1
    first = Intent.of(RESTART, attempt=0)
    assert a.ledger.admit(first, 1).outcome is Outcome.ADMITTED
    clock.now += 11  # a stopped renewing; b takes the lease
    assert b.lease.acquire() == 2
    other = Intent.of(Action(Verdict.HALT, "job", "inc-2", "inc-2:halt"), attempt=0)
    assert a.ledger.admit(other, 1).outcome is Outcome.FENCED
    assert [e.intent.key for e in b.ledger.entries()] == [first.key]  # nothing written by a
    # A token that never held the lease, or b's own token under a's name, is fenced too.
    assert a.ledger.admit(other, 2).outcome is Outcome.FENCED
    (pending,) = b.ledger.entries(pending_only=True)
    assert a.ledger.take_over(pending, 1).outcome is Outcome.FENCED
    # The lease expired without anyone taking over: an expired lease fences its own holder as well.
    clock.now += 11
    assert b.ledger.admit(other, 2).outcome is Outcome.FENCED


def test_a_successor_takes_an_unsettled_intent_over_and_the_deposed_cannot_record(
    tables: tuple[str, str], settings: AwsSettings
) -> None:
    clock = Clock()
    a, b = Replica(tables, settings, "a", clock), Replica(tables, settings, "b", clock)
    assert a.lease.acquire() == 1
    intent = Intent.of(RESTART, attempt=0)
    assert a.ledger.admit(intent, 1).outcome is Outcome.ADMITTED
    clock.now += 11
    assert b.lease.acquire() == 2
    found = b.ledger.admit(intent, 2)  # the engine of b re-decides the same incident
    assert found.outcome is Outcome.PENDING and found.entry is not None and found.entry.token == 1
    assert b.ledger.take_over(found.entry, 2).outcome is Outcome.ADMITTED
    assert not a.ledger.record(intent.key, result(intent.key, "late"), 1)  # a no longer owns it
    assert b.ledger.take_over(found.entry, 2).outcome is Outcome.ADMITTED  # a retry finds its own write
    assert b.ledger.record(intent.key, result(intent.key), 2)
    (entry,) = b.ledger.entries()
    assert (entry.token, entry.holder, entry.result_token) == (2, "b", 2)
    assert entry.result is not None and entry.result.detail == "restarted"
    assert b.ledger.take_over(entry, 2).outcome is Outcome.RECORDED


class LosesFirstResponse:
    """The boto3 client, except that the first transaction's response is lost after it took effect
    (the connection drops): call_with_retry sends the same request again."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.lost = 0

    def transact_write_items(self, **request: Any) -> Any:
        out = self._client.transact_write_items(**request)
        if self.lost == 0:
            self.lost += 1
            raise EndpointConnectionError(endpoint_url="http://moto")
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def test_a_retried_admission_whose_first_try_took_effect_is_admitted(
    tables: tuple[str, str], settings: AwsSettings
) -> None:
    clock = Clock()
    client = LosesFirstResponse(make_client("dynamodb", settings))
    a = Replica(tables, settings, "a", clock, client=client)
    assert a.lease.acquire() == 1
    assert a.ledger.admit(Intent.of(RESTART, attempt=0), 1).outcome is Outcome.ADMITTED
    assert client.lost == 1 and a.counter.get("dynamodb.TransactWriteItems") == 2


def _leader(replica: Replica, attempts: dict[str, int] | None = None) -> Leadership:
    """Leadership on the replica's lease and ledger; `attempts`: incident id -> its attempt (else 0)."""
    of = attempts or {}
    leadership = Leadership(
        replica.lease, renew_every_s=2, ledger=replica.ledger, attempt_of=lambda a: of.get(a.incident_id, 0)
    )
    assert leadership.wait(threading.Event())
    return leadership


def test_leadership_returns_the_recorded_result_instead_of_acting_again(
    tables: tuple[str, str], settings: AwsSettings
) -> None:
    clock = Clock()
    a, b = Replica(tables, settings, "a", clock), Replica(tables, settings, "b", clock)
    first = _leader(a)
    assert first.admit(RESTART) == 1
    first.record(RESTART, result(RESTART.idempotency_key, "restarted [lease token 1]"))
    (entry,) = a.ledger.entries()
    assert entry.intent.attempt == 0 and entry.intent.node == "node-0"
    first.stop(release=True)
    second = _leader(b)
    assert second.token == 2
    got = second.admit(RESTART)
    assert isinstance(got, ActionResult) and got.ok and got.attempt == 1
    assert got.detail.startswith("restarted [lease token 1] [recorded in the ledger under lease token 1")
    assert second.admitted == [] and not second.lost.is_set()
    # The job's launch is admitted once across replicas.
    assert second.admit_launch("job")
    second.record_key("launch", result("launch", "launched", attempt=0))
    assert not second.admit_launch("job")


def test_leadership_fails_closed(tables: tuple[str, str], settings: AwsSettings) -> None:
    """An intent of another leader without a result, a fenced write and an unreachable ledger all
    mean: do not act, step down (a later takeover settles what is unsettled)."""
    clock = Clock()
    a, b = Replica(tables, settings, "a", clock), Replica(tables, settings, "b", clock)
    first = _leader(a)
    assert first.admit(RESTART) == 1
    clock.now += 11
    second = _leader(b)
    assert second.admit(RESTART) is None and second.lost.is_set()
    assert second.admitted == []
    assert first.admit(Action(Verdict.HALT, "job", "inc-2", "inc-2:halt")) is None  # deposed
    assert first.lost.is_set()
    # An unreachable ledger (the table is gone) with the lease still held: no action.
    c = Replica(tables, settings, "c", clock)
    clock.now += 11
    third = _leader(c)
    c.ledger.table = "no-such-table"
    assert third.admit(Action(Verdict.HALT, "job", "inc-3", "inc-3:halt")) is None
    assert third.lost.is_set()
    with pytest.raises(Exception, match="could not be admitted"):
        third.admit_launch("job")


class MemoryJob:
    """An in-process actuator whose job state is two fields; records every apply and launch."""

    def __init__(self, attempt: int, running: bool) -> None:
        self.attempt, self.running = attempt, running
        self.calls: list[str] = []

    def launch(self) -> ActionResult:
        self.calls.append("launch")
        self.attempt, self.running = 0, True
        return ActionResult("launch", True, "launched", 1.0, 1.0, 0, ("node-0",))

    def plan(self, action: Action) -> list[str]:
        return []

    def apply(self, action: Action) -> ActionResult:
        self.calls.append(action.idempotency_key)
        self.attempt += 1
        return ActionResult(action.idempotency_key, True, "restarted", 2.0, 2.0, self.attempt, ("node-0",))

    def observe(self) -> JobObservation:
        return JobObservation("job", self.attempt, ("node-0",), (), (), self.running, 5.0)

    def stop(self) -> None:
        pass

    def clear_halt(self) -> None:
        pass


def test_takeover_settles_the_ledger_and_imports_its_history(
    tmp_path: Path, tables: tuple[str, str], settings: AwsSettings
) -> None:
    """Leader a launched the job and admitted two restarts, recording one; then it died. b takes
    over with a journal of its own that still holds an intent of an earlier term of b's."""
    clock = Clock()
    a, b = Replica(tables, settings, "a", clock), Replica(tables, settings, "b", clock)
    first = _leader(a, {"inc-1": 0, "inc-2": 1})
    assert first.admit_launch("job")  # died before recording the launch's result
    clock.now += 1
    done = Action(Verdict.RESTART, "job", "inc-1", "inc-1:restart")
    assert first.admit(done) == 1
    first.record(done, result(done.idempotency_key, "restarted [lease token 1]", attempt=1))
    clock.now += 1
    unsettled = Action(Verdict.RESTART, "job", "inc-2", "inc-2:restart")
    assert first.admit(unsettled) == 1  # died before apply: the job still runs attempt 1
    clock.now += 11
    job = MemoryJob(attempt=1, running=True)
    with Journal(tmp_path / "b.db") as journal:
        journal.add_intent(done, ["restart"])  # b's own leftover from an earlier term, never settled
        second = _leader(b)
        settled = settle_takeover(journal, job, "job", second, clock=clock)
        # The launch is visibly done (the job runs): recorded, not repeated. inc-2's restart is
        # visibly not done (the job runs attempt 1, inc-2's own): carried out under token 2.
        # inc-1's result came from the ledger: b's leftover is settled by it, not applied again.
        assert job.calls == ["inc-2:restart"]
        assert [r.idempotency_key for r in settled] == ["launch", "inc-2:restart"]
        assert settled[1].detail == "restarted [lease token 2]"
        rows = {row.action.idempotency_key: row.result for row in journal.actions("job")}
        assert rows.keys() == {"inc-1:restart", "inc-2:restart"}
        assert (
            rows["inc-1:restart"] is not None and rows["inc-1:restart"].detail == "restarted [lease token 1]"
        )
        assert journal.pending_intents() == []
    assert all(e.result is not None for e in b.ledger.entries())
    assert not second.admit_launch("job") and job.calls == ["inc-2:restart"]
