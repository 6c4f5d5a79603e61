"""bench/goodput_real.py --quick, ftsup only: one real 45 s run (moto, the daemon, the local actuator,
the FSDP trainer) with a dead node and a collective timeout; checks the JSON contract and that the
dead node was cordoned, not the figures (those are `make bench`'s)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.integration
def test_goodput_real_quick_ftsup(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "goodput_real.py"), "--quick", "--strategies", "ftsup",
         "--workdir", str(tmp_path), "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    obj = json.loads(proc.stdout.strip().splitlines()[-1])
    real, meta = obj["goodput_real"], obj["goodput_real_meta"]
    assert list(real) == ["ftsup"]
    f = real["ftsup"]
    assert 0.0 < f["ettr"] <= 1.0 and f["tokens"] > 0 and f["tokens"] % f["tokens_per_step"] == 0
    assert f["ettr_vs_ftsup"] == 1.0 and f["tokens_vs_ftsup"] == 1.0
    assert f["kept_steps"] <= f["trained_steps"]
    dead = next(x for x in f["faults"] if x["kind"] == "xid79")
    assert dead["struck_at_s"], f["faults"]  # persistent: injected whatever the job was doing
    cordons = [e for e in f["events"] if e["verdict"] == "cordon_and_restart"]
    assert [(e["rule"], e["node"]) for e in cordons] == [("gpu-fallen-off-bus", dead["node"])], f["events"]
    assert meta["window_s"] == 45.0 and meta["assumptions"]["time_scale"]["source"]
    assert sorted(s["kind"] for s in meta["schedule"]) == ["collective_timeout", "xid79"]
