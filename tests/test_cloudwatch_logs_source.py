"""CloudWatchLogsSource against a real moto server over HTTP (and one hand-written fake).

The hazards: late events behind the cursor, pagination (including empty pages that carry a
token), restarts from a saved cursor, and blindness (unreachable endpoint, throttling) that
must read as `up=False` without losing anything once the endpoint is back.
"""

from __future__ import annotations

import json
import logging
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
    assert json.loads(batch.cursor.position)["t_ms"] == round(max(e.timestamp for e in batch.logs) * 1000)

    again = src.poll()
    assert again.health.up
    assert again.logs == ()  # the overlap re-read is de-duplicated
    assert again.cursor == batch.cursor


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


def test_late_event_within_overlap_is_read_once(logs: Any, group: str, settings: AwsSettings) -> None:
    t = now_ms() - 5_000
    put(logs, group, "node-0", [(t, "on time")])
    src = source(logs, group, settings, overlap_s=30.0)
    first = src.poll()
    assert texts(first) == ["on time"]
    assert first.cursor is not None

    # Arrives now, but stamped 10 s before the newest event already read (behind the cursor).
    put(logs, group, "node-1", [(t - 10_000, "late but within overlap")])
    second = src.poll()
    assert texts(second) == ["late but within overlap"]
    assert second.logs[0].node == "node-1"
    assert second.cursor == first.cursor  # the cursor is a high-water mark: it does not go back
    assert src.poll().logs == ()


def test_event_later_than_the_overlap_is_missed_so_size_overlap_for_ingestion_delay(
    logs: Any, group: str, settings: AwsSettings
) -> None:
    t = now_ms() - 5_000
    put(logs, group, "node-0", [(t, "on time")])
    src = source(logs, group, settings, overlap_s=2.0)
    assert texts(src.poll()) == ["on time"]
    put(logs, group, "node-0", [(t - 10_000, "too late")])
    assert src.poll().logs == ()


def test_restore_from_saved_cursor_reads_what_came_after(
    logs: Any, group: str, settings: AwsSettings
) -> None:
    t = now_ms() - 60_000
    put(logs, group, "node-0", [(t + i * 5000, f"before {i}") for i in range(5)])  # 5 s apart
    first = source(logs, group, settings, overlap_s=2.0)
    b1 = first.poll()
    assert len(b1.logs) == 5
    saved = b1.cursor
    assert saved is not None

    put(logs, group, "node-1", [(t + 30_000 + i, f"after {i}") for i in range(3)])
    fresh = source(logs, group, settings, overlap_s=2.0, start_time=time.time())  # start_time is overridden
    fresh.restore(saved)
    b2 = fresh.poll()
    got = texts(b2)
    assert [m for m in got if m.startswith("after")] == ["after 0", "after 1", "after 2"]
    # At-least-once across restarts: only the overlap window before the cursor is re-read.
    assert [m for m in got if m.startswith("before")] == ["before 4"]
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
    put(logs, group, "node-1", [(t + 1000, "during outage")])
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
    assert b.cursor == Cursor("logs", json.dumps({"t_ms": t + 5}))


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
    """A minimal FilterLogEvents over a list (one page), recording each query's window."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.events = events
        self.calls: list[dict[str, Any]] = []

    def filter_log_events(self, **kw: Any) -> Any:
        self.calls.append(kw)
        lo, hi = kw["startTime"], kw["endTime"]
        return {"events": [e for e in self.events if lo <= e["timestamp"] <= hi]}


def test_quiet_group_keeps_the_scan_window_bounded_and_lag_honest() -> None:
    # The cursor follows events; a quiet group (or a rarely matching filter_pattern) must not
    # make every scan re-read from the last event ever seen.
    t = 1_800_000_000_000
    fake = InMemoryLogs([ev(1, t)])
    clock = [(t + 1_000_000) / 1000]  # the only event is 1,000 s old
    src = CloudWatchLogsSource(
        fake,
        "g",
        AwsSettings(),
        clock=lambda: clock[0],
        start_time=(t - 1) / 1000,
        overlap_s=30,
        max_rescan_s=60,
        sleep=no_sleep,
    )
    b1 = src.poll()
    assert [e.event_id for e in b1.logs] == ["id1"]
    assert b1.cursor == Cursor("logs", json.dumps({"t_ms": t}))
    assert b1.health.lag_s == 0.0
    clock[0] += 10
    b2 = src.poll()
    assert b2.logs == ()
    assert fake.calls[-1]["startTime"] == t + 1_000_000 - 60_000  # not t - 30 s
    assert b2.health.lag_s == 0.0  # read through now: quiet is not lag (the last line is 1,010 s old)
    with pytest.raises(ValueError):
        CloudWatchLogsSource(fake, "g", AwsSettings(), overlap_s=30, max_rescan_s=10)
