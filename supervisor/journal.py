"""The supervisor's memory: an append-only SQLite journal that survives crashes.

What it holds (one file, WAL mode, ``synchronous=FULL``):

- signals        every Signal ever journaled, de-duplicated so re-reading an overlap window never repeats one
- incidents      each Incident's root cause and member signals (their fields, so reports show evidence)
- decisions      what decide/ chose for an incident, and whether the daemon was observing or acting
- intents        an Action journaled *before* it is carried out, with its plan; unique per idempotency key
- results        the ActionResult journaled *after*; an intent without one is pending and is reconciled at
                 start-up by observing the target before any retry
- attempts       one row per launch of a job: nodes, resume step, first/last step seen, end
- checkpoints    each checkpoint the trainer reported committed: attempt, step, time, save duration
- cursors        where each source resumes (saved only after a batch's consequences are journaled)
- event_counts   running totals of events seen per source
- state          small key/value pairs (e.g. budget bookkeeping the engine wants to persist)
- alert_outbox   every alert handed to a delivering sink, per (alert id, sink): its payload, attempts,
                 last error and when it was delivered; a row with no `delivered_at` is retried later
                 (also after a daemon restart), so an undeliverable alert is never dropped silently.
                 Added in schema version 2 (a version-1 journal gains the table when opened).

Threading contract: one ``Journal`` is owned by the engine thread, but the connection is opened with
``check_same_thread=False`` and every operation takes an internal lock, so a helper thread may read
through the same object. Another process (the ``ftsup timeline`` CLI) may open a second ``Journal`` on
the same file at the same time: WAL lets readers proceed while the daemon writes.

Time values are stored as SQLite REAL (IEEE doubles) and come back bit-for-bit. Nothing here reads the
wall clock, so a journal built from fixed data is byte-for-byte reproducible in what it reports.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor.chaos import crash_point
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

SCHEMA_VERSION = 2

# Columns that describe one Signal, shared by the `signals` and `incident_signals` tables so both
# can be read back into the same dataclass.
_SIGNAL_COLUMNS = (
    "rule",
    "signal",
    "node",
    "timestamp",
    "failure_class",
    "scope",
    "verdict",
    "severity",
    "role",
    "evidence",
    "event_id",
    "line_index",
    "runbook",
)
_SIGNAL_DDL = """
    rule TEXT NOT NULL,
    signal TEXT NOT NULL,
    node TEXT NOT NULL,
    timestamp REAL NOT NULL,
    failure_class TEXT NOT NULL,
    scope TEXT NOT NULL,
    verdict TEXT NOT NULL,
    severity TEXT NOT NULL,
    role TEXT NOT NULL,
    evidence TEXT NOT NULL,
    event_id TEXT,
    line_index INTEGER,
    runbook TEXT
"""

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS signals (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    dedupe_key TEXT NOT NULL UNIQUE,
    {_SIGNAL_DDL}
);
CREATE INDEX IF NOT EXISTS signals_job ON signals (job, attempt);
CREATE INDEX IF NOT EXISTS signals_event ON signals (rule, event_id);
CREATE INDEX IF NOT EXISTS signals_time ON signals (rule, node, timestamp);

CREATE TABLE IF NOT EXISTS incidents (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    incident_id TEXT NOT NULL UNIQUE,
    job TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    opened_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS incidents_job ON incidents (job, opened_at);

CREATE TABLE IF NOT EXISTS incident_signals (
    incident_id TEXT NOT NULL,
    ord INTEGER NOT NULL,          -- -1 is the root cause, 0..n-1 the incident's signals in order
    {_SIGNAL_DDL},
    PRIMARY KEY (incident_id, ord)
);

CREATE TABLE IF NOT EXISTS decisions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    incident_id TEXT NOT NULL,
    verdict TEXT NOT NULL,
    reason TEXT NOT NULL,
    decided_at REAL NOT NULL,
    node TEXT,
    delay_s REAL NOT NULL,
    page INTEGER NOT NULL,
    rule_verdict TEXT,
    mode TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_incident ON decisions (incident_id);

CREATE TABLE IF NOT EXISTS intents (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    idempotency_key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    job TEXT NOT NULL,
    incident_id TEXT NOT NULL,
    node TEXT,
    delay_s REAL NOT NULL,
    reason TEXT NOT NULL,
    plan TEXT NOT NULL             -- JSON list of strings
);
CREATE INDEX IF NOT EXISTS intents_incident ON intents (incident_id);

CREATE TABLE IF NOT EXISTS results (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    idempotency_key TEXT NOT NULL UNIQUE,
    ok INTEGER NOT NULL,
    detail TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL NOT NULL,
    attempt INTEGER,
    nodes TEXT NOT NULL            -- JSON list of strings
);

CREATE TABLE IF NOT EXISTS attempts (
    job TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    nodes TEXT NOT NULL,           -- JSON list of strings
    launched_at REAL,              -- NULL: first seen through update_attempt (adopted / observed job)
    cause_incident TEXT,
    resume_step INTEGER,
    first_step_at REAL,
    last_step INTEGER,
    last_step_at REAL,
    ended_at REAL,
    end_reason TEXT,
    PRIMARY KEY (job, attempt)
);

CREATE TABLE IF NOT EXISTS cursors (
    source TEXT PRIMARY KEY,
    position TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS event_counts (
    source TEXT PRIMARY KEY,
    n INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS alert_outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id TEXT NOT NULL,        -- <incident id>:<status>
    sink TEXT NOT NULL,
    payload TEXT NOT NULL,         -- the Alert as JSON (supervisor.alert.outbox.alert_to_json)
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    delivered_at REAL,
    UNIQUE (alert_id, sink)
);
CREATE INDEX IF NOT EXISTS alert_outbox_pending ON alert_outbox (sink, delivered_at);
"""

# Checkpoints the trainer reported as committed (read by the engine from `checkpoint_saved` lines), for
# goodput accounting (supervisor/report/goodput.py). A table of its own, created when missing on every
# open like the tables above: a journal written before it existed gains it without a schema version
# bump, and an older ftsup reading a newer journal simply ignores it.
_SCHEMA += """
CREATE TABLE IF NOT EXISTS checkpoints (
    job TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    step INTEGER NOT NULL,
    saved_at REAL NOT NULL,        -- event time of the trainer's line saying the checkpoint committed
    seconds REAL,                  -- save duration the trainer reported, NULL when it did not say
    PRIMARY KEY (job, attempt, step)
);
"""


class JournalError(RuntimeError):
    """The journal file cannot be used (e.g. written by a newer ftsup with a schema we do not know)."""


# ----------------------------------------------------------------------------- rows returned by readers


@dataclass(frozen=True, slots=True)
class SignalRow:
    """One journaled signal. `seq` orders rows by when they were journaled."""

    seq: int
    job: str
    attempt: int
    signal: Signal


@dataclass(frozen=True, slots=True)
class IncidentRow:
    """One journaled incident, rebuilt exactly as it was added (root cause and signals in order)."""

    seq: int
    incident: Incident


@dataclass(frozen=True, slots=True)
class DecisionRow:
    """One decision and the mode the daemon was in when it was made.

    `job` comes from the decision's incident; it is None when the incident was never journaled.
    """

    seq: int
    decision: Decision
    mode: Mode
    job: str | None


@dataclass(frozen=True, slots=True)
class ActionRow:
    """One intent (the action and its plan) with its result; `result` is None while pending."""

    seq: int
    action: Action
    plan: tuple[str, ...]
    result: ActionResult | None

    @property
    def pending(self) -> bool:
        return self.result is None


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One alert handed to one sink. `delivered_at` None: not delivered yet (pending)."""

    seq: int
    alert_id: str
    sink: str
    payload: str
    created_at: float
    attempts: int
    last_error: str | None
    delivered_at: float | None


@dataclass(frozen=True, slots=True)
class AttemptRow:
    """One launch of a job. Unknown values are None (unknown is never zero); an attempt first seen
    through `update_attempt` (a job adopted or only observed) has no nodes and no launch time."""

    job: str
    attempt: int
    nodes: tuple[str, ...]
    launched_at: float | None
    cause_incident: str | None
    resume_step: int | None
    first_step_at: float | None
    last_step: int | None
    last_step_at: float | None
    ended_at: float | None
    end_reason: str | None


@dataclass(frozen=True, slots=True)
class CheckpointRow:
    """One checkpoint the trainer committed during `attempt`: the step it holds, the event time of the
    line that reported the commit, and the save duration the trainer reported (None when unknown)."""

    job: str
    attempt: int
    step: int
    saved_at: float
    seconds: float | None


# ----------------------------------------------------------------------------- helpers


def signal_dedupe_key(job: str, signal: Signal) -> str:
    """The identity of a signal across re-reads.

    With a CloudWatch eventId: (rule, event_id), since a re-read returns the same eventId. Without one
    (metric conditions, offline windows): (rule, node, timestamp). The job is part of the key as well so
    two supervised jobs that reuse node names never swallow each other's signals. `repr` of a float is
    exact, so equal timestamps give equal keys.
    """
    if signal.event_id is not None:
        parts: list[object] = ["event", job, signal.rule, signal.event_id]
    else:
        parts = ["time", job, signal.rule, signal.node, repr(float(signal.timestamp))]
    return json.dumps(parts, separators=(",", ":"))


def _signal_values(s: Signal) -> tuple[Any, ...]:
    return (
        s.rule,
        s.signal,
        s.node,
        float(s.timestamp),
        s.failure_class.value,
        s.scope.value,
        s.verdict.value,
        s.severity.value,
        s.role.value,
        s.evidence,
        s.event_id,
        s.line_index,
        s.runbook,
    )


def _signal_from(row: sqlite3.Row) -> Signal:
    return Signal(
        rule=row["rule"],
        signal=row["signal"],
        node=row["node"],
        timestamp=row["timestamp"],
        failure_class=FailureClass(row["failure_class"]),
        scope=Scope(row["scope"]),
        verdict=Verdict(row["verdict"]),
        severity=Severity(row["severity"]),
        role=Role(row["role"]),
        evidence=row["evidence"],
        event_id=row["event_id"],
        line_index=row["line_index"],
        runbook=row["runbook"],
    )


def _json_list(values: Sequence[str]) -> str:
    return json.dumps([str(v) for v in values])


def _tuple_from_json(text: str) -> tuple[str, ...]:
    loaded = json.loads(text)
    if not isinstance(loaded, list):
        raise JournalError(f"expected a JSON list in the journal, found {text!r}")
    return tuple(str(v) for v in loaded)


def _action_from(row: sqlite3.Row) -> Action:
    return Action(
        kind=Verdict(row["kind"]),
        job=row["job"],
        incident_id=row["incident_id"],
        idempotency_key=row["idempotency_key"],
        node=row["node"],
        delay_s=row["delay_s"],
        reason=row["reason"],
    )


def _result_from(row: sqlite3.Row) -> ActionResult:
    return ActionResult(
        idempotency_key=row["idempotency_key"],
        ok=bool(row["ok"]),
        detail=row["detail"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        attempt=row["attempt"],
        nodes=_tuple_from_json(row["nodes"]),
    )


def _attempt_from(row: sqlite3.Row) -> AttemptRow:
    return AttemptRow(
        job=row["job"],
        attempt=row["attempt"],
        nodes=_tuple_from_json(row["nodes"]),
        launched_at=row["launched_at"],
        cause_incident=row["cause_incident"],
        resume_step=row["resume_step"],
        first_step_at=row["first_step_at"],
        last_step=row["last_step"],
        last_step_at=row["last_step_at"],
        ended_at=row["ended_at"],
        end_reason=row["end_reason"],
    )


# ----------------------------------------------------------------------------- the journal


class Journal:
    """Append-only, crash-safe record of everything the supervisor saw, decided and did.

    Opening creates the file (and its parent directories) or reopens an existing one, keeping its data;
    a journal left behind by a crash is opened the same way (SQLite's WAL recovery runs on open).

    Writes outside `transaction()` commit one statement group at a time (each public write method is
    atomic on its own). Writes inside `transaction()` commit together or not at all.
    """

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # RLock: a public write method called inside transaction() re-enters the same lock.
        self._lock = threading.RLock()
        self._in_tx = False
        # isolation_level=None: the sqlite3 module never opens transactions behind our back; we issue
        # BEGIN / COMMIT ourselves, which is what makes transaction() and single writes explicit.
        self._conn = sqlite3.connect(
            str(self.path), timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        self._conn.row_factory = sqlite3.Row
        self._closed = False
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk when it returns, so "journaled" means it survives power loss.
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
            self._migrate()
        except BaseException:
            self._conn.close()
            self._closed = True
            raise

    def _migrate(self) -> None:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
                row = self._conn.execute("SELECT MAX(version) AS v FROM schema_version").fetchone()
                found = row["v"]
                if found is not None and found > SCHEMA_VERSION:
                    raise JournalError(
                        f"{self.path}: journal schema version {found} is newer than this ftsup "
                        f"understands ({SCHEMA_VERSION})"
                    )
                # executescript() would COMMIT first; run the DDL statement by statement instead so the
                # whole migration is one transaction.
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._conn.execute(statement)
                if found is None or found < SCHEMA_VERSION:
                    # The DDL above is idempotent (IF NOT EXISTS): running it migrated an older journal
                    # (version 1 -> 2 adds alert_outbox); record the version now understood.
                    self._conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Closes the connection. Idempotent. Must not be called inside `transaction()`."""
        with self._lock:
            if self._closed:
                return
            if self._in_tx:
                raise RuntimeError("Journal.close() called inside an open transaction")
            self._closed = True
            self._conn.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        with self._lock:
            row = self._conn.execute("SELECT MAX(version) AS v FROM schema_version").fetchone()
            return int(row["v"])

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Every write inside commits atomically when the block exits normally; if the block raises,
        none of them is kept and the exception propagates.

        Holds the journal's lock for the block, so other threads using this object wait. Nesting is
        not supported as a savepoint: an inner `transaction()` simply joins the outer one.
        """
        with self._lock:
            if self._in_tx:
                yield
                return
            # IMMEDIATE takes the write lock now, so a concurrent writer fails at BEGIN (after
            # busy_timeout) rather than half way through the block.
            self._conn.execute("BEGIN IMMEDIATE")
            self._in_tx = True
            try:
                yield
            except BaseException:
                self._in_tx = False
                self._conn.execute("ROLLBACK")
                raise
            crash_point("journal.commit")
            self._in_tx = False
            self._conn.execute("COMMIT")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One public write: joins an open transaction, or commits on its own."""
        with self.transaction():
            yield self._conn

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._conn.execute(sql, tuple(params)).fetchall())

    # ------------------------------------------------------------------ signals

    def add_signals(self, job: str, attempt: int, signals: Sequence[Signal]) -> list[Signal]:
        """Stores the signals and returns, in input order, only those never journaled before.

        The identity is `signal_dedupe_key`: (rule, event_id) when event_id is set, else
        (rule, node, timestamp), within one job. A duplicate inside `signals` itself is returned once.
        """
        placeholders = ",".join("?" for _ in range(3 + len(_SIGNAL_COLUMNS)))
        sql = (
            f"INSERT OR IGNORE INTO signals (job, attempt, dedupe_key, {', '.join(_SIGNAL_COLUMNS)}) "
            f"VALUES ({placeholders})"
        )
        fresh: list[Signal] = []
        with self._write() as conn:
            for s in signals:
                cur = conn.execute(sql, (job, attempt, signal_dedupe_key(job, s), *_signal_values(s)))
                if cur.rowcount == 1:
                    fresh.append(s)
        return fresh

    def signal_seen(self, signal: Signal, job: str | None = None) -> bool:
        """Whether `signal` was journaled before, by the same identity `add_signals` de-duplicates on:
        within `job` when given, in any job otherwise. Read-only; `add_signals` remains the atomic
        check-and-store."""
        if job is not None:
            rows = self._read(
                "SELECT 1 FROM signals WHERE dedupe_key = ? LIMIT 1", (signal_dedupe_key(job, signal),)
            )
        elif signal.event_id is not None:
            rows = self._read(
                "SELECT 1 FROM signals WHERE rule = ? AND event_id = ? LIMIT 1",
                (signal.rule, signal.event_id),
            )
        else:
            rows = self._read(
                "SELECT 1 FROM signals WHERE rule = ? AND node = ? AND timestamp = ? AND event_id IS NULL "
                "LIMIT 1",
                (signal.rule, signal.node, float(signal.timestamp)),
            )
        return bool(rows)

    def signals(self, job: str | None = None, attempt: int | None = None) -> list[SignalRow]:
        """Journaled signals in the order they were journaled, optionally for one job / attempt."""
        where, params = _where(("job", job), ("attempt", attempt))
        rows = self._read(f"SELECT * FROM signals{where} ORDER BY seq", params)
        return [SignalRow(r["seq"], r["job"], r["attempt"], _signal_from(r)) for r in rows]

    # ------------------------------------------------------------------ cursors / counters / state

    def save_cursor(self, cursor: Cursor) -> None:
        """Replaces the source's cursor. Call only after the batch's consequences are journaled."""
        with self._write() as conn:
            conn.execute(
                "INSERT INTO cursors (source, position) VALUES (?, ?) "
                "ON CONFLICT (source) DO UPDATE SET position = excluded.position",
                (cursor.source, cursor.position),
            )

    def load_cursor(self, source: str) -> Cursor | None:
        rows = self._read("SELECT position FROM cursors WHERE source = ?", (source,))
        return Cursor(source=source, position=rows[0]["position"]) if rows else None

    def count_events(self, source: str, n: int) -> None:
        """Adds `n` (>= 0) to the running total of events seen from `source`."""
        if n < 0:
            raise ValueError(f"count_events: n must be >= 0, got {n}")
        with self._write() as conn:
            conn.execute(
                "INSERT INTO event_counts (source, n) VALUES (?, ?) "
                "ON CONFLICT (source) DO UPDATE SET n = n + excluded.n",
                (source, n),
            )

    def events_seen(self, source: str) -> int:
        """The running total for `source`; 0 for a source never counted."""
        rows = self._read("SELECT n FROM event_counts WHERE source = ?", (source,))
        return int(rows[0]["n"]) if rows else 0

    def set_state(self, key: str, value: str) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO state (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def get_state(self, key: str) -> str | None:
        rows = self._read("SELECT value FROM state WHERE key = ?", (key,))
        return str(rows[0]["value"]) if rows else None

    # ------------------------------------------------------------------ incidents / decisions

    def add_incident(self, incident: Incident) -> None:
        """Stores the incident with its root cause and every signal's fields.

        Incidents are keyed by id: adding the same id again (an incident that grew, or a replay after a
        crash) replaces its root cause and signals with the later fold, keeping its original position.
        """
        cols = ", ".join(_SIGNAL_COLUMNS)
        placeholders = ",".join("?" for _ in range(2 + len(_SIGNAL_COLUMNS)))
        sql = f"INSERT INTO incident_signals (incident_id, ord, {cols}) VALUES ({placeholders})"
        with self._write() as conn:
            conn.execute(
                "INSERT INTO incidents (incident_id, job, attempt, opened_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (incident_id) DO UPDATE SET job = excluded.job, attempt = excluded.attempt, "
                "opened_at = excluded.opened_at",
                (incident.incident_id, incident.job, incident.attempt, float(incident.opened_at)),
            )
            conn.execute("DELETE FROM incident_signals WHERE incident_id = ?", (incident.incident_id,))
            conn.execute(sql, (incident.incident_id, -1, *_signal_values(incident.root_cause)))
            for i, s in enumerate(incident.signals):
                conn.execute(sql, (incident.incident_id, i, *_signal_values(s)))

    def has_incident(self, incident_id: str) -> bool:
        """Whether an incident with this id was journaled (e.g. decided before a daemon restart)."""
        return bool(self._read("SELECT 1 FROM incidents WHERE incident_id = ? LIMIT 1", (incident_id,)))

    def incident(self, incident_id: str) -> Incident | None:
        rows = self.incidents(incident_id=incident_id)
        return rows[0].incident if rows else None

    def incidents(self, job: str | None = None, *, incident_id: str | None = None) -> list[IncidentRow]:
        """Incidents ordered by opened_at (then by when they were journaled)."""
        where, params = _where(("job", job), ("incident_id", incident_id))
        with self._lock:
            heads = self._read(f"SELECT * FROM incidents{where} ORDER BY opened_at, seq", params)
            out: list[IncidentRow] = []
            for h in heads:
                members = self._read(
                    "SELECT * FROM incident_signals WHERE incident_id = ? ORDER BY ord", (h["incident_id"],)
                )
                root = next(_signal_from(m) for m in members if m["ord"] == -1)
                signals = tuple(_signal_from(m) for m in members if m["ord"] >= 0)
                out.append(
                    IncidentRow(
                        seq=h["seq"],
                        incident=Incident(
                            incident_id=h["incident_id"],
                            job=h["job"],
                            attempt=h["attempt"],
                            opened_at=h["opened_at"],
                            root_cause=root,
                            signals=signals,
                        ),
                    )
                )
            return out

    def add_decision(self, decision: Decision, mode: Mode) -> None:
        """Appends a decision. An incident may collect several (e.g. re-decided after a failed action)."""
        with self._write() as conn:
            conn.execute(
                "INSERT INTO decisions (incident_id, verdict, reason, decided_at, node, delay_s, page, "
                "rule_verdict, mode) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    decision.incident_id,
                    decision.verdict.value,
                    decision.reason,
                    float(decision.decided_at),
                    decision.node,
                    float(decision.delay_s),
                    int(decision.page),
                    decision.rule_verdict.value if decision.rule_verdict is not None else None,
                    Mode(mode).value,
                ),
            )

    def decisions(self, job: str | None = None, *, incident_id: str | None = None) -> list[DecisionRow]:
        """Decisions in the order they were journaled, optionally for one job or one incident."""
        where, params = _where(("i.job", job), ("d.incident_id", incident_id))
        rows = self._read(
            "SELECT d.*, i.job AS job FROM decisions d LEFT JOIN incidents i ON i.incident_id = d.incident_id"
            f"{where} ORDER BY d.seq",
            params,
        )
        return [
            DecisionRow(
                seq=r["seq"],
                decision=Decision(
                    incident_id=r["incident_id"],
                    verdict=Verdict(r["verdict"]),
                    reason=r["reason"],
                    decided_at=r["decided_at"],
                    node=r["node"],
                    delay_s=r["delay_s"],
                    page=bool(r["page"]),
                    rule_verdict=Verdict(r["rule_verdict"]) if r["rule_verdict"] is not None else None,
                ),
                mode=Mode(r["mode"]),
                job=r["job"],
            )
            for r in rows
        ]

    # ------------------------------------------------------------------ intents / results

    def add_intent(self, action: Action, plan: Sequence[str]) -> bool:
        """Journals the intent to carry out `action` (with the plan it will follow) before acting.

        Returns True when journaled; False, writing nothing, when an intent with the same idempotency
        key exists already (the action was intended before: reconcile it, never repeat it blindly).
        """
        with self._write() as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO intents (idempotency_key, kind, job, incident_id, node, delay_s, "
                "reason, plan) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    action.idempotency_key,
                    Verdict(action.kind).value,
                    action.job,
                    action.incident_id,
                    action.node,
                    float(action.delay_s),
                    action.reason,
                    _json_list(plan),
                ),
            )
            return cur.rowcount == 1

    def add_result(self, result: ActionResult) -> None:
        """Journals the outcome of an intended action, after acting.

        The first result for a key wins: a second one (a replayed reconcile) is ignored, because the
        outcome that was journaled first is the one later decisions were based on.
        """
        with self._write() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO results (idempotency_key, ok, detail, started_at, finished_at, "
                "attempt, nodes) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    result.idempotency_key,
                    int(result.ok),
                    result.detail,
                    float(result.started_at),
                    float(result.finished_at),
                    result.attempt,
                    _json_list(result.nodes),
                ),
            )

    def pending_intents(self) -> list[Action]:
        """Intents with no result, oldest first: what start-up must reconcile by observing the target."""
        rows = self._read(
            "SELECT i.* FROM intents i LEFT JOIN results r ON r.idempotency_key = i.idempotency_key "
            "WHERE r.idempotency_key IS NULL ORDER BY i.seq"
        )
        return [_action_from(r) for r in rows]

    def result_for(self, idempotency_key: str) -> ActionResult | None:
        rows = self._read("SELECT * FROM results WHERE idempotency_key = ?", (idempotency_key,))
        return _result_from(rows[0]) if rows else None

    def actions(self, job: str | None = None, *, incident_id: str | None = None) -> list[ActionRow]:
        """Intents with their results (None while pending), in the order they were intended."""
        where, params = _where(("i.job", job), ("i.incident_id", incident_id))
        rows = self._read(
            "SELECT i.*, r.ok AS r_ok, r.detail AS r_detail, r.started_at AS r_started_at, "
            "r.finished_at AS r_finished_at, r.attempt AS r_attempt, r.nodes AS r_nodes, "
            "r.idempotency_key AS r_key FROM intents i "
            f"LEFT JOIN results r ON r.idempotency_key = i.idempotency_key{where} ORDER BY i.seq",
            params,
        )
        out: list[ActionRow] = []
        for r in rows:
            result = None
            if r["r_key"] is not None:
                result = ActionResult(
                    idempotency_key=r["r_key"],
                    ok=bool(r["r_ok"]),
                    detail=r["r_detail"],
                    started_at=r["r_started_at"],
                    finished_at=r["r_finished_at"],
                    attempt=r["r_attempt"],
                    nodes=_tuple_from_json(r["r_nodes"]),
                )
            out.append(
                ActionRow(
                    seq=r["seq"], action=_action_from(r), plan=_tuple_from_json(r["plan"]), result=result
                )
            )
        return out

    # ------------------------------------------------------------------ attempts

    def add_attempt(
        self,
        job: str,
        attempt: int,
        nodes: Sequence[str],
        launched_at: float,
        cause_incident: str | None,
    ) -> None:
        """Journals one launch of `job` (attempt 0 is the first). `cause_incident` is the incident whose
        action caused this launch (None for the first launch or an adopted job).

        Re-adding an existing (job, attempt) is ignored: the first record of a launch is kept, so a
        replay after a crash cannot rewrite when or where the attempt started. The one exception is an
        attempt created by `update_attempt` before its launch was known: its launch fields are filled in.
        """
        with self._write() as conn:
            conn.execute(
                "INSERT INTO attempts (job, attempt, nodes, launched_at, cause_incident) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (job, attempt) DO UPDATE SET nodes = excluded.nodes, "
                "launched_at = excluded.launched_at, cause_incident = excluded.cause_incident "
                "WHERE attempts.launched_at IS NULL",
                (job, attempt, _json_list(nodes), float(launched_at), cause_incident),
            )

    def update_attempt(
        self,
        job: str,
        attempt: int,
        *,
        resume_step: int | None = None,
        first_step_at: float | None = None,
        last_step: int | None = None,
        last_step_at: float | None = None,
        ended_at: float | None = None,
        end_reason: str | None = None,
    ) -> None:
        """Changes only the fields given (not None). `first_step_at` is set once: later values are
        ignored, since the first step after a launch is what recovery time is measured to.

        An attempt never added is created (no nodes, no launch time) rather than refused: a job adopted
        or watched in observe mode still has its progress journaled, and the daemon never dies over it.
        """
        sets: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("resume_step", resume_step),
            ("last_step", last_step),
            ("last_step_at", None if last_step_at is None else float(last_step_at)),
            ("ended_at", None if ended_at is None else float(ended_at)),
            ("end_reason", end_reason),
        ):
            if value is not None:
                sets.append(f"{column} = ?")
                params.append(value)
        if first_step_at is not None:
            sets.append("first_step_at = COALESCE(first_step_at, ?)")
            params.append(float(first_step_at))
        with self._write() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO attempts (job, attempt, nodes) VALUES (?, ?, '[]')", (job, attempt)
            )
            if sets:
                conn.execute(
                    f"UPDATE attempts SET {', '.join(sets)} WHERE job = ? AND attempt = ?",
                    (*params, job, attempt),
                )

    def attempts(self, job: str | None = None) -> list[AttemptRow]:
        """Attempts ordered by job, then attempt number."""
        where, params = _where(("job", job))
        rows = self._read(f"SELECT * FROM attempts{where} ORDER BY job, attempt", params)
        return [_attempt_from(r) for r in rows]

    # ------------------------------------------------------------------ checkpoints

    def add_checkpoint(
        self, job: str, attempt: int, step: int, saved_at: float, seconds: float | None = None
    ) -> None:
        """Journals a checkpoint the trainer committed. Idempotent per (job, attempt, step): the first
        record is kept, so re-reading an overlap window of the logs never duplicates or moves one."""
        with self._write() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO checkpoints (job, attempt, step, saved_at, seconds) "
                "VALUES (?, ?, ?, ?, ?)",
                (job, attempt, step, float(saved_at), None if seconds is None else float(seconds)),
            )

    def checkpoints(self, job: str | None = None) -> list[CheckpointRow]:
        """Checkpoints ordered by job, then commit time, then step."""
        where, params = _where(("job", job))
        rows = self._read(f"SELECT * FROM checkpoints{where} ORDER BY job, saved_at, step", params)
        return [CheckpointRow(r["job"], r["attempt"], r["step"], r["saved_at"], r["seconds"]) for r in rows]

    # ------------------------------------------------------------------ alert outbox

    def outbox_add(self, alert_id: str, sink: str, payload: str, created_at: float) -> bool:
        """Records an alert handed to `sink`, pending. Idempotent per (alert_id, sink): returns False
        (and changes nothing) when that pair is already recorded, True when it was added."""
        with self._write() as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO alert_outbox (alert_id, sink, payload, created_at) "
                "VALUES (?, ?, ?, ?)",
                (alert_id, sink, payload, float(created_at)),
            )
            return cur.rowcount == 1

    def outbox_result(self, alert_id: str, sink: str, *, at: float, error: str | None = None) -> None:
        """One delivery try of a recorded alert finished: `attempts` + 1; delivered at `at` when
        `error` is None, else `last_error` = error and the row stays pending."""
        with self._write() as conn:
            if error is None:
                conn.execute(
                    "UPDATE alert_outbox SET attempts = attempts + 1, delivered_at = ? "
                    "WHERE alert_id = ? AND sink = ?",
                    (float(at), alert_id, sink),
                )
            else:
                conn.execute(
                    "UPDATE alert_outbox SET attempts = attempts + 1, last_error = ? "
                    "WHERE alert_id = ? AND sink = ?",
                    (error, alert_id, sink),
                )

    def outbox_settle(self, alert_id: str, sink: str, *, at: float, note: str) -> None:
        """Marks a pending row as needing no delivery any more (e.g. a firing alert superseded by its
        resolution): `delivered_at` = at, `last_error` = note, attempts unchanged."""
        with self._write() as conn:
            conn.execute(
                "UPDATE alert_outbox SET delivered_at = ?, last_error = ? "
                "WHERE alert_id = ? AND sink = ? AND delivered_at IS NULL",
                (float(at), note, alert_id, sink),
            )

    def outbox_pending(self, sink: str | None = None) -> list[OutboxRow]:
        """Rows not delivered yet (all sinks, or one), oldest first."""
        where, params = _where(("sink", sink))
        clause = f"{where} AND delivered_at IS NULL" if where else " WHERE delivered_at IS NULL"
        rows = self._read(f"SELECT * FROM alert_outbox{clause} ORDER BY seq", params)
        return [_outbox_from(r) for r in rows]

    def outbox(self, sink: str | None = None, *, alert_id: str | None = None) -> list[OutboxRow]:
        """Every recorded row (delivered or not), oldest first."""
        where, params = _where(("sink", sink), ("alert_id", alert_id))
        rows = self._read(f"SELECT * FROM alert_outbox{where} ORDER BY seq", params)
        return [_outbox_from(r) for r in rows]


def _outbox_from(row: sqlite3.Row) -> OutboxRow:
    return OutboxRow(
        seq=row["seq"],
        alert_id=row["alert_id"],
        sink=row["sink"],
        payload=row["payload"],
        created_at=row["created_at"],
        attempts=row["attempts"],
        last_error=row["last_error"],
        delivered_at=row["delivered_at"],
    )


def _where(*conditions: tuple[str, object | None]) -> tuple[str, list[object]]:
    """A WHERE clause for the conditions whose value is not None (column names are ours, never input)."""
    clauses = [f"{column} = ?" for column, value in conditions if value is not None]
    params = [value for _, value in conditions if value is not None]
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params
