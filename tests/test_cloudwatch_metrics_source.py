"""CloudWatchMetricsSource against a real moto server over HTTP (and a fake for pagination).

What moto 5.2's GetMetricData does (checked by hand against its source and over HTTP):
- StartTime and EndTime are truncated to whole seconds; datapoints are selected with
  start <= t < end, and buckets are laid out from StartTime in steps of Period, each stamped
  with its start. So buckets line up with epoch multiples of the period only if StartTime
  does: the source aligns both ends to the period (with Period=1, whole seconds).
- StorageResolution is accepted and ignored (1-second buckets work either way).
- The default ScanBy is TimestampDescending; the source asks for TimestampAscending.
- It never returns NextToken and does not enforce the 500-queries-per-call limit, so the
  batching is checked by counting calls, and NextToken merging with a small fake.
- With Dimensions given, a query matches on name and dimensions but not namespace, and the
  cost is queries x buckets x datapoints in the window (pure Python), so tests use unique
  job names and short lookbacks.
"""

from __future__ import annotations

import math
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.exceptions import ClientError

from supervisor.sources.aws import ApiCallCounter, AwsSettings, make_client
from supervisor.sources.base import Source
from supervisor.sources.cloudwatch_metrics import DEFAULT_STATS, CloudWatchMetricsSource
from tests.conftest import free_port

pytestmark = pytest.mark.integration

NS = "ftsup/test"


def no_sleep(_: float) -> None:
    pass


@pytest.fixture
def settings(moto_endpoint: str) -> AwsSettings:
    return AwsSettings(
        endpoint_url=moto_endpoint,
        connect_timeout_s=1.0,
        read_timeout_s=10.0,
        max_attempts=3,
        retry_budget_s=5.0,
    )


@pytest.fixture
def cw(settings: AwsSettings) -> Any:
    return make_client("cloudwatch", settings)


@pytest.fixture
def job() -> str:
    return f"job-{uuid.uuid4().hex[:10]}"


def datum(job: str, node: str, metric: str, ts: float, value: float) -> dict[str, Any]:
    return {
        "MetricName": metric,
        "Dimensions": [{"Name": "Job", "Value": job}, {"Name": "Node", "Value": node}],
        "Timestamp": datetime.fromtimestamp(ts, tz=UTC),
        "Value": value,
        "StorageResolution": 1,
    }


def publish(cw: Any, data: list[dict[str, Any]]) -> None:
    for i in range(0, len(data), 1000):  # PutMetricData takes at most 1,000 metrics per request
        cw.put_metric_data(Namespace=NS, MetricData=data[i : i + 1000])


def make_source(
    cw: Any, job: str, nodes: list[str], settings: AwsSettings, **kw: Any
) -> CloudWatchMetricsSource:
    kw.setdefault("sleep", no_sleep)
    return CloudWatchMetricsSource(cw, NS, job, lambda: nodes, settings, **kw)


def test_is_a_source(cw: Any, job: str, settings: AwsSettings) -> None:
    src: Source = make_source(cw, job, ["n0"], settings)
    assert src.name == "metrics"


def test_samples_per_node_and_metric_then_only_newer_ones(cw: Any, job: str, settings: AwsSettings) -> None:
    nodes = ["node-0", "node-1", "node-2"]
    t0 = math.floor(time.time()) - 20
    data = []
    for n, node in enumerate(nodes):
        for k in range(3):
            ts = t0 + k + 0.25
            data += [
                datum(job, node, "step", ts, 100 * n + k),
                datum(job, node, "step", ts + 0.5, 100 * n + k + 0.5),  # Maximum of the second
                datum(job, node, "loss", ts, 1.0),
                datum(job, node, "loss", ts + 0.5, 3.0),  # Average of the second: 2.0
                datum(job, node, "heartbeat", ts, ts),
                datum(job, node, "loss_nonfinite", ts, 0.0),
                datum(job, node, "tokens_per_s", ts, 5000.0),
                datum(job, node, "step_time_s", ts, 0.5),
            ]
    publish(cw, data)
    counter = ApiCallCounter()
    src = make_source(cw, job, nodes, settings, lookback_s=30.0, counter=counter)

    b1 = src.poll()
    assert b1.health.up, b1.health.error
    assert b1.cursor is None
    assert len(b1.metrics) == 3 * 6 * 3
    by = {(s.node, s.metric, s.timestamp): s.value for s in b1.metrics}
    assert by[("node-1", "step", t0 + 2)] == 102.5
    assert by[("node-2", "loss", t0)] == 2.0
    assert all(s.timestamp == int(s.timestamp) for s in b1.metrics)  # 1-second buckets
    assert [s.timestamp for s in b1.metrics] == sorted(s.timestamp for s in b1.metrics)
    assert counter.get("GetMetricData") == 1
    assert b1.health.lag_s is not None and 15 <= b1.health.lag_s <= 60

    b2 = src.poll()
    assert b2.health.up
    assert b2.metrics == ()

    t1 = math.floor(time.time()) - 3
    publish(
        cw, [datum(job, "node-0", "step", t1 + 0.1, 7.0), datum(job, "node-2", "heartbeat", t1 + 0.2, 1.0)]
    )
    b3 = src.poll()
    assert sorted((s.node, s.metric, s.timestamp, s.value) for s in b3.metrics) == [
        ("node-0", "step", t1, 7.0),
        ("node-2", "heartbeat", t1, 1.0),
    ]


def test_the_bucket_still_filling_is_not_emitted_until_complete(
    cw: Any, job: str, settings: AwsSettings
) -> None:
    now = [math.floor(time.time()) - 10 + 0.6]
    second = math.floor(now[0])
    publish(cw, [datum(job, "n0", "step", second + 0.1, 1.0)])
    src = make_source(
        cw, job, ["n0"], settings, stats={"step": "Maximum"}, lookback_s=20, clock=lambda: now[0]
    )
    assert src.poll().metrics == ()  # [second, second+1) is not over yet on the source's clock
    publish(cw, [datum(job, "n0", "step", second + 0.5, 2.0)])
    now[0] += 1.0
    b = src.poll()
    assert [(s.timestamp, s.value) for s in b.metrics] == [(second, 2.0)]  # the complete aggregate


def test_more_than_500_queries_are_batched(cw: Any, job: str, settings: AwsSettings) -> None:
    nodes = [f"node-{i:03d}" for i in range(90)]
    ts = math.floor(time.time()) - 4 + 0.5
    publish(
        cw,
        [datum(job, node, metric, ts, float(i)) for i, node in enumerate(nodes) for metric in DEFAULT_STATS],
    )
    counter = ApiCallCounter()
    src = make_source(cw, job, nodes, settings, lookback_s=8.0, counter=counter)
    b = src.poll()
    assert b.health.up, b.health.error
    assert counter.get("GetMetricData") == 2  # 540 queries: 500 + 40
    assert len(b.metrics) == 90 * 6
    assert {(s.node, s.metric) for s in b.metrics} == {(n, m) for n in nodes for m in DEFAULT_STATS}
    assert all(s.value == float(nodes.index(s.node)) for s in b.metrics)


def test_blind_endpoint_is_up_false_then_recovers_without_loss(
    cw: Any, job: str, settings: AwsSettings
) -> None:
    ts = math.floor(time.time()) - 5 + 0.5
    publish(cw, [datum(job, "n0", "heartbeat", ts, 1.0)])
    src = make_source(cw, job, ["n0"], settings, lookback_s=30.0)
    dead = AwsSettings(
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        connect_timeout_s=0.5,
        max_attempts=2,
        retry_budget_s=1.0,
    )
    src.client = make_client("cloudwatch", dead)
    b = src.poll()
    assert not b.health.up
    assert b.health.error and "GetMetricData failed" in b.health.error
    assert b.metrics == ()
    src.client = cw
    b2 = src.poll()
    assert b2.health.up
    assert [(s.node, s.metric, s.value) for s in b2.metrics] == [("n0", "heartbeat", 1.0)]


class Throttled:
    def __init__(self, real: Any, n: int) -> None:
        self.real = real
        self.n = n

    def get_metric_data(self, **kw: Any) -> Any:
        if self.n > 0:
            self.n -= 1
            raise ClientError(
                {
                    "Error": {"Code": "Throttling", "Message": "Rate exceeded"},
                    "ResponseMetadata": {"HTTPStatusCode": 400},
                },
                "GetMetricData",
            )
        return self.real.get_metric_data(**kw)


def test_throttling_is_retried_then_blind_beyond_budget(cw: Any, job: str, settings: AwsSettings) -> None:
    ts = math.floor(time.time()) - 5 + 0.5
    publish(cw, [datum(job, "n0", "step", ts, 3.0)])
    ok = make_source(Throttled(cw, 2), job, ["n0"], settings, stats={"step": "Maximum"}, lookback_s=30).poll()
    assert ok.health.up and [s.value for s in ok.metrics] == [3.0]
    blind = make_source(
        Throttled(cw, 99), job, ["n0"], settings, stats={"step": "Maximum"}, lookback_s=30
    ).poll()
    assert not blind.health.up and blind.metrics == ()
    assert blind.health.error and "Throttling" in blind.health.error


class PagedMetricsFake:
    """GetMetricData that splits one series over two pages (real CloudWatch does this past
    100,800 datapoints per call; moto never paginates)."""

    def __init__(self, t: float, status: str = "Complete") -> None:
        self.t = t
        self.status = status
        self.calls: list[dict[str, Any]] = []

    def get_metric_data(self, **kw: Any) -> Any:
        self.calls.append(kw)
        ids = [q["Id"] for q in kw["MetricDataQueries"]]
        stamp = [datetime.fromtimestamp(self.t + i, tz=UTC) for i in range(4)]
        if "NextToken" not in kw:
            results = [
                {"Id": ids[0], "Timestamps": stamp[:2], "Values": [1.0, 2.0], "StatusCode": "PartialData"}
            ]
            return {"MetricDataResults": results, "NextToken": "p2", "Messages": []}
        results = [
            {"Id": ids[0], "Timestamps": stamp[2:], "Values": [3.0, 4.0], "StatusCode": self.status},
            {"Id": ids[1], "Timestamps": stamp[:1], "Values": [9.0], "StatusCode": self.status},
        ]
        return {"MetricDataResults": results, "Messages": []}


def test_next_token_pages_are_merged_per_series() -> None:
    t = 1_800_000_000.0
    fake = PagedMetricsFake(t)
    src = CloudWatchMetricsSource(
        fake, NS, "j", lambda: ["a", "b"], AwsSettings(), stats={"step": "Maximum"}, clock=lambda: t + 30
    )
    b = src.poll()
    assert b.health.up
    assert [(s.node, s.timestamp, s.value) for s in b.metrics] == [
        ("a", t, 1.0),
        ("b", t, 9.0),
        ("a", t + 1, 2.0),
        ("a", t + 2, 3.0),
        ("a", t + 3, 4.0),
    ]
    assert len(fake.calls) == 2
    assert fake.calls[1]["NextToken"] == "p2"
    q = fake.calls[0]["MetricDataQueries"][1]
    assert q["Id"] == "m1"
    assert q["MetricStat"]["Metric"]["Dimensions"] == [
        {"Name": "Job", "Value": "j"},
        {"Name": "Node", "Value": "b"},
    ]
    assert fake.calls[0]["StartTime"] == datetime.fromtimestamp(t + 30 - 60, tz=UTC)
    assert fake.calls[0]["EndTime"] == datetime.fromtimestamp(t + 30, tz=UTC)


def test_a_failed_query_is_blindness_not_an_empty_series() -> None:
    t = 1_800_000_000.0
    src = CloudWatchMetricsSource(
        PagedMetricsFake(t, status="Forbidden"),
        NS,
        "j",
        lambda: ["a", "b"],
        AwsSettings(),
        stats={"step": "Maximum"},
        clock=lambda: t + 30,
    )
    b = src.poll()
    assert not b.health.up
    assert b.metrics == ()
    assert b.health.error and "Forbidden" in b.health.error
