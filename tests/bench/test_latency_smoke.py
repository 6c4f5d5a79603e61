"""bench/latency.py --quick: the real path (node agent -> watchtower -> moto -> daemon) end to end with a
few injected failures; checks the JSON contract, not the figures (those are for `make bench`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_latency_quick_json(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "latency.py"), "--quick", "--count", "3", "--json",
         "--workdir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    obj = json.loads(proc.stdout.strip().splitlines()[-1])
    lat = obj["latency"]
    for key in ("decision_p50_s", "decision_p99_s", "action_p50_s", "action_p99_s", "n", "by_kind",
                "poll_interval_s", "calls_per_s", "hang_detection_s", "workload"):  # fmt: skip
        assert key in lat, key
    assert lat["n"] == 3 and not lat["failed"] and not lat["mismatched"]
    for key in ("decision_p50_s", "decision_p99_s", "action_p50_s", "action_p99_s", "poll_interval_s"):
        assert lat[key] > 0, key
    assert lat["decision_p50_s"] <= lat["action_p50_s"]
    assert lat["decision_p99_s"] <= lat["action_p99_s"]
    assert sum(k["n"] for k in lat["by_kind"].values()) == lat["n"]
    for kind in lat["by_kind"].values():
        assert 0 < kind["decision_p50_s"] <= kind["action_p50_s"]
        assert 0 < kind["decision_p99_s"] <= kind["action_p99_s"]
    assert lat["calls_per_s"]["FilterLogEvents"] > 0 and lat["calls_per_s"]["GetMetricData"] > 0
    assert isinstance(lat["hang_detection_s"], list)
    assert "stand-in" in lat["workload"]
