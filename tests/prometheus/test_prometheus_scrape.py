"""A real Prometheus server scrapes a running ftsup daemon that handles a real incident.

The daemon is built from a config file by `supervisor.daemon.build` (the production path) in observe
mode, watching a job launched elsewhere (`actuator.kind: none`), reading its log group on the moto
server; the Xid 79 fault's real log lines are shipped into it with put_log_events. Prometheus then
answers, through /api/v1/query, what ftsup counted.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import boto3
import pytest
import yaml

from supervisor.config import load_config
from supervisor.daemon import build
from tests.prometheus.conftest import Prometheus
from tests.replay.faults import put_fault_logs, timed_lines

pytestmark = [pytest.mark.prometheus, pytest.mark.integration]


def test_prometheus_scrapes_the_series_of_a_real_incident(
    tmp_path: Path, moto_endpoint: str, prometheus_server: Callable[[int], Prometheus]
) -> None:
    name = f"prom-{uuid.uuid4().hex[:8]}"
    doc = {
        "job": {"name": name, "log_group": f"/ftsup/test/{name}"},
        "mode": "observe",
        "aws": {"endpoint_url": moto_endpoint, "max_attempts": 2, "retry_budget_s": 5},
        "sources": {"logs": {"poll_interval_s": 0.5, "overlap_s": 10}, "metrics": {"enabled": False}},
        "incidents": {"settle_s": 2},
        "actuator": {"kind": "none", "none": {"nodes": ["node-0", "node-1"]}},
        "journal": {"path": "ftsup.db"},
        "alerts": {"log": True},
        "metrics_server": {"address": "127.0.0.1", "port": 0},
        "logging": {"format": "json", "level": "warning"},
    }
    path = tmp_path / "ftsup.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    daemon = build(load_config(path))
    try:
        assert daemon.metrics_port
        prom = prometheus_server(daemon.metrics_port)
        # Before anything happened: every known series is there, at 0.
        assert prom.wait_for('ftsup_signals_total{rule="gpu-fallen-off-bus"}', 0.0) == 0.0
        assert prom.value("sum(ftsup_incidents_total)") == 0.0
        assert prom.value('ftsup_incidents_total{class="non_recoverable",verdict="halt"}') == 0.0

        daemon.start(launch=True)
        client = boto3.client("logs", endpoint_url=moto_endpoint, region_name="us-east-1")
        put_fault_logs(client, doc["job"]["log_group"], "xid79", time.time() + 0.5)  # type: ignore[index]
        deadline = time.monotonic() + 60
        while not daemon.engine.snapshot().handled and time.monotonic() < deadline:
            time.sleep(0.5)
        (handled,) = daemon.engine.snapshot().handled
        assert handled.incident.root_cause.rule == "gpu-fallen-off-bus"
        verdict = handled.decision.verdict.value  # a watched job with no spare: halt and page

        assert prom.wait_for('ftsup_signals_total{rule="gpu-fallen-off-bus"}', 1.0) == 1.0
        assert prom.wait_for("sum(ftsup_incidents_total)", 1.0) == 1.0
        assert prom.value(f'ftsup_incidents_total{{class="non_recoverable",verdict="{verdict}"}}') == 1.0
        assert prom.value(f'ftsup_decisions_total{{mode="observe",verdict="{verdict}"}}') == 1.0
        assert prom.value('ftsup_source_up{source="logs"}') == 1.0
        assert prom.value("ftsup_degraded") == 0.0
        shipped = sum(len([x for x in lines if x[1]]) for lines in timed_lines("xid79", 0.0).values())
        assert prom.wait_for('ftsup_events_total{source="logs"}', shipped) == shipped  # each line once
        assert prom.value("ftsup_detection_latency_seconds_count") == 1.0
        assert prom.wait_for('ftsup_alerts_total{sink="log",result="ok"}', 1.0) == 1.0  # sent off-thread
        budget = daemon.policy.budgets.restart.max
        assert prom.value(f'ftsup_restart_budget_left{{training_job="{name}"}}') == budget
        # The job stepped for a few seconds of the time since its launch (refreshed every 5 s).
        ettr_expr = f'ftsup_ettr{{training_job="{name}"}} > 0 and ftsup_ettr{{training_job="{name}"}} < 1'
        deadline = time.monotonic() + 20
        while prom.value(ettr_expr) is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert prom.value(ettr_expr) is not None
        quantile = prom.value("histogram_quantile(0.5, ftsup_detection_latency_seconds_bucket)")
        assert quantile is not None and 0 < quantile <= 60
    finally:
        daemon.shutdown(stop_job=False)
