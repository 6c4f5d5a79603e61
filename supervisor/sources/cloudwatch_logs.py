"""CloudWatch Logs source: one FilterLogEvents scan over the job's log group per poll.

Contract (see DESIGN.md, rules 1, 3 and 4):
- One scan covers every node stream of the group (one stream per node): the account-wide
  FilterLogEvents quota is 5-25 calls/s, so streams are never polled one by one.
- FilterLogEvents selects on event time, not ingestion time, so an event that arrives late
  lands behind a moving cursor. Each scan therefore starts `overlap_s` before the cursor and
  de-duplicates on eventId against a memory of the ids seen inside that window. An event
  that arrives more than `overlap_s` behind the newest event already read is missed:
  size `overlap_s` above the worst ingestion delay you expect.
- The cursor is the high-water event time (ms) of the events read; it advances only after a
  scan has been paginated to its end, so events never get skipped. A scan cut off by
  `max_pages_per_poll` keeps its nextToken and continues at the next poll (same query); the
  events read so far are emitted at once.
- Pages can be empty and still carry nextToken: pagination continues.
- The cursor only follows matching events, so while the group is quiet (or a
  `filter_pattern` rarely matches) the window behind it would grow without end; a scan
  therefore never starts more than `max_rescan_s` before the end of the last complete
  scan (default 600 s, at least `overlap_s`). In a busy group this changes nothing.
- `health.lag_s` is now minus the end of the last complete scan (the newest moment the
  group has been read through), so it grows while the source is blind or behind on a
  backlog, not merely because the job is quiet.
- Any failure after retries gives `SourceHealth(up=False)`, no events, and leaves cursor,
  pending scan and de-duplication memory as they were (the failed pages are re-read).
- A log group that does not exist yet (job not started writing) is up with no events and a
  note in `health.error`.
- After `restore()` the de-duplication memory is empty, so the overlap window before the
  cursor is emitted again: delivery is at-least-once across restarts; downstream stages
  de-duplicate on `LogEvent.event_id`.
"""

from __future__ import annotations

import heapq
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from supervisor.sources.aws import ApiCallCounter, AwsSettings, call_with_retry, describe_error, error_code
from supervisor.vocabulary import Cursor, LogEvent, SourceBatch, SourceHealth

if TYPE_CHECKING:
    from mypy_boto3_logs.type_defs import FilterLogEventsRequestTypeDef, FilterLogEventsResponseTypeDef
    from typing_extensions import Unpack

__all__ = ["CloudWatchLogsSource", "FilterLogEventsClient"]

log = structlog.get_logger(__name__)


class FilterLogEventsClient(Protocol):
    """The one call this source makes; a boto3 "logs" client satisfies it."""

    def filter_log_events(
        self, **kwargs: Unpack[FilterLogEventsRequestTypeDef]
    ) -> FilterLogEventsResponseTypeDef: ...


@dataclass(frozen=True, slots=True)
class _Scan:
    """One FilterLogEvents query, possibly spread over several polls."""

    start_ms: int
    end_ms: int
    token: str | None = None
    max_ts_ms: int | None = None  # newest event time read so far in this scan
    pages: int = 0


class CloudWatchLogsSource:
    """A `Source` reading one log group (one stream per node) through FilterLogEvents.

    `client` is public and may be replaced between polls (e.g. to point at a new endpoint);
    the cursor and de-duplication memory are kept. Not thread-safe: one thread polls.
    """

    def __init__(
        self,
        client: FilterLogEventsClient,
        log_group: str,
        settings: AwsSettings,
        *,
        name: str = "logs",
        overlap_s: float = 30.0,
        max_pages_per_poll: int = 50,
        start_time: float | None = None,
        clock: Callable[[], float] = time.time,
        counter: ApiCallCounter | None = None,
        filter_pattern: str | None = None,
        page_limit: int | None = None,
        max_seen_ids: int = 1_000_000,
        max_rescan_s: float = 600.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """See the module docstring for the contract.

        start_time: event time (s) to read from before any cursor exists; default
            `clock() - overlap_s` at construction.
        filter_pattern: passed as `filterPattern` (server-side filtering) when set.
        page_limit: passed as `limit` (events per page, <= 10,000) when set.
        max_rescan_s: how far before the end of the last complete scan a scan may start
            (bounds the window while the cursor stands still); must be >= overlap_s.
        max_seen_ids: hard cap on the de-duplication memory; beyond it the oldest ids are
            forgotten (which can only cause a duplicate, never a loss).
        """
        if overlap_s < 0:
            raise ValueError("overlap_s must be >= 0")
        if max_pages_per_poll < 1:
            raise ValueError("max_pages_per_poll must be >= 1")
        if page_limit is not None and not 1 <= page_limit <= 10_000:
            raise ValueError("page_limit must be in 1..10000")
        if max_rescan_s < overlap_s:
            raise ValueError("max_rescan_s must be >= overlap_s")
        self.client = client
        self.log_group = log_group
        self.settings = settings
        self.name = name
        self.filter_pattern = filter_pattern
        self.page_limit = page_limit
        self._overlap_ms = round(overlap_s * 1000)
        self._max_pages = max_pages_per_poll
        self._clock = clock
        self._counter = counter
        self._sleep = sleep
        self._max_seen = max_seen_ids
        self._max_rescan_ms = round(max_rescan_s * 1000)
        start = clock() - overlap_s if start_time is None else start_time
        self._start_ms = int(start * 1000)
        self._cursor_ms: int | None = None  # high-water event time read; None before any
        self._read_through_ms = self._start_ms  # end of the last complete scan
        self._pending: _Scan | None = None
        self._seen: dict[str, int] = {}  # eventId -> event time (ms)
        self._seen_heap: list[tuple[int, str]] = []

    # ------------------------------------------------------------------ Source protocol

    def restore(self, cursor: Cursor) -> None:
        """Resume from a cursor this source produced: the next scan starts `overlap_s` before it.

        Drops any pending scan and the de-duplication memory (see module docstring).
        Raises ValueError for a cursor of another source or a malformed position.
        """
        if cursor.source != self.name:
            raise ValueError(f"cursor of source {cursor.source!r} given to {self.name!r}")
        try:
            t_ms = json.loads(cursor.position)["t_ms"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"malformed logs cursor position: {cursor.position!r}") from exc
        if not isinstance(t_ms, int):
            raise ValueError(f"malformed logs cursor position: {cursor.position!r}")
        self._cursor_ms = t_ms
        self._read_through_ms = t_ms
        self._pending = None
        self._seen.clear()
        self._seen_heap.clear()

    def poll(self) -> SourceBatch:
        """Read what is new in the log group; never raises for an outside failure."""
        now = self._clock()
        scan = self._pending if self._pending is not None else self._new_scan(now)
        if scan.end_ms <= scan.start_ms:
            # Cursor ahead of our clock (clock skew): nothing can be asked for yet.
            return self._batch((), now, up=True)

        raw: list[dict[str, Any]] = []
        done = False
        try:
            for _ in range(self._max_pages):
                resp = self._fetch(scan)
                events = resp.get("events", [])
                raw.extend(dict(e) for e in events)
                token = resp.get("nextToken")
                newest = max((int(e["timestamp"]) for e in events if "timestamp" in e), default=None)
                scan = replace(
                    scan,
                    token=token,
                    pages=scan.pages + 1,
                    max_ts_ms=_max_opt(scan.max_ts_ms, newest),
                )
                if not token:
                    done = True
                    break
        except ClientError as exc:
            if error_code(exc) == "ResourceNotFoundException":
                self._pending = None
                note = f"log group {self.log_group!r} does not exist yet (no events): {describe_error(exc)}"
                return self._batch((), now, up=True, error=note)
            return self._blind(exc, now)
        except (BotoCoreError, OSError) as exc:
            return self._blind(exc, now)
        except Exception as exc:  # an unexpected failure must still read as blindness
            log.exception("logs.poll.unexpected", source=self.name, log_group=self.log_group)
            return self._blind(exc, now)

        fresh = self._take_new(raw)
        if done:
            self._pending = None
            self._cursor_ms = _max_opt(self._cursor_ms, scan.max_ts_ms)
            self._read_through_ms = max(self._read_through_ms, scan.end_ms)
        else:
            self._pending = scan
            log.info(
                "logs.scan.continues",
                source=self.name,
                pages=scan.pages,
                start_ms=scan.start_ms,
                end_ms=scan.end_ms,
            )
        self._prune()
        return self._batch(fresh, now, up=True)

    # ------------------------------------------------------------------ internals

    def _next_start_ms(self) -> int:
        """Where the next new scan starts: overlap before the cursor, bounded by max_rescan_s."""
        start = self._start_ms if self._cursor_ms is None else self._cursor_ms - self._overlap_ms
        start = max(start, self._read_through_ms - self._max_rescan_ms)
        return max(0, start)

    def _new_scan(self, now: float) -> _Scan:
        return _Scan(start_ms=self._next_start_ms(), end_ms=int(now * 1000))

    def _fetch(self, scan: _Scan) -> FilterLogEventsResponseTypeDef:
        kwargs: FilterLogEventsRequestTypeDef = {
            "logGroupName": self.log_group,
            "startTime": scan.start_ms,
            "endTime": scan.end_ms,
        }
        if scan.token:
            kwargs["nextToken"] = scan.token
        if self.filter_pattern:
            kwargs["filterPattern"] = self.filter_pattern
        if self.page_limit is not None:
            kwargs["limit"] = self.page_limit
        client = self.client
        return call_with_retry(
            lambda: client.filter_log_events(**kwargs),
            self.settings,
            op="FilterLogEvents",
            counter=self._counter,
            sleep=self._sleep,
        )

    def _take_new(self, raw: list[dict[str, Any]]) -> tuple[LogEvent, ...]:
        """Events not seen before, recorded in the memory, sorted by (time, id)."""
        out: list[LogEvent] = []
        for e in raw:
            event_id = str(e.get("eventId", ""))
            ts_ms = e.get("timestamp")
            if not event_id or ts_ms is None or event_id in self._seen:
                continue
            ts_ms = int(ts_ms)
            self._seen[event_id] = ts_ms
            heapq.heappush(self._seen_heap, (ts_ms, event_id))
            ingested = e.get("ingestionTime")
            out.append(
                LogEvent(
                    event_id=event_id,
                    node=str(e.get("logStreamName", "")),
                    timestamp=ts_ms / 1000.0,
                    text=str(e.get("message", "")),
                    ingested=int(ingested) / 1000.0 if ingested is not None else None,
                )
            )
        out.sort(key=lambda ev: (ev.timestamp, ev.event_id))
        return tuple(out)

    def _prune(self) -> None:
        """Forget ids older than the next scan's start (they cannot be read again), and cap."""
        floor = self._pending.start_ms if self._pending is not None else self._next_start_ms()
        heap = self._seen_heap
        while heap and (heap[0][0] < floor or len(self._seen) > self._max_seen):
            _, event_id = heapq.heappop(heap)
            self._seen.pop(event_id, None)

    def _blind(self, exc: BaseException, now: float) -> SourceBatch:
        log.warning("logs.poll.blind", source=self.name, log_group=self.log_group, error=describe_error(exc))
        return self._batch((), now, up=False, error=f"FilterLogEvents failed: {describe_error(exc)}")

    def _cursor(self) -> Cursor | None:
        if self._cursor_ms is None:
            return None
        return Cursor(source=self.name, position=json.dumps({"t_ms": self._cursor_ms}))

    def _batch(
        self, events: tuple[LogEvent, ...], now: float, *, up: bool, error: str | None = None
    ) -> SourceBatch:
        lag = max(0.0, now - self._read_through_ms / 1000.0)
        health = SourceHealth(source=self.name, up=up, checked_at=now, error=error, lag_s=lag)
        return SourceBatch(source=self.name, logs=events, metrics=(), cursor=self._cursor(), health=health)


def _max_opt(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)
