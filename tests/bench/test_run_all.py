"""bench/run_all.py writes a well-formed results.json and RESULTS.md (quick sizes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_run_all_quick_writes_results(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run_all.py"),
            "--quick",
            "--only",
            "classify,simulate",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not (tmp_path / "results.json.tmp").exists()
    res = json.loads((tmp_path / "results.json").read_text())
    m = res["machine"]
    assert m["cores"] >= 1 and m["python"] and "torch" in m and m["platform"]
    c = res["classify"]
    assert c["lines"] == 20000 and c["lines_per_s"] > 0 and c["baseline_lines_per_s"] > 0
    sim = res["goodput_sim"]
    assert [r["nodes"] for r in sim] == [256, 512, 1024, 2048]
    for row in sim:
        for s in ("ftsup", "torchrun", "none"):
            assert 0.0 < row[s]["ettr"] <= 1.0
    assert res["goodput_sim_meta"]["assumptions"]["failures_per_gpu_hour"]["source"]
    assert all(r["status"] == "ok" for r in res["runs"].values())
    md = (tmp_path / "RESULTS.md").read_text()
    assert "| 2,048 |" in md and "not yet measured" in md.lower()
    for missing in ("latency", "scale", "goodput_real"):
        assert missing not in res
        assert f"- `{missing}`" in md
