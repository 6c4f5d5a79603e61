"""CloudWatchLogsSource against a real moto server over HTTP (and one hand-written fake).

The hazards: late events behind the cursor, pagination (including empty pages that carry a
token), restarts from a saved cursor, and blindness (unreachable endpoint, throttling) that
must read as `up=False` without losing anything once the endpoint is back.
"""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from collections import Counter
from typing import Any

import pytest
from botocore.exceptions import ClientError

from supervisor.local_cloudwatch import EmbeddedCloudWatch
from supervisor.sources.aws import ApiCallCounter, AwsSettings, make_client
from supervisor.sources.base import Source
from supervisor.sources.cloudwatch_logs import CloudWatchLogsSource
from supervisor.vocabulary import Cursor, LogEvent, SourceBatch
from tests.conftest import free_port

pytestmark = pytest.mark.integration


def no_sleep(_: float) -> None:
    pass


@pytest.fixture
def settings(moto_endpoint: str) -> AwsSettings:
    return AwsSettings(
        endpoint_url=moto_endpoint,
        connect_timeout_s=1.0,
        read_timeout_s=5.0,
        max_attempts=4,
        retry_budget_s=5.0,
    )


@pytest.fixture
def logs(settings: AwsSettings) -> Any:
    return make_client("logs", settings)


@pytest.fixture
def group(logs: Any) -> str:
    name = f"/ftsup/test/{uuid.uuid4().hex[:12]}"
    logs.create_log_group(logGroupName=name)
    return name


def put(logs: Any, group: str, stream: str, events: list[tuple[int, str]], *, create: bool = True) -> None:
    if create:
        try:
            logs.create_log_stream(logGroupName=group, logStreamName=stream)
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ResourceAlreadyExistsException":
                raise
    logs.put_log_events(
        logGroupName=group,
        logStreamName=stream,
        logEvents=[{"timestamp": ts, "message": msg} for ts, msg in sorted(events)],
    )


def texts(batch: SourceBatch) -> list[str]:
    return [e.text for e in batch.logs]


def now_ms() -> int:
    return int(time.time() * 1000)


def source(logs: Any, group: str, settings: AwsSettings, **kw: Any) -> CloudWatchLogsSource:
    kw.setdefault("start_time", time.time() - 600)
    kw.setdefault("sleep", no_sleep)
    return CloudWatchLogsSource(logs, group, settings, **kw)


def test_is_a_source(logs: Any, group: str, settings: AwsSettings) -> None:
    src: Source = source(logs, group, settings)
    assert src.name == "logs"


def test_watchtower_lines_from_two_nodes_arrive_once_with_their_node(
    logs: Any, group: str, settings: AwsSettings
) -> None:
    import watchtower

    lines: dict[str, list[str]] = {"node-0": [], "node-1": []}
    for node in lines:
        handler = watchtower.CloudWatchLogHandler(
            log_group_name=group,
            log_stream_name=node,
            boto3_client=logs,
            send_interval=1,
            create_log_group=False,
        )
        logger = logging.getLogger(f"ftsup.test.{group}.{node}")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        for i in range(25):
            msg = f"{node} step {i} loss {1.0 / (i + 1):.4f}"
            lines[node].append(msg)
            logger.info(msg)
        handler.flush()
        handler.close()
        logger.removeHandler(handler)

    counter = ApiCallCounter()
    src = source(logs, group, settings, counter=counter)
    batch = src.poll()
    assert batch.health.up, batch.health.error
    got = Counter((e.node, e.text) for e in batch.logs)
    want = Counter((node, msg) for node, msgs in lines.items() for msg in msgs)
    assert got == want
    # One scan over the whole group, not one call per stream.
    assert counter.get("FilterLogEvents") == 1
    assert [(e.timestamp, e.event_id) for e in batch.logs] == sorted(
        (e.timestamp, e.event_id) for e in batch.logs
    )
    assert all(e.ingested is not None and e.ingested >= e.timestamp - 1 for e in batch.logs)
    assert batch.cursor is not None

    again = src.poll()
    assert again.health.up
    assert again.logs == ()  # the overlap re-read is de-duplicated

    # At-least-once across a restart: a source restored from the cursor emits these lines again.
    fresh = source(logs, group, settings)
    fresh.restore(batch.cursor)
    assert Counter((e.node, e.text) for e in fresh.poll().logs) == want


def test_many_pages_no_loss_no_duplicates(logs: Any, group: str, settings: AwsSettings) -> None:
    base = now_ms() - 120_000
    want: list[str] = []
    for n in range(3):
        evs = [(base + i * 10 + n, f"n{n} line {i}") for i in range(100)]
        put(logs, group, f"node-{n}", evs)
        want += [m for _, m in evs]
    counter = ApiCallCounter()
    src = source(logs, group, settings, page_limit=7, counter=counter)
    batch = src.poll()
    assert batch.health.up
    assert sorted(texts(batch)) == sorted(want)
    assert len({e.event_id for e in batch.logs}) == 300
    assert counter.get("FilterLogEvents") >= 300 // 7
    assert src.poll().logs == ()


def test_scan_cut_by_page_bound_continues_next_poll_without_advancing_cursor_early(
    logs: Any, group: str, settings: AwsSettings
) -> None:
    base = now_ms() - 60_000
    want: list[str] = []
    for n in range(4):
        evs = [(base + i * 100 + n, f"n{n} e{i}") for i in range(10)]
        put(logs, group, f"node-{n}", evs)
        want += [m for _, m in evs]
    src = source(logs, group, settings, page_limit=5, max_pages_per_poll=2)
    seen: list[str] = []
    cursors: list[Cursor | None] = []
    for _ in range(10):
        b = src.poll()
        assert b.health.up
        seen += texts(b)
        cursors.append(b.cursor)
    assert sorted(seen) == sorted(want)
    # 40 events at 5 per page = 8 pages (+ maybe a final one) = 4+ polls before the scan ends; until then
    # the cursor must not move (moto returns streams one after another, so an early cursor would skip).
    assert cursors[0] is None and cursors[2] is None
    assert cursors[-1] is not None


def test_late_event_within_tail_overlap_is_read_by_the_next_poll_once(
    logs: Any, group: str, settings: AwsSettings
) -> None:
    t = now_ms() - 5_000
    put(logs, group, "node-0", [(t, "on time")])
    src = source(logs, group, settings, overlap_s=30.0, tail_overlap_s=10.0)
    first = src.poll()
    assert texts(first) == ["on time"]
    assert first.cursor is not None

    # Arrives now, stamped 8 s ago: behind what the last scan read, within the tail's overlap.
    put(logs, group, "node-1", [(now_ms() - 8_000, "late but within the tail overlap")])
    second = src.poll()
    assert texts(second) == ["late but within the tail overlap"]
    assert second.logs[0].node == "node-1"
    assert src.poll().logs == ()


def test_late_event_within_overlap_is_delivered_once_by_the_late_sweep(
    logs: Any, group: str, settings: AwsSettings
) -> None:
    offset = [0.0]

    def clock() -> float:
        return time.time() + offset[0]

    put(logs, group, "node-0", [(now_ms() - 2_000, "on time")])
    counter = ApiCallCounter()
    src = source(
        logs, group, settings, overlap_s=30.0, tail_overlap_s=5.0, sweep_interval_s=10.0, clock=clock,
        counter=counter,
    )  # fmt: skip
    assert texts(src.poll()) == ["on time"]

    # Stamped 20 s ago, searchable only now: beyond the tail's 5 s, within the 30 s overlap.
    put(logs, group, "node-1", [(now_ms() - 20_000, "late by 20 s")])
    assert src.poll().logs == ()  # the tail does not reach back that far
    calls = counter.get("FilterLogEvents")
    offset[0] = 11.0  # the sweep is due (sweep_interval_s = 10)
    swept = src.poll()
    assert texts(swept) == ["late by 20 s"]
    assert counter.get("FilterLogEvents") == calls + 2  # one tail call, one sweep call
    for extra in (12.0, 23.0, 34.0):  # later tails and sweeps: never again
        offset[0] = extra
        assert src.poll().logs == ()


def test_event_later_than_the_overlap_is_missed_so_size_overlap_for_ingestion_delay(
    logs: Any, group: str, settings: AwsSettings
) -> None:
    t = now_ms() - 5_000
    put(logs, group, "node-0", [(t, "on time")])
    src = source(logs, group, settings, overlap_s=2.0)
    assert not src.sweeps  # tail_overlap_s is capped at overlap_s: nothing left for a sweep
    assert texts(src.poll()) == ["on time"]
    put(logs, group, "node-0", [(t - 10_000, "too late")])
    assert src.poll().logs == ()


def test_restore_from_saved_cursor_reads_what_came_after(
    logs: Any, group: str, settings: AwsSettings
) -> None:
    t = now_ms() - 60_000
    put(logs, group, "node-0", [(t + i * 5000, f"before {i}") for i in range(5)])  # 60..40 s ago
    put(logs, group, "node-2", [(now_ms() - 500, "just before the cursor")])
    first = source(logs, group, settings, overlap_s=2.0)
    b1 = first.poll()
    assert len(b1.logs) == 6
    saved = b1.cursor
    assert saved is not None
    assert json.loads(saved.position)["t_ms"] <= now_ms()

    put(logs, group, "node-1", [(now_ms() + i, f"after {i}") for i in range(3)])
    fresh = source(logs, group, settings, overlap_s=2.0, start_time=time.time())  # start_time is overridden
    fresh.restore(saved)
    b2 = fresh.poll()
    got = texts(b2)
    assert [m for m in got if m.startswith("after")] == ["after 0", "after 1", "after 2"]
    # At-least-once across restarts: only the overlap window before the cursor is re-read.
    assert "just before the cursor" in got
    assert not [m for m in got if m.startswith("before")]
    assert fresh.poll().logs == ()


def test_restore_rejects_foreign_or_malformed_cursor(logs: Any, group: str, settings: AwsSettings) -> None:
    src = source(logs, group, settings)
    with pytest.raises(ValueError):
        src.restore(Cursor(source="metrics", position='{"t_ms": 1}'))
    with pytest.raises(ValueError):
        src.restore(Cursor(source="logs", position="not json"))


def test_missing_log_group_is_up_with_a_note(logs: Any, settings: AwsSettings) -> None:
    src = source(logs, f"/ftsup/test/absent-{uuid.uuid4().hex[:8]}", settings)
    b = src.poll()
    assert b.health.up
    assert b.logs == ()
    assert b.health.error is not None and "does not exist" in b.health.error
    assert b.cursor is None


def test_server_side_filter_pattern_is_passed_through(logs: Any, group: str, settings: AwsSettings) -> None:
    t = now_ms() - 5_000
    put(
        logs,
        group,
        "node-0",
        [(t, "NVRM: Xid (PCI:0000:3b:00): 79, pid=812, GPU has fallen off the bus."), (t + 1, "step 10")],
    )
    b = source(logs, group, settings, filter_pattern='"Xid"').poll()
    assert [e.text[:9] for e in b.logs] == ["NVRM: Xid"]


def test_unreachable_endpoint_is_blind_then_nothing_lost_when_back(
    logs: Any, group: str, settings: AwsSettings
) -> None:
    t = now_ms() - 20_000
    put(logs, group, "node-0", [(t, "before outage")])
    src = source(logs, group, settings)
    b1 = src.poll()
    assert texts(b1) == ["before outage"]

    dead = AwsSettings(
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        connect_timeout_s=0.5,
        max_attempts=2,
        retry_budget_s=1.0,
    )
    src.client = make_client("logs", dead)
    put(logs, group, "node-1", [(now_ms(), "during outage")])
    b2 = src.poll()
    assert not b2.health.up
    assert b2.health.error and "FilterLogEvents failed" in b2.health.error
    assert b2.logs == ()
    assert b2.cursor == b1.cursor
    assert b1.health.lag_s is not None and b2.health.lag_s is not None
    assert b2.health.lag_s > b1.health.lag_s  # blind: the view gets staler

    src.client = logs
    b3 = src.poll()
    assert b3.health.up
    assert texts(b3) == ["during outage"]


class Throttled:
    """Wraps the real client: the first `n` calls fail with ThrottlingException."""

    def __init__(self, real: Any, n: int) -> None:
        self.real = real
        self.n = n
        self.throttled = 0

    def filter_log_events(self, **kw: Any) -> Any:
        if self.throttled < self.n:
            self.throttled += 1
            raise ClientError(
                {
                    "Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"},
                    "ResponseMetadata": {"HTTPStatusCode": 400},
                },
                "FilterLogEvents",
            )
        return self.real.filter_log_events(**kw)


def test_throttling_within_budget_is_retried(logs: Any, group: str, settings: AwsSettings) -> None:
    put(logs, group, "node-0", [(now_ms() - 1000, "hello")])
    counter = ApiCallCounter()
    client = Throttled(logs, n=3)
    b = source(client, group, settings, counter=counter).poll()
    assert b.health.up
    assert texts(b) == ["hello"]
    assert counter.get("FilterLogEvents") == 4


def test_throttling_beyond_budget_is_blind_and_loses_nothing(
    logs: Any, group: str, settings: AwsSettings
) -> None:
    put(logs, group, "node-0", [(now_ms() - 1000, "hello")])
    client = Throttled(logs, n=10)
    src = source(client, group, settings)
    b = src.poll()
    assert not b.health.up
    assert b.health.error and "ThrottlingException" in b.health.error
    assert b.logs == ()
    assert client.throttled == settings.max_attempts
    client.n = 0
    assert texts(src.poll()) == ["hello"]


class PagedFake:
    """A hand-written FilterLogEvents returning scripted pages.

    Real CloudWatch can return an empty page that still carries nextToken (it searched a
    slice of the group and found nothing); moto never does, so this fake scripts it.
    """

    def __init__(self, pages: list[dict[str, Any]]) -> None:
        self.pages = pages
        self.calls: list[dict[str, Any]] = []

    def filter_log_events(self, **kw: Any) -> Any:
        self.calls.append(kw)
        index = 0 if "nextToken" not in kw else int(kw["nextToken"])
        return self.pages[index]


def ev(i: int, ts: int, stream: str = "node-0") -> dict[str, Any]:
    return {
        "eventId": f"id{i}",
        "timestamp": ts,
        "message": f"m{i}",
        "logStreamName": stream,
        "ingestionTime": ts,
    }


def test_empty_pages_with_a_token_do_not_end_the_scan() -> None:
    t = 1_800_000_000_000
    fake = PagedFake(
        [
            {"events": [], "nextToken": "1"},
            {"events": [], "nextToken": "2"},
            {"events": [ev(2, t + 5, "node-1"), ev(1, t + 1)], "nextToken": "3"},
            {"events": [ev(3, t + 3)]},
        ]
    )
    src = CloudWatchLogsSource(
        fake, "g", AwsSettings(), clock=lambda: (t + 10_000) / 1000, start_time=t / 1000, sleep=no_sleep
    )
    b = src.poll()
    assert [e.event_id for e in b.logs] == ["id1", "id3", "id2"]  # sorted by time
    assert b.logs[0] == LogEvent("id1", "node-0", (t + 1) / 1000, "m1", (t + 1) / 1000)
    assert len(fake.calls) == 4
    # Every page is the same query; only the token changes.
    assert {(c["startTime"], c["endTime"]) for c in fake.calls} == {(t, t + 10_000)}
    assert b.cursor == Cursor("logs", json.dumps({"t_ms": t + 10_000}))  # read through the scan's end


def test_empty_pages_beyond_the_page_bound_resume_from_the_token() -> None:
    t = 1_800_000_000_000
    fake = PagedFake(
        [
            {"events": [], "nextToken": "1"},
            {"events": [], "nextToken": "2"},
            {"events": [ev(1, t + 1)]},
        ]
    )
    clock = [(t + 10_000) / 1000]
    src = CloudWatchLogsSource(
        fake,
        "g",
        AwsSettings(),
        clock=lambda: clock[0],
        start_time=t / 1000,
        max_pages_per_poll=2,
        sleep=no_sleep,
    )
    b1 = src.poll()
    assert b1.logs == () and b1.health.up and b1.cursor is None
    clock[0] += 5
    b2 = src.poll()
    assert [e.event_id for e in b2.logs] == ["id1"]
    assert fake.calls[2]["nextToken"] == "2"
    assert fake.calls[2]["endTime"] == t + 10_000  # the continued scan keeps its window


def test_embedded_cloudwatch_round_trip() -> None:
    with EmbeddedCloudWatch() as cw:
        env = cw.env()
        assert env["FTSUP_CW_ENDPOINT"] == cw.endpoint_url
        assert env["AWS_ACCESS_KEY_ID"] == "testing"
        client = cw.client("logs")
        group = f"/ftsup/embedded/{uuid.uuid4().hex[:8]}"
        client.create_log_group(logGroupName=group)
        put(client, group, "node-7", [(now_ms() - 1000, "hello from the demo")])
        b = CloudWatchLogsSource(client, group, cw.settings(), start_time=time.time() - 60).poll()
        assert [(e.node, e.text) for e in b.logs] == [("node-7", "hello from the demo")]
    assert not cw.running
    with pytest.raises(RuntimeError):
        _ = cw.endpoint_url


class InMemoryLogs:
    """FilterLogEvents over a list: an event is searchable from its `visible` time (ms) on, like an
    event CloudWatch has ingested; pages of `page` events; every query's window is recorded.

    Events are returned in (timestamp, eventId) order like CloudWatch's interleaved results; a
    query's pages are fixed when its first page is asked for (the token indexes that result)."""

    def __init__(self, clock: list[float], page: int = 10_000) -> None:
        self.clock = clock
        self.page = page
        self.events: list[dict[str, Any]] = []
        self.calls: list[dict[str, Any]] = []
        self._results: dict[str, list[dict[str, Any]]] = {}
        self.fail_next = 0

    def add(self, i: int, ts_ms: int, visible_ms: int | None = None, stream: str = "node-0") -> None:
        e = ev(i, ts_ms, stream)
        e["visible"] = ts_ms if visible_ms is None else visible_ms
        self.events.append(e)

    def filter_log_events(self, **kw: Any) -> Any:
        self.calls.append(kw)
        if self.fail_next:
            self.fail_next -= 1
            raise ClientError(
                {"Error": {"Code": "ServiceUnavailableException", "Message": "down"}}, "FilterLogEvents"
            )
        token = kw.get("nextToken")
        if token is None:
            now = self.clock[0] * 1000
            hits = [
                {k: v for k, v in e.items() if k != "visible"}
                for e in self.events
                if kw["startTime"] <= e["timestamp"] <= kw["endTime"] and e["visible"] <= now
            ]
            hits.sort(key=lambda e: (e["timestamp"], e["eventId"]))
            token = f"q{len(self._results)}:0"
            self._results[token.split(":")[0]] = hits
        qid, _, offset = token.partition(":")
        hits = self._results[qid]
        start = int(offset)
        out: dict[str, Any] = {"events": hits[start : start + self.page]}
        if start + self.page < len(hits):
            out["nextToken"] = f"{qid}:{start + self.page}"
        return out


T0 = 1_800_000_000_000


def fake_source(fake: InMemoryLogs, clock: list[float], **kw: Any) -> CloudWatchLogsSource:
    kw.setdefault("start_time", T0 / 1000)
    kw.setdefault("sleep", no_sleep)
    kw.setdefault("settings", AwsSettings(max_attempts=1, retry_budget_s=0.1))
    settings = kw.pop("settings")
    return CloudWatchLogsSource(fake, "g", settings, clock=lambda: clock[0], **kw)


def test_tail_window_stays_small_whatever_the_cursor_and_sweeps_reach_back_overlap() -> None:
    # A sparse filter pattern (or a quiet job) gives few events: the tail must not re-read from the
    # last matching event, and every scan's window is known in advance.
    clock = [T0 / 1000 + 60]
    fake = InMemoryLogs(clock)
    fake.add(1, T0 + 1000)
    src = fake_source(fake, clock, overlap_s=30, tail_overlap_s=5, sweep_interval_s=20)
    assert [e.event_id for e in src.poll().logs] == ["id1"]
    assert (fake.calls[-1]["startTime"], fake.calls[-1]["endTime"]) == (T0, T0 + 60_000)
    for _ in range(40):  # clock T0 + 61 s .. T0 + 100 s
        clock[0] += 1
        assert src.poll().logs == ()
    tails = [c for c in fake.calls[1:] if c["endTime"] - c["startTime"] == 6_000]
    sweeps = [c for c in fake.calls[1:] if c not in tails]
    assert len(tails) == 40  # [read-through - 5 s, now]: 6 s each, one call per poll
    # Every 20 s, from overlap_s before the previous sweep's end (the first: from the start).
    assert [(c["startTime"], c["endTime"]) for c in sweeps] == [
        (T0, T0 + 80_000),
        (T0 + 50_000, T0 + 100_000),
    ]
    b = src.poll()
    assert b.health.lag_s == 0.0  # quiet is not lag


def test_every_event_within_overlap_is_delivered_exactly_once_with_bounded_extra_delay() -> None:
    # 600 s of a busy job at 1 s polls; ingestion delays from 0 to 30 s (= overlap_s), some events
    # out of order: each event is emitted once, by the tail when its delay <= tail_overlap_s, else
    # by a sweep at most sweep_interval_s + one poll after it became searchable.
    rnd = random.Random(7)
    clock = [T0 / 1000]
    fake = InMemoryLogs(clock, page=50)
    overlap, tail, sweep_every = 30.0, 5.0, 15.0
    visible: dict[str, float] = {}
    for i in range(3000):
        ts = T0 + rnd.randrange(0, 560_000)
        delay = rnd.choice((0, 0, 1_000, 3_000, 5_000, rnd.randrange(0, 30_000)))
        fake.add(i, ts, ts + delay, stream=f"node-{i % 7}")
        visible[f"id{i}"] = (ts + delay) / 1000
    src = fake_source(fake, clock, overlap_s=overlap, tail_overlap_s=tail, sweep_interval_s=sweep_every)
    got: Counter[str] = Counter()
    lateness: list[float] = []
    for _ in range(660):
        clock[0] += 1.0
        b = src.poll()
        assert b.health.up
        for e in b.logs:
            got[e.event_id] += 1
            lateness.append(clock[0] - visible[e.event_id])
        assert src.seen_ids <= 3000
    assert set(got) == set(visible)
    assert max(got.values()) == 1
    assert max(lateness) <= sweep_every + 1.0 + 1e-6


def test_an_event_later_than_overlap_can_be_missed_and_nothing_else_is() -> None:
    clock = [T0 / 1000 + 40]
    fake = InMemoryLogs(clock)
    src = fake_source(fake, clock, start_time=(T0 + 35_000) / 1000, overlap_s=10, tail_overlap_s=2)
    src.poll()
    fake.add(1, T0 + 39_000, T0 + 45_000)  # 6 s late: the sweep gets it
    # 60 s late: beyond what any sweep reaches back (overlap_s + sweep_interval_s).
    fake.add(2, T0 + 38_000, T0 + 98_000)
    seen = []
    for _ in range(100):
        clock[0] += 1
        seen += [e.event_id for e in src.poll().logs]
    assert seen == ["id1"]


def test_a_failed_page_mid_scan_emits_nothing_and_loses_nothing() -> None:
    clock = [T0 / 1000 + 10]
    fake = InMemoryLogs(clock, page=2)
    for i in range(5):
        fake.add(i, T0 + 1000 + i)
    src = fake_source(fake, clock, overlap_s=30, tail_overlap_s=5)
    real = fake.filter_log_events
    calls = {"n": 0}

    def flaky(**kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:  # the second page of the first scan fails
            fake.fail_next = 1
        return real(**kw)

    fake.filter_log_events = flaky  # type: ignore[method-assign]
    b1 = src.poll()
    assert not b1.health.up and b1.logs == () and b1.cursor is None
    assert src.seen_ids == 0
    b2 = src.poll()
    assert b2.health.up
    assert [e.event_id for e in b2.logs] == [f"id{i}" for i in range(5)]
    assert src.poll().logs == ()


def test_dedupe_memory_is_flat_over_a_long_run() -> None:
    # 20 events/s for an hour of simulated time, every event searchable at once, no filter: the
    # memory holds the ids a later scan can still reach (about overlap + sweep interval), no more.
    clock = [T0 / 1000]
    fake = InMemoryLogs(clock)
    src = fake_source(fake, clock, overlap_s=30, tail_overlap_s=5, sweep_interval_s=20)
    sizes = []
    i = 0
    for sec in range(3600):
        for k in range(20):
            fake.add(i, T0 + sec * 1000 + k * 50)
            i += 1
        if sec % 60 == 0:  # keep the fake's own list short (CloudWatch's retention, not ours)
            fake.events = [e for e in fake.events if e["timestamp"] >= T0 + (sec - 120) * 1000]
        clock[0] += 1
        assert src.poll().health.up
        sizes.append(src.seen_ids)
    steady = sizes[120:]
    assert max(steady) <= 20 * (30 + 20 + 5 + 3)
    assert max(steady[-600:]) <= max(steady[:600])  # no growth with hours of logs


def test_seen_id_cap_can_only_duplicate() -> None:
    clock = [T0 / 1000 + 5]
    fake = InMemoryLogs(clock)
    for i in range(10):
        fake.add(i, T0 + 1000 * (i % 3))
    src = fake_source(fake, clock, overlap_s=30, tail_overlap_s=30, max_seen_ids=3)
    first = [e.event_id for e in src.poll().logs]
    assert sorted(first) == sorted(f"id{i}" for i in range(10))
    clock[0] += 1
    again = [e.event_id for e in src.poll().logs]
    assert set(again) <= set(first)  # duplicates of forgotten ids, nothing new, nothing lost


def test_restore_reads_overlap_before_the_cursor_and_rejects_nonsense() -> None:
    clock = [T0 / 1000 + 100]
    fake = InMemoryLogs(clock)
    src = fake_source(fake, clock, overlap_s=30, tail_overlap_s=5, sweep_interval_s=10)
    src.poll()
    src.restore(Cursor("logs", json.dumps({"t_ms": T0 + 90_000})))
    fake.calls.clear()
    src.poll()
    assert fake.calls[0]["startTime"] == T0 + 60_000
    with pytest.raises(ValueError):
        src.restore(Cursor("logs", json.dumps({"t_ms": True})))
    with pytest.raises(ValueError):
        CloudWatchLogsSource(fake, "g", AwsSettings(), sweep_interval_s=0)


def test_derived_filter_pattern_is_accepted_by_moto_which_returns_a_superset(
    logs: Any, group: str, settings: AwsSettings
) -> None:
    # moto does not implement regex filter patterns: it returns every event for them (a superset,
    # so correct; the savings are measured with prefilter.cloudwatch_matches in bench/scale.py).
    from supervisor.classify.policy import load_policies
    from supervisor.classify.prefilter import cloudwatch_matches, derive_filter_pattern
    from supervisor.config import default_policy_dir

    d = derive_filter_pattern(load_policies([default_policy_dir()]), include_step=False)
    assert d.pattern is not None
    t = now_ms() - 5_000
    lines = [
        "NVRM: Xid (PCI:0000:3b:00): 79, pid=812, name=python, GPU has fallen off the bus.",
        '{"event": "step", "step": 10, "loss": 2.1}',
    ]
    put(logs, group, "node-0", [(t + i, m) for i, m in enumerate(lines)])
    b = source(logs, group, settings, filter_pattern=d.pattern).poll()
    assert b.health.up
    assert texts(b) == lines  # moto: everything
    assert [m for m in lines if cloudwatch_matches(d.pattern, m)] == lines[:1]  # CloudWatch: the Xid line
