"""CloudWatch Metrics source: the job's per-node series through batched GetMetricData.

Contract:
- Series are `(node, metric)` with dimensions `Job=<job>, Node=<node>` in `namespace` (what
  the trainer publishes), one MetricStat query each, aggregated by the statistic given in
  `stats` over `period_s`-second buckets. `nodes()` is called at every poll, so membership
  changes (a cordoned node, a new spare) are followed.
- Each poll reads the window [now - lookback_s, now) with at most 500 queries per call
  (the GetMetricData limit: 1,000 nodes x 6 metrics = 12 calls) and follows NextToken.
- The window is aligned to whole periods and ends at the start of the current period
  (minus `settle_s`): the bucket still filling is never read, because a partial aggregate
  would be emitted and its timestamp would then hide the complete one.
- A sample is emitted only when it is newer than the newest already emitted for its series
  (a per-series high-water mark kept in memory), so each bucket is emitted once. A datapoint
  that reaches CloudWatch after its bucket was emitted is not emitted again; raise
  `settle_s` if publishers are late.
- The poll is all or nothing: if any call fails after retries (or a query comes back
  InternalError / Forbidden), the batch has `health.up=False`, no samples, and the marks are
  unchanged, so the next successful poll re-reads the window.
- `cursor` is always None: the marks are in memory, and the lookback window is re-read
  after a restart anyway.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from supervisor.sources.aws import ApiCallCounter, AwsSettings, call_with_retry, describe_error
from supervisor.vocabulary import Cursor, MetricSample, SourceBatch, SourceHealth

if TYPE_CHECKING:
    from mypy_boto3_cloudwatch.type_defs import (
        GetMetricDataInputTypeDef,
        GetMetricDataOutputTypeDef,
        MetricDataQueryTypeDef,
    )
    from typing_extensions import Unpack

__all__ = [
    "DEFAULT_STATS",
    "MAX_QUERIES_PER_CALL",
    "CloudWatchMetricsSource",
    "GetMetricDataClient",
    "MetricQueryFailed",
]

log = structlog.get_logger(__name__)

MAX_QUERIES_PER_CALL = 500
MAX_PAGES_PER_BATCH = 100

DEFAULT_STATS: Mapping[str, str] = {
    "step": "Maximum",
    "loss": "Average",
    "loss_nonfinite": "Maximum",
    "heartbeat": "Maximum",
    "tokens_per_s": "Average",
    "step_time_s": "Average",
}


class GetMetricDataClient(Protocol):
    """The one call this source makes; a boto3 "cloudwatch" client satisfies it."""

    def get_metric_data(self, **kwargs: Unpack[GetMetricDataInputTypeDef]) -> GetMetricDataOutputTypeDef: ...


class MetricQueryFailed(Exception):
    """A GetMetricData query came back InternalError or Forbidden: the series is unseen."""


class CloudWatchMetricsSource:
    """A `Source` of per-node metric samples (step, loss, heartbeat, ...).

    `client` is public and may be replaced between polls; the marks are kept.
    Not thread-safe: one thread polls.
    """

    def __init__(
        self,
        client: GetMetricDataClient,
        namespace: str,
        job: str,
        nodes: Callable[[], Sequence[str]],
        settings: AwsSettings,
        *,
        stats: Mapping[str, str] = DEFAULT_STATS,
        period_s: int = 1,
        lookback_s: float = 60.0,
        settle_s: float = 0.0,
        name: str = "metrics",
        clock: Callable[[], float] = time.time,
        counter: ApiCallCounter | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """See the module docstring for the contract.

        stats: metric name -> statistic ("Maximum", "Average", "Sum", "p99", ...).
        period_s: bucket size in seconds (1 needs high-resolution data, kept 3 hours).
        settle_s: extra delay before a bucket counts as complete (for late publishers).
        """
        if period_s < 1:
            raise ValueError("period_s must be >= 1")
        if lookback_s < period_s:
            raise ValueError("lookback_s must be >= period_s")
        if not stats:
            raise ValueError("stats must name at least one metric")
        self.client = client
        self.namespace = namespace
        self.job = job
        self.nodes = nodes
        self.settings = settings
        self.stats = dict(stats)
        self.period_s = period_s
        self.lookback_s = lookback_s
        self.settle_s = settle_s
        self.name = name
        self._clock = clock
        self._counter = counter
        self._sleep = sleep
        self._marks: dict[tuple[str, str], float] = {}  # (node, metric) -> newest emitted time
        self._newest: float | None = None

    # ------------------------------------------------------------------ Source protocol

    def restore(self, cursor: Cursor) -> None:
        """Nothing to restore: this source keeps no persistent position (cursor is always None)."""

    def poll(self) -> SourceBatch:
        """Read the lookback window for every (node, metric); never raises for an outside failure."""
        now = self._clock()
        p = self.period_s
        end = math.floor((now - self.settle_s) / p) * p
        start = math.floor((now - self.lookback_s) / p) * p
        try:
            series = self._series()
            if end <= start or not series:
                return self._batch((), now, up=True)
            points = self._read(series, start, end)
        except (ClientError, BotoCoreError, OSError, MetricQueryFailed) as exc:
            return self._blind(exc, now)
        except Exception as exc:  # an unexpected failure must still read as blindness
            log.exception("metrics.poll.unexpected", source=self.name)
            return self._blind(exc, now)

        samples: list[MetricSample] = []
        marks: dict[tuple[str, str], float] = {}
        for key in series:
            mark = self._marks.get(key)
            newest = mark
            for ts, value in points.get(key, ()):
                if ts >= end or (mark is not None and ts <= mark):
                    continue
                samples.append(MetricSample(node=key[0], metric=key[1], timestamp=ts, value=value))
                newest = ts if newest is None else max(newest, ts)
            if newest is not None:
                marks[key] = newest
        self._marks = marks  # series no longer queried (nodes gone) are forgotten
        samples.sort(key=lambda s: (s.timestamp, s.node, s.metric))
        if samples:
            latest = samples[-1].timestamp
            self._newest = latest if self._newest is None else max(self._newest, latest)
        return self._batch(tuple(samples), now, up=True)

    # ------------------------------------------------------------------ internals

    def _series(self) -> list[tuple[str, str]]:
        nodes = list(dict.fromkeys(self.nodes()))  # de-duplicated, order kept
        return [(node, metric) for node in nodes for metric in self.stats]

    def _query(self, index: int, node: str, metric: str) -> MetricDataQueryTypeDef:
        return {
            "Id": f"m{index}",
            "MetricStat": {
                "Metric": {
                    "Namespace": self.namespace,
                    "MetricName": metric,
                    "Dimensions": [{"Name": "Job", "Value": self.job}, {"Name": "Node", "Value": node}],
                },
                "Period": self.period_s,
                "Stat": self.stats[metric],
            },
            "ReturnData": True,
        }

    def _read(
        self, series: list[tuple[str, str]], start: float, end: float
    ) -> dict[tuple[str, str], list[tuple[float, float]]]:
        """(timestamp, value) points per series over [start, end), in batches of 500 queries."""
        by_id = {f"m{i}": key for i, key in enumerate(series)}
        out: dict[tuple[str, str], list[tuple[float, float]]] = {}
        start_dt = datetime.fromtimestamp(start, tz=UTC)
        end_dt = datetime.fromtimestamp(end, tz=UTC)
        for lo in range(0, len(series), MAX_QUERIES_PER_CALL):
            queries = [
                self._query(i, node, metric)
                for i, (node, metric) in enumerate(series[lo : lo + MAX_QUERIES_PER_CALL], start=lo)
            ]
            token: str | None = None
            for _ in range(MAX_PAGES_PER_BATCH):
                resp = self._fetch(queries, start_dt, end_dt, token)
                for result in resp.get("MetricDataResults", []):
                    qid = result.get("Id", "")
                    key = by_id.get(qid)
                    if key is None:
                        continue
                    status = result.get("StatusCode", "Complete")
                    if status in ("InternalError", "Forbidden"):
                        msgs = "; ".join(m.get("Value", "") for m in result.get("Messages", []))
                        raise MetricQueryFailed(f"{key[0]}/{key[1]}: {status} {msgs}".strip())
                    pts = out.setdefault(key, [])
                    for ts, value in zip(
                        result.get("Timestamps", []), result.get("Values", []), strict=False
                    ):
                        pts.append((ts.timestamp(), float(value)))
                token = resp.get("NextToken")
                if not token:
                    break
            else:
                raise MetricQueryFailed(f"GetMetricData still paginating after {MAX_PAGES_PER_BATCH} pages")
        for pts in out.values():
            pts.sort()
        return out

    def _fetch(
        self, queries: list[MetricDataQueryTypeDef], start: datetime, end: datetime, token: str | None
    ) -> GetMetricDataOutputTypeDef:
        kwargs: GetMetricDataInputTypeDef = {
            "MetricDataQueries": queries,
            "StartTime": start,
            "EndTime": end,
            "ScanBy": "TimestampAscending",
        }
        if token:
            kwargs["NextToken"] = token
        client = self.client
        return call_with_retry(
            lambda: client.get_metric_data(**kwargs),
            self.settings,
            op="GetMetricData",
            counter=self._counter,
            sleep=self._sleep,
        )

    def _blind(self, exc: BaseException, now: float) -> SourceBatch:
        log.warning(
            "metrics.poll.blind", source=self.name, namespace=self.namespace, error=describe_error(exc)
        )
        return self._batch((), now, up=False, error=f"GetMetricData failed: {describe_error(exc)}")

    def _batch(
        self, samples: tuple[MetricSample, ...], now: float, *, up: bool, error: str | None = None
    ) -> SourceBatch:
        lag = None if self._newest is None else max(0.0, now - self._newest)
        health = SourceHealth(source=self.name, up=up, checked_at=now, error=error, lag_s=lag)
        return SourceBatch(source=self.name, logs=(), metrics=samples, cursor=None, health=health)
