"""The shared action ledger: exactly-once actions across replicas that do not share a journal.

With `ha.kind: dynamodb` each replica keeps its own SQLite journal, so a new leader cannot see the
intents its predecessor journaled. The ledger is the part of the journal the replicas must share:
one DynamoDB item per admitted action, in a table of its own (deploy/dynamodb/ftsup-ha.cfn.yaml):

    partition key `job` (S), sort key `idempotency_key` (S)
    job, idempotency_key, kind, incident_id, node?, attempt?, delay_s, reason, plan (JSON),
    token, holder, intended_at, request_id     -- the intent, written before acting
    ok, detail, started_at, finished_at, result_attempt?, nodes, result_token, recorded_at
                                               -- the result, written after acting

Contract (see README, "High availability"):
- `admit(intent, token)` writes the intent in ONE TransactWriteItems: a ConditionCheck that the
  lease item still names this replica with `token` and has not expired, and a Put conditioned on
  `attribute_not_exists(idempotency_key)`. So a deposed leader records nothing (FENCED) and a key is
  admitted once across all replicas: a second admission finds the item (RECORDED with its result,
  or PENDING while it has none).
- `record(key, result, token)` writes the result with one UpdateItem, only while the item is owned
  by `token` and has no result yet (the first result wins; a leader that took the item over owns it).
- `take_over(entry, token)` makes a predecessor's unfinished item this leader's (same transaction
  shape as admit, the Update conditioned on the old token and no result), before settling it.
- `entries(pending_only=...)` lists the job's items with a strongly consistent Query.

Every call goes through `call_with_retry` with the `AwsSettings` timeouts; a conditional failure is an
answer, anything else raises, and callers treat a raise as "do not act" (fail closed). Retries reuse
the exact request (and a ClientRequestToken derived from it, so DynamoDB itself makes a retried
transaction idempotent); an ambiguous outcome is resolved by reading the item back.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any, Protocol, runtime_checkable

import structlog
from botocore.exceptions import ClientError

from supervisor.act.base import LAUNCH_KIND
from supervisor.ha.lease import DynamoDbLease
from supervisor.sources.aws import call_with_retry, error_code
from supervisor.vocabulary import Action, ActionResult, Verdict

log = structlog.get_logger("ftsup.ha")

LAUNCH_KEY = "launch"  # the ledger item of a job's first launch (one per job, like its journal's attempt 0)
MAX_TEXT = 4000  # detail and reason are cut to this many characters (items stay far below 400 KB)
# Cancellation reasons that say "try again", not "the condition is false" (DynamoDB's own codes).
_TRANSIENT_REASONS = frozenset(
    {"TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded", "RequestLimitExceeded"}
)


class TransientCancel(ConnectionError):
    """DynamoDB cancelled a transaction for a conflict with a concurrent write or for throttling:
    worth another try. A ConnectionError because that is what `is_retryable` retries besides
    AWS error codes, so `call_with_retry` retries it within its budget."""


@dataclass(frozen=True, slots=True)
class Intent:
    """What is admitted: one engine Action (or a job's first launch), with the attempt of the job
    its incident happened in, which settling compares with what the target runs now."""

    key: str
    job: str
    kind: str  # a Verdict value, or LAUNCH_KIND
    incident_id: str
    node: str | None = None
    attempt: int | None = None
    delay_s: float = 0.0
    reason: str = ""
    plan: tuple[str, ...] = ()

    @classmethod
    def of(cls, action: Action, attempt: int | None, plan: tuple[str, ...] = ()) -> Intent:
        return cls(
            key=action.idempotency_key,
            job=action.job,
            kind=Verdict(action.kind).value,
            incident_id=action.incident_id,
            node=action.node,
            attempt=attempt,
            delay_s=float(action.delay_s),
            reason=action.reason,
            plan=plan,
        )

    @classmethod
    def launch(cls, job: str) -> Intent:
        return cls(key=LAUNCH_KEY, job=job, kind=LAUNCH_KIND, incident_id="")

    def action(self) -> Action | None:
        """The engine Action this intent stands for (None for a launch)."""
        if self.kind == LAUNCH_KIND:
            return None
        return Action(
            Verdict(self.kind), self.job, self.incident_id, self.key, self.node, self.delay_s, self.reason
        )


@dataclass(frozen=True, slots=True)
class Entry:
    """One ledger item: the intent, who owns it now (the token that admitted or took it over) and
    its result once recorded."""

    intent: Intent
    token: int
    holder: str
    intended_at: float
    result: ActionResult | None = None
    result_token: int | None = None
    request_id: str = ""  # the admission request that wrote the intent


class Outcome(Enum):
    ADMITTED = "admitted"  # this call's token owns the item now: act
    RECORDED = "recorded"  # the item has a result: never act again, use it
    PENDING = "pending"  # another token owns the item and it has no result yet: do not act
    FENCED = "fenced"  # the lease no longer names this replica with this token: do not act


@dataclass(frozen=True, slots=True)
class Admission:
    outcome: Outcome
    entry: Entry | None = None  # RECORDED and PENDING: the item found


@runtime_checkable
class ActionLedger(Protocol):
    """The shared record of a job's admitted actions (see the module docstring for the contract)."""

    def admit(self, intent: Intent, token: int) -> Admission: ...

    def take_over(self, entry: Entry, token: int) -> Admission: ...

    def record(self, key: str, result: ActionResult, token: int) -> bool: ...

    def entries(self, *, pending_only: bool = False) -> list[Entry]: ...


def _s(value: str) -> dict[str, str]:
    return {"S": value}


def _n(value: float) -> dict[str, str]:
    return {"N": str(value) if isinstance(value, int) else repr(float(value))}


def _request_token(request: dict[str, Any]) -> str:
    """DynamoDB's ClientRequestToken (at most 36 characters): the same for retries of one request."""
    return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()[:36]


def _entry(item: dict[str, Any]) -> Entry:
    def s(name: str) -> str | None:
        v = item.get(name, {}).get("S")
        return str(v) if v is not None else None

    def n(name: str) -> float | None:
        v = item.get(name, {}).get("N")
        return float(v) if v is not None else None

    def i(name: str) -> int | None:
        v = item.get(name, {}).get("N")
        return int(v) if v is not None else None

    key = s("idempotency_key") or ""
    intent = Intent(
        key=key,
        job=s("job") or "",
        kind=s("kind") or "",
        incident_id=s("incident_id") or "",
        node=s("node"),
        attempt=i("attempt"),
        delay_s=n("delay_s") or 0.0,
        reason=s("reason") or "",
        plan=tuple(json.loads(s("plan") or "[]")),
    )
    result = None
    if "ok" in item:
        result = ActionResult(
            key,
            bool(item["ok"]["BOOL"]),
            s("detail") or "",
            n("started_at") or 0.0,
            n("finished_at") or 0.0,
            attempt=i("result_attempt"),
            nodes=tuple(str(v["S"]) for v in item.get("nodes", {}).get("L", [])),
        )
    return Entry(
        intent=intent,
        token=i("token") or 0,
        holder=s("holder") or "",
        intended_at=n("intended_at") or 0.0,
        result=result,
        result_token=i("result_token"),
        request_id=s("request_id") or "",
    )


def _reasons(exc: BaseException) -> list[str]:
    if not isinstance(exc, ClientError):
        return []
    return [str(r.get("Code") or "None") for r in exc.response.get("CancellationReasons") or []]


class DynamoDbLedger:
    """The ledger of `lease.job` in DynamoDB table `table`, fenced by `lease`'s item (same client,
    settings and call counter as the lease). The table is created by deployment, not by ftsup."""

    def __init__(self, table: str, lease: DynamoDbLease, *, clock: Callable[[], float] = time.time) -> None:
        if table == lease.table:
            raise ValueError("the ledger needs a table of its own (keys: job, idempotency_key)")
        self.table = table
        self.lease = lease
        self.job = lease.job
        self._clock = clock

    # ------------------------------------------------------------------ plumbing

    def _call(self, op: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """One DynamoDB call `fn` (operation `op`) with the lease's retries, timeouts and counter."""

        def call() -> dict[str, Any]:
            try:
                return fn()
            except ClientError as exc:
                reasons = _reasons(exc)
                if error_code(exc) == "TransactionCanceledException" and _TRANSIENT_REASONS & set(reasons):
                    raise TransientCancel(f"{op} cancelled: {reasons}") from exc
                raise

        return call_with_retry(call, self.lease.settings, op=f"dynamodb.{op}", counter=self.lease.counter)

    def _key(self, key: str) -> dict[str, Any]:
        return {"job": _s(self.job), "idempotency_key": _s(key)}

    def _lease_check(self, token: int, now: float) -> dict[str, Any]:
        """The fence: the lease item names this replica with `token` and has not expired."""
        return {
            "ConditionCheck": {
                "TableName": self.lease.table,
                "Key": {"job": _s(self.job)},
                "ConditionExpression": "#h = :me AND #t = :tok AND #e > :now",
                "ExpressionAttributeNames": {"#h": "holder", "#t": "token", "#e": "expires_at"},
                "ExpressionAttributeValues": {
                    ":me": _s(self.lease.holder),
                    ":tok": _n(token),
                    ":now": _n(now),
                },
            }
        }

    def _transact(self, op: str, items: list[dict[str, Any]]) -> tuple[bool, bool] | None:
        """Run one fenced transaction: None when it took effect, else (lease check failed, write
        condition failed)."""
        request: dict[str, Any] = {"TransactItems": items}
        request["ClientRequestToken"] = _request_token(request)
        try:
            self._call("TransactWriteItems", lambda: self.lease.client.transact_write_items(**request))
        except ClientError as exc:
            if error_code(exc) != "TransactionCanceledException":
                raise
            reasons = _reasons(exc)
            fenced = len(reasons) > 0 and reasons[0] == "ConditionalCheckFailed"
            exists = len(reasons) > 1 and reasons[1] == "ConditionalCheckFailed"
            if not (fenced or exists):
                raise
            log.debug("ledger transaction cancelled", op=op, reasons=reasons)
            return fenced, exists
        return None

    def get(self, key: str) -> Entry | None:
        """The item of `key` (strongly consistent read), or None."""
        request = {"TableName": self.table, "Key": self._key(key), "ConsistentRead": True}
        out = self._call("GetItem", lambda: self.lease.client.get_item(**request))
        item = out.get("Item")
        return _entry(item) if item else None

    def _found(self, key: str, token: int, request_id: str | None = None) -> Admission:
        """What a write whose condition failed found: the item may be this very request's write (a
        retry whose first try took effect: same token and holder, and for an admission the same
        `request_id`), recorded, or owned by another token or admission (PENDING: do not act)."""
        entry = self.get(key)
        if entry is None:  # deleted in between (an operator): do not act on a guess
            return Admission(Outcome.PENDING, None)
        if entry.result is not None:
            return Admission(Outcome.RECORDED, entry)
        mine = entry.token == token and entry.holder == self.lease.holder
        if mine and (request_id is None or entry.request_id == request_id):
            return Admission(Outcome.ADMITTED, entry)
        return Admission(Outcome.PENDING, entry)

    # ------------------------------------------------------------------ the contract

    def admit(self, intent: Intent, token: int) -> Admission:
        now = self._clock()
        item: dict[str, Any] = {
            **self._key(intent.key),
            "kind": _s(intent.kind),
            "incident_id": _s(intent.incident_id),
            "delay_s": _n(intent.delay_s),
            "reason": _s(intent.reason[:MAX_TEXT]),
            "plan": _s(json.dumps(list(intent.plan))),
            "token": _n(token),
            "holder": _s(self.lease.holder),
            "intended_at": _n(now),
            "request_id": _s(uuid.uuid4().hex),  # tells a retry of this request from another admission
        }
        if intent.node is not None:
            item["node"] = _s(intent.node)
        if intent.attempt is not None:
            item["attempt"] = _n(intent.attempt)
        put = {
            "Put": {
                "TableName": self.table,
                "Item": item,
                "ConditionExpression": "attribute_not_exists(#k)",
                "ExpressionAttributeNames": {"#k": "idempotency_key"},
            }
        }
        failed = self._transact("admit", [self._lease_check(token, now), put])
        if failed is None:
            return Admission(Outcome.ADMITTED, None)
        if failed[0]:  # the lease check failed
            return Admission(Outcome.FENCED, None)
        return self._found(intent.key, token, item["request_id"]["S"])

    def take_over(self, entry: Entry, token: int) -> Admission:
        now = self._clock()
        update = {
            "Update": {
                "TableName": self.table,
                "Key": self._key(entry.intent.key),
                "UpdateExpression": "SET #t = :tok, #h = :me, taken_over_at = :now, taken_over_from = :old",
                "ConditionExpression": "#t = :old AND attribute_not_exists(#ok)",
                "ExpressionAttributeNames": {"#t": "token", "#h": "holder", "#ok": "ok"},
                "ExpressionAttributeValues": {
                    ":tok": _n(token),
                    ":me": _s(self.lease.holder),
                    ":now": _n(now),
                    ":old": _n(entry.token),
                },
            }
        }
        failed = self._transact("take_over", [self._lease_check(token, now), update])
        if failed is None:
            return Admission(Outcome.ADMITTED, None)
        if failed[0]:
            return Admission(Outcome.FENCED, None)
        return self._found(entry.intent.key, token)

    def record(self, key: str, result: ActionResult, token: int) -> bool:
        now = self._clock()
        values: dict[str, Any] = {
            ":ok": {"BOOL": bool(result.ok)},
            ":detail": _s(result.detail[:MAX_TEXT]),
            ":started": _n(result.started_at),
            ":finished": _n(result.finished_at),
            ":nodes": {"L": [_s(n) for n in result.nodes]},
            ":tok": _n(token),
            ":now": _n(now),
        }
        sets = (
            "#ok = :ok, detail = :detail, started_at = :started, finished_at = :finished, "
            "nodes = :nodes, result_token = :tok, recorded_at = :now"
        )
        if result.attempt is not None:
            values[":attempt"] = _n(result.attempt)
            sets += ", result_attempt = :attempt"
        request = {
            "TableName": self.table,
            "Key": self._key(key),
            "UpdateExpression": f"SET {sets}",
            "ConditionExpression": "attribute_exists(#k) AND #t = :tok AND attribute_not_exists(#ok)",
            "ExpressionAttributeNames": {"#k": "idempotency_key", "#t": "token", "#ok": "ok"},
            "ExpressionAttributeValues": values,
        }
        try:
            self._call("UpdateItem", lambda: self.lease.client.update_item(**request))
            return True
        except ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise
        entry = self.get(key)  # a retry whose first try took effect finds this very result
        written = replace(result, detail=result.detail[:MAX_TEXT])
        return entry is not None and entry.result == written and entry.result_token == token

    def _query(self, request: dict[str, Any]) -> dict[str, Any]:
        return self._call("Query", lambda: self.lease.client.query(**request))

    def entries(self, *, pending_only: bool = False) -> list[Entry]:
        """The job's items, oldest intent first (pending_only: those without a result)."""
        request: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "#j = :job",
            "ExpressionAttributeNames": {"#j": "job"},
            "ExpressionAttributeValues": {":job": _s(self.job)},
            "ConsistentRead": True,
        }
        if pending_only:
            request["FilterExpression"] = "attribute_not_exists(#ok)"
            request["ExpressionAttributeNames"]["#ok"] = "ok"
        out: list[Entry] = []
        start: dict[str, Any] | None = None
        while True:
            page_request = request if start is None else {**request, "ExclusiveStartKey": start}
            page = self._query(page_request)
            out.extend(_entry(item) for item in page.get("Items", []))
            start = page.get("LastEvaluatedKey")
            if not start:
                break
        return sorted(out, key=lambda e: (e.intended_at, e.intent.key))
