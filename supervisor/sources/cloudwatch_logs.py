"""CloudWatch Logs source: FilterLogEvents over the job's whole log group, a tail scan every poll
plus a periodic late sweep.

Contract (see DESIGN.md, rules 1, 3 and 4):
- One scan covers every node stream of the group (one stream per node): the account-wide
  FilterLogEvents quota is 5-25 calls/s, so streams are never polled one by one. With a
  `filter_pattern` (the daemon derives one from the policies, supervisor.classify.prefilter)
  CloudWatch returns only failure candidates, so a scan is usually one page whatever the node count.
- Windows are in the daemon's clock (node clocks are assumed NTP-synced, within `tail_overlap_s`).
  FilterLogEvents selects on event time, not ingestion time, so an event that becomes searchable
  late lands behind windows already read. Two scans cover it:
  * the **tail** scan, every poll: from `tail_overlap_s` (default 5 s, a CloudWatch agent's flush
    interval) before the end of the last complete tail scan, up to now. An event searchable within
    `tail_overlap_s` of its timestamp is read by the first tail scan after that. The overlap is
    re-read every poll, so it is kept short: with a 1 s poll a 5 s overlap reads each passing event
    about 6 times (de-duplicated), which costs pages only when many events pass the filter.
  * the **late sweep**, every `sweep_interval_s` (default 15 s): from `overlap_s` before the end of
    the last complete sweep up to the end of the last complete tail scan. An event searchable
    later than `tail_overlap_s` but within `overlap_s` of its timestamp is read by the first sweep
    that starts after it became searchable: **at most `sweep_interval_s` + one poll interval later**
    than a tail scan would have read it (plus the time to page through that sweep).
  An event searchable more than `overlap_s` after its timestamp can be missed: size `overlap_s`
  above the worst ingestion delay you expect. Every event read is emitted once (de-duplication on
  eventId, see below).
- A scan advances state only when paginated to its end: the tail's end becomes the read-through
  point, a sweep's end the swept-through point. A scan cut off by `max_pages_per_poll` (shared by
  the tail and a sweep; the tail goes first, a sweep takes at most a tenth of it per poll so that
  a big sweep never holds up the next tail scan) keeps its nextToken and continues at the next poll
  (same query); the events read so far are emitted at once. Pages can be empty and still carry
  nextToken: pagination continues.
- Pages are converted to `LogEvent`s as they arrive (no raw page is kept). De-duplication memory:
  the eventIds emitted whose time is inside a window a later scan can still read (the tail's last
  `tail_overlap_s`, the sweep's `overlap_s` + `sweep_interval_s`), stored compactly (decimal ids as
  ints, in 1-second buckets dropped whole once no scan can reach them) and capped at
  `max_seen_ids` (beyond it the oldest buckets are forgotten, which can only cause a duplicate,
  never a loss). Memory is therefore flat over time: it follows the event rate, not the run length.
- `health.lag_s` is now minus the end of the last complete tail scan (the newest moment the group
  has been read through), so it grows while the source is blind or behind on a backlog, not merely
  because the job is quiet.
- Any failure after retries gives `SourceHealth(up=False)`, no events, and leaves the read-through
  and swept-through points, pending scans and de-duplication memory as they were (the failed
  poll's pages are read again).
- A log group that does not exist yet (job not started writing) is up with no events and a
  note in `health.error`.
- The cursor (`{"t_ms": ...}`, None until a tail scan completed) is the swept-through point (the
  read-through point when no sweep runs), never later than what the next tail scan and the next
  sweep would read from plus `overlap_s`: every event with an earlier time that was searchable
  when read has been emitted. After `restore()` every scan starts `overlap_s` before it and the
  de-duplication memory is empty, so that window is emitted again: delivery is at-least-once
  across restarts; downstream stages de-duplicate on `LogEvent.event_id`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from supervisor.sources.aws import ApiCallCounter, AwsSettings, call_with_retry, describe_error, error_code
from supervisor.vocabulary import Cursor, LogEvent, SourceBatch, SourceHealth

if TYPE_CHECKING:
    from mypy_boto3_logs.type_defs import FilterLogEventsRequestTypeDef, FilterLogEventsResponseTypeDef
    from typing_extensions import Unpack

__all__ = ["CloudWatchLogsSource", "FilterLogEventsClient"]

log = structlog.get_logger(__name__)

TAIL = "tail"
SWEEP = "sweep"


class FilterLogEventsClient(Protocol):
    """The one call this source makes; a boto3 "logs" client satisfies it."""

    def filter_log_events(
        self, **kwargs: Unpack[FilterLogEventsRequestTypeDef]
    ) -> FilterLogEventsResponseTypeDef: ...


@dataclass(frozen=True, slots=True)
class _Scan:
    """One FilterLogEvents query, possibly spread over several polls."""

    kind: str  # TAIL or SWEEP
    start_ms: int
    end_ms: int
    token: str | None = None
    pages: int = 0


class _SeenIds:
    """The eventIds emitted, by 1-second bucket of event time (see the module docstring)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.count = 0
        self._buckets: dict[int, set[int | str]] = {}

    @staticmethod
    def key(event_id: str) -> int | str:
        # CloudWatch's eventIds are 56-digit decimals: an int is half the size of the str. Ids with
        # a leading zero stay strings so that "07" and "7" never collide.
        if event_id.isdigit() and (event_id[0] != "0" or len(event_id) == 1):
            return int(event_id)
        return event_id

    def __contains__(self, item: tuple[int, int | str]) -> bool:
        bucket = self._buckets.get(item[0] // 1000)
        return bucket is not None and item[1] in bucket

    def add_all(self, items: Sequence[tuple[int, int | str]]) -> None:
        for ts_ms, key in items:
            bucket = self._buckets.setdefault(ts_ms // 1000, set())
            if key not in bucket:
                bucket.add(key)
                self.count += 1

    def prune(self, floor_ms: int) -> None:
        """Forget buckets wholly before `floor_ms`, then the oldest ones beyond the cap."""
        for sec in sorted(self._buckets):
            if (sec + 1) * 1000 <= floor_ms or self.count > self.cap:
                self.count -= len(self._buckets.pop(sec))
            else:
                break

    def clear(self) -> None:
        self._buckets.clear()
        self.count = 0


class CloudWatchLogsSource:
    """A `Source` reading one log group (one stream per node) through FilterLogEvents.

    `client` is public and may be replaced between polls (e.g. to point at a new endpoint);
    the scan state and de-duplication memory are kept. Not thread-safe: one thread polls.
    """

    def __init__(
        self,
        client: FilterLogEventsClient,
        log_group: str,
        settings: AwsSettings,
        *,
        name: str = "logs",
        overlap_s: float = 30.0,
        tail_overlap_s: float = 5.0,
        sweep_interval_s: float = 15.0,
        max_pages_per_poll: int = 50,
        start_time: float | None = None,
        clock: Callable[[], float] = time.time,
        counter: ApiCallCounter | None = None,
        filter_pattern: str | None = None,
        page_limit: int | None = None,
        max_seen_ids: int = 1_000_000,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """See the module docstring for the contract.

        overlap_s: the longest ingestion delay covered (the late sweep's reach back).
        tail_overlap_s: the tail scan's overlap (capped at overlap_s); with tail_overlap_s equal to
            overlap_s no sweep is needed and none runs.
        sweep_interval_s: how often the late sweep runs (the extra delay of a late event).
        start_time: event time (s) to read from before any cursor exists; default
            `clock() - overlap_s` at construction.
        filter_pattern: passed as `filterPattern` (server-side filtering) when set.
        page_limit: passed as `limit` (events per page, <= 10,000) when set.
        max_seen_ids: hard cap on the de-duplication memory (see the module docstring).
        """
        if overlap_s < 0 or tail_overlap_s < 0:
            raise ValueError("overlap_s and tail_overlap_s must be >= 0")
        if sweep_interval_s <= 0:
            raise ValueError("sweep_interval_s must be > 0")
        if max_pages_per_poll < 1:
            raise ValueError("max_pages_per_poll must be >= 1")
        if page_limit is not None and not 1 <= page_limit <= 10_000:
            raise ValueError("page_limit must be in 1..10000")
        if max_seen_ids < 1:
            raise ValueError("max_seen_ids must be >= 1")
        self.client = client
        self.log_group = log_group
        self.settings = settings
        self.name = name
        self.filter_pattern = filter_pattern
        self.page_limit = page_limit
        self._overlap_ms = round(overlap_s * 1000)
        self._tail_ms = min(round(tail_overlap_s * 1000), self._overlap_ms)
        self._sweep_every_s = sweep_interval_s
        self._max_pages = max_pages_per_poll
        self._sweep_pages = max(1, max_pages_per_poll // 10)
        self._clock = clock
        self._counter = counter
        self._sleep = sleep
        self._seen = _SeenIds(max_seen_ids)
        self._nodes: dict[str, str] = {}  # one str per stream name, shared by its events
        start = clock() - overlap_s if start_time is None else start_time
        self._reset(max(0, int(start * 1000)))

    def _reset(self, floor_ms: int) -> None:
        self._floor_ms = floor_ms  # nothing before it is ever asked for
        self._read_through_ms = floor_ms  # end of the last complete tail scan
        self._swept_through_ms = floor_ms  # end of the last complete sweep
        self._tail: _Scan | None = None
        self._sweep: _Scan | None = None
        self._next_sweep_at = self._clock() + self._sweep_every_s
        self._complete = False  # a tail scan has completed (a cursor exists)
        self._seen.clear()

    @property
    def sweeps(self) -> bool:
        """Whether late sweeps run (overlap_s beyond tail_overlap_s)."""
        return self._overlap_ms > self._tail_ms

    @property
    def seen_ids(self) -> int:
        """Event ids held by the de-duplication memory (observability, benchmarks)."""
        return self._seen.count

    # ------------------------------------------------------------------ Source protocol

    def restore(self, cursor: Cursor) -> None:
        """Resume from a cursor this source produced: every scan starts `overlap_s` before it.

        Drops pending scans and the de-duplication memory (see module docstring).
        Raises ValueError for a cursor of another source or a malformed position.
        """
        if cursor.source != self.name:
            raise ValueError(f"cursor of source {cursor.source!r} given to {self.name!r}")
        try:
            t_ms = json.loads(cursor.position)["t_ms"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"malformed logs cursor position: {cursor.position!r}") from exc
        if not isinstance(t_ms, int) or isinstance(t_ms, bool):
            raise ValueError(f"malformed logs cursor position: {cursor.position!r}")
        self._reset(max(0, t_ms - self._overlap_ms))

    def poll(self) -> SourceBatch:
        """Read what is new in the log group; never raises for an outside failure."""
        now = self._clock()
        now_ms = int(now * 1000)
        fresh: list[LogEvent] = []
        taken: list[tuple[int, int | str]] = []
        budget = self._max_pages
        tail = self._tail or _Scan(TAIL, max(self._floor_ms, self._read_through_ms - self._tail_ms), now_ms)
        sweep = self._sweep
        try:
            tail_done = False
            behind = tail.end_ms <= tail.start_ms  # our clock is behind the last scan: nothing yet
            if not behind:
                tail, tail_done, used = self._run(tail, budget, fresh, taken)
                budget -= used
            if sweep is None and self._sweep_due(now, tail_done or behind):
                end = self._read_through_ms if not tail_done else tail.end_ms
                start = max(self._floor_ms, self._swept_through_ms - self._overlap_ms)
                sweep = _Scan(SWEEP, start, end) if end > start else None
                # The cadence counts from each sweep's start: a long sweep does not push the next.
                self._next_sweep_at = now + self._sweep_every_s
            sweep_done = False
            if sweep is not None and budget > 0:
                # A big sweep spreads over several polls so that the next tail scan is not held up.
                sweep, sweep_done, _ = self._run(sweep, min(budget, self._sweep_pages), fresh, taken)
        except ClientError as exc:
            if error_code(exc) == "ResourceNotFoundException":
                self._tail = self._sweep = None
                note = f"log group {self.log_group!r} does not exist yet (no events): {describe_error(exc)}"
                return self._batch((), now, up=True, error=note)
            return self._blind(exc, now)
        except (BotoCoreError, OSError) as exc:
            return self._blind(exc, now)
        except Exception as exc:  # an unexpected failure must still read as blindness
            log.exception("logs.poll.unexpected", source=self.name, log_group=self.log_group)
            return self._blind(exc, now)

        # Success: commit what this poll read.
        self._seen.add_all(taken)
        if tail_done:
            self._tail = None
            self._read_through_ms = max(self._read_through_ms, tail.end_ms)
            self._complete = True
            if not self.sweeps:
                self._swept_through_ms = self._read_through_ms
        elif not behind:
            self._tail = tail
            log.info("logs.scan.continues", source=self.name, kind=TAIL, pages=tail.pages)
        if sweep is not None and sweep_done:
            self._sweep = None
            self._swept_through_ms = max(self._swept_through_ms, sweep.end_ms)
        else:
            self._sweep = sweep
        self._seen.prune(self._prune_floor())
        fresh.sort(key=lambda ev: (ev.timestamp, ev.event_id))
        return self._batch(tuple(fresh), now, up=True)

    # ------------------------------------------------------------------ internals

    def _sweep_due(self, now: float, tail_current: bool) -> bool:
        return self.sweeps and tail_current and self._complete and now >= self._next_sweep_at

    def _run(
        self, scan: _Scan, budget: int, fresh: list[LogEvent], taken: list[tuple[int, int | str]]
    ) -> tuple[_Scan, bool, int]:
        """Page `scan` for at most `budget` pages, converting events as they arrive.

        Returns the scan as far as it got, whether it is complete, and the pages used. Raises what
        the client raises after retries (the caller discards this poll's events then)."""
        used = 0
        seen = self._seen
        this_poll = {key for _, key in taken}
        nodes = self._nodes
        while used < budget:
            resp = self._fetch(scan)
            used += 1
            for e in resp.get("events", ()):
                event_id = e.get("eventId")
                ts = e.get("timestamp")
                if not event_id or ts is None:
                    continue
                ts_ms = int(ts)
                key = _SeenIds.key(event_id)
                if key in this_poll or (ts_ms, key) in seen:
                    continue
                this_poll.add(key)
                taken.append((ts_ms, key))
                stream = str(e.get("logStreamName", ""))
                node = nodes.setdefault(stream, stream)
                ingested = e.get("ingestionTime")
                fresh.append(
                    LogEvent(
                        event_id=event_id,
                        node=node,
                        timestamp=ts_ms / 1000.0,
                        text=str(e.get("message", "")),
                        ingested=int(ingested) / 1000.0 if ingested is not None else None,
                    )
                )
            token = resp.get("nextToken")
            scan = replace(scan, token=token, pages=scan.pages + 1)
            if not token:
                return scan, True, used
        return scan, False, used

    def _prune_floor(self) -> int:
        """The earliest event time any later scan can read: ids before it are never needed again."""
        starts = [max(self._floor_ms, self._read_through_ms - self._tail_ms)]
        if self.sweeps:
            starts.append(max(self._floor_ms, self._swept_through_ms - self._overlap_ms))
        starts += [s.start_ms for s in (self._tail, self._sweep) if s is not None]
        return min(starts)

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

    def _blind(self, exc: BaseException, now: float) -> SourceBatch:
        log.warning("logs.poll.blind", source=self.name, log_group=self.log_group, error=describe_error(exc))
        return self._batch((), now, up=False, error=f"FilterLogEvents failed: {describe_error(exc)}")

    def _cursor(self) -> Cursor | None:
        """The swept-through point, bounded so that a restart (every scan `overlap_s` before it)
        re-reads at least what the next tail scan and the next sweep would have read."""
        if not self._complete:
            return None
        t_ms = self._read_through_ms
        if self.sweeps:
            swept = max(self._swept_through_ms, self._floor_ms + self._overlap_ms)
            t_ms = min(t_ms, swept)
        return Cursor(source=self.name, position=json.dumps({"t_ms": t_ms}))

    def _batch(
        self, events: tuple[LogEvent, ...], now: float, *, up: bool, error: str | None = None
    ) -> SourceBatch:
        lag = max(0.0, now - self._read_through_ms / 1000.0)
        health = SourceHealth(source=self.name, up=up, checked_at=now, error=error, lag_s=lag)
        return SourceBatch(source=self.name, logs=events, metrics=(), cursor=self._cursor(), health=health)
