"""Regenerate tests/data/slurm/*.json from a real throw-away cluster.

    python -m tests.slurm.capture_fixtures

The parser tests read these files, so they pin what Slurm (Debian 12's 22.05) really prints:
- sinfo_idle.json          four idle nodes;
- squeue_running.json      a 2-node batch job running (node-0, node-1), plus a finished one;
- sinfo_drained.json       node-1 drained by ftsup while the job runs (MIXED+DRAIN), node-3 drained by
                           an operator, node-2 idle;
- squeue_requeued.json     the job after `scontrol requeue`: PENDING, restart_cnt 1, no nodes;
- squeue_finished.json     jobs that ended COMPLETED, FAILED (exit 3) and CANCELLED;
- errors.json              stderr of commands that fail for a reason that is final (not transient).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from tests.slurm.cluster import LocalSlurmCluster

DATA = Path(__file__).resolve().parents[1] / "data" / "slurm"

SLEEPER = """#!/bin/bash
#SBATCH --requeue
#SBATCH --ntasks-per-node=1
srun sleep 300
"""
EXIT3 = """#!/bin/bash
#SBATCH --requeue
srun bash -c 'exit 3'
"""
QUICK = """#!/bin/bash
#SBATCH --requeue
true
"""


def _until(predicate: object, timeout: float = 30.0) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise TimeoutError("condition not reached")


def _jobs(c: LocalSlurmCluster) -> list[dict[str, object]]:
    jobs = json.loads(c.run("squeue", "--json").stdout)["jobs"]
    assert isinstance(jobs, list)
    return jobs


def _state(c: LocalSlurmCluster, job_id: str) -> str:
    return next((str(j["job_state"]) for j in _jobs(c) if str(j["job_id"]) == job_id), "GONE")


def capture(out: Path = DATA) -> None:
    out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="ftsup-slurm-capture-"))
    cluster = LocalSlurmCluster(root)
    try:
        cluster.start()
        jobs = root / "jobs"
        for name, text in (("sleeper.sh", SLEEPER), ("exit3.sh", EXIT3), ("quick.sh", QUICK)):
            (jobs / name).write_text(text)
        (out / "sinfo_idle.json").write_text(cluster.run("sinfo", "--json").stdout)

        def submit(script: str, *extra: str) -> str:
            return cluster.run(
                "sbatch", "--parsable", f"--chdir={jobs}", "--output=%x-%j.out", *extra, str(jobs / script)
            ).stdout.strip()

        done = submit("quick.sh", "--job-name=quick", "--nodes=1")
        _until(lambda: _state(cluster, done) == "COMPLETED")
        job = submit("sleeper.sh", "--job-name=train", "--nodes=2")
        _until(lambda: _state(cluster, job) == "RUNNING")
        (out / "squeue_running.json").write_text(cluster.run("squeue", "--json").stdout)

        cluster.run("scontrol", "update", "NodeName=node-1", "State=DRAIN",
                    "Reason=ftsup: gpu-fallen-off-bus incident inc-0123456789ab")  # fmt: skip
        cluster.run("scontrol", "update", "NodeName=node-3", "State=DRAIN", "Reason=bad DIMM, ticket 4711")
        (out / "sinfo_drained.json").write_text(cluster.run("sinfo", "--json").stdout)

        cluster.run("scontrol", "requeue", job)
        _until(lambda: _state(cluster, job) == "PENDING")
        (out / "squeue_requeued.json").write_text(cluster.run("squeue", "--json").stdout)

        errors = {
            "requeue_pending": cluster.run("scontrol", "requeue", job, check=False).stderr,
            "requeue_unknown": cluster.run("scontrol", "requeue", "999999", check=False).stderr,
            "drain_unknown_node": cluster.run(
                "scontrol", "update", "NodeName=node-9", "State=DRAIN", "Reason=x", check=False
            ).stderr,
            "resume_not_drained": cluster.run(
                "scontrol", "update", "NodeName=node-2", "State=RESUME", check=False
            ).stderr,
        }
        cluster.run("scancel", job)
        failed = submit("exit3.sh", "--job-name=broken", "--nodes=1")
        _until(lambda: _state(cluster, failed) == "FAILED")
        _until(lambda: _state(cluster, job) == "CANCELLED")
        (out / "squeue_finished.json").write_text(cluster.run("squeue", "--json").stdout)
        (out / "errors.json").write_text(json.dumps(errors, indent=1, sort_keys=True) + "\n")
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    capture()
    print(f"wrote {', '.join(sorted(p.name for p in DATA.glob('*.json')))} to {DATA}")
