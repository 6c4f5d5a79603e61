"""CloudWatch metrics publisher: a daemon thread on each node's local rank 0.

Every ``interval_s`` it puts, in namespace ``ftsup/Trainer`` with dimensions ``Job``/``Node`` and
``StorageResolution=1``: ``step``, ``loss`` (only when finite), ``loss_nonfinite``, ``tokens_per_s``,
``step_time_s``, ``compute_probe_s`` (see `trainer.probe`) and ``heartbeat`` (always 1.0). The
thread is independent of the training loop, so the heartbeat keeps beating while the loop hangs:
liveness and progress are separate signals.
A failed put never propagates; it is logged as ``metrics_error`` at most every 30 s.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config

from trainer.jsonlog import JsonLogger

ERROR_LOG_INTERVAL_S = 30.0


@dataclass
class _Latest:
    step: int | None = None
    loss: float | None = None
    tokens_per_s: float | None = None
    step_time_s: float | None = None
    compute_probe_s: float | None = None


class MetricsPublisher:
    """Holds the latest step statistics and publishes them from a background daemon thread."""

    def __init__(
        self,
        job: str,
        node: str,
        log: JsonLogger,
        namespace: str,
        region: str,
        endpoint_url: str | None,
        interval_s: float,
    ) -> None:
        self._namespace = namespace
        self._dimensions = [{"Name": "Job", "Value": job}, {"Name": "Node", "Value": node}]
        self._log = log
        self._interval_s = interval_s
        self._client: Any = boto3.client(
            "cloudwatch",
            region_name=region,
            endpoint_url=endpoint_url,
            config=Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 2}),
        )
        self._latest = _Latest()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._last_error_log = -math.inf
        self._thread = threading.Thread(target=self._run, name="ftsup-metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def update(
        self,
        step: int,
        loss: float | None = None,
        step_time_s: float | None = None,
        tokens_per_s: float | None = None,
        compute_probe_s: float | None = None,
    ) -> None:
        """Record the latest step's statistics (cheap; called from the training loop). ``None`` fields
        are not published (e.g. right after a resume, before the first step has a loss); a probe
        value, measured every few steps, is kept until the next one."""
        with self._lock:
            probe = compute_probe_s if compute_probe_s is not None else self._latest.compute_probe_s
            self._latest = _Latest(step, loss, tokens_per_s, step_time_s, probe)

    def stop(self, final_publish: bool = True) -> None:
        """Stop the thread; optionally publish once more so the final step is visible."""
        self._stop.set()
        self._thread.join(timeout=self._interval_s + 10)
        if final_publish:
            self.publish_once()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.publish_once()
            self._stop.wait(max(0.0, self._interval_s - (time.monotonic() - started)))

    def _metric_data(self) -> list[dict[str, Any]]:
        with self._lock:
            latest = self._latest
        values: dict[str, float] = {"heartbeat": 1.0}
        if latest.step is not None:
            values["step"] = float(latest.step)
        if latest.loss is not None:
            finite = math.isfinite(latest.loss)
            values["loss_nonfinite"] = 0.0 if finite else 1.0
            if finite:
                values["loss"] = latest.loss  # CloudWatch rejects NaN/Inf values
        if latest.tokens_per_s is not None and math.isfinite(latest.tokens_per_s):
            values["tokens_per_s"] = latest.tokens_per_s
        if latest.step_time_s is not None and math.isfinite(latest.step_time_s):
            values["step_time_s"] = latest.step_time_s
        if latest.compute_probe_s is not None and math.isfinite(latest.compute_probe_s):
            values["compute_probe_s"] = latest.compute_probe_s
        return [
            {
                "MetricName": name,
                "Dimensions": self._dimensions,
                "Value": value,
                "Unit": "None",
                "StorageResolution": 1,
            }
            for name, value in values.items()
        ]

    def publish_once(self) -> None:
        """One ``put_metric_data``; any failure is swallowed and rate-limited into a log line."""
        try:
            self._client.put_metric_data(Namespace=self._namespace, MetricData=self._metric_data())
        except Exception as exc:  # never let telemetry take training down
            now = time.monotonic()
            if now - self._last_error_log >= ERROR_LOG_INTERVAL_S:
                self._last_error_log = now
                self._log.emit("metrics_error", error=f"{type(exc).__name__}: {exc}"[:500])
