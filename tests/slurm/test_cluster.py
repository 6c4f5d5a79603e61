"""The throw-away cluster itself: a session that dies without tearing down leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.slurm.cluster import missing_binaries, reap_stale_labs

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

START_AND_HANG = """
import sys, time
from pathlib import Path
from tests.slurm.cluster import ClusterSpec, LocalSlurmCluster
LocalSlurmCluster(Path(sys.argv[1]), ClusterSpec(nodes=("node-0", "node-1"))).start()
print("up", flush=True)
time.sleep(600)
"""


def _gone(pid: int) -> bool:
    """Exited: no process, or a zombie nobody reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2] == "Z"


def test_daemons_of_a_killed_test_session_are_reaped(tmp_path: Path) -> None:
    if missing_binaries() or os.geteuid() != 0:
        pytest.skip("needs Slurm installed and root")
    lab = tmp_path / "ftsup-slurm-crashed"
    owner = subprocess.Popen(
        [sys.executable, "-c", START_AND_HANG, str(lab)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "up"
    finally:
        owner.kill()  # SIGKILL: no finally, no teardown in the owner
        owner.wait()
    pid_files = [*lab.glob("spool/slurmd-*.pid"), lab / "state" / "slurmctld.pid"]
    pids = [int(p.read_text()) for p in pid_files]
    assert len(pids) == 3 and not any(_gone(pid) for pid in pids)

    assert reap_stale_labs(tmp_path, "ftsup-slurm-") == [lab]
    assert all(_gone(pid) for pid in pids) and not lab.exists()
