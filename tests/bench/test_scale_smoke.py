"""bench/scale.py --quick --json: the scale benchmark runs end to end and prints a sane JSON object."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

POLL_LOGS_S = 2.0
POLL_METRICS_S = 5.0


@pytest.mark.slow
def test_scale_quick_json_shape_and_sanity() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "scale.py"), "--quick", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads([ln for ln in proc.stdout.splitlines() if ln.strip()][-1])
    rows = out["scale"]
    assert isinstance(rows, list) and rows
    for row in rows:
        ctx = json.dumps(row)[-4000:]
        for key in (
            "nodes",
            "events_per_s",
            "filter_calls_per_s",
            "get_metric_data_calls_per_s",
            "rss_mib",
            "rss_mib_start",
            "rss_mib_end",
            "decision_p99_s",
        ):
            assert isinstance(row[key], int | float) and row[key] > 0, (key, row[key])
        how = row["how"].lower()
        assert "extrapolated" in how and "measured" in how and "engine alone" in how, ctx
        assert row["rss_mib_start"] <= row["rss_mib"] and row["rss_mib_end"] <= row["rss_mib"], ctx
        assert row["rss_mib"] < 1024, ctx
        n = row["nodes"]

        # Extrapolated FilterLogEvents calls/s: whole pages per poll interval.
        ext = row["extrapolated"]
        pages = ext["pages_per_scan"]
        assert pages == math.ceil(ext["events_per_scan"] / ext["events_per_page"]), ctx
        assert row["filter_calls_per_s"] == pytest.approx(pages / POLL_LOGS_S, abs=0.01), ctx
        assert ext["filter_calls_per_s_with_policy_filter_pattern"] == pytest.approx(1 / POLL_LOGS_S), ctx
        assert ext["get_metric_data_calls_per_s"] == pytest.approx(math.ceil(6 * n / 500) / POLL_METRICS_S), (
            ctx
        )

        # Measured end to end over moto: at least one call per poll, never wildly more than the paging allows.
        e2e = row["end_to_end_moto"]
        polls = e2e["seconds"] / POLL_LOGS_S
        assert e2e["filter_calls_per_s"] >= 0.5 / POLL_LOGS_S, ctx
        assert e2e["filter_calls_per_s"] * POLL_LOGS_S <= e2e["pages_per_poll_max"] + 1, ctx
        assert e2e["filter_calls_per_s"] * e2e["seconds"] >= 0.5 * polls, ctx
        gmd_per_poll = row["get_metric_data_calls_per_s"] * POLL_METRICS_S
        assert 0.5 * math.ceil(6 * n / 500) <= gmd_per_poll <= 2 * math.ceil(6 * n / 500), ctx
        assert e2e["events_per_s"] > 0 and e2e["log_events"] > 0, ctx
        assert e2e["failures_missed"] == 0, ctx

        # The engine at full rate saw every injected failure and kept up with the offered load.
        eng = row["engine_full_rate"]
        assert eng["failures_missed"] == 0 and eng["kept_up"], ctx
        assert eng["engine_capacity_events_per_s"] >= eng["offered_lines_per_s_steady"], ctx
        assert 0 < row["decision_p50_s"] <= row["decision_p99_s"] < 30, ctx
