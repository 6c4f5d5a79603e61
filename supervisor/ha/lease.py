"""Leases with fencing tokens: exactly one replica of ftsup holds the lease of a job and acts.

Contract of every `Lease` (see README, "High availability"):
- `acquire()` takes the lease when nobody holds it, its holder released it, or its holder has not
  renewed it for `lease_s`; it returns the new fencing token, strictly greater than every token
  handed out before for this lease (a counter stored with the lease, never reset), or None.
- `renew()` extends the lease only while this replica still holds it *with the same token*; a
  replica that was deposed (someone else acquired after expiry) gets False and never again holds
  that token.
- `valid_for()` is how long this replica may still believe it holds the lease, measured on its own
  monotonic clock from the moment it *sent* its last successful acquire/renew: a replica stops
  believing before anyone else can take over (given clocks that advance at about the same rate).
- `release()` gives the lease up at once (a clean shutdown), so a follower need not wait `lease_s`.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import structlog

from supervisor.sources.aws import ApiCallCounter, AwsSettings, call_with_retry, error_code, make_client

log = structlog.get_logger("ftsup.ha")


def default_holder() -> str:
    """A replica identity unique per process: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@runtime_checkable
class Lease(Protocol):
    """One job's leadership lease (see the module docstring for the contract)."""

    @property
    def holder(self) -> str:
        """This replica's identity, written into the lease while it holds it."""
        ...

    @property
    def lease_s(self) -> float: ...

    @property
    def token(self) -> int | None:
        """The fencing token of this replica's current acquisition (None: not held)."""
        ...

    def acquire(self) -> int | None: ...

    def renew(self) -> bool: ...

    def release(self) -> None: ...

    def valid_for(self) -> float: ...

    def current_holder(self) -> tuple[str | None, int]:
        """Who holds the lease now according to the shared record (None: nobody), and the last token."""
        ...


class _Local:
    """The part every lease shares: this replica's token and local validity (monotonic clock)."""

    def __init__(self, holder: str | None, lease_s: float, monotonic: Callable[[], float]) -> None:
        if lease_s <= 0:
            raise ValueError("lease_s must be positive")
        self._holder = holder or default_holder()
        self._lease_s = float(lease_s)
        self._monotonic = monotonic
        self._token: int | None = None
        self._valid_until = 0.0
        self._lock = threading.RLock()

    @property
    def holder(self) -> str:
        return self._holder

    @property
    def lease_s(self) -> float:
        return self._lease_s

    @property
    def token(self) -> int | None:
        with self._lock:
            return self._token if self.valid_for() > 0 else None

    def valid_for(self) -> float:
        with self._lock:
            if self._token is None:
                return 0.0
            return max(0.0, self._valid_until - self._monotonic())

    def _held(self, token: int, sent_at: float) -> None:
        self._token = token
        self._valid_until = sent_at + self._lease_s

    def _lost(self) -> None:
        self._token = None
        self._valid_until = 0.0


class FileLease(_Local):
    """A lease for replicas on one machine: a JSON record `{holder, token, expires_at}` in `path`,
    read and rewritten (then fsynced) only while holding an exclusive `fcntl.flock` on the file,
    so two daemons never both see the lease free. Expiry uses the host's wall clock, which every
    replica on the host shares; `token` only ever grows (it survives releases and restarts)."""

    def __init__(
        self,
        path: Path | str,
        *,
        lease_s: float,
        holder: str | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(holder, lease_s, monotonic)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._clock = clock

    def _locked(self, change: Callable[[dict[str, Any]], dict[str, Any] | None]) -> dict[str, Any]:
        """Run `change(record)` under the file lock; a dict it returns is written and fsynced."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            raw = b""
            while chunk := os.read(fd, 65536):
                raw += chunk
            try:
                record = json.loads(raw) if raw.strip() else {}
            except ValueError:
                record = {}
            if not isinstance(record, dict):
                record = {}
            new = change(dict(record))
            if new is None:
                return record
            data = json.dumps(new, sort_keys=True).encode()
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            os.write(fd, data)
            os.fsync(fd)
            return new
        finally:
            os.close(fd)  # closing the descriptor drops the flock

    def acquire(self) -> int | None:
        with self._lock:
            sent = self._monotonic()
            now = self._clock()

            def take(rec: dict[str, Any]) -> dict[str, Any] | None:
                free = not rec.get("holder") or float(rec.get("expires_at", 0.0)) < now
                if not free:
                    return None
                token = int(rec.get("token", 0)) + 1
                return {"holder": self.holder, "token": token, "expires_at": now + self.lease_s}

            rec = self._locked(take)
            if rec.get("holder") == self.holder and float(rec.get("expires_at", 0.0)) >= now:
                token = int(rec["token"])
                if token != self._token:
                    log.info("lease acquired", kind="file", holder=self.holder, token=token)
                self._held(token, sent)
                return token
            return None

    def renew(self) -> bool:
        with self._lock:
            mine = self._token
            if mine is None:
                return False
            sent = self._monotonic()
            now = self._clock()

            def extend(rec: dict[str, Any]) -> dict[str, Any] | None:
                if rec.get("holder") != self.holder or int(rec.get("token", -1)) != mine:
                    return None
                return {**rec, "expires_at": now + self.lease_s}

            rec = self._locked(extend)
            if rec.get("holder") == self.holder and int(rec.get("token", -1)) == mine:
                self._held(mine, sent)
                return True
            log.warning(
                "lease lost", kind="file", holder=self.holder, token=mine, now_held_by=rec.get("holder")
            )
            self._lost()
            return False

    def release(self) -> None:
        with self._lock:
            mine = self._token
            self._lost()
            if mine is None:
                return

            def give_up(rec: dict[str, Any]) -> dict[str, Any] | None:
                if rec.get("holder") != self.holder or int(rec.get("token", -1)) != mine:
                    return None
                return {**rec, "holder": None, "expires_at": 0.0}

            self._locked(give_up)
            log.info("lease released", kind="file", holder=self.holder, token=mine)

    def current_holder(self) -> tuple[str | None, int]:
        now = self._clock()
        rec = self._locked(lambda r: None)
        holder = rec.get("holder") if float(rec.get("expires_at", 0.0)) >= now else None
        return (str(holder) if holder else None), int(rec.get("token", 0))


class DynamoDbLease(_Local):
    """A lease for replicas on several machines: one item per job in a DynamoDB table
    (partition key `job`, a string), changed only by conditional UpdateItem calls:

    - acquire: `SET holder = me, expires_at = now + lease_s, token = token + 1` if the item does not
      exist, or nobody holds it, or it expired (`expires_at < now`);
    - renew: `SET expires_at = now + lease_s` if `holder = me AND token = my token`;
    - release: `REMOVE holder, SET expires_at = 0` under the same condition.

    A failed condition is an answer (someone else holds it), not an error. Every call has the
    timeouts of `AwsSettings` and is retried (tenacity, `call_with_retry`) on transient errors; a
    retried acquire whose first try took effect is recognised by reading the item back (consistent
    read). Expiry compares wall clocks of different machines: keep them NTP-synchronised and keep
    `lease_s` well above the worst skew. The table is created by deployment, not by ftsup
    (deploy/dynamodb/ftsup-ha.cfn.yaml; deploy/iam/ftsup-ha.json grants GetItem and UpdateItem on it,
    and ConditionCheckItem for the action ledger's fenced transactions).
    """

    def __init__(
        self,
        table: str,
        job: str,
        settings: AwsSettings,
        *,
        lease_s: float,
        holder: str | None = None,
        counter: ApiCallCounter | None = None,
        client: Any = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(holder, lease_s, monotonic)
        self.table = table
        self.job = job
        self.settings = settings
        self.counter = counter
        self.client: Any = client if client is not None else make_client("dynamodb", settings)
        self._clock = clock

    def _update(self, op: str, **kw: Any) -> dict[str, Any] | None:
        """One conditional UpdateItem; None when its condition failed."""

        def call() -> dict[str, Any]:
            out: dict[str, Any] = self.client.update_item(
                TableName=self.table, Key={"job": {"S": self.job}}, ReturnValues="ALL_NEW", **kw
            )
            return out

        try:
            return call_with_retry(call, self.settings, op=f"dynamodb.{op}", counter=self.counter)
        except Exception as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return None
            raise

    def _read(self) -> dict[str, Any]:
        def call() -> dict[str, Any]:
            out: dict[str, Any] = self.client.get_item(
                TableName=self.table, Key={"job": {"S": self.job}}, ConsistentRead=True
            )
            return out

        item = call_with_retry(call, self.settings, op="dynamodb.GetItem", counter=self.counter)
        found: dict[str, Any] = item.get("Item") or {}
        return found

    @staticmethod
    def _fields(item: dict[str, Any]) -> tuple[str | None, int, float]:
        holder = item.get("holder", {}).get("S")
        token = int(item.get("token", {}).get("N", "0"))
        expires = float(item.get("expires_at", {}).get("N", "0"))
        return holder, token, expires

    def acquire(self) -> int | None:
        with self._lock:
            sent = self._monotonic()
            now = self._clock()
            out = self._update(
                "UpdateItem",
                UpdateExpression="SET holder = :me, expires_at = :exp, #t = if_not_exists(#t, :zero) + :one",
                ConditionExpression=(
                    "attribute_not_exists(#j) OR attribute_not_exists(holder) OR expires_at < :now"
                ),
                ExpressionAttributeNames={"#t": "token", "#j": "job"},
                ExpressionAttributeValues={
                    ":me": {"S": self.holder},
                    ":exp": {"N": repr(now + self.lease_s)},
                    ":now": {"N": repr(now)},
                    ":zero": {"N": "0"},
                    ":one": {"N": "1"},
                },
            )
            if out is not None:
                _, token, _ = self._fields(out.get("Attributes", {}))
            else:
                # A retried call whose first try took effect finds its own write: that is ours.
                holder, token, expires = self._fields(self._read())
                if holder != self.holder or expires < now:
                    return None
            if token != self._token:
                log.info("lease acquired", kind="dynamodb", table=self.table, holder=self.holder, token=token)
            self._held(token, sent)
            return token

    def _mine(self) -> dict[str, Any]:
        return {
            "ConditionExpression": "holder = :me AND #t = :tok",
            "ExpressionAttributeNames": {"#t": "token"},
        }

    def renew(self) -> bool:
        with self._lock:
            mine = self._token
            if mine is None:
                return False
            sent = self._monotonic()
            now = self._clock()
            out = self._update(
                "UpdateItem",
                UpdateExpression="SET expires_at = :exp",
                ExpressionAttributeValues={
                    ":me": {"S": self.holder},
                    ":tok": {"N": str(mine)},
                    ":exp": {"N": repr(now + self.lease_s)},
                },
                **self._mine(),
            )
            if out is not None:
                self._held(mine, sent)
                return True
            log.warning("lease lost", kind="dynamodb", table=self.table, holder=self.holder, token=mine)
            self._lost()
            return False

    def release(self) -> None:
        with self._lock:
            mine = self._token
            self._lost()
            if mine is None:
                return
            self._update(
                "UpdateItem",
                UpdateExpression="REMOVE holder SET expires_at = :zero",
                ExpressionAttributeValues={
                    ":me": {"S": self.holder},
                    ":tok": {"N": str(mine)},
                    ":zero": {"N": "0"},
                },
                **self._mine(),
            )
            log.info("lease released", kind="dynamodb", table=self.table, holder=self.holder, token=mine)

    def current_holder(self) -> tuple[str | None, int]:
        holder, token, expires = self._fields(self._read())
        return (holder if holder and expires >= self._clock() else None), token
