"""bench/scale.py --quick --json: the scale benchmark runs end to end and prints a sane JSON object.

Typical runtime: about 50 s (one 24 s run of 64 nodes plus the drain that lets the late sweep read the
slow node's failure)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


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
        ctx = json.dumps({k: v for k, v in row.items() if k != "how"})[-4000:]
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
        assert "measured end to end" in how and "extrapolated" in how, ctx
        assert row["rss_mib_start"] <= row["rss_mib"] and row["rss_mib_end"] <= row["rss_mib"], ctx
        assert row["rss_mib"] < 1024, ctx
        n = row["nodes"]
        e2e, ext = row["end_to_end"], row["extrapolated"]

        # Every injected failure was decided, the one on a slow node by the late sweep, within its bound:
        # searchable 15 s late, then at most a sweep interval, a poll and paging.
        assert e2e["failures_missed"] == 0 and e2e["logs_up"], ctx
        assert len(e2e["decision_latency_slow_node_s"]) == 1, ctx
        assert 15.0 <= e2e["decision_latency_slow_node_s"][0] < 15.0 + 15.0 + 10.0, ctx
        assert 0 < row["decision_p50_s"] <= row["decision_p99_s"] < 15.0, ctx

        # The filter pattern is the derived one and passes a minority of the healthy stream; progress is
        # read from the step metric; every line written was covered (the daemon kept up).
        assert 0 < e2e["filter_pattern_chars"] <= 1024 and 0 < e2e["filter_pass_rate"] < 0.5, ctx
        assert e2e["progress_metric"] == "step", ctx
        assert e2e["events_delivered"] >= 0.9 * e2e["filter_pass_rate"] * e2e["lines_written"], ctx

        # Calls: at least one FilterLogEvents per 1 s poll, never more than the paging allows; the
        # filter keeps a small job at about one call per poll plus the sweeps.
        polls = e2e["seconds"]
        assert e2e["filter_calls_total"] >= 0.5 * polls, ctx
        assert 0.5 <= row["filter_calls_per_s"] <= 4.0, ctx
        assert ext["filter_calls_per_s_no_filter"] >= ext["filter_calls_per_s_with_filter"], ctx
        gmd_per_poll = row["get_metric_data_calls_per_s"] * 5.0
        assert 0.5 * math.ceil(6 * n / 500) <= gmd_per_poll <= 2 * math.ceil(6 * n / 500), ctx
